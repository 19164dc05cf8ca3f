// Stacked bars per day, drawn as SVG: the portal's tokens per model and the admin UI's prompt and
// completion tokens. Shared by both pages, plain JS, no build step. Every series has a pattern as
// well as a colour (colour is never the only difference) and an outline with at least 3:1 contrast
// against the white page; the y axis has round ticks; the chart's label sums it up in words, and
// each page puts a table of the same numbers beside it.
"use strict";

window.gatewayChart = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const PATTERNS = ["solid", "hatch", "dots", "cross", "stripes", "grid"];
  const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  const plain = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

  function tickLabel(n) {
    return n >= 10000 ? compact.format(n) : plain.format(n);
  }

  // Round ticks from 0 to at least `max`: steps of 1, 2, 2.5 or 5 times a power of ten.
  function ticks(max) {
    const rough = Math.max(max, 1) / 4;
    const power = 10 ** Math.floor(Math.log10(rough));
    const step = [1, 2, 2.5, 5, 10].map((f) => f * power).find((s) => s >= rough);
    const whole = Math.max(1, Math.ceil(step));
    const top = Math.ceil(Math.max(max, 1) / whole) * whole;
    const out = [];
    for (let v = 0; v <= top; v += whole) out.push(v);
    return out;
  }

  function node(tag, attrs, text) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // The fill of one series: its colour, as a solid or a pattern on white.
  function pattern(id, kind, color) {
    const p = node("pattern", { id, width: 6, height: 6, patternUnits: "userSpaceOnUse" });
    p.append(node("rect", { width: 6, height: 6, fill: kind === "solid" ? color : "#fff" }));
    const ink = { stroke: color, "stroke-width": 1.6 };
    if (kind === "hatch") p.append(node("path", { d: "M-1,1 l2,-2 M0,6 l6,-6 M5,7 l2,-2", ...ink }));
    if (kind === "dots") p.append(node("circle", { cx: 3, cy: 3, r: 1.6, fill: color }));
    if (kind === "cross") p.append(node("path", { d: "M0,0 l6,6 M6,0 l-6,6", ...ink }));
    if (kind === "stripes") p.append(node("path", { d: "M0,3 h6", ...ink, "stroke-width": 2 }));
    if (kind === "grid") p.append(node("path", { d: "M3,0 v6 M0,3 h6", ...ink }));
    return p;
  }

  // A small square in a series' fill, for legends.
  let swatches = 0;
  function swatch(series) {
    const id = `swatch-${++swatches}`;
    const svg = node("svg", { width: 14, height: 14, viewBox: "0 0 14 14", class: "swatch", "aria-hidden": "true" });
    const defs = node("defs");
    defs.append(pattern(id, series.pattern, series.color));
    svg.append(defs, node("rect", { x: 0.5, y: 0.5, width: 13, height: 13, fill: `url(#${id})`, stroke: series.color }));
    return svg;
  }

  // series: [{id, name, color, pattern}], bottom first; values(day) -> {seriesId: number};
  // tooltip(day) -> text. Returns the svg, or null when there is nothing to draw.
  function draw(container, { days, series, values, tooltip, label }) {
    container.replaceChildren();
    const width = Math.max(280, Math.round(container.clientWidth || 720));
    const height = 240;
    const left = 52, bottom = 24, top = 12, right = 10;
    const plotH = height - top - bottom;
    const totals = days.map((d) => Object.values(values(d)).reduce((s, v) => s + v, 0));
    const scale = ticks(Math.max(...totals, 0));
    const max = scale[scale.length - 1];
    const svg = node("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
    const defs = node("defs");
    const prefix = container.id || "chart";
    for (const s of series) defs.append(pattern(`${prefix}-${s.id}`, s.pattern, s.color));
    svg.append(defs);
    for (const v of scale) {
      const y = top + plotH * (1 - v / max);
      svg.append(node("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" }));
      svg.append(node("text", { x: left - 6, y: y + 4, class: "axis y", "text-anchor": "end" }, tickLabel(v)));
    }
    const slot = (width - left - right) / days.length;
    const barW = Math.min(slot * 0.7, 40);
    const labelEvery = Math.max(1, Math.ceil(46 / slot));
    days.forEach((d, i) => {
      const x = left + i * slot + (slot - barW) / 2;
      const parts = values(d);
      let y = top + plotH;
      const group = node("g");
      for (const s of series) {
        const v = parts[s.id] || 0;
        if (!v) continue;
        const h = Math.max((v / max) * plotH, 1.5);
        y -= h;
        group.append(node("rect", {
          x, y, width: barW, height: h, fill: `url(#${prefix}-${s.id})`, stroke: s.color, "stroke-width": 1,
        }));
        y -= 1;  // a white gap between the parts of a bar
      }
      if (group.childNodes.length) {
        group.prepend(node("title", {}, tooltip(d)));
        svg.append(group);
      }
      if ((days.length - 1 - i) % labelEvery === 0) {
        const centre = x + barW / 2;
        const last = centre + 18 > width;
        svg.append(node("text", {
          x: last ? width - 1 : centre, y: height - 6, class: "axis x", "text-anchor": last ? "end" : "middle",
        }, d.slice(5)));
      }
    });
    container.append(svg);
    return svg;
  }

  return { draw, swatch, ticks, PATTERNS };
})();
