// The operator console: a small script over the collector's JSON API
// (the session cookie authenticates it; requests that change state carry
// the page's CSRF token). No library, nothing loaded from elsewhere.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const view = document.getElementById("view");
const RANGES = [["15m", 900], ["1h", 3600], ["6h", 21600], ["24h", 86400], ["7d", 604800]];
const LEVELS = ["error", "warn", "info", "debug", "trace", ""];
let tail = null;

function el(tag, attrs, ...children) {
  const svg = ["svg", "rect", "g", "title", "text", "line"].includes(tag);
  const e = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = CSRF;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401) { location.href = "/ui/login"; throw new Error("signed out"); }
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const err = new Error((json && json.error) || text || r.statusText);
    err.body = json || {};
    throw err;
  }
  return json;
}

function hashParams() {
  const h = location.hash.slice(1);
  const i = h.indexOf("?");
  return { page: (i < 0 ? h : h.slice(0, i)) || "search", params: new URLSearchParams(i < 0 ? "" : h.slice(i + 1)) };
}

function stopTail() {
  if (tail) { tail.close(); tail = null; }
}

// ---- search ----

// The query with label="value" added to its selector.
function addMatcher(query, name, value) {
  const m = `${name}=${JSON.stringify(value)}`;
  const q = query.trim();
  if (!q.startsWith("{")) return `{${m}} ${q}`.trim();
  const end = q.indexOf("}");
  if (end < 0) return q;
  const inner = q.slice(1, end).trim();
  if (inner.includes(m)) return q;
  return `{${inner ? inner + ", " : ""}${m}}${q.slice(end + 1)}`;
}

function rangeOf(params) {
  const now = Date.now();
  const from = params.get("from"), to = params.get("to");
  if (from && to) {
    const a = Date.parse(from), b = Date.parse(to);
    if (!isNaN(a) && !isNaN(b) && a < b) return { start: a, end: b, label: "absolute" };
  }
  const r = RANGES.find(([k]) => k === params.get("range")) || RANGES[1];
  return { start: now - r[1] * 1000, end: now, label: r[0] };
}

function nanos(ms) { return String(BigInt(Math.round(ms)) * 1000000n); }

function searchLink(query, params) {
  const p = new URLSearchParams(params);
  p.set("q", query);
  return "#search?" + p.toString();
}

// One record of a result list: time and summary, labels as chips that
// add themselves to `query`, the body pretty-printed on expand.
function recordRow(rec, query, params) {
  const chips = Object.entries(rec.labels || {}).map(([k, v]) =>
    el("li", {}, el("a", { class: "chip", href: searchLink(addMatcher(query, k, v), params), title: `add ${k}="${v}" to the query` }, `${k}=${v}`)));
  const body = rec.body;
  const summary = typeof body === "object" && body !== null
    ? (body.message || (body.event_type && `${body.event_type} ${body.pipe || ""}`) || body.original_error_message || JSON.stringify(body))
    : String(body);
  const details = el("details", {},
    el("summary", {}, el("time", { datetime: rec.time }, rec.time), " ", el("span", { class: "line" }, String(summary).slice(0, 300))),
    el("ul", { class: "chips", "aria-label": "labels" }, chips),
    el("pre", { class: "body" }, JSON.stringify(body, null, 2)));
  const level = ((rec.labels && rec.labels.level) || "").toLowerCase();
  return el("li", { class: `record level-${level}` }, details);
}

function renderSearch(params) {
  const query = params.get("q") || "{}";
  const range = rangeOf(params);
  const input = el("textarea", { id: "query", name: "query", rows: 2, spellcheck: "false", "aria-describedby": "query-error" }, query);
  const rangeSel = el("select", { id: "range", name: "range" },
    RANGES.map(([k]) => el("option", { value: k, selected: range.label === k }, `last ${k}`)),
    el("option", { value: "absolute", selected: range.label === "absolute" }, "absolute"));
  const toLocal = (ms) => new Date(ms - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  const from = el("input", { id: "from", type: "datetime-local", value: toLocal(range.start) });
  const to = el("input", { id: "to", type: "datetime-local", value: toLocal(range.end) });
  const errorBox = el("div", { id: "query-error", role: "alert", class: "error", hidden: true });
  const hist = el("div", { id: "histogram", class: "histogram" });
  const stats = el("p", { id: "stats", class: "stats" });
  const results = el("ol", { id: "results", class: "results", "aria-label": "Matching records, newest first" });
  const tailBtn = el("button", { type: "button", id: "tail", "aria-pressed": "false" }, "Live tail");

  function go(q) {
    const p = new URLSearchParams();
    if (rangeSel.value === "absolute") {
      p.set("from", new Date(from.value).toISOString());
      p.set("to", new Date(to.value).toISOString());
    } else p.set("range", rangeSel.value);
    location.hash = searchLink(q, p);
  }
  const form = el("form", { id: "search-form", class: "search", onsubmit: (e) => { e.preventDefault(); go(input.value); } },
    el("label", { for: "query" }, "LogQL query"), input,
    el("div", { class: "row" },
      el("label", { for: "range" }, "Time range"), rangeSel,
      el("label", { for: "from" }, "From"), from,
      el("label", { for: "to" }, "To"), to,
      el("button", { type: "submit", id: "run" }, "Search"), tailBtn));
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); go(input.value); }
  });
  view.replaceChildren(el("h1", {}, "Search"), form, errorBox, hist, stats, results);

  function showError(err) {
    errorBox.hidden = false;
    const col = err.body && err.body.column;
    const parts = [el("p", {}, err.message)];
    if (typeof col === "number" && col >= 1) {
      const line = input.value.split("\n")[0];
      parts.push(el("pre", { class: "caret", id: "error-caret" }, line + "\n" + " ".repeat(col - 1) + "^"));
      input.focus();
      try { input.setSelectionRange(col - 1, col); } catch (_) { /* not selectable */ }
    }
    errorBox.replaceChildren(...parts);
  }

  // The histogram is asked for at the same time as the records (a query
  // error shows once, from the records' answer).
  drawHistogram(hist, query, range).catch((e) => {
    hist.replaceChildren(...(e.body && e.body.column ? [] : [el("p", { class: "muted" }, `no histogram: ${e.message}`)]));
  });
  (async () => {
    const q = new URLSearchParams({ query, start: nanos(range.start), end: nanos(range.end), limit: "1000", direction: "backward" });
    try {
      const r = await api("GET", "/api/v1/logs?" + q);
      results.replaceChildren(...r.records.map((rec) => recordRow(rec, query, params)));
      const s = r.stats || {};
      stats.textContent = `${r.records.length} records shown${s.truncated ? " (more exist: narrow the range)" : ""}; ${s.scanned_records} read in ${(s.duration_seconds * 1000).toFixed(1)} ms`;
    } catch (e) {
      showError(e);
    }
  })();

  tailBtn.addEventListener("click", () => {
    if (tail) { stopTail(); tailBtn.setAttribute("aria-pressed", "false"); tailBtn.textContent = "Live tail"; return; }
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const start = nanos(Date.now());
    tail = new WebSocket(`${proto}//${location.host}/loki/api/v1/tail?` + new URLSearchParams({ query, start, limit: "100" }));
    tailBtn.setAttribute("aria-pressed", "true");
    tailBtn.textContent = "Stop tail";
    tail.onmessage = (m) => {
      let msg;
      try { msg = JSON.parse(m.data); } catch (_) { return; }
      for (const s of msg.streams || []) {
        for (const [ts, line] of s.values || []) {
          let body = line;
          try { body = JSON.parse(line); } catch (_) { /* text line */ }
          const time = new Date(Number(BigInt(ts) / 1000000n)).toISOString();
          const r = recordRow({ time, labels: s.stream, body }, query, params);
          r.classList.add("tailed");
          results.prepend(r);
        }
      }
    };
    tail.onclose = () => { tailBtn.setAttribute("aria-pressed", "false"); tailBtn.textContent = "Live tail"; tail = null; };
  });
}

// Matching records over the range, stacked by level: the metric query
// Grafana's log-volume histogram uses.
async function drawHistogram(box, query, range) {
  const spanS = (range.end - range.start) / 1000;
  const step = Math.max(10, Math.ceil(spanS / 60 / 10) * 10);
  const metric = `sum by (level) (count_over_time(${query} [${step}s]))`;
  // Steps on the step's grid (a multiple of 10 s): the store then counts
  // from its volume index instead of reading the records.
  const stepMs = step * 1000;
  const first = Math.ceil(range.start / stepMs) * stepMs, last = Math.ceil(range.end / stepMs) * stepMs;
  const q = new URLSearchParams({ query: metric, start: nanos(first), end: nanos(last), step: `${step}s` });
  const r = await api("GET", "/loki/api/v1/query_range?" + q);
  const buckets = new Map();
  for (const s of r.data.result) {
    const level = (s.metric.level || "").toLowerCase();
    for (const [t, v] of s.values) {
      const b = buckets.get(t) || {};
      b[level] = (b[level] || 0) + Number(v);
      buckets.set(t, b);
    }
  }
  const times = [...buckets.keys()].sort((a, b) => a - b);
  const max = Math.max(1, ...times.map((t) => Object.values(buckets.get(t)).reduce((a, b) => a + b, 0)));
  const W = 600, H = 80, n = Math.max(1, Math.ceil(spanS / step));
  const bw = W / n;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `records per ${step} s by level`, id: "histogram-svg", preserveAspectRatio: "none" });
  for (const t of times) {
    const b = buckets.get(t);
    const x = Math.min(W - bw, ((t * 1000 - range.start) / (range.end - range.start)) * W - bw);
    let y = H;
    const order = [...LEVELS, ...Object.keys(b).filter((l) => !LEVELS.includes(l))];
    for (const level of order) {
      const v = b[level];
      if (!v) continue;
      const h = (v / max) * H;
      y -= h;
      svg.append(el("rect", { x: Math.max(0, x).toFixed(2), y: y.toFixed(2), width: Math.max(1, bw - 1).toFixed(2), height: h.toFixed(2), class: `bar level-${LEVELS.includes(level) && level ? level : "none"}` },
        el("title", {}, `${new Date(t * 1000).toISOString()}: ${v} ${level || "(no level)"}`)));
    }
  }
  box.replaceChildren(svg);
}

// ---- sources ----

async function renderSources() {
  view.replaceChildren(el("h1", {}, "Sources"), el("p", { class: "muted" }, "loading"));
  const r = await api("GET", "/api/v1/sources");
  const rows = r.sources.map((s) => el("tr", {},
    el("td", {}, s.subscription), el("td", {}, s.source), el("td", {}, s.last_seq),
    el("td", {}, el("time", { datetime: s.last_seen }, s.last_seen)),
    el("td", {}, s.lag_seconds === null || s.lag_seconds === undefined ? "" : Number(s.lag_seconds).toFixed(1)),
    el("td", {}, s.records)));
  view.replaceChildren(el("h1", {}, "Sources"),
    el("table", { id: "sources" },
      el("thead", {}, el("tr", {}, ["Subscription", "Source", "Last seq", "Last seen", "Lag (s)", "Records stored"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)));
}

// Run before each page is drawn (the other scripts add theirs).
const ROUTE_HOOKS = [];

function route() {
  stopTail();
  for (const hook of ROUTE_HOOKS) hook();
  const { page, params } = hashParams();
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.getAttribute("href") === `#${page}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const show = PAGES[page] || PAGES.search;
  Promise.resolve(show(params)).catch((e) => view.replaceChildren(el("p", { class: "error", role: "alert" }, e.message)));
}

// Pages by the name in the address's fragment (#name?params); the other
// console scripts add theirs before the document is loaded.
const PAGES = { search: renderSearch, sources: renderSources };

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", route);
