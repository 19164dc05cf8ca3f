// The key portal: terms of use, my keys, my usage. Plain JS, no build step.
// Everything a person or the server supplies is put on the page with textContent, never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4d7c0f", "#be185d"];
  const apiBase = new URL(".", window.location.href);
  let me = null;
  let redrawUsage = null;

  function xsrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
    if (message) box.scrollIntoView({ block: "nearest" });
  }

  // Calls the portal's JSON API; a refusal becomes an Error carrying the server's message.
  async function api(method, path, body) {
    const options = { method, credentials: "same-origin", headers: { "X-XSRFToken": xsrfToken() } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(new URL("portal/api/" + path, apiBase), options);
    } catch (err) {
      throw new Error("The gateway could not be reached. Check your connection and try again.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (response.status === 401) {
      window.location.href = new URL("portal", apiBase).href;
      throw new Error("Your session has ended; taking you to the login.");
    }
    if (!response.ok) {
      const message = data && data.error && data.error.message;
      throw new Error(message || `The gateway answered ${response.status}; try again.`);
    }
    return data;
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function day(ts) {
    return ts ? new Date(ts * 1000).toISOString().slice(0, 10) : "—";
  }

  function number(n) {
    return Math.round(n).toLocaleString("en-US");
  }

  function money(n) {
    // Prices are in whatever currency the operator set them in: no symbol is assumed.
    return n.toFixed(n < 1 ? 4 : 2);
  }

  // --- views -------------------------------------------------------------------------------

  function show(view) {
    if (!me.terms.accepted) view = "terms";
    for (const name of ["terms", "keys", "usage"]) $("view-" + name).hidden = name !== view;
    for (const link of document.querySelectorAll("#nav a")) {
      link.classList.toggle("active", link.dataset.view === view);
    }
    showError("");
    if (view === "keys") loadKeys().catch((err) => showError(err.message));
    if (view === "usage") loadUsage().catch((err) => showError(err.message));
  }

  function route() {
    show((window.location.hash || "#keys").slice(1));
  }

  function renderTerms() {
    $("terms-version").textContent = me.terms.version;
    const text = $("terms-text");
    text.replaceChildren(...me.terms.text.split(/\n\s*\n/).map((para) => el("p", para)));
    $("terms-form").hidden = me.terms.accepted;
    $("terms-accepted").hidden = !me.terms.accepted;
    $("nav").hidden = !me.terms.accepted;
  }

  // --- keys --------------------------------------------------------------------------------

  async function loadKeys() {
    const data = await api("GET", "keys");
    const body = $("keys-body");
    body.replaceChildren();
    for (const key of data.keys) {
      const row = document.createElement("tr");
      const cells = [
        ["Name", key.name], ["Key", key.prefix + "…"], ["Models", key.models.length ? key.models.join(", ") : "all"],
        ["Created", day(key.created)], ["Expires", key.expires ? day(key.expires) : "never"],
        ["Last used", key.last_used ? day(key.last_used) : "never"], ["Status", key.status],
      ];
      for (const [label, value] of cells) {
        const style = { Status: "status-" + key.status, Key: "mono", Created: "nowrap", Expires: "nowrap",
          "Last used": "nowrap" };
        const cell = el("td", value, style[label] || "");
        cell.dataset.label = label;
        row.append(cell);
      }
      const action = el("td");
      if (key.status === "active") {
        const button = el("button", "Revoke", "danger small");
        button.type = "button";
        button.addEventListener("click", () => confirmRevoke(key));
        action.append(button);
      }
      row.append(action);
      body.append(row);
    }
    $("no-keys").hidden = data.keys.length > 0;
    $("key-count").textContent = `${data.active} of at most ${data.limit} active keys.`;
    const full = data.active >= data.limit;
    $("limit-msg").hidden = !full;
    $("limit-msg").textContent = full
      ? `You have ${data.limit} active keys, the most allowed. Revoke one you no longer use to create another.`
      : "";
    $("create-button").disabled = full;
  }

  function renderModelChoices() {
    const box = $("model-choices");
    box.replaceChildren();
    for (const model of me.models) {
      const label = el("label", null, "check");
      const input = document.createElement("input");
      input.type = "checkbox";
      input.value = model;
      label.append(input, " " + model);
      box.append(label);
    }
  }

  async function createKey(event) {
    event.preventDefault();
    showError("");
    const models = [...document.querySelectorAll("#model-choices input:checked")].map((input) => input.value);
    const expiry = $("key-expiry").value;
    const button = $("create-button");
    button.disabled = true;
    try {
      const data = await api("POST", "keys", {
        name: $("key-name").value, models, expires_days: expiry ? Number(expiry) : null,
      });
      $("create-form").reset();
      showNewKey(data.key, models[0] || me.models[0] || "MODEL");
    } catch (err) {
      showError(err.message);
    } finally {
      button.disabled = false;
      await loadKeys().catch((err) => showError(err.message));
    }
  }

  function showNewKey(key, model) {
    const v1 = new URL("v1", apiBase).href;
    $("new-key-value").textContent = key;
    $("example-curl").textContent =
      `curl ${v1}/chat/completions \\\n` +
      `  -H "Authorization: Bearer ${key}" \\\n` +
      `  -H "Content-Type: application/json" \\\n` +
      `  -d '{"model": "${model}", "messages": [{"role": "user", "content": "Hello"}]}'`;
    $("example-python").textContent =
      "from openai import OpenAI\n\n" +
      `client = OpenAI(base_url="${v1}", api_key="${key}")\n` +
      `reply = client.chat.completions.create(model="${model}", messages=[{"role": "user", "content": "Hello"}])\n` +
      "print(reply.choices[0].message.content)";
    $("copied").hidden = true;
    $("new-key").hidden = false;
    $("new-key").scrollIntoView({ block: "start" });
  }

  async function copyKey() {
    const key = $("new-key-value").textContent;
    try {
      await navigator.clipboard.writeText(key);
    } catch (err) {
      const range = document.createRange();
      range.selectNodeContents($("new-key-value"));
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      document.execCommand("copy");
    }
    $("copied").hidden = false;
  }

  function confirmRevoke(key) {
    const dialog = $("confirm");
    $("confirm-text").textContent =
      `Revoke the key “${key.name}” (${key.prefix}…)? Programs using it stop working at once. This cannot be undone.`;
    dialog.returnValue = "";
    dialog.onclose = async () => {
      if (dialog.returnValue !== "revoke") return;
      try {
        await api("DELETE", "keys/" + encodeURIComponent(key.id));
      } catch (err) {
        showError(err.message);
      }
      await loadKeys().catch((err) => showError(err.message));
    };
    dialog.showModal();
  }

  // --- usage -------------------------------------------------------------------------------

  async function loadUsage() {
    const data = await api("GET", "usage?days=30");
    const models = data.by_model.map((row) => row.model);
    const color = (model) => COLORS[models.indexOf(model) % COLORS.length];
    redrawUsage = () => drawChart(data, models, color);
    redrawUsage();
    const legend = $("legend");
    legend.replaceChildren();
    for (const model of models) {
      const item = el("span", null, "legend-item");
      const swatch = el("span", null, "swatch");
      swatch.style.background = color(model);
      item.append(swatch, model);
      legend.append(item);
    }
    const body = $("totals-body");
    body.replaceChildren();
    const rows = [...data.by_model, { model: "Total", ...data.totals }];
    for (const row of rows) {
      const tr = document.createElement("tr");
      if (row.model === "Total" && row === rows[rows.length - 1]) tr.className = "total";
      const values = [row.model, number(row.requests), number(row.prompt_tokens), number(row.completion_tokens),
        money(row.cost)];
      for (const [i, value] of values.entries()) {
        const td = el("td", value);
        td.dataset.label = ["Model", "Requests", "Prompt tokens", "Completion tokens", "Cost"][i];
        tr.append(td);
      }
      body.append(tr);
    }
    const quota = $("quota");
    quota.hidden = !data.quota;
    quota.textContent = data.quota ? data.quota.summary || "" : "";
  }

  // Stacked bars of prompt + completion tokens per day and model, drawn as SVG.
  function drawChart(data, models, color) {
    const chart = $("chart");
    chart.replaceChildren();
    if (!data.rows.length) {
      chart.append(el("p", "No usage in the last 30 days yet.", "muted"));
      return;
    }
    // Drawn at the container's own width, so labels keep their size on a phone.
    const width = Math.max(300, Math.round(chart.clientWidth || 720)), height = 260;
    const left = 56, bottom = 24, top = 10, right = 8;
    const perDay = new Map(data.days.map((d) => [d, []]));
    for (const row of data.rows) {
      if (perDay.has(row.day)) perDay.get(row.day).push(row);
    }
    const totals = data.days.map((d) => perDay.get(d).reduce((s, r) => s + r.prompt_tokens + r.completion_tokens, 0));
    const max = Math.max(1, ...totals);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "Tokens per day");
    const plotH = height - top - bottom;
    const slot = (width - left - right) / data.days.length;
    const labelEvery = Math.max(1, Math.ceil(48 / slot));
    const add = (tag, attrs, text) => {
      const node = document.createElementNS(SVG, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
      if (text !== undefined) node.textContent = text;
      svg.append(node);
      return node;
    };
    for (const frac of [0, 0.5, 1]) {
      const y = top + plotH * (1 - frac);
      add("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" });
      add("text", { x: left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, number(max * frac));
    }
    data.days.forEach((d, i) => {
      let y = top + plotH;
      const x = left + i * slot + slot * 0.15;
      for (const row of perDay.get(d).sort((a, b) => models.indexOf(a.model) - models.indexOf(b.model))) {
        const tokens = row.prompt_tokens + row.completion_tokens;
        const h = (tokens / max) * plotH;
        y -= h;
        const rect = add("rect", { x, y, width: slot * 0.7, height: Math.max(h, 0.5), fill: color(row.model) });
        const title = document.createElementNS(SVG, "title");
        title.textContent = `${d} ${row.model}: ${number(tokens)} tokens, ${money(row.cost)}`;
        rect.append(title);
      }
      if ((data.days.length - 1 - i) % labelEvery === 0) {
        add("text", { x: x + slot * 0.35, y: height - 6, class: "axis", "text-anchor": "middle" }, d.slice(5));
      }
    });
    chart.append(svg);
  }

  // --- start -------------------------------------------------------------------------------

  async function start() {
    $("logout-xsrf").value = xsrfToken();  // logout is a POST with the XSRF token: no other site can log you out
    try {
      me = await api("GET", "me");
    } catch (err) {
      $("loading").hidden = true;
      showError(err.message);
      return;
    }
    $("loading").hidden = true;
    document.title = me.title;
    $("brand").textContent = me.title;
    $("dev-banner").hidden = !me.dev_login;
    $("who").textContent = me.display_name || me.username;
    renderTerms();
    renderModelChoices();
    route();
  }

  $("terms-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "terms", { version: me.terms.version });
      me.terms.accepted = true;
      renderTerms();
      window.location.hash = "#keys";
      route();
    } catch (err) {
      showError(err.message);
    }
  });
  $("create-form").addEventListener("submit", createKey);
  $("copy-key").addEventListener("click", copyKey);
  $("new-key-done").addEventListener("click", () => {
    $("new-key").hidden = true;
    $("new-key-value").textContent = "";
    $("example-curl").textContent = "";
    $("example-python").textContent = "";
  });
  window.addEventListener("hashchange", () => me && route());
  window.addEventListener("resize", () => redrawUsage && !$("view-usage").hidden && redrawUsage());
  start();
})();
