// recsys explorer: look up a user, show profile and recommendations, post an event and watch the
// recommendations change. Plain JS, no build step, no CDN. Every value from the API is inserted
// with textContent (never innerHTML): user ids, titles and attributes are untrusted input.
"use strict";

const $ = (sel) => document.querySelector(sel);
const SVG_NS = "http://www.w3.org/2000/svg";
const WAIT_FOR_ANSWER_MS = 20000;
const POLL_MS = 300;

let currentUser = null;
let currentRec = null;      // the recommendation on screen (to highlight what changed)
let items = new Map();      // item_id -> {title, categories}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function setStatus(text, isError = false) {
  const s = $("#status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

// The service may require an API key (X-API-Key); it is kept in this browser's session only.
const KEY_STORE = "recsys-api-key";

function apiKey() {
  return $("#api-key").value.trim();
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  const key = apiKey();
  if (key) init.headers["X-API-Key"] = key;
  if (method === "POST") {
    // the service takes JSON bodies only (a cross-site form cannot send this content type)
    init.headers["Content-Type"] = "application/json";
    if (body !== undefined) init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  return { status: res.status, ok: res.ok, data };
}

const userPath = (user, rest) => `/users/${encodeURIComponent(user)}/${rest}`;

function ago(ms) {
  if (!ms) return "";
  const s = Math.round((Date.now() - ms) / 1000);
  if (Math.abs(s) < 90) return `${s} s ago`;
  if (Math.abs(s) < 5400) return `${Math.round(s / 60)} min ago`;
  if (Math.abs(s) < 129600) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
}

function titleOf(row) {
  return row.title || (items.get(row.item_id) || {}).title || row.item_id;
}

// ------------------------------------------------------------------ profile

function renderKv(table, obj) {
  table.replaceChildren();
  const entries = Object.entries(obj || {});
  if (!entries.length) { table.append(el("tr", {}, el("td", { class: "dim" }, "none"))); return; }
  for (const [k, v] of entries) table.append(el("tr", {}, el("td", {}, k), el("td", {}, v ?? "")));
}

function renderInterests(container, interests) {
  // Horizontal bars in plain SVG; weights can be negative (poor ratings, "not interested"),
  // so the zero line sits where the largest negative and positive weights both fit.
  container.replaceChildren();
  const rows = Object.entries(interests || {}).sort((a, b) => b[1] - a[1]).slice(0, 14);
  if (!rows.length) { container.append(el("p", { class: "dim" }, "no interests yet")); return; }
  const width = 460, label = 150, valueW = 48, rowH = 20;
  const maxPos = Math.max(0, ...rows.map((r) => r[1]));
  const maxNeg = Math.max(0, ...rows.map((r) => -r[1]));
  const span = (maxPos + maxNeg) || 1;
  const area = width - label - valueW;
  const zero = label + area * (maxNeg / span);
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${rows.length * rowH + 4}`);
  svg.setAttribute("width", "100%");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "interest weights");
  rows.forEach(([feature, weight], i) => {
    const y = i * rowH + 2;
    const w = Math.max(1, (Math.abs(weight) / span) * area);
    const t = document.createElementNS(SVG_NS, "text");
    t.setAttribute("x", label - 6); t.setAttribute("y", y + 13); t.setAttribute("text-anchor", "end");
    t.textContent = feature.length > 24 ? feature.slice(0, 23) + "…" : feature;
    const r = document.createElementNS(SVG_NS, "rect");
    r.setAttribute("x", weight >= 0 ? zero : zero - w); r.setAttribute("y", y + 3);
    r.setAttribute("width", w); r.setAttribute("height", rowH - 6); r.setAttribute("rx", 3);
    r.setAttribute("fill", weight >= 0 ? "var(--pos)" : "var(--neg)");
    const title = document.createElementNS(SVG_NS, "title");
    title.textContent = `${feature}: ${weight.toFixed(3)}`;
    r.append(title);
    const v = document.createElementNS(SVG_NS, "text");
    v.setAttribute("class", "value"); v.setAttribute("x", width - 2); v.setAttribute("y", y + 13);
    v.setAttribute("text-anchor", "end");
    v.textContent = weight.toFixed(1);
    svg.append(t, r, v);
  });
  const axis = document.createElementNS(SVG_NS, "line");
  axis.setAttribute("x1", zero); axis.setAttribute("x2", zero); axis.setAttribute("y1", 0);
  axis.setAttribute("y2", rows.length * rowH + 4); axis.setAttribute("stroke", "#9aa3b1");
  svg.append(axis);
  container.append(svg);
}

function renderProfile(p) {
  const section = $("#profile");
  section.querySelector(".empty").hidden = !!p;
  $("#profile-body").hidden = !p;
  if (!p) return;
  $("#profile-user").textContent = p.user_id;
  $("#profile-variant").textContent = p.variant ? `variant ${p.variant}` : "";
  $("#profile-updated").textContent = `updated ${ago(p.updated_at)}`;
  const seg = $("#segments");
  seg.replaceChildren(...Object.entries(p.segments || {}).map(([k, v]) => el("span", { class: "chip" }, `${k}: ${v}`)));
  renderKv($("#attributes"), p.attributes);
  const all = (p.counters || {}).all_time || {}, recent = (p.counters || {}).recent || {};
  renderKv($("#counters"), Object.fromEntries(Object.keys(all).map((k) => [k, `${all[k]} (recent ${recent[k] || 0})`])));
  renderInterests($("#interests"), p.interests);
  const list = $("#recent-items");
  list.replaceChildren(...(p.recent_items || []).slice(0, 10).map((r) =>
    el("li", { "data-item-id": r.item_id }, el("strong", {}, titleOf(r)), " ",
       el("span", { class: "chip" }, r.event_type), " ", el("span", { class: "dim" }, ago(r.ts)))));
  if (!list.children.length) list.append(el("li", { class: "dim" }, "none"));
}

// ------------------------------------------------------------------ recommendations

function renderRecs(rec) {
  const section = $("#recs");
  section.querySelector(".empty").hidden = !!rec;
  $("#recs-body").hidden = !rec;
  if (!rec) {
    currentRec = null;
    $("#rec-list").replaceChildren(el("li", { class: "dim" }, "no recommendations yet"));
    $("#recs-trigger").textContent = $("#recs-variant").textContent = $("#recs-gone").textContent = "";
    return;
  }
  const before = new Set((currentRec && currentRec.user_id === rec.user_id) ? currentRec.items.map((i) => i.item_id) : []);
  const now = new Set(rec.items.map((i) => i.item_id));
  $("#recs-variant").textContent = `variant ${rec.variant}`;
  $("#recs-trigger").textContent = rec.request_id ? `answer to request ${rec.request_id}, ${ago(rec.generated_at)}`
    : `after event ${rec.trigger_event_id}, ${ago(rec.generated_at)}`;
  section.dataset.trigger = rec.trigger_event_id || "";
  section.dataset.request = rec.request_id || "";
  const list = $("#rec-list");
  list.replaceChildren(...rec.items.map((it) => {
    const isNew = before.size > 0 && !before.has(it.item_id);
    return el("li", { "data-item-id": it.item_id, class: isNew ? "new" : "" },
      el("div", { class: "rec-head" }, el("span", { class: "rec-title" }, titleOf(it)),
         el("span", { class: "dim small" }, it.item_id), isNew ? el("span", { class: "badge" }, "new") : "",
         el("span", { class: "score" }, it.score.toFixed(3))),
      el("div", { class: "chips reasons" }, ...it.reasons.map((r) => el("span", { class: "chip reason" }, r))));
  }));
  if (!rec.items.length) list.append(el("li", { class: "dim" }, "no recommendations"));
  const gone = [...before].filter((id) => !now.has(id));
  $("#recs-gone").textContent = gone.length ? `no longer recommended: ${gone.map((id) => titleOf({ item_id: id })).join(", ")}` : "";
  for (const it of rec.items) addOption($("#known-items"), it.item_id, titleOf(it));
  currentRec = rec;
}

function addOption(datalist, value, label) {
  if ([...datalist.options].some((o) => o.value === value)) return;
  datalist.append(el("option", { value, label: label || value }));
}

// ------------------------------------------------------------------ actions

async function lookup(user) {
  user = user.trim();
  if (!user) return;
  currentUser = user;
  currentRec = null;
  history.replaceState(null, "", `?user=${encodeURIComponent(user)}`);
  setStatus(`looking up ${user}…`);
  const [p, r] = await Promise.all([api("GET", userPath(user, "profile")), api("GET", userPath(user, "recommendations"))]);
  renderProfile(p.ok ? p.data : null);
  if (!p.ok) $("#profile .empty").textContent = `No profile for ${user} yet: the job makes one from the user's first event or attributes.`;
  renderRecs(r.ok ? r.data : null);
  if (!p.ok && !r.ok) setStatus(`${user}: ${(r.data && r.data.message) || "unknown user"} — post an event or press Refresh to get recommendations`, true);
  else setStatus(`${user}: ${p.ok ? "profile" : "no profile yet"}, ${r.ok ? `${r.data.items.length} recommendations` : "no recommendations yet"}`);
  $("#recs-body").hidden = false;
  $("#recs .empty").hidden = true;
}

async function refresh() {
  if (!currentUser) return;
  const btn = $("#refresh-btn");
  btn.disabled = true;
  setStatus("asking the job for fresh recommendations…");
  try {
    const r = await api("POST", userPath(currentUser, "recommendations:refresh"));
    if (r.ok) { renderRecs(r.data); setStatus(`fresh recommendations (request ${r.data.request_id})`); }
    else setStatus(`refresh failed: ${(r.data && r.data.message) || r.status}`, true);
  } finally { btn.disabled = false; }
}

async function waitForAnswer(eventId) {
  // The job answers every accepted event with a recommendation carrying its trigger_event_id;
  // it becomes readable at the job's next checkpoint.
  const deadline = Date.now() + WAIT_FOR_ANSWER_MS;
  while (Date.now() < deadline) {
    const r = await api("GET", userPath(currentUser, "recommendations"));
    if (r.ok && r.data.trigger_event_id === eventId) return r.data;
    await new Promise((ok) => setTimeout(ok, POLL_MS));
  }
  return null;
}

async function postEvent(ev) {
  ev.preventDefault();
  if (!currentUser) { setStatus("look up a user first", true); return; }
  const type = $("#event-type").value;
  const event = {
    event_id: `web-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
    user_id: currentUser, item_id: $("#event-item").value.trim(), event_type: type,
    ts: Date.now(), value: type === "rate" ? 5 : null, context: { source: "explorer" },
  };
  const btn = $("#event-submit");
  btn.disabled = true;
  $("#status").dataset.eventId = event.event_id;
  $("#status").dataset.phase = "posting";
  try {
    const r = await api("POST", "/events", event);
    if (!r.ok) {
      setStatus(`event rejected (${(r.data && r.data.reason) || r.status}): ${(r.data && r.data.message) || ""}`, true);
      $("#status").dataset.phase = "rejected";
      return;
    }
    setStatus(`posted ${type} of ${event.item_id} (${event.event_id}); waiting for the job's answer…`);
    const rec = await waitForAnswer(event.event_id);
    if (rec) {
      renderRecs(rec);
      setStatus(`recommendations updated after ${type} of ${titleOf({ item_id: event.item_id })}`);
      $("#status").dataset.phase = "answered";
    } else {
      setStatus("no answer from the job yet (is it running?)", true);
      $("#status").dataset.phase = "timeout";
    }
    const p = await api("GET", userPath(currentUser, "profile"));
    if (p.ok) renderProfile(p.data);
  } finally { btn.disabled = false; }
}

async function loadLists() {
  const [u, i] = await Promise.all([api("GET", "/users?limit=200"), api("GET", "/items?limit=1000")]);
  if (u.ok) for (const id of u.data.users) addOption($("#known-users"), id);
  if (i.ok) for (const it of i.data.items) { items.set(it.item_id, it); addOption($("#known-items"), it.item_id, it.title); }
}

async function health() {
  const h = await api("GET", "/healthz").catch(() => ({ ok: false, data: null }));
  const badge = $("#health");
  badge.textContent = h.ok ? `live · ${h.data.recommendations} users` : (h.data ? h.data.message : "service unreachable");
  badge.className = `health ${h.ok ? "ok" : "bad"}`;
}

$("#lookup-form").addEventListener("submit", (ev) => { ev.preventDefault(); lookup($("#user-input").value); });
$("#event-form").addEventListener("submit", postEvent);
$("#refresh-btn").addEventListener("click", refresh);
$("#api-key").value = sessionStorage.getItem(KEY_STORE) || "";
$("#api-key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORE, apiKey());
  loadLists();
});

(async () => {
  await Promise.all([loadLists(), health()]);
  setInterval(health, 5000);
  const user = new URLSearchParams(location.search).get("user");
  if (user) { $("#user-input").value = user; await lookup(user); }
})();
