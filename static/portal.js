// The key portal: terms of use, my keys, my usage. Plain JS, no build step.
// Everything a person or the server supplies is put on the page with textContent, never as HTML.
"use strict";

(() => {
  const { $, el, day, number, announce, showError, confirmDialog } = window.gateway;
  const api = window.gateway.api("portal/api/", "portal");
  const newKey = window.gateway.newKeyPanel(() => $("keys-title"));
  let me = null;
  let redrawUsage = null;

  // Prices in the unit the operator names, which comes with the profile.
  function money(n) {
    return window.gateway.money(n, me && me.currency);
  }

  // Moves focus to a heading or other element made focusable with tabindex="-1".
  function focusOn(node) {
    node.focus({ preventScroll: false });
  }

  // --- views -------------------------------------------------------------------------------

  const VIEWS = { terms: "Terms of use", keys: "My keys", usage: "My usage" };

  // Shows one view; `focus` moves the keyboard to its heading (after a navigation, not on load).
  function show(view, focus) {
    if (!me.terms.accepted) view = "terms";
    if (!VIEWS[view]) view = "keys";
    for (const name of Object.keys(VIEWS)) $("view-" + name).hidden = name !== view;
    for (const link of document.querySelectorAll("#nav a")) {
      const current = link.dataset.view === view;
      link.classList.toggle("active", current);
      if (current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = `${VIEWS[view]} · ${me.title}`;
    showError("");
    if (focus) focusOn($("view-" + view).querySelector("h1"));
    if (view === "keys") loadKeys().catch((err) => showError(err.message));
    if (view === "usage") loadUsage().catch((err) => showError(err.message));
  }

  function route(focus) {
    show((window.location.hash || "#keys").slice(1), focus);
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
        ["Created", day(key.created)], ["Expires", day(key.expires, "never")],
        ["Last used", day(key.last_used, "never")], ["Status", key.status],
      ];
      for (const [label, value] of cells) {
        const style = { Status: "status-" + key.status, Key: "mono", Created: "nowrap", Expires: "nowrap",
          "Last used": "nowrap" };
        const cell = el(label === "Name" ? "th" : "td", value, style[label] || "");
        if (label === "Name") cell.scope = "row";
        cell.dataset.label = label;
        row.append(cell);
      }
      const action = el("td", null, key.status === "active" ? "actions" : "actions empty-cell");
      if (key.status === "active") {
        const button = el("button", "Revoke", "danger small");
        button.type = "button";
        button.append(el("span", ` the key “${key.name}”`, "visually-hidden"));
        button.addEventListener("click", () => confirmRevoke(key));
        action.append(button);
      }
      row.append(action);
      body.append(row);
    }
    $("no-keys").hidden = data.keys.length > 0;
    $("keys-table").hidden = !data.keys.length;
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
    let created = false;
    try {
      const data = await api("POST", "keys", {
        name: $("key-name").value, models, expires_days: expiry ? Number(expiry) : null,
      });
      $("create-form").reset();
      showNewKey(data.key, models[0] || me.models[0] || "MODEL");
      created = true;
    } catch (err) {
      showError(err.message);
    } finally {
      button.disabled = false;
      await loadKeys().catch((err) => showError(err.message));
    }
    // The disabled button lost the focus: to the new key, or back to the button after a refusal.
    if (created) focusOn($("new-key-title"));
    else if (!button.disabled) button.focus();
    else focusOn($("keys-title"));
  }

  // The new key with the shared Python example, and a curl one.
  function showNewKey(key, model) {
    newKey.show(key, model);
    $("example-curl").textContent =
      `curl ${window.gateway.v1}/chat/completions \\\n` +
      `  -H "Authorization: Bearer ${key}" \\\n` +
      `  -H "Content-Type: application/json" \\\n` +
      `  -d '{"model": "${model}", "messages": [{"role": "user", "content": "Hello"}]}'`;
    announce("Your new key is shown below its heading: copy it now, it is shown only this once.");
  }

  async function confirmRevoke(key) {
    const question =
      `Revoke the key “${key.name}” (${key.prefix}…)? Programs using it stop working at once. This cannot be undone.`;
    if (!(await confirmDialog(question))) return;
    let revoked = false;
    try {
      await api("DELETE", "keys/" + encodeURIComponent(key.id));
      revoked = true;
    } catch (err) {
      showError(err.message);
    }
    await loadKeys().catch((err) => showError(err.message));
    focusOn($("keys-title"));
    if (revoked) announce(`The key “${key.name}” is revoked.`);
  }

  // --- usage -------------------------------------------------------------------------------

  const PALETTE = ["#1d4ed8", "#047857", "#b45309", "#7e22ce", "#b91c1c", "#0e7490", "#4d7c0f", "#be185d"];

  async function loadUsage() {
    const data = await api("GET", "usage", undefined, { days: 30 });
    const models = data.by_model.map((row) => row.model);
    const series = models.map((model, i) => ({
      id: `m${i}`, name: model, color: PALETTE[i % PALETTE.length],
      pattern: window.gateway.chart.PATTERNS[i % window.gateway.chart.PATTERNS.length],
    }));
    redrawUsage = () => drawChart(data, series);
    redrawUsage();
    window.gateway.chart.legend($("legend"), series);
    for (const head of document.querySelectorAll("#view-usage .cost-head")) {
      head.textContent = me.currency ? `Cost (${me.currency})` : "Cost";
    }
    perDayTable(data);
    const body = $("totals-body");
    body.replaceChildren();
    const labels = ["Requests", "Prompt tokens", "Completion tokens", "Cost"];
    for (const row of [...data.by_model, { ...data.totals, total: true }]) {
      const tr = document.createElement("tr");
      if (row.total) tr.className = "total";
      const name = el("th", row.total ? "Total" : row.model);
      name.scope = "row";
      if (!row.total) name.dataset.label = "Model";
      tr.append(name);
      const values = [number(row.requests), number(row.prompt_tokens), number(row.completion_tokens), money(row.cost)];
      for (const [i, value] of values.entries()) {
        const td = el("td", value);
        td.dataset.label = labels[i];
        tr.append(td);
      }
      body.append(tr);
    }
    const quota = $("quota");
    quota.hidden = !data.quota;
    quota.textContent = data.quota ? data.quota.summary || "" : "";
  }

  // The days the chart spans: from the first day with usage (a week at least) to today.
  function chartDays(data) {
    const used = data.days.findIndex((d) => data.rows.some((r) => r.day === d));
    return data.days.slice(Math.max(0, Math.min(used, data.days.length - 7)));
  }

  // Every day and model with usage, newest first: the chart's numbers as text.
  function perDayTable(data) {
    const rows = [...data.rows].sort((a, b) => (a.day === b.day ? a.model.localeCompare(b.model)
      : b.day.localeCompare(a.day)));
    $("per-day").hidden = !rows.length;
    $("per-day-body").replaceChildren(...rows.map((r) => {
      const tr = document.createElement("tr");
      const dayCell = el("th", r.day, "nowrap");
      dayCell.scope = "row";
      dayCell.dataset.label = "Day";
      tr.append(dayCell);
      const cells = [["Model", r.model], ["Requests", number(r.requests)], ["Prompt tokens", number(r.prompt_tokens)],
        ["Completion tokens", number(r.completion_tokens)], ["Cost", money(r.cost)]];
      for (const [label, value] of cells) {
        const td = el("td", value);
        td.dataset.label = label;
        tr.append(td);
      }
      return tr;
    }));
  }

  // Stacked bars of prompt + completion tokens per day and model.
  function drawChart(data, series) {
    const chart = $("chart");
    if (!data.rows.length) {
      chart.replaceChildren(el("p", "No usage in the last 30 days yet.", "muted"));
      $("usage-range").textContent = "Tokens per day over the last 30 days (UTC), by model.";
      return;
    }
    const days = chartDays(data);
    const byDay = new Map(days.map((d) => [d, []]));
    for (const row of data.rows) if (byDay.has(row.day)) byDay.get(row.day).push(row);
    const id = new Map(series.map((s) => [s.name, s.id]));
    const tokens = (r) => r.prompt_tokens + r.completion_tokens;
    const range = `${days[0]} to ${days[days.length - 1]}`;
    $("usage-range").textContent = `Tokens per day (UTC), by model, ${range}.`;
    window.gateway.chart.draw(chart, {
      days,
      series,
      values: (d) => Object.fromEntries(byDay.get(d).map((r) => [id.get(r.model), tokens(r)])),
      tooltip: (d) => `${d}: ` + byDay.get(d).map((r) => `${r.model} ${number(tokens(r))} tokens, ${money(r.cost)}`)
        .join("; "),
      summary: `Bar chart of tokens per day by model, ${range}: ${number(data.totals.prompt_tokens +
        data.totals.completion_tokens)} tokens in all`,
    });
  }

  // --- start -------------------------------------------------------------------------------

  async function start() {
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
      window.history.replaceState(null, "", "#keys");
      route(true);
      announce("Terms accepted.");
    } catch (err) {
      showError(err.message);
    }
  });
  $("create-form").addEventListener("submit", createKey);
  window.gateway.wirePage();
  window.addEventListener("hashchange", () => me && route(true));
  window.addEventListener("resize", () => redrawUsage && !$("view-usage").hidden && redrawUsage());
  start();
})();
