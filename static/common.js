// What the portal and the admin UI share, as `window.gateway`: talking to their JSON APIs, putting
// text on the page, the new-key panel, the confirm dialog and the day chart. Plain JS, no build
// step; each page's own script keeps only what is its own.
// Everything a person or the server supplies goes on the page with textContent, never as HTML.
"use strict";

window.gateway = (() => {
  const $ = (id) => document.getElementById(id);
  // The gateway's root: both pages live one step below it (/portal, /admin).
  const base = new URL(".", window.location.href);
  // The base URL of the OpenAI-compatible API, for examples.
  const v1 = new URL("v1", base).href;

  // --- talking to the API ------------------------------------------------------------------

  function xsrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  // A refusal: the server's message, with its HTTP status (0: not reached) and the field it names.
  class ApiError extends Error {
    constructor(message, status, param, code) {
      super(message);
      this.status = status;
      this.param = param || null;
      this.code = code || null;
    }
  }

  // A caller of the JSON API under `root` (e.g. "portal/api/"): call(method, path, body, query)
  // resolves to the answer or throws an ApiError; a lapsed session goes to `login` (the page that
  // logs in again). `call.url(path, query)` is the address of a call, for links.
  function api(root, login) {
    function url(path, query) {
      const address = new URL(root + path, base);
      for (const [name, value] of Object.entries(query || {})) {
        if (value !== undefined && value !== null && value !== "") address.searchParams.set(name, value);
      }
      return address;
    }

    async function call(method, path, body, query) {
      const options = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
      if (method !== "GET") options.headers["X-XSRFToken"] = xsrfToken();
      if (body !== undefined) {
        options.headers["Content-Type"] = "application/json";
        options.body = JSON.stringify(body);
      }
      let response;
      try {
        response = await fetch(url(path, query), options);
      } catch (err) {
        throw new ApiError("The gateway could not be reached. Check your connection and try again.", 0);
      }
      let data = null;
      try {
        data = await response.json();
      } catch (err) {
        data = null;
      }
      const error = (data && data.error) || {};
      if (response.status === 401) {
        window.location.href = new URL(login, base).href;
        throw new ApiError("Your session has ended; taking you to the login.", 401);
      }
      if (!response.ok) {
        throw new ApiError(error.message || `The gateway answered ${response.status}; try again.`, response.status,
          error.param, error.code);
      }
      return data;
    }

    call.url = url;
    return call;
  }

  // --- putting text on the page ------------------------------------------------------------

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function day(ts, never) {
    return ts ? new Date(ts * 1000).toISOString().slice(0, 10) : never || "—";
  }

  function number(n) {
    return Math.round(n || 0).toLocaleString("en-US");
  }

  // Prices are in the unit the operator names (portal.currency), else plain numbers.
  function money(n, currency) {
    n = n || 0;
    const text = n.toFixed(n > 0 && n < 0.01 ? 4 : 2);
    return currency ? `${text} ${currency}` : text;
  }

  // Says `text` to screen readers (a status region), without moving focus.
  function announce(text) {
    const region = $("announce");
    region.textContent = "";
    window.setTimeout(() => { region.textContent = text; }, 50);
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
    if (message) box.scrollIntoView({ block: "nearest" });
  }

  // --- parts both pages have ---------------------------------------------------------------

  // The skip link to #main, and the logout form's XSRF token: logout is a POST with it, so that no
  // other site can log anyone out.
  function wirePage() {
    $("logout-xsrf").value = xsrfToken();
    $("skip").addEventListener("click", (event) => {
      event.preventDefault();
      $("main").focus();
    });
  }

  // Copies `node`'s text (selecting it for a manual copy where the clipboard is refused) and says
  // so in `done`.
  async function copyText(node, done) {
    try {
      await navigator.clipboard.writeText(node.textContent);
    } catch (err) {
      const range = document.createRange();
      range.selectNodeContents(node);
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      document.execCommand("copy");
    }
    done.textContent = "Copied.";
  }

  // The page's #confirm dialog: resolves to true when a button other than "cancel" closed it (Escape
  // closes it with none). `okLabel` also names the dialog and its button; without it they keep
  // the page's own words.
  function confirmDialog(text, okLabel, danger = true) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    if (okLabel) {
      $("confirm-title").textContent = okLabel + "?";
      $("confirm-ok").textContent = okLabel;
      $("confirm-ok").className = danger ? "danger" : "";
    }
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(!["", "cancel"].includes(dialog.returnValue)), { once: true });
      dialog.showModal();
    });
  }

  // The #new-key panel that shows a key just this once, with examples of its use (every <pre> in
  // it); "I have copied it" hides it, forgetting the key, and gives the focus to `back()`.
  function newKeyPanel(back) {
    const panel = $("new-key");
    function hide() {
      panel.hidden = true;
      $("new-key-value").textContent = "";
      for (const example of panel.querySelectorAll("pre")) example.textContent = "";
      $("copied").textContent = "";
    }
    // Shows `key` with the Python example for `model`; the page adds what is its own.
    function show(key, model) {
      $("new-key-value").textContent = key;
      $("example-python").textContent =
        "from openai import OpenAI\n\n" +
        `client = OpenAI(base_url="${v1}", api_key="${key}")\n` +
        `reply = client.chat.completions.create(model="${model}", messages=[{"role": "user", "content": "Hello"}])\n` +
        "print(reply.choices[0].message.content)";
      $("copied").textContent = "";
      panel.hidden = false;
    }
    $("copy-key").addEventListener("click", () => copyText($("new-key-value"), $("copied")));
    $("new-key-done").addEventListener("click", () => {
      hide();
      back().focus();
    });
    return { show, hide };
  }

  // --- the day chart -----------------------------------------------------------------------

  // Stacked bars per day, drawn as SVG: the portal's tokens per model and the admin UI's prompt and
  // completion tokens. Every series has a pattern as well as a colour (colour is never the only
  // difference) and an outline with at least 3:1 contrast against the white page; the y axis has
  // round ticks; the chart's label sums it up in words, and each page puts a table of the same
  // numbers beside it.
  const chart = (() => {
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
      const svgNode = document.createElementNS(SVG, tag);
      for (const [k, v] of Object.entries(attrs || {})) svgNode.setAttribute(k, v);
      if (text !== undefined) svgNode.textContent = text;
      return svgNode;
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
      const square = { x: 0.5, y: 0.5, width: 13, height: 13, fill: `url(#${id})`, stroke: series.color };
      svg.append(defs, node("rect", square));
      return svg;
    }

    // The legend of `series` in `box`: a swatch and a name each.
    function legend(box, series) {
      box.replaceChildren(...series.map((s) => {
        const item = el("span", null, "legend-item");
        item.append(swatch(s), s.name);
        return item;
      }));
    }

    // series: [{id, name, color, pattern}], bottom first; values(day) -> {seriesId: number};
    // tooltip(day) -> text; summary: the chart in words, to which its label adds the busiest day.
    function draw(container, { days, series, values, tooltip, summary }) {
      container.replaceChildren();
      const width = Math.max(280, Math.round(container.clientWidth || 720));
      const height = 240;
      const left = 52, bottom = 24, top = 12, right = 10;
      const plotH = height - top - bottom;
      const totals = days.map((d) => Object.values(values(d)).reduce((s, v) => s + v, 0));
      const busiest = totals.reduce((best, t, i) => (t > totals[best] ? i : best), 0);
      const scale = ticks(Math.max(...totals, 0));
      const max = scale[scale.length - 1];
      const label = `${summary}, most on ${days[busiest]} (${number(totals[busiest])}). ` +
        "The numbers per day are in the table below the chart.";
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

    return { draw, legend, PATTERNS };
  })();

  return {
    $, base, v1, api, el, day, number, money, announce, showError, wirePage, copyText,
    confirmDialog, newKeyPanel, chart,
  };
})();
