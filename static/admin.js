// The admin UI: users, keys, models, usage, audit log, admin tokens. Plain JS, no build step.
// Everything the server or a person supplies goes on the page with textContent, never as HTML.
// Lists are paged, filtered and searched by the server; the filters live in the URL hash.
"use strict";

(() => {
  const { $, el, day, number, announce, showError, confirmDialog, copyText } = window.gateway;
  const api = window.gateway.api("admin/api/v1/", "admin");
  const PAGE = 50;
  const LIMITS = {
    user: ["requests_per_minute", "tokens_per_minute", "concurrent_requests", "cost_per_day", "cost_per_week",
      "tokens_per_day", "tokens_per_week"],
    model: ["requests_per_minute", "tokens_per_minute", "concurrent_requests"],
  };
  const LIMIT_LABELS = {
    requests_per_minute: "Requests per minute", tokens_per_minute: "Tokens per minute",
    concurrent_requests: "Concurrent requests", cost_per_day: "Cost per day", cost_per_week: "Cost per week",
    tokens_per_day: "Tokens per day", tokens_per_week: "Tokens per week",
  };
  const VIA_LABELS = { ui: "admin UI", api: "admin API", portal: "portal", cli: "CLI" };
  const VIEWS = ["users", "user", "keys", "key", "models", "usage", "events", "audit", "tokens"];
  const NAV_OF = { user: "users", key: "keys", model: "models" };

  let me = null;
  let models = [];
  let seq = 0;
  let redraw = null;
  const lastList = {};  // the last hash (with its filters and page) of each list, for the "back" links

  const enc = encodeURIComponent;

  // --- small helpers -----------------------------------------------------------------------

  function link(text, hash, className) {
    const a = el("a", text, className);
    a.href = hash;
    return a;
  }

  function button(text, className, onClick) {
    const b = el("button", text, className);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }

  function badge(text, kind) {
    return el("span", text, "badge " + kind);
  }

  function when(ts, never) {
    if (!ts) return never || "—";
    return new Date(ts * 1000).toISOString().slice(0, 16).replace("T", " ");
  }

  function isoDay(date) {
    return date.toISOString().slice(0, 10);
  }

  // Prices in the unit the operator names, which comes with the portal's profile.
  let currency = "";
  function money(n) {
    return window.gateway.money(n, currency);
  }

  // A button or link whose visible text is short, with the rest of its name for screen readers.
  function named(node, rest) {
    node.append(el("span", rest, "visually-hidden"));
    return node;
  }

  function count(n, one, many) {
    return `${number(n)} ${Math.round(n) === 1 ? one : many || one + "s"}`;
  }

  function limitValue(name, value) {
    if (!value) return "no limit";
    return name.startsWith("cost") ? money(value) : number(value);
  }

  function row(cells, className) {
    const tr = document.createElement("tr");
    if (className) tr.className = className;
    for (const [label, content, cls] of cells.filter(Boolean)) {
      const td = el("td", null, cls || "");
      if (label) td.dataset.label = label;
      if (content instanceof Node) td.append(content);
      else if (Array.isArray(content)) {
        // One box per cell, so that a phone's labelled cell keeps its parts together.
        const box = el("div");
        box.append(...content.filter((part) => part !== null && part !== undefined));
        td.append(box);
      }
      else if (content !== undefined && content !== null) td.textContent = String(content);
      tr.append(td);
    }
    return tr;
  }

  function facts(dl, pairs) {
    dl.replaceChildren();
    for (const [term, value] of pairs) {
      const dd = el("dd");
      if (value instanceof Node) dd.append(value);
      else if (Array.isArray(value)) dd.append(...value);
      else dd.textContent = String(value);
      dl.append(el("dt", term), dd);
    }
  }

  // An error shown in place: in the scope's .form-error box, with the field it names marked.
  // `fields` is where the named field is looked for (a filter form; by default the scope itself).
  function formError(scope, err, fields = scope) {
    const box = scope.querySelector(":scope > .form-error");
    for (const field of fields.querySelectorAll(".invalid")) {
      field.classList.remove("invalid");
      field.removeAttribute("aria-invalid");
    }
    if (!err) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    box.textContent = err.message;
    box.hidden = false;
    if (err.param) {
      const param = CSS.escape(err.param);
      const field = fields.querySelector(`[name="${param}"], [data-param="${param}"]`);
      if (field) {
        field.classList.add("invalid");
        field.setAttribute("aria-invalid", "true");
        const details = field.closest("details");
        if (details) details.open = true;
        if (typeof field.focus === "function") field.focus({ preventScroll: true });
      }
    }
    box.scrollIntoView({ block: "nearest" });
  }

  // Runs a change: the button is disabled meanwhile; a refusal is shown in `scope`.
  // A disabled button loses the focus; it gets it back when it is enabled again, unless the focus
  // has gone somewhere on purpose meanwhile (a refused field).
  async function attempt(scope, control, action) {
    formError(scope, null);
    const hadFocus = control && document.activeElement === control;
    if (control) control.disabled = true;
    try {
      return await action();
    } catch (err) {
      if (err.status !== 401) formError(scope, err);
      return undefined;
    } finally {
      if (control) control.disabled = false;
      const lost = document.activeElement === null || document.activeElement === document.body;
      if (hadFocus && lost && control.isConnected) control.focus();
    }
  }

  // --- routes: #view/arg?filters -----------------------------------------------------------

  function parseHash() {
    const raw = window.location.hash.slice(1) || "users";
    const q = raw.indexOf("?");
    const path = q < 0 ? raw : raw.slice(0, q);
    const params = Object.fromEntries(new URLSearchParams(q < 0 ? "" : raw.slice(q + 1)));
    const slash = path.indexOf("/");
    let arg = "";
    try {
      arg = slash < 0 ? "" : decodeURIComponent(path.slice(slash + 1));
    } catch (err) {
      arg = "";
    }
    return { view: slash < 0 ? path : path.slice(0, slash), arg, params };
  }

  function hashFor(view, arg, params) {
    let hash = "#" + view + (arg ? "/" + enc(arg) : "");
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null && value !== "" && !(name === "offset" && Number(value) === 0)) {
        query.set(name, value);
      }
    }
    const text = query.toString();
    return text ? hash + "?" + text : hash;
  }

  function go(view, arg, params) {
    const hash = hashFor(view, arg, params);
    if (hash === window.location.hash) route();
    else window.location.hash = hash;
  }

  function route() {
    let { view, arg, params } = parseHash();
    if (!VIEWS.includes(view) && view !== "model") view = "users";
    const section = view === "model" ? "models" : view;
    for (const name of VIEWS) $("view-" + name).hidden = name !== section;
    const nav = view === "events" ? (params.key && "keys") || (params.user && "users") || "usage" : NAV_OF[view] || view;
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.dataset.view === nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    showError("");
    if (section !== "keys") newKey.hide();
    redraw = null;
    if (view === "users" || view === "keys") lastList[view] = window.location.hash || "#" + view;
    $("user-back").href = lastList.users || "#users";
    $("key-back").href = lastList.keys || "#keys";
    const ticket = ++seq;
    const fresh = () => ticket === seq;
    const loaders = {
      users: loadUsers, user: loadUser, keys: loadKeys, key: loadKey, models: loadModels, model: loadModels,
      usage: loadUsage, events: loadEvents, audit: loadAudit, tokens: loadTokens,
    };
    const titles = { users: "Users", user: arg, keys: "Keys", key: "Key", models: "Models", model: arg,
      usage: "Usage", events: "Usage events", audit: "Audit log", tokens: "Admin tokens" };
    document.title = `${titles[view] || "Admin"} · ${$("brand").textContent} admin`;
    loaders[view](arg, params, fresh).catch((err) => {
      if (fresh() && err.status !== 401) showError(err.message);
    });
  }

  // Filter forms: filled from the hash; submitting one puts its values in the hash (back to page 1).
  function fillForm(form, params) {
    for (const field of form.elements) {
      if (field.name && field.type !== "submit") field.value = params[field.name] || "";
    }
  }

  function readForm(form) {
    const values = {};
    for (const field of form.elements) {
      if (field.name && field.type !== "submit") values[field.name] = field.value.trim();
    }
    return values;
  }

  function wireFilter(formId, view, extra) {
    const form = $(formId);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      go(view, "", { ...(extra ? extra() : {}), ...readForm(form) });
    });
    for (const select of form.querySelectorAll("select")) {
      select.addEventListener("change", () => form.requestSubmit());
    }
  }

  function offsetOf(params) {
    const offset = Number(params.offset || 0);
    return Number.isInteger(offset) && offset > 0 ? offset : 0;
  }

  function activeFilters(params, names) {
    return names.some((name) => params[name]);
  }

  // "1–50 of 300,000" with Previous / Next, each a new hash (so reload and back keep the page);
  // above the list, and again under it when the page is long.
  function pager(id, data, view, arg, params) {
    const fill = (node) => {
      node.replaceChildren();
      if (!data.total) return;
      const first = data.offset + 1;
      const last = data.offset + data.items.length;
      const count = el("span", data.items.length
        ? `${number(first)}–${number(last)} of ${number(data.total)}`
        : `nothing from ${number(first)} on; ${number(data.total)} in all`, "count");
      const prev = button("← Previous", "secondary small prev",
        () => go(view, arg, { ...params, offset: Math.max(0, data.offset - data.limit) }));
      prev.disabled = data.offset <= 0;
      const next = button("Next →", "secondary small next",
        () => go(view, arg, { ...params, offset: data.offset + data.limit }));
      next.disabled = data.offset + data.limit >= data.total;
      node.append(count, prev, next);
    };
    fill($(id));
    const bottom = $(id + "-bottom");
    if (bottom) {
      if (data.items.length > 15) fill(bottom);
      else bottom.replaceChildren();
    }
  }

  function emptyMessage(node, shown, text) {
    node.hidden = !shown;
    if (text !== undefined) node.textContent = text;
  }

  // --- models, for choices -----------------------------------------------------------------

  async function refreshModels() {
    const data = await api("GET", "models");
    models = data.items;
    const list = $("model-ids");
    list.replaceChildren(...models.map((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      return option;
    }));
    return models;
  }

  function modelChoices(box, ticked) {
    box.replaceChildren();
    const ids = models.map((m) => m.id);
    for (const id of ticked || []) if (!ids.includes(id)) ids.push(id);
    if (!ids.length) box.append(el("span", "No models yet.", "muted"));
    for (const id of ids) {
      const label = el("label", null, "check");
      const input = document.createElement("input");
      input.type = "checkbox";
      input.value = id;
      input.checked = (ticked || []).includes(id);
      label.append(input, " " + id);
      box.append(label);
    }
  }

  function tickedModels(box) {
    return [...box.querySelectorAll("input:checked")].map((input) => input.value);
  }

  // --- limit fields ------------------------------------------------------------------------

  function limitFields(box, set, values, effective) {
    box.replaceChildren();
    for (const name of LIMITS[set]) {
      const label = el("label", LIMIT_LABELS[name]);
      const input = document.createElement("input");
      input.type = "number";
      input.min = "0";
      input.step = "any";
      input.name = "limit-" + name;
      input.dataset.limit = name;
      const value = values ? values[name] : undefined;
      input.value = value === undefined || value === null ? "" : String(value);
      if (effective) {
        input.placeholder = limitValue(name, effective[name]);
        label.append(el("span", `in force: ${limitValue(name, effective[name])}`, "effective"));
      }
      label.append(input);
      box.append(label);
    }
  }

  function readLimits(box, keepZero = true) {
    const limits = {};
    for (const input of box.querySelectorAll("input[data-limit]")) {
      if (input.value.trim() === "") continue;
      const value = Number(input.value);
      if (value === 0 && !keepZero) continue;
      limits[input.dataset.limit] = value;
    }
    return limits;
  }

  // A filtered list page: fill its form from the hash, ask the server, show a refused filter
  // next to its field. Resolves to the answer, or null when it was refused or is stale.
  async function filtered(formId, params, fresh, request) {
    const form = $(formId);
    fillForm(form, params);
    const card = form.closest(".card");
    formError(card, null, form);
    try {
      const data = await request(readForm(form));
      return fresh() ? data : null;
    } catch (err) {
      if (err.param && fresh()) {
        formError(card, err, form);
        return null;
      }
      throw err;
    }
  }

  // --- users -------------------------------------------------------------------------------

  wireFilter("users-filter", "users");

  async function loadUsers(_arg, params, fresh) {
    const data = await filtered("users-filter", params, fresh,
      (filters) => api("GET", "users", undefined, { ...filters, offset: offsetOf(params), limit: PAGE }));
    if (!data) return;
    $("users-body").replaceChildren(...data.items.map((u) => row([
      ["Username", link(u.username, hashFor("user", u.username))],
      ["Name", u.display_name || "—"],
      ["Email", u.email || "—"],
      ["Role", roleBadges(u)],
      ["Status", u.disabled ? "disabled" : "active", u.disabled ? "status-disabled" : "status-active"],
      ["Last login (UTC)", when(u.last_login, "never"), "nowrap"],
    ], u.disabled ? "gone" : "")));
    pager("users-pager", data, "users", "", params);
    emptyMessage($("users-empty"), !data.items.length, activeFilters(params, ["search", "role", "status"])
      ? "No users match these filters."
      : "No users yet: people appear here after their first login, or when an admin creates a key for them.");
  }

  function roleBadges(u) {
    if (!u.admin) return el("span", "user");
    const source = { idp: "by the IdP", granted: "granted here", both: "IdP and granted" }[u.admin_source];
    return [badge("admin", "admin"), el("span", source || "", "sub")];
  }

  async function loadUser(username, params, fresh) {
    const [user] = await Promise.all([api("GET", "users/" + enc(username)), models.length ? null : refreshModels()]);
    if (!fresh()) return;
    $("user-title").textContent = user.display_name ? `${user.display_name} (${user.username})` : user.username;
    const quota = user.quota;
    facts($("user-facts"), [
      ["Username", user.username],
      ["Email", user.email || "—"],
      ["Role", roleBadges(user)],
      ["Status", user.disabled ? badge("disabled", "off") : "active"],
      ["Created (UTC)", when(user.created)],
      ["Last login (UTC)", when(user.last_login, "never")],
      ["Terms accepted", user.terms_version ? `version ${user.terms_version}` : "not yet"],
      ["Keys", user.keys ? `${number(user.keys.active)} active of ${number(user.keys.total)}` : "—"],
    ]);
    $("user-quota").hidden = !quota;
    $("user-quota").textContent = quotaText(quota);

    const self = me && user.username === me.username;
    const adminButton = $("user-admin");
    const note = $("user-admin-note");
    adminButton.disabled = false;
    note.hidden = true;
    if (user.admin_source === "idp" || user.admin_source === "both") {
      adminButton.textContent = "Remove admin role";
      adminButton.disabled = true;
      note.hidden = false;
      note.textContent = "An admin by the identity provider's admin rule: change that at the identity provider.";
    } else if (user.admin) {
      adminButton.textContent = "Remove admin role";
      adminButton.disabled = self;
    } else {
      adminButton.textContent = "Grant admin role";
    }
    adminButton.onclick = () => changeUser(user, { admin: !user.admin },
      user.admin ? `Remove the admin role of ${user.username}?` : `Make ${user.username} an admin? They can then ` +
        "manage every user, key and model.", user.admin ? "Remove admin role" : "Grant admin role", user.admin);
    const disable = $("user-disable");
    disable.textContent = user.disabled ? "Enable" : "Disable";
    disable.className = user.disabled ? "" : "danger";
    disable.disabled = self && !user.disabled;
    disable.onclick = () => changeUser(user, { disabled: !user.disabled },
      user.disabled ? `Enable ${user.username} again? Their active keys work again at once.`
        : `Disable ${user.username}? None of their keys work until they are enabled again, and they cannot log in.`,
      user.disabled ? "Enable" : "Disable", !user.disabled);
    if (self) {
      note.hidden = false;
      note.textContent = "This is you: another admin has to remove your admin role or disable you.";
    }
    formError($("user-actions-error").closest(".card"), null);

    $("user-keys-link").href = hashFor("keys", "", { user: user.username });
    $("user-new-key").href = hashFor("keys", "", { user: user.username, new: "1" });
    $("user-events-link").href = hashFor("events", "", { user: user.username });
    $("user-usage-link").href = hashFor("usage", "", { user: user.username });

    const limitsForm = $("user-limits");
    $("user-limit-fields").dataset.param = "limits";
    limitFields($("user-limit-fields"), "user", user.limits, user.effective_limits);
    formError(limitsForm, null);
    $("user-limits-saved").textContent = "";
    limitsForm.onsubmit = async (event) => {
      event.preventDefault();
      $("user-limits-saved").textContent = "";
      const done = await attempt(limitsForm, limitsForm.querySelector("button[type=submit]"),
        () => api("PATCH", "users/" + enc(user.username), { limits: readLimits($("user-limit-fields")) }));
      if (done) {
        limitFields($("user-limit-fields"), "user", done.limits, done.effective_limits);
        $("user-limits-saved").textContent = "Saved.";
      }
    };

    const keys = await api("GET", "keys", undefined, { user: user.username, offset: offsetOf(params), limit: 10 });
    if (!fresh()) return;
    $("user-keys-body").replaceChildren(...keys.items.map((k) => keyRow(k, false, () => route())));
    keys.limit = 10;
    pager("user-keys-pager", keys, "user", user.username, params);
    emptyMessage($("user-keys-empty"), !keys.items.length);
  }

  function quotaText(quota) {
    if (!quota) return "";
    if (quota.summary) return quota.summary;
    const parts = [];
    for (const [period, value] of Object.entries(quota)) {
      if (value && typeof value === "object") {
        parts.push(`${period}: ` + Object.entries(value).map(([k, v]) => `${k} ${v}`).join(", "));
      }
    }
    return parts.join("; ");
  }

  async function changeUser(user, change, question, okLabel, danger) {
    if (!(await confirmDialog(question, okLabel, danger))) return;
    const scope = $("user-actions-error").closest(".card");
    const done = await attempt(scope, null, () => api("PATCH", "users/" + enc(user.username), change));
    if (done) route();
  }

  // --- keys --------------------------------------------------------------------------------

  wireFilter("keys-filter", "keys");

  function keyRow(k, withOwner, after) {
    const cells = [["Name", link(k.name, hashFor("key", k.id)), "name"]];
    if (withOwner) cells.push(["Owner", link(k.owner, hashFor("user", k.owner))]);
    const actions = [named(link("Edit", hashFor("key", k.id), "small"), ` the key “${k.name}”`)];
    if (k.status === "active") {
      actions.push(named(button("Revoke", "danger small revoke", () => revokeKey(k, after)), ` the key “${k.name}”`));
    }
    cells.push(
      ["Key", k.prefix + "…", "mono"],
      ["Models", k.models.length ? k.models.join(", ") : "all"],
      ["Created (UTC)", day(k.created), "nowrap"],
      ["Expires", day(k.expires, "never"), "nowrap"],
      ["Last used", when(k.last_used, "never")],
      ["Status", k.status, "status-" + k.status],
      ["", actions, "actions"],
    );
    return row(cells, k.status === "active" ? "" : "gone");
  }

  async function revokeKey(k, after) {
    const ok = await confirmDialog(`Revoke the key “${k.name}” (${k.prefix}…) of ${k.owner}? Programs using it ` +
      "stop working at once. This cannot be undone.", "Revoke the key");
    if (!ok) return;
    try {
      await api("POST", "keys/" + enc(k.id) + "/revoke");
      announce(`The key “${k.name}” is revoked.`);
    } catch (err) {
      if (err.status !== 401) showError(err.message);
    }
    after();
    const heading = document.querySelector("section:not([hidden]) h1");
    if (heading) heading.focus();
  }

  async function loadKeys(_arg, params, fresh) {
    const form = $("keys-filter");
    fillForm(form, params);
    const card = form.closest(".card");
    formError(card, null, form);
    const create = $("key-create");
    if (!create.elements.user.value || params.user) create.elements.user.value = params.user || "";
    if (params.new) $("key-create-card").open = true;
    const [data] = await Promise.all([
      api("GET", "keys", undefined, { ...readForm(form), offset: offsetOf(params), limit: PAGE }).catch((err) => {
        if (err.param) {
          formError(card, err, form);
          return null;
        }
        throw err;
      }),
      refreshModels().then(() => {
        const box = create.querySelector(".model-choices");
        modelChoices(box, tickedModels(box));
      }),
    ]);
    const limitBox = create.querySelector(".limits");
    if (!limitBox.children.length) limitFields(limitBox, "user");
    if (!fresh() || !data) return;
    $("keys-body").replaceChildren(...data.items.map((k) => keyRow(k, true, () => route())));
    pager("keys-pager", data, "keys", "", params);
    emptyMessage($("keys-empty"), !data.items.length, activeFilters(params, ["user", "model", "status", "search"])
      ? "No keys match these filters." : "No keys yet.");
  }

  $("key-create").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const expiry = form.elements.expires_days.value;
    const body = {
      user: form.elements.user.value.trim(),
      name: form.elements.name.value,
      models: tickedModels(form.querySelector(".model-choices")),
      expires_days: expiry ? Number(expiry) : null,
    };
    const limits = readLimits(form.querySelector(".limits"));
    if (Object.keys(limits).length) body.limits = limits;
    const done = await attempt(form, form.querySelector("button[type=submit]"), () => api("POST", "keys", body));
    if (!done) return;
    form.elements.name.value = "";
    for (const input of form.querySelectorAll("input[type=checkbox], input[data-limit]")) {
      if (input.type === "checkbox") input.checked = false;
      else input.value = "";
    }
    $("key-create-card").open = false;
    showNewKey(done.key, done.record, body.models[0] || (models[0] && models[0].id) || "MODEL");
    go("keys", "", { user: done.record.owner });
  });

  const newKey = window.gateway.newKeyPanel(() => $("keys-title"));

  // The new key with the shared Python example, and whose it is.
  function showNewKey(key, record, model) {
    newKey.show(key, model);
    $("new-key-owner").textContent = record.owner;
    $("new-key-title").focus();
  }

  async function loadKey(id, _params, fresh) {
    const [k] = await Promise.all([api("GET", "keys/" + enc(id)), refreshModels()]);
    if (!fresh()) return;
    $("key-title").textContent = `Key “${k.name}”`;
    const limitText = Object.entries(k.limits || {}).map(([n, v]) => `${LIMIT_LABELS[n] || n}: ${limitValue(n, v)}`);
    facts($("key-facts"), [
      ["Owner", link(k.owner, hashFor("user", k.owner))],
      ["Key", el("code", k.prefix + "…")],
      ["Id", el("code", k.id)],
      ["Status", el("span", k.status, "status-" + k.status)],
      ["Models", k.models.length ? k.models.join(", ") : "all the owner may use"],
      ["Created (UTC)", when(k.created)],
      ["Expires (UTC)", when(k.expires, "never")],
      ["Last used (UTC)", when(k.last_used, "never")],
      ["Key limits", limitText.length ? limitText.join("; ") : "none (the owner's limits apply)"],
    ]);
    $("key-owner-link").href = hashFor("user", k.owner);
    $("key-owner-link").textContent = `Owner: ${k.owner}`;
    $("key-events-link").href = hashFor("events", "", { key: k.id });
    const revoke = $("key-revoke");
    revoke.hidden = k.status !== "active";
    const card = revoke.closest(".card");
    formError(card, null);
    revoke.onclick = async () => {
      const ok = await confirmDialog(`Revoke the key “${k.name}” (${k.prefix}…) of ${k.owner}? Programs using it ` +
        "stop working at once. This cannot be undone.", "Revoke the key");
      if (ok && await attempt(card, revoke, () => api("POST", "keys/" + enc(k.id) + "/revoke"))) {
        announce(`The key “${k.name}” is revoked.`);
        route();
        $("key-title").focus();
      }
    };

    const form = $("key-edit");
    formError(form, null);
    form.elements.name.value = k.name;
    modelChoices(form.querySelector(".model-choices"), k.models);
    // The expiry as it is stored, to the second: the form shows its UTC day and time, and
    // sends a new one only when either was changed (keeping the seconds of an unchanged time).
    const expiresAt = k.expires ? new Date(k.expires * 1000).toISOString() : "";
    const expiresDay = expiresAt.slice(0, 10);
    const expiresTime = expiresAt.slice(11, 16);
    form.elements.never.checked = !k.expires;
    form.elements.expires.value = expiresDay;
    form.elements.expires_time.value = expiresTime;
    const never = () => {
      form.elements.expires.disabled = form.elements.never.checked;
      form.elements.expires_time.disabled = form.elements.never.checked;
    };
    never();
    form.elements.never.onchange = never;
    limitFields(form.querySelector(".limits"), "user", k.limits);
    $("key-saved").textContent = "";
    form.onsubmit = async (event) => {
      event.preventDefault();
      $("key-saved").textContent = "";
      const changes = {};
      if (form.elements.name.value !== k.name) changes.name = form.elements.name.value;
      const ticked = tickedModels(form.querySelector(".model-choices"));
      if (ticked.join("\n") !== k.models.join("\n")) changes.models = ticked;
      if (form.elements.never.checked) {
        if (k.expires) changes.expires = null;
      } else {
        const newDay = form.elements.expires.value.trim();
        const newTime = form.elements.expires_time.value.trim() || "00:00";
        if (newDay !== expiresDay || newTime !== (expiresTime || "00:00")) {
          const at = /^\d{4}-\d{2}-\d{2}$/.test(newDay) && /^\d{2}:\d{2}$/.test(newTime)
            ? Date.parse(`${newDay}T${newTime}:00Z`) : NaN;
          if (Number.isNaN(at)) {
            formError(form, { message: "Give the day (YYYY-MM-DD) and time (HH:MM, UTC) the key expires, or tick " +
              "“never”.", param: "expires" });
            return;
          }
          const seconds = newTime === expiresTime ? k.expires % 60 : 0;
          changes.expires = at / 1000 + seconds;
        }
      }
      const limits = readLimits(form.querySelector(".limits"));
      if (JSON.stringify(limits) !== JSON.stringify(sortedLimits(k.limits))) changes.limits = limits;
      if (!Object.keys(changes).length) {
        formError(form, { message: "Nothing was changed." });
        return;
      }
      const done = await attempt(form, form.querySelector("button[type=submit]"),
        () => api("PATCH", "keys/" + enc(k.id), changes));
      if (done) {
        await loadKey(id, _params, fresh);
        $("key-saved").textContent = "Saved.";
      }
    };
  }

  function sortedLimits(limits) {
    const out = {};
    for (const name of LIMITS.user) if (limits && limits[name] !== undefined) out[name] = limits[name];
    return out;
  }

  // --- models ------------------------------------------------------------------------------

  async function loadModels(editId, _params, fresh) {
    await refreshModels();
    if (!fresh()) return;
    $("models-body").replaceChildren(...models.map(modelRow));
    emptyMessage($("models-empty"), !models.length);
    const editing = editId ? models.find((m) => m.id === editId) : null;
    if (editId && (!editing || editing.read_only || editing.source === "config")) {
      showError(editing ? `The model ${editId} comes from the configuration file: change it there.`
        : `There is no model ${editId}.`);
    }
    modelForm(editing && !editing.read_only && editing.source !== "config" ? editing : null);
    if (editing) $("model-card").scrollIntoView({ block: "start" });
  }

  function modelRow(m) {
    const fromConfig = m.source === "config" || m.read_only;
    const name = [el("span", m.id, "mono")];
    if (m.upstream_model && m.upstream_model !== m.id) name.push(el("span", `upstream name: ${m.upstream_model}`, "sub"));
    const state = [];
    state.push(m.active === false ? badge("inactive", "off") : badge("active", "on"));
    if (m.loaded === false) state.push(badge("not served here", "warn"));
    if (m.shadowed) state.push(badge("shadowed by config", "warn"));
    if (m.problem) state.push(el("span", m.problem, "sub"));
    const upstreams = (m.upstreams || []).flatMap((u, i) => {
      const line = el("span", u.url, "upstream");
      if (u.weight !== undefined && u.weight !== 1) line.append(" ", badge(`weight ${u.weight}`, "config"));
      const health = (m.upstream_health || [])[i];
      return health ? [line, upstreamHealth(health)] : [line];
    });
    const limits = Object.entries(m.limits || {}).filter(([, v]) => v)
      .map(([n, v]) => `${LIMIT_LABELS[n] || n}: ${limitValue(n, v)}`);
    if (limits.length) upstreams.push(el("span", "limits: " + limits.join("; "), "sub"));
    const actions = [];
    if (!fromConfig) {
      actions.push(named(link("Edit", hashFor("model", m.id), "small"), ` the model ${m.id}`),
        named(button("Remove", "danger small remove", () => removeModel(m)), ` the model ${m.id}`));
    }
    return row([
      ["Model", name],
      ["Source", fromConfig ? badge("from config file", "config") : badge("added here", "api")],
      ["Kind", m.kind || "chat"],
      ["Upstreams", upstreams],
      ["Price / 1k", `${money(m.prompt_cost_per_1k)} / ${money(m.completion_cost_per_1k)}`, "nowrap"],
      ["State", state],
      ["", actions, actions.length ? "actions" : "actions empty-cell"],
    ], fromConfig ? "config" : "api");
  }

  const HEALTH_BADGES = { healthy: ["healthy", "on"], ejected: ["ejected", "off"], "half-open": ["trial due", "warn"] };

  // An upstream's state on the replica that answered, under its URL: a badge, and why in words.
  function upstreamHealth(h) {
    const [label, kind] = HEALTH_BADGES[h.state] || [h.state, "warn"];
    const why = [];
    if (h.state === "ejected" && h.ejected_until) why.push(`until ${clockTime(h.ejected_until)}`);
    if (h.trial_in_flight) why.push("trial call in flight");
    if (h.consecutive_failures) why.push(count(h.consecutive_failures, "failure") + " in a row");
    if (h.failed_checks) why.push(count(h.failed_checks, "failed check") + " in a row");
    const check = h.last_check;
    if (check) {
      const seen = check.error || (check.status ? `HTTP ${check.status}` : "");
      why.push(`last check ${check.ok ? "passed" : "failed"}${seen ? ` (${seen})` : ""} at ${clockTime(check.at)}`);
    }
    const box = el("span", null, "upstream-health");
    box.append(badge(label, kind + " health"));
    if (why.length) box.append(el("span", why.join("; "), "sub"));
    return box;
  }

  function clockTime(ts) {
    return new Date(ts * 1000).toISOString().slice(11, 19) + " UTC";
  }

  async function removeModel(m) {
    const ok = await confirmDialog(`Remove the model ${m.id}? Clients asking for it get “unknown model” at once. ` +
      "Its usage history stays.", "Remove the model");
    if (!ok) return;
    try {
      await api("DELETE", "models/" + enc(m.id));
      announce(`The model ${m.id} is removed.`);
    } catch (err) {
      if (err.status !== 401) showError(err.message);
    }
    if (parseHash().view === "model") go("models");
    else route();
    $("models-title").focus();
  }

  function modelForm(m) {
    const form = $("model-form");
    formError(form, null);
    const f = form.elements;
    form.dataset.editing = m ? m.id : "";
    $("model-form-title").textContent = m ? `Change the model ${m.id}` : "Add a model";
    $("model-submit").textContent = m ? "Save changes" : "Add model";
    $("model-cancel").hidden = !m;
    f.id.readOnly = !!m;
    f.id.value = m ? m.id : "";
    f.upstreams.value = m ? (m.upstreams || []).map((u) => (u.weight && u.weight !== 1 ? `${u.url} ${u.weight}` : u.url))
      .join("\n") : "";
    f.upstream_model.value = m && m.upstream_model !== m.id ? m.upstream_model || "" : "";
    f.kind.value = m ? m.kind || "chat" : "chat";
    f.api_key_env.value = m ? m.api_key_env || "" : "";
    f.prompt_cost_per_1k.value = m ? String(m.prompt_cost_per_1k || 0) : "0";
    f.completion_cost_per_1k.value = m ? String(m.completion_cost_per_1k || 0) : "0";
    f.active.checked = m ? m.active !== false : true;
    f.usage_probe.checked = m ? m.usage_probe !== false : true;
    const limits = {};
    for (const [name, value] of Object.entries((m && m.limits) || {})) if (value) limits[name] = value;
    limitFields(form.querySelector(".limits"), "model", limits);
  }

  function parseUpstreams(text) {
    const upstreams = [];
    for (const line of text.split("\n")) {
      const parts = line.trim().split(/\s+/).filter(Boolean);
      if (!parts.length) continue;
      if (parts.length === 1) upstreams.push(parts[0]);
      else upstreams.push({ url: parts[0], weight: Number(parts[1]) });
    }
    return upstreams;
  }

  $("model-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const f = form.elements;
    const editing = form.dataset.editing;
    const body = {
      upstreams: parseUpstreams(f.upstreams.value),
      kind: f.kind.value,
      api_key_env: f.api_key_env.value.trim(),
      prompt_cost_per_1k: Number(f.prompt_cost_per_1k.value || 0),
      completion_cost_per_1k: Number(f.completion_cost_per_1k.value || 0),
      active: f.active.checked,
      usage_probe: f.usage_probe.checked,
      limits: readLimits(form.querySelector(".limits"), false),
    };
    const upstreamModel = f.upstream_model.value.trim();
    if (upstreamModel) body.upstream_model = upstreamModel;
    else if (editing) body.upstream_model = editing;
    if (!editing) body.id = f.id.value.trim();
    const doubled = body.upstreams.map((u) => (typeof u === "string" ? u : u.url)).find((u) => /\/v1\/?$/.test(u));
    if (doubled) {
      formError(form, { param: "upstreams", message: `${doubled} ends in /v1, but the gateway adds /v1/… itself ` +
        "(calls would go to /v1/v1/chat/completions): give the server's base URL without /v1." });
      return;
    }
    const done = await attempt(form, $("model-submit"), () => (editing
      ? api("PATCH", "models/" + enc(editing), body) : api("POST", "models", body)));
    if (!done) return;
    if (editing) go("models");
    else route();
  });

  // --- usage -------------------------------------------------------------------------------

  wireFilter("usage-filter", "usage");

  for (const quick of document.querySelectorAll("#view-usage [data-days]")) {
    quick.addEventListener("click", () => {
      const today = new Date();
      const since = new Date(today.getTime() - (Number(quick.dataset.days) - 1) * 86400000);
      go("usage", "", { ...readForm($("usage-filter")), since: isoDay(since), until: isoDay(today) });
    });
  }

  async function loadUsage(_arg, params, fresh) {
    const form = $("usage-filter");
    const filters = { since: params.since, until: params.until, user: params.user, model: params.model };
    const answers = await filtered("usage-filter", params, fresh, () => Promise.all([
      api("GET", "usage", undefined, { ...filters, by: "day", order: "group", limit: 500 }),
      api("GET", "usage", undefined, { ...filters, by: "model", order: "cost", limit: 20 }),
      api("GET", "usage", undefined, { ...filters, by: "user", order: "cost", limit: 10 }),
    ]));
    if (!answers) return;
    const [byDay, byModel, byUser] = answers;
    form.elements.since.value = byDay.since;
    form.elements.until.value = byDay.until;
    const who = [params.user && `user ${params.user}`, params.model && `model ${params.model}`].filter(Boolean);
    $("usage-range").textContent = `${byDay.since} to ${byDay.until} (UTC, both days included)` +
      (who.length ? `, ${who.join(", ")}` : "") + ".";
    const t = byDay.totals || {};
    const tiles = [
      ["Requests", number(t.requests)], ["Prompt tokens", number(t.prompt_tokens)],
      ["Completion tokens", number(t.completion_tokens)], ["Cost", money(t.cost)],
    ];
    if (t.estimated) tiles.push(["Estimated", count(t.estimated, "request")]);
    $("usage-totals").replaceChildren(...tiles.map(([label, value]) => {
      const tile = el("div", null, "tile");
      tile.dataset.label = label;
      tile.append(el("span", label, "label"), el("span", value, "value"));
      return tile;
    }));
    for (const by of ["day", "model", "user", "key"]) {
      $("csv-" + by).href = api.url("usage", { ...filters, since: byDay.since, until: byDay.until, by, format: "csv" })
        .href;
      $("csv-" + by).setAttribute("download", `usage-by-${by}-${byDay.since}-${byDay.until}.csv`);
    }
    for (const head of document.querySelectorAll("#view-usage .cost-head")) {
      head.textContent = currency ? `Cost (${currency})` : "Cost";
    }
    redraw = () => drawDays(byDay);
    redraw();
    perDay(byDay);
    drawModels(byModel);
    // Nobody's calls had a price: rank by tokens instead of by an all-zero cost.
    const priced = byUser.rows.some((r) => r.cost > 0);
    const top = priced || !byUser.rows.length ? byUser
      : await api("GET", "usage", undefined, { ...filters, by: "user", order: "tokens", limit: 10 });
    if (!fresh()) return;
    $("usage-users-title").textContent = priced || !byUser.rows.length ? "Top users by cost"
      : "Top users by tokens (no call in this range had a price)";
    $("usage-users-body").replaceChildren(...top.rows.map((r) => row([
      ["User", link(r.group, hashFor("user", r.group))],
      ["Requests", number(r.requests)],
      ["Prompt tokens", number(r.prompt_tokens)],
      ["Completion tokens", number(r.completion_tokens)],
      ["Cost", money(r.cost)],
    ])));
    emptyMessage($("usage-users-empty"), !top.rows.length);
  }

  // The chart's numbers as text: every day with usage, newest first.
  function perDay(report) {
    const rows = [...report.rows].sort((a, b) => String(b.group).localeCompare(String(a.group)));
    $("usage-per-day").hidden = !rows.length;
    $("usage-per-day-body").replaceChildren(...rows.map((r) => row([
      ["Day (UTC)", String(r.group), "nowrap"],
      ["Requests", number(r.requests)],
      ["Prompt tokens", number(r.prompt_tokens)],
      ["Completion tokens", number(r.completion_tokens)],
      ["Cost", money(r.cost)],
    ])));
  }

  function daysBetween(since, until) {
    const days = [];
    const end = Date.parse(until + "T00:00:00Z");
    for (let t = Date.parse(since + "T00:00:00Z"); t <= end && days.length < 500; t += 86400000) {
      days.push(isoDay(new Date(t)));
    }
    return days;
  }

  const PARTS = [
    { id: "prompt", name: "prompt tokens", color: "#1d4ed8", pattern: "hatch" },
    { id: "completion", name: "completion tokens", color: "#1d4ed8", pattern: "solid" },
  ];

  // Stacked bars of prompt (hatched) and completion (solid) tokens per day.
  function drawDays(report) {
    const chart = $("usage-day-chart");
    const note = $("usage-day-note");
    note.hidden = report.total <= report.rows.length;
    note.textContent = `Only the first ${report.rows.length} of ${report.total} days are drawn; pick a shorter range.`;
    window.gateway.chart.legend($("usage-day-legend"), PARTS);
    if (!report.rows.length) {
      chart.replaceChildren(el("p", "No usage in this range.", "empty"));
      return;
    }
    const byDay = new Map(report.rows.map((r) => [String(r.group), r]));
    const days = daysBetween(report.since, report.until);
    const t = report.totals || {};
    window.gateway.chart.draw(chart, {
      days,
      series: PARTS,
      values: (d) => {
        const r = byDay.get(d);
        return r ? { prompt: r.prompt_tokens, completion: r.completion_tokens } : {};
      },
      tooltip: (d) => {
        const r = byDay.get(d);
        return `${d}: ${number(r.prompt_tokens)} prompt + ${number(r.completion_tokens)} completion tokens, ` +
          `${count(r.requests, "request")}, cost ${money(r.cost)}`;
      },
      summary: `Bar chart of prompt and completion tokens per day, ${report.since} to ${report.until}: ` +
        `${number(t.prompt_tokens)} prompt and ${number(t.completion_tokens)} completion tokens`,
    });
  }

  // One bar per model: its share of the cost (of the tokens when nothing has a price).
  function drawModels(report) {
    const box = $("usage-models");
    box.replaceChildren();
    if (!report.rows.length) {
      box.append(el("p", "No usage in this range.", "empty"));
      return;
    }
    const byCost = report.rows.some((r) => r.cost > 0);
    const measure = (r) => (byCost ? r.cost : r.prompt_tokens + r.completion_tokens);
    const max = Math.max(...report.rows.map(measure)) || 1;
    box.append(el("p", byCost ? "Bars show cost." : "Bars show tokens (no model in this range has a price).",
      "muted"));
    for (const r of report.rows) {
      const item = el("div", null, "bar-row");
      item.dataset.model = String(r.group);
      const track = el("div", null, "bar-track");
      const fill = el("div", null, "bar-fill");
      fill.style.width = `${(100 * measure(r)) / max}%`;
      track.append(fill);
      item.append(el("span", r.group, "bar-name"), track,
        el("span", `${count(r.requests, "request")} · ${number(r.prompt_tokens)} + ${number(r.completion_tokens)} ` +
          `tokens · cost ${money(r.cost)}${r.estimated ? ` · ${number(r.estimated)} estimated` : ""}`, "bar-figures"));
      box.append(item);
    }
    if (report.total > report.rows.length) {
      box.append(el("p", `and ${count(report.total - report.rows.length, "more model")} with less use.`, "muted"));
    }
  }

  // --- raw usage events --------------------------------------------------------------------

  wireFilter("events-filter", "events", () => {
    const { params } = parseHash();
    return params.key ? { key: params.key } : { user: params.user };
  });

  async function loadEvents(_arg, params, fresh) {
    const form = $("events-filter");
    fillForm(form, params);
    const card = form.closest(".card");
    formError(card, null, form);
    const subject = params.key ? { key: params.key } : { user: params.user };
    $("events-title").textContent = params.key ? `Usage events of the key ${params.key}`
      : params.user ? `Usage events of ${params.user}` : "Usage events of everyone";
    $("events-back").closest(".back").hidden = !params.key && !params.user;
    $("events-back").href = params.key ? hashFor("key", params.key) : hashFor("user", params.user || "");
    $("events-back").textContent = params.key ? "← The key" : `← ${params.user}`;
    let data;
    try {
      data = await api("GET", "usage/events", undefined,
        { ...subject, since: params.since, until: params.until, offset: offsetOf(params), limit: PAGE });
    } catch (err) {
      if (fresh()) {
        $("events-body").replaceChildren();
        $("events-pager").replaceChildren();
        $("events-pager-bottom").replaceChildren();
        formError(card, err, form);
        if (!err.param) throw err;
      }
      return;
    }
    if (!fresh()) return;
    // The columns that would repeat the page's subject on every line are left out.
    const showUser = !params.key && !params.user;
    const showKey = !params.key;
    $("events-user-head").hidden = !showUser;
    $("events-key-head").hidden = !showKey;
    $("events-body").replaceChildren(...data.items.map((e) => {
      const flags = [e.streamed ? "streamed" : "", e.estimated ? "estimated" : ""].filter(Boolean).join(", ");
      return row([
        ["Time (UTC)", when(e.ts).concat(e.ts ? ":" + new Date(e.ts * 1000).toISOString().slice(17, 19) : ""),
          "nowrap time"],
        showUser ? ["User", link(e.user, hashFor("user", e.user))] : null,
        showKey ? ["Key", e.key_id ? link(e.key_id, hashFor("key", e.key_id)) : "—", "mono"] : null,
        ["Model", e.model, "nowrap"],
        ["Endpoint", e.endpoint || "—"],
        ["Tokens", [el("span", `${number(e.prompt_tokens)} + ${number(e.completion_tokens)}`),
          el("span", flags, "sub")]],
        ["Cost", money(e.cost)],
        ["Status", String(e.status)],
        ["Latency", e.latency_ms !== undefined && e.latency_ms !== null ? `${number(e.latency_ms)} ms` : "—", "nowrap"],
      ]);
    }));
    pager("events-pager", data, "events", "", params);
    emptyMessage($("events-empty"), !data.items.length);
  }

  // --- audit log ---------------------------------------------------------------------------

  wireFilter("audit-filter", "audit");

  function auditTarget(entry) {
    const kind = entry.action.split(".")[0];
    if (!entry.target) return "—";
    if (kind === "key") return link(entry.target, hashFor("key", entry.target));
    if (kind === "user") return link(entry.target, hashFor("user", entry.target));
    return entry.target;
  }

  const TIME_FIELDS = ["expires", "created", "last_used", "ts", "until", "since"];

  // An audit entry's details for people: times as UTC dates, empty values as "none", no JSON.
  function detailValue(name, value) {
    if ((value === null || value === 0) && name === "expires") return "never";
    if (value === null || value === undefined || value === "") return "none";
    if (TIME_FIELDS.includes(name) && typeof value === "number") return when(value) + " UTC";
    if (Array.isArray(value)) return value.length ? value.map((v) => detailValue("", v)).join(", ") : "none";
    if (typeof value === "object") return Object.keys(value).length ? `{${detailText(value)}}` : "none";
    return String(value);
  }

  function detailText(details) {
    return Object.entries(details).map(([name, value]) => `${name}: ${detailValue(name, value)}`).join("; ");
  }

  async function loadAudit(_arg, params, fresh) {
    const data = await filtered("audit-filter", params, fresh,
      (filters) => api("GET", "audit", undefined, { ...filters, offset: offsetOf(params), limit: PAGE }));
    if (!data) return;
    $("audit-body").replaceChildren(...data.items.map((entry) => {
      const details = detailText(entry.details || {});
      return row([
        ["Time (UTC)", when(entry.ts), "nowrap"],
        ["Actor", [el("span", entry.actor), el("span", entry.source || "", "sub")]],
        ["Through", VIA_LABELS[entry.via] || entry.via, "nowrap"],
        ["Action", entry.action, "mono"],
        ["Target", auditTarget(entry), "mono"],
        ["Details", details ? el("code", details) : "—", "details"],
      ]);
    }));
    pager("audit-pager", data, "audit", "", params);
    emptyMessage($("audit-empty"), !data.items.length,
      activeFilters(params, ["actor", "action", "target", "via", "since", "until"])
        ? "No entries match these filters." : "The audit log is empty.");
  }

  // --- admin tokens ------------------------------------------------------------------------

  async function loadTokens(_arg, _params, fresh) {
    const data = await api("GET", "tokens");
    if (!fresh()) return;
    $("tokens-body").replaceChildren(...data.items.map((t) => row([
      ["Name", t.name],
      ["Token", t.prefix + "…", "mono"],
      ["Created by", t.created_by, "mono"],
      ["Created (UTC)", when(t.created), "nowrap"],
      ["Expires", when(t.expires, "never"), "nowrap"],
      ["Last used", when(t.last_used, "never"), "nowrap"],
      ["Status", t.status, "status-" + t.status],
      ["", t.status === "active"
        ? named(button("Revoke", "danger small revoke", () => revokeToken(t)), ` the admin token “${t.name}”`) : null,
        t.status === "active" ? "actions" : "actions empty-cell"],
    ], t.status === "active" ? "" : "gone")));
    emptyMessage($("tokens-empty"), !data.items.length);
  }

  async function revokeToken(t) {
    const ok = await confirmDialog(`Revoke the admin token “${t.name}” (${t.prefix}…)? Scripts using it are ` +
      "refused at once.", "Revoke the token");
    if (!ok) return;
    try {
      await api("POST", "tokens/" + enc(t.id) + "/revoke");
      announce(`The admin token “${t.name}” is revoked.`);
    } catch (err) {
      if (err.status !== 401) showError(err.message);
    }
    route();
    $("tokens-title").focus();
  }

  $("token-create").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const done = await attempt(form, form.querySelector("button[type=submit]"), () => api("POST", "tokens", {
      name: form.elements.name.value, expires_days: Number(form.elements.expires_days.value),
    }));
    if (!done) return;
    form.elements.name.value = "";
    $("new-token-value").textContent = done.token;
    $("example-token").textContent =
      `curl -H "Authorization: Bearer ${done.token}" ${api.url("users").href}`;
    $("token-copied").textContent = "";
    $("new-token").hidden = false;
    $("new-token-title").focus();
    route();
  });
  $("copy-token").addEventListener("click", () => copyText($("new-token-value"), $("token-copied")));
  $("new-token-done").addEventListener("click", () => {
    $("new-token").hidden = true;
    $("new-token-value").textContent = "";
    $("example-token").textContent = "";
    $("token-copied").textContent = "";
    $("tokens-title").focus();
  });
  window.gateway.wirePage();

  // --- start -------------------------------------------------------------------------------

  // The portal's profile of the same person: the site's title, their display name, and whether
  // the development login is on (then every page says so, as the portal's pages do).
  async function portalProfile() {
    try {
      const response = await fetch(new URL("portal/api/me", window.gateway.base), { credentials: "same-origin" });
      return response.ok ? await response.json() : null;
    } catch (err) {
      return null;
    }
  }

  async function start() {
    let profile;
    try {
      [me, profile] = await Promise.all([api("GET", "me"), portalProfile()]);
    } catch (err) {
      $("loading").hidden = true;
      if (err.status !== 401) showError(err.message);
      return;
    }
    me.username = me.username || me.actor;
    $("loading").hidden = true;
    $("who").textContent = (profile && profile.display_name) || me.username;
    $("who").title = me.username;
    if (profile) {
      $("dev-banner").hidden = !profile.dev_login;
      if (profile.title) $("brand").textContent = profile.title;
      currency = profile.currency || "";
    }
    route();
  }

  window.addEventListener("hashchange", () => me && route());
  window.addEventListener("resize", () => redraw && redraw());
  start();
})();
