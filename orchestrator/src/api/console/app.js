// The eso console: hash routes over the JSON API, no framework, no build.
// Text reaches the page only through textContent (see h()); the one HTML
// inserted as markup is the server's own SVG diagram.
"use strict";

const TOKEN_KEY = "eso-token";
const REFRESH_MS = 4000;
const main = document.getElementById("main");
const notice = document.getElementById("notice");
let timer = null;
// Counts page changes: a page whose first load ends after the user left it
// must not start its refresh over the next page's.
let generation = 0;

// h("td", {class: "x"}, "text", child, ...): an element with attributes
// (on* attributes as listeners) and text or element children.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function say(text, kind) {
  notice.textContent = text;
  notice.className = kind || "";
  notice.hidden = !text;
}

// fetch with the tab's token; resolves to {status, body} (body: parsed
// JSON, or text). A 401/403 also asks for the token.
async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options);
  if (token()) opts.headers.Authorization = "Bearer " + token();
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    return { status: 0, body: { error: "cannot reach eso: " + e.message } };
  }
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json().catch(() => null) : await res.text();
  if (res.status === 401 || res.status === 403) {
    say(res.status + ": " + errorText(body) + " — enter a token above.", "error");
    document.getElementById("token").focus();
  }
  return { status: res.status, body };
}

function errorText(body) {
  if (!body) return "no answer";
  if (typeof body === "string") return body.slice(0, 300);
  const e = body.error;
  if (e && typeof e === "object") return Object.entries(e).map(([k, v]) => k + " " + [].concat(v).join(", ")).join("; ");
  return e || JSON.stringify(body).slice(0, 300);
}

const time = (t) => (t ? String(t).replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC") : "");
// The end of an id: a UUIDv7 begins with its time, alike for sagas started together.
const shortId = (id) => "…" + String(id).slice(-8);

function typing(container) {
  const a = document.activeElement;
  return a && container.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA");
}

function every(visit, fn) {
  if (visit !== generation) return;
  clearInterval(timer);
  timer = setInterval(fn, REFRESH_MS);
}

// ---- Sagas: filters, counts, a page of the list ----

const filters = {};
let pages = [null]; // cursors of the pages seen, for Previous

const FILTERS = [
  ["definition", "Definition", "select"],
  ["version", "Version", "number"],
  ["state", "State", "text"],
  ["status", "Status", "text"],
  ["terminal", "Live / finished", "terminal"],
  ["stuck_for", "Waiting longer than", "text", "e.g. 10m"],
  ["min_attempt", "Past attempt", "number"],
  ["started_after", "Started after", "datetime-local"],
  ["started_before", "Started before", "datetime-local"],
];

function query(cursor) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) {
    if (v === "" || v === undefined) continue;
    q.set(k, k.startsWith("started_") ? new Date(v).toISOString() : v);
  }
  if (cursor) q.set("after", cursor);
  return q;
}

async function sagasPage() {
  const visit = generation;
  const defs = await api("/definitions");
  const names = defs.status === 200 ? [...new Set(defs.body.definitions.map((d) => d.name))] : [];
  const states = defs.status === 200 ? [...new Set(defs.body.definitions.flatMap((d) => d.states.map((s) => s.name)))] : [];

  const field = ([key, label, kind, hint]) => {
    let input;
    if (kind === "select") {
      input = h("select", { name: key }, h("option", { value: "" }, "any"), names.map((n) => h("option", { value: n }, n)));
    } else if (kind === "terminal") {
      input = h("select", { name: key }, h("option", { value: "" }, "any"), h("option", { value: "false" }, "live"), h("option", { value: "true" }, "finished"));
    } else {
      input = h("input", { name: key, type: kind, placeholder: hint, list: key === "state" ? "known-states" : null, min: kind === "number" ? "1" : null });
    }
    input.value = filters[key] || "";
    input.id = "filter-" + key;
    return h("label", {}, label, input);
  };
  const form = h("form", { id: "filters", class: "filters", onsubmit: (e) => { e.preventDefault(); apply(); } },
    FILTERS.map(field),
    h("datalist", { id: "known-states" }, states.map((s) => h("option", { value: s }))),
    h("div", { class: "buttons" }, h("button", { type: "submit", id: "apply" }, "Apply"), h("button", { type: "button", onclick: reset }, "Clear")));
  const counts = h("section", { id: "counts", class: "counts" });
  const list = h("section", { id: "list" });
  main.replaceChildren(h("h1", {}, "Sagas"), form, counts, list);

  function apply() {
    for (const el of form.elements) if (el.name) filters[el.name] = el.value.trim();
    pages = [null];
    load();
  }
  function reset() {
    for (const k of Object.keys(filters)) delete filters[k];
    form.reset();
    pages = [null];
    load();
  }
  async function load() {
    const cursor = pages[pages.length - 1];
    const [page, tally] = await Promise.all([api("/sagas?" + query(cursor)), api("/sagas/counts?" + countQuery())]);
    renderCounts(counts, tally, form, apply);
    renderList(list, page, load);
  }
  await load();
  every(visit, () => { if (!typing(form)) load(); });
}

function countQuery() {
  const q = new URLSearchParams();
  if (filters.definition) q.set("definition", filters.definition);
  if (filters.version) q.set("version", filters.version);
  return q;
}

function renderCounts(section, tally, form, apply) {
  // Older servers have no counts route: the section stays empty.
  if (tally.status !== 200 || !tally.body || !Array.isArray(tally.body.counts)) {
    section.replaceChildren();
    return;
  }
  const pick = (state) => () => {
    form.elements.state.value = state;
    apply();
  };
  section.replaceChildren(h("h2", {}, "Per state"), h("div", { class: "chips" }, tally.body.counts.map((c) =>
    h("button", { type: "button", class: "chip" + (c.terminal ? " finished" : ""), "data-state": c.state, onclick: pick(c.state), title: c.status },
      c.definition + " v" + c.version + " · " + c.state + " ", h("b", {}, c.count)))));
}

function renderList(section, page, reload) {
  if (page.status !== 200) {
    section.replaceChildren(h("p", { class: "error" }, page.status + ": " + errorText(page.body)));
    return;
  }
  const { sagas, next } = page.body;
  const rows = sagas.map((s) => h("tr", { class: "saga-row", "data-id": s.id, tabindex: "0", onclick: () => (location.hash = "#/sagas/" + s.id), onkeydown: (e) => { if (e.key === "Enter") location.hash = "#/sagas/" + s.id; } },
    h("td", { class: "mono", title: s.id }, shortId(s.id)),
    h("td", {}, s.definition.name + " v" + s.definition.version),
    h("td", { class: "state" }, s.state),
    h("td", {}, h("span", { class: "badge " + (s.terminal ? "finished" : "live") }, s.status)),
    h("td", { class: "num" }, s.attempt === undefined || s.attempt === null ? "" : s.attempt),
    h("td", {}, time(s.created_at)),
    h("td", {}, time(s.updated_at))));
  const table = h("table", { class: "sagas" },
    h("thead", {}, h("tr", {}, ["Saga", "Definition", "State", "Status", "Attempt", "Started", "Last step"].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows));
  const back = () => { pages.pop(); reload(); };
  const forward = () => { pages.push(next); reload(); };
  section.replaceChildren(
    sagas.length ? table : h("p", { class: "muted" }, "No saga matches."),
    h("div", { class: "pager" },
      h("button", { type: "button", onclick: back, disabled: pages.length < 2 }, "Previous"),
      h("span", { class: "muted" }, "page " + pages.length + " · newest first"),
      h("button", { type: "button", id: "next-page", onclick: forward, disabled: !next }, "Next")));
}

// ---- One saga ----

async function sagaPage(id) {
  const visit = generation;
  const head = h("section", { id: "saga" });
  const diagram = h("div", { id: "diagram", class: "diagram" });
  const actions = h("section", { id: "actions" });
  const history = h("section", { id: "history" });
  main.replaceChildren(h("p", {}, h("a", { href: "#/" }, "← Sagas")), head, diagram, actions, history);
  let shownActions = "";

  async function load() {
    const [saga, events, svg] = await Promise.all([api("/sagas/" + id), api("/sagas/" + id + "/events"), api("/sagas/" + id + "/diagram.svg")]);
    if (saga.status !== 200) {
      head.replaceChildren(h("p", { class: "error" }, saga.status + ": " + errorText(saga.body)));
      return;
    }
    renderHead(head, saga.body);
    // The server's own SVG (names escaped there); anything else is shown as text.
    if (svg.status === 200 && typeof svg.body === "string" && svg.body.startsWith("<svg")) diagram.innerHTML = svg.body;
    else diagram.replaceChildren(h("p", { class: "muted" }, "No diagram: " + errorText(svg.body)));
    // Rebuilt only when they change, so a reason being typed survives a refresh.
    const key = JSON.stringify([saga.body.state, saga.body.actions]);
    if (key !== shownActions) {
      shownActions = key;
      renderActions(actions, saga.body, load);
    }
    renderHistory(history, events);
  }
  await load();
  every(visit, () => { if (!typing(actions)) load(); });
}

function renderHead(section, s) {
  const p = s.pending_command;
  const rows = [
    ["State", h("span", { id: "saga-state", class: "state" }, s.state)],
    ["Status", h("span", { class: "badge " + (s.terminal ? "finished" : "live") }, s.status)],
    ["Definition", h("a", { href: "#/definitions" }, s.definition.name + " v" + s.definition.version), h("span", { class: "muted mono" }, " " + String(s.definition.hash || "").slice(0, 12))],
    ["Started", time(s.created_at)],
    ["Last step", time(s.updated_at)],
  ];
  if (p) {
    rows.push(["Pending command", h("span", { class: "mono" }, p.subject), " · attempt " + p.attempt + " · " + String(p.phase || "").replace("_", " ")]);
    const deadline = p.deadline || s.next_deadline;
    if (deadline) rows.push(["Next deadline", time(deadline) + (p.timeout_ms ? " (timeout " + p.timeout_ms + " ms)" : "")]);
  }
  if (s.trace_url) rows.push(["Trace", h("a", { id: "trace", href: s.trace_url, target: "_blank", rel: "noopener" }, s.trace_id || "open the trace")]);
  section.replaceChildren(
    h("h1", {}, "Saga ", h("span", { class: "mono" }, s.id)),
    h("dl", { class: "facts" }, rows.map(([k, ...v]) => [h("dt", {}, k), h("dd", {}, v)])));
}

function renderActions(section, s, reload) {
  const a = s.actions;
  if (!a) {
    section.replaceChildren();
    return;
  }
  const choices = [];
  if (a.retry) choices.push(["retry", "Retry", null]);
  if (a.cancel) choices.push(["cancel", "Cancel → " + a.cancel, null]);
  for (const to of a.resume || []) choices.push(["resume", "Resume to " + to, to]);
  if (!choices.length) {
    section.replaceChildren(h("h2", {}, "Repair"), h("p", { class: "muted" }, "No repair applies in state " + s.state + "."));
    return;
  }
  const reason = h("input", { id: "reason", name: "reason", placeholder: "why (recorded in the history)", required: true, maxlength: "500" });
  const answer = h("p", { id: "action-answer", role: "status" });
  // One key per rendering of these buttons: a second click, or a request
  // sent again, is the same request and the server takes it once.
  // (getRandomValues, unlike randomUUID, works on plain http too.)
  const key = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  let buttons = [];
  const act = (action, to) => async () => {
    if (!reason.value.trim()) {
      answer.className = "error";
      answer.textContent = "Give a reason first.";
      reason.focus();
      return;
    }
    const body = { reason: reason.value.trim() };
    if (to) body.to = to;
    for (const b of buttons) b.disabled = true;
    const headers = { "Content-Type": "application/json", "Idempotency-Key": key + "-" + action + (to ? "-" + to : "") };
    const res = await api("/sagas/" + s.id + "/actions/" + action, { method: "POST", headers, body: JSON.stringify(body) });
    for (const b of buttons) b.disabled = false;
    const ok = res.status === 200 || res.status === 202;
    answer.className = ok ? "ok" : "error";
    answer.textContent = res.status + ": " + (ok ? action + (res.body && res.body.repeated ? " was already taken" : " taken") + (res.body && res.body.events ? " — " + res.body.events.join(", ") : "") : errorText(res.body));
    if (ok) reason.value = "";
    await reload();
  };
  section.replaceChildren(h("h2", {}, "Repair"),
    h("form", { class: "act", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "reason" }, "Reason"), reason,
      (buttons = choices.map(([action, label, to]) => h("button", { type: "button", class: "action", "data-action": action, "data-to": to, onclick: act(action, to) }, label)))),
    answer);
}

function operatorOf(e) {
  if (e.operator) return e.operator;
  // Servers before the `operator` field: read it off the change.
  const d = e.data || {};
  const by = d.by && typeof d.by === "object" ? d.by : d.cause && d.cause.by === "operator" ? d.cause : null;
  return by ? { action: by.action, reason: by.reason, by: by.operator, to: by.to } : null;
}

function renderHistory(section, events) {
  if (events.status !== 200 || !Array.isArray(events.body)) {
    section.replaceChildren(h("p", { class: "error" }, "History: " + errorText(events.body)));
    return;
  }
  const rows = events.body.map((e) => {
    const op = operatorOf(e);
    const attempt = e.attempt !== undefined && e.attempt !== null ? e.attempt : e.data && e.data.attempt;
    const cause = e.cause || e.causation_id;
    return h("tr", { class: "event" + (op ? " operator" : ""), "data-type": e.type },
      h("td", { class: "num" }, e.version),
      h("td", {}, time(e.recorded_at)),
      h("td", { class: "mono" }, e.type),
      h("td", { class: "mono", title: cause || "" }, cause ? shortId(cause) : ""),
      h("td", { class: "num" }, attempt === undefined ? "" : attempt),
      h("td", {}, op ? [h("b", {}, op.by || "operator"), " " + (op.action || "") + (op.to ? " → " + op.to : "") + ": ", h("q", {}, op.reason || "")] : ""));
  });
  section.replaceChildren(h("h2", {}, "History"), h("table", { class: "history" },
    h("thead", {}, h("tr", {}, ["#", "Time", "Event", "Cause", "Attempt", "Operator"].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows)));
}

// ---- Definitions ----

async function definitionsPage() {
  clearInterval(timer);
  const res = await api("/definitions");
  if (res.status !== 200) {
    main.replaceChildren(h("h1", {}, "Definitions"), h("p", { class: "error" }, res.status + ": " + errorText(res.body)));
    return;
  }
  const cards = res.body.definitions.map((d) => {
    const box = h("div", { class: "diagram" }, h("p", { class: "muted" }, "Drawing…"));
    const path = "/definitions/" + encodeURIComponent(d.name) + "/diagram.svg?version=" + d.version;
    api(path).then((svg) => {
      if (svg.status === 200 && typeof svg.body === "string" && svg.body.startsWith("<svg")) box.innerHTML = svg.body;
      else box.replaceChildren(h("p", { class: "error" }, errorText(svg.body)));
    });
    return h("article", { class: "definition", "data-definition": d.name, "data-version": d.version },
      h("h2", {}, d.name + " v" + d.version, d.latest ? h("span", { class: "badge live" }, "newest") : null),
      h("p", {}, d.description),
      h("dl", { class: "facts" }, h("dt", {}, "Hash"), h("dd", { class: "mono" }, d.hash), h("dt", {}, "Live sagas"), h("dd", {}, h("a", { href: "#/", onclick: () => { filters.definition = d.name; filters.version = String(d.version); filters.terminal = "false"; pages = [null]; } }, d.live))),
      box);
  });
  main.replaceChildren(h("h1", {}, "Definitions"), ...cards);
}

// ---- Routing and the token box ----

function route() {
  clearInterval(timer);
  generation += 1;
  const hash = location.hash || "#/";
  const saga = hash.match(/^#\/sagas\/([0-9a-fA-F-]{36})$/);
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === (hash.startsWith("#/definitions") ? "definitions" : "sagas")));
  if (saga) return sagaPage(saga[1]);
  if (hash.startsWith("#/definitions")) return definitionsPage();
  return sagasPage();
}

const tokenInput = document.getElementById("token");
tokenInput.value = token();
document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
  say("");
  route();
});
document.getElementById("token-clear").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  tokenInput.value = "";
  route();
});
window.addEventListener("hashchange", () => { say(""); route(); });
route();
