// The console's pages for pipes, alerts and silences, rules and
// receivers, and the notification history (loaded after console.js, whose
// helpers it uses: el, api, recordRow, searchLink, PAGES).
"use strict";

const ADMIN = document.querySelector('meta[name="subscription"]').content === "";
let flash = null;

function time(t) {
  return t ? el("time", { datetime: t, title: t }, t.replace("T", " ").replace(/\.\d+Z$/, "Z")) : "";
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  return s < 10 ? `${Number(s).toFixed(2)} s` : `${Number(s).toFixed(0)} s`;
}

function link(hash, params, text, attrs) {
  return el("a", Object.assign({ href: `#${hash}?${new URLSearchParams(params)}` }, attrs || {}), text);
}

// A message shown at the top of the page (e.g. "rule saved" and its
// warnings) until the next navigation; `carried` keeps it over one.
function tell(text, opts) {
  flash = Object.assign({ text, carried: false }, opts || {});
}

ROUTE_HOOKS.push(() => {
  if (flash && flash.carried) flash.carried = false;
  else flash = null;
});

function showFlash() {
  if (!flash) return null;
  const f = flash;
  return el("div", { class: f.warn ? "warning" : "notice", role: "status", id: "flash" },
    el("p", {}, f.text), f.items && f.items.length ? el("ul", {}, f.items.map((w) => el("li", {}, w))) : null);
}

function page(title, ...children) {
  view.replaceChildren(...[el("h1", {}, title), showFlash(), ...children.flat()].filter((c) => c !== null && c !== undefined));
}

// A page while its data loads (no message yet: it shows with the data).
function loading(title) {
  view.replaceChildren(el("h1", {}, title), el("p", { class: "muted" }, "loading"));
}

function failure(title, e) {
  page(title, el("p", { class: "error", role: "alert" }, e.message));
}

// ---- pipes ----

const STATUS_TEXT = { completed: "ok", failed: "failed", running: "running", unknown: "" };

function badge(status) {
  return el("span", { class: `badge status-${status}` }, STATUS_TEXT[status] ?? status);
}

// Recent runs, oldest left, failures marked red (each with its time and
// reason as a tooltip).
function timeline(runs, big) {
  const list = [...runs].reverse();
  const w = big ? 12 : 7, gap = 2, h = big ? 24 : 14;
  const svg = el("svg", { class: "timeline", width: Math.max(1, list.length * (w + gap)), height: h, role: "img",
    "aria-label": `${list.length} recent runs, ${list.filter((r) => r.status === "failed").length} failed` });
  list.forEach((r, i) => {
    svg.append(el("rect", { x: i * (w + gap), y: 0, width: w, height: h, class: `run run-${r.status}` },
      el("title", {}, `${r.time} ${r.status}${r.duration_seconds != null ? `, ${seconds(r.duration_seconds)}` : ""}${r.reason ? `: ${r.reason}` : ""}`)));
  });
  return svg;
}

async function renderPipes() {
  loading("Pipes");
  let r;
  try { r = await api("GET", "/api/v1/pipes?since=24h"); } catch (e) { failure("Pipes", e); return; }
  const filter = el("input", { id: "pipe-filter", type: "search", placeholder: "source or pipe", "aria-label": "Filter pipes" });
  const rows = r.pipes.map((p) => {
    const last = p.last_run || {};
    const tr = el("tr", { "data-key": `${p.source}\u0000${p.pipe}`.toLowerCase() },
      ADMIN ? el("td", {}, p.subscription) : null,
      el("td", {}, p.source),
      el("td", {}, link("pipe", { source: p.source, pipe: p.pipe, ...(ADMIN ? { subscription: p.subscription } : {}) }, p.pipe, { class: "pipe-link" })),
      el("td", {}, badge(p.status)),
      el("td", {}, time(last.time)),
      el("td", { class: "num" }, last.changes ?? ""),
      el("td", { class: "num" }, seconds(last.duration_seconds)),
      el("td", {}, timeline(p.runs, false)),
      el("td", { class: "reason" }, p.last_failure ? String(p.last_failure.reason || "failed").slice(0, 160) : ""));
    return tr;
  });
  filter.addEventListener("input", () => {
    const f = filter.value.trim().toLowerCase();
    for (const tr of rows) tr.hidden = f !== "" && !tr.dataset.key.includes(f);
  });
  const heads = [...(ADMIN ? ["Subscription"] : []), "Source", "Pipe", "Status", "Last run", "Changes", "Duration", "Recent runs", "Last failure"];
  page("Pipes",
    el("p", { class: "muted" }, `Runs of the last 24 hours (${r.stats.scanned_records} execution events read)${r.truncated ? "; more pipes exist than shown" : ""}.`),
    el("label", { for: "pipe-filter" }, "Filter "), filter,
    rows.length ? el("table", { id: "pipes" },
      el("thead", {}, el("tr", {}, heads.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)) : el("p", { id: "no-pipes" }, "No pipe ran in the last 24 hours."));
}

async function renderPipe(params) {
  const source = params.get("source") || "", pipe = params.get("pipe") || "";
  const sub = params.get("subscription");
  const narrow = ADMIN && sub ? { subscription: sub } : {};
  loading(`Pipe ${pipe}`);
  const q = `{kind="execution", source=${JSON.stringify(source)}, pipe=${JSON.stringify(pipe)}}`;
  let info, events, rules;
  try {
    [info, events, rules] = await Promise.all([
      api("GET", "/api/v1/pipes?" + new URLSearchParams({ since: "24h", source, pipe, runs: "100", ...narrow })),
      api("GET", "/api/v1/logs?" + new URLSearchParams({ query: ADMIN && sub ? q.replace("{", `{subscription=${JSON.stringify(sub)}, `) : q, since: "24h", limit: "200", direction: "backward" })),
      api("GET", "/api/v1/notification-rules?" + new URLSearchParams({ source, pipe, ...narrow })),
    ]);
  } catch (e) { failure(`Pipe ${pipe}`, e); return; }
  const p = info.pipes[0];
  const summary = p ? el("dl", { class: "facts", id: "pipe-summary" },
    el("dt", {}, "Source"), el("dd", {}, source),
    el("dt", {}, "Status"), el("dd", {}, badge(p.status), p.running_since ? [" since ", time(p.running_since)] : null),
    el("dt", {}, "Last run"), el("dd", {}, p.last_run ? [time(p.last_run.time),
      p.last_run.changes != null ? `, ${p.last_run.changes} changes` : "",
      p.last_run.duration_seconds != null ? `, ${seconds(p.last_run.duration_seconds)}` : ""] : "none in 24 h"),
    el("dt", {}, "Runs (24 h)"), el("dd", {}, `${p.runs_in_range}, ${p.failures_in_range} failed`),
    el("dt", {}, "Last failure"), el("dd", { id: "failure-reason" }, p.last_failure ? [time(p.last_failure.time), el("pre", { class: "body" }, p.last_failure.reason || "(no reason given)")] : "none in 24 h"))
    : el("p", { class: "muted" }, "No run of this pipe in the last 24 hours.");
  const runs = p ? el("table", { id: "runs" },
    el("thead", {}, el("tr", {}, ["Time", "Status", "Duration", "Changes", "Reason"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, p.runs.map((r) => el("tr", { class: `run-row-${r.status}` },
      el("td", {}, time(r.time)), el("td", {}, badge(r.status)), el("td", { class: "num" }, seconds(r.duration_seconds)),
      el("td", { class: "num" }, r.changes ?? ""), el("td", { class: "reason" }, r.reason || ""))))) : null;
  const ruleList = rules.rules.length
    ? el("ul", { id: "pipe-rules" }, rules.rules.map((r) => el("li", {}, link("rule", { id: r.id, ...(ADMIN ? { subscription: r.subscription } : {}) }, r.name), ` (${r.type}, ${r.severity})`)))
    : el("p", { id: "pipe-rules-none", class: "muted" }, "No notification rule applies to this pipe.");
  page(`Pipe ${pipe}`,
    summary,
    p ? el("h2", {}, "Recent runs") : null, p ? timeline(p.runs, true) : null, runs,
    el("h2", {}, "Notification rules"), ruleList,
    el("p", {}, link("rule-new", { source, pipe, ...(ADMIN && sub ? { subscription: sub } : {}) }, "Add rule for this pipe", { id: "add-rule", class: "button" })),
    el("h2", {}, "Execution events"),
    el("p", {}, el("a", { href: searchLink(q, { range: "24h" }) }, "Search these events")),
    el("ol", { class: "results", id: "pipe-events" }, events.records.map((rec) => recordRow(rec, q, { range: "24h" }))));
}

// ---- alerts and silences ----

const DURATIONS = [["1h", 3600], ["2h", 7200], ["4h", 14400], ["1d", 86400], ["1w", 604800]];

function silenceForm(alert, onDone) {
  const labels = Object.entries(alert.labels || {});
  const keep = new Set(["alertname", "rule_id", "pipe", "source", "subscription"]);
  const rows = labels.map(([k, v], i) => el("li", {},
    el("input", { type: "checkbox", id: `m-${i}`, "data-name": k, "data-value": v, checked: keep.has(k) }),
    el("label", { for: `m-${i}` }, `${k}="${v}"`)));
  const dur = el("select", { id: "silence-duration", name: "duration" }, DURATIONS.map(([k]) => el("option", { value: k, selected: k === "2h" }, k)));
  const comment = el("input", { id: "silence-comment", name: "comment", maxlength: 1000, value: `silenced from the console` });
  const err = el("p", { class: "error", role: "alert", hidden: true, id: "silence-error" });
  const form = el("form", { class: "card", id: "silence-form", "aria-label": "New silence" },
    el("h2", {}, "Silence this alert"),
    el("fieldset", {}, el("legend", {}, "Matchers (alerts with all of these labels)"), el("ul", { class: "plain" }, rows)),
    el("label", { for: "silence-duration" }, "For "), dur, " ",
    el("label", { for: "silence-comment" }, "Comment "), comment,
    el("div", { class: "row" }, el("button", { type: "submit", id: "silence-create" }, "Create silence"),
      el("button", { type: "button", class: "secondary", onclick: () => form.remove() }, "Cancel")),
    err);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const matchers = [...form.querySelectorAll("input[type=checkbox]:checked")].map((c) => ({ name: c.dataset.name, value: c.dataset.value }));
    const secs = DURATIONS.find(([k]) => k === dur.value)[1];
    const body = { matchers, endsAt: new Date(Date.now() + secs * 1000).toISOString(), comment: comment.value, createdBy: "console" };
    if (ADMIN) body.subscription = alert.labels.subscription;
    try {
      await api("POST", "/api/v1/silences", body);
      tell(`Silence created for ${dur.value}.`);
      onDone();
    } catch (x) { err.hidden = false; err.textContent = x.message; }
  });
  return form;
}

async function renderAlerts() {
  loading("Alerts");
  let r, s;
  try {
    [r, s] = await Promise.all([api("GET", "/api/v1/alerts"), api("GET", "/api/v1/silences")]);
  } catch (e) { failure("Alerts", e); return; }
  const slot = el("div", { id: "silence-slot" });
  const rows = r.alerts.map((a) => {
    const st = a.status || {};
    const why = st.inhibitedBy ? `inhibited: ${st.inhibitedBy.reason}`
      : (st.silencedBy && st.silencedBy.length ? `silenced by ${st.silencedBy.join(", ")}` : "");
    const state = st.state === "active" ? "firing" : (st.state || "");
    const silence = el("button", { type: "button", class: "secondary silence", "data-fingerprint": a.fingerprint || "" }, "Silence");
    silence.addEventListener("click", () => {
      slot.replaceChildren(silenceForm(a, renderAlerts));
      slot.querySelector("#silence-create").focus();
    });
    return el("tr", { "data-fingerprint": a.fingerprint || "" },
      el("td", {}, el("span", { class: `badge state-${state}` }, state), why ? el("div", { class: "muted why" }, why) : null),
      el("td", {}, (a.labels && (a.labels.alertname || a.labels.rule)) || ""),
      el("td", { class: "labels" }, Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")),
      el("td", {}, time(a.startsAt)),
      el("td", { class: "num" }, a.eventCount ?? ""),
      el("td", {}, silence));
  });
  const silences = s.silences.map((x) => {
    const expire = el("button", { type: "button", class: "secondary expire", "data-id": x.id }, "Expire");
    expire.addEventListener("click", async () => {
      try {
        await api("DELETE", `/api/v1/silences/${encodeURIComponent(x.id)}` + (ADMIN ? `?subscription=${encodeURIComponent(x.subscription)}` : ""));
        tell(`Silence ${x.id} expired.`);
        renderAlerts();
      } catch (e) { tell(e.message, { warn: true }); renderAlerts(); }
    });
    return el("tr", { "data-id": x.id },
      el("td", {}, (x.status && x.status.state) || ""),
      el("td", { class: "labels" }, x.matchers.map((m) => `${m.name}${m.isEqual === false ? "!" : ""}${m.isRegex ? "=~" : "="}"${m.value}"`).join(", ")),
      el("td", {}, time(x.startsAt)), el("td", {}, time(x.endsAt)),
      el("td", {}, x.comment), el("td", {}, expire));
  });
  page("Alerts",
    rows.length ? el("table", { id: "alerts" },
      el("thead", {}, el("tr", {}, ["State", "Alert", "Labels", "Since", "Events", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)) : el("p", { id: "no-alerts" }, "No active alerts."),
    slot,
    el("h2", {}, "Silences"),
    silences.length ? el("table", { id: "silences" },
      el("thead", {}, el("tr", {}, ["State", "Matchers", "Starts", "Ends", "Comment", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, silences)) : el("p", { id: "no-silences", class: "muted" }, "No silences."));
}

// ---- rules and receivers ----

function listInput(v) { return (v || []).join(", "); }
function parseList(s) { return s.split(",").map((x) => x.trim()).filter((x) => x !== ""); }

async function renderRules() {
  loading("Rules and receivers");
  let rules, receivers;
  try {
    [rules, receivers] = await Promise.all([api("GET", "/api/v1/notification-rules"), api("GET", "/api/v1/receivers")]);
  } catch (e) { failure("Rules and receivers", e); return; }
  const subQ = (sub) => (ADMIN ? { subscription: sub } : {});
  const del = (label, path) => {
    const b = el("button", { type: "button", class: "secondary delete" }, "Delete");
    b.addEventListener("click", async () => {
      if (!confirm(`Delete ${label}?`)) return;
      try { await api("DELETE", path); tell(`Deleted ${label}.`); } catch (e) { tell(e.message, { warn: true }); }
      renderRules();
    });
    return b;
  };
  const ruleRows = rules.rules.map((r) => el("tr", { "data-id": r.id },
    ADMIN ? el("td", {}, r.subscription) : null,
    el("td", {}, link("rule", { id: r.id, ...subQ(r.subscription) }, r.name)),
    el("td", {}, r.type), el("td", {}, r.source || "*"), el("td", {}, listInput(r.pipes)),
    el("td", {}, r.severity), el("td", {}, listInput(r.receivers)),
    el("td", {}, del(`rule ${r.name}`, `/api/v1/notification-rules/${encodeURIComponent(r.id)}${ADMIN ? `?subscription=${encodeURIComponent(r.subscription)}` : ""}`))));
  const recvRows = receivers.receivers.map((r) => el("tr", { "data-name": r.name },
    ADMIN ? el("td", {}, r.subscription) : null,
    el("td", {}, link("receiver", { name: r.name, ...subQ(r.subscription) }, r.name)),
    el("td", {}, r.type), el("td", { class: "labels" }, r.url), el("td", {}, r.send_resolved ? "yes" : "no"),
    el("td", {}, del(`receiver ${r.name}`, `/api/v1/receivers/${encodeURIComponent(r.name)}${ADMIN ? `?subscription=${encodeURIComponent(r.subscription)}` : ""}`))));
  const sc = ADMIN ? ["Subscription"] : [];
  page("Rules and receivers",
    el("p", {}, link("rule-new", {}, "New rule", { class: "button", id: "new-rule" }), " ", link("receiver-new", {}, "New receiver", { class: "button", id: "new-receiver" })),
    el("h2", {}, "Notification rules"),
    ruleRows.length ? el("table", { id: "rules" },
      el("thead", {}, el("tr", {}, [...sc, "Name", "Type", "Source", "Pipes", "Severity", "Receivers", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ruleRows)) : el("p", { class: "muted", id: "no-rules" }, "No rules yet."),
    el("h2", {}, "Receivers"),
    recvRows.length ? el("table", { id: "receivers" },
      el("thead", {}, el("tr", {}, [...sc, "Name", "Type", "URL", "Send resolved", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, recvRows)) : el("p", { class: "muted", id: "no-receivers" }, "No receivers yet."));
}

// A labelled field with a help text and a slot for its error; `name` is
// the API's field name (errors name it, e.g. "params.pattern").
function field(name, label, input, help) {
  const id = "f-" + name.replace(/[^a-z0-9_]/gi, "-");
  input.id = id;
  input.setAttribute("data-field", name);
  const errId = id + "-error", helpId = id + "-help";
  input.setAttribute("aria-describedby", `${helpId} ${errId}`);
  return el("div", { class: "field", "data-for": name },
    el("label", { for: id }, label),
    input,
    help ? el("p", { class: "help", id: helpId }, help) : null,
    el("p", { class: "field-error", id: errId, role: "alert", hidden: true }));
}

function showFieldError(form, e) {
  for (const x of form.querySelectorAll(".field-error")) { x.hidden = true; x.textContent = ""; }
  for (const x of form.querySelectorAll("[aria-invalid]")) x.removeAttribute("aria-invalid");
  const general = form.querySelector(".form-error");
  general.hidden = true;
  const name = (e.body && e.body.field) || "";
  // "pipes[1]" and "receivers[0]" are at their list's field.
  const candidates = [name, name.replace(/\[\d+\]$/, ""), name.split(".")[0]];
  for (const c of candidates) {
    const input = c && form.querySelector(`[data-field="${CSS.escape(c)}"]`);
    if (!input) continue;
    const slot = document.getElementById(input.id + "-error");
    slot.hidden = false;
    slot.textContent = e.message;
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  general.hidden = false;
  general.textContent = e.message;
}

// Resolves a "$ref" of a JSON Schema against its root.
function deref(schema, root) {
  if (schema && schema.$ref && schema.$ref.startsWith("#/$defs/")) return root.$defs[schema.$ref.slice(8)] || {};
  return schema || {};
}

// The choices of a schema made of constants, or null.
function choices(schema, root) {
  const s = deref(schema, root);
  if (Array.isArray(s.enum)) return s.enum.map((v) => [v, ""]);
  if (Array.isArray(s.oneOf)) {
    const out = [];
    for (const o of s.oneOf) {
      if ("const" in o) out.push([o.const, o.description || ""]);
      else if (Array.isArray(o.enum)) out.push(...o.enum.map((v) => [v, ""]));
      else return null;
    }
    return out;
  }
  return null;
}

// Inputs for a rule type's parameters, built from its JSON Schema; each
// input knows how to read its value back (undefined when left empty).
function paramFields(schema, values) {
  const root = schema;
  const required = new Set(schema.required || []);
  const out = [];
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    const s = deref(raw, root);
    const help = [raw.description || s.description || "", raw.default !== undefined ? `Default: ${JSON.stringify(raw.default)}.` : ""].join(" ").trim();
    const label = name + (required.has(name) ? " (required)" : "");
    const v = values[name];
    let input, read;
    const opts = choices(raw, root);
    const itemOpts = (s.type === "array") ? choices(s.items, root) : null;
    if (opts) {
      input = el("select", { name }, required.has(name) ? null : el("option", { value: "" }, "(default)"),
        opts.map(([o, d]) => el("option", { value: JSON.stringify(o), selected: JSON.stringify(v) === JSON.stringify(o), title: d }, String(o))));
      read = () => (input.value === "" ? undefined : JSON.parse(input.value));
    } else if (itemOpts) {
      const have = new Set((v || []).map((x) => JSON.stringify(x)));
      input = el("select", { name, multiple: true, size: Math.min(4, itemOpts.length) },
        itemOpts.map(([o, d]) => el("option", { value: JSON.stringify(o), selected: have.has(JSON.stringify(o)), title: d }, String(o))));
      read = () => {
        const picked = [...input.selectedOptions].map((o) => JSON.parse(o.value));
        return picked.length ? picked : undefined;
      };
    } else if (s.type === "boolean") {
      input = el("select", { name }, el("option", { value: "" }, "(default)"),
        el("option", { value: "true", selected: v === true }, "yes"), el("option", { value: "false", selected: v === false }, "no"));
      read = () => (input.value === "" ? undefined : input.value === "true");
    } else if (s.type === "number" || s.type === "integer") {
      input = el("input", { name, type: "number", step: s.type === "integer" ? "1" : "any", value: v ?? "" });
      read = () => (input.value === "" ? undefined : Number(input.value));
    } else {
      // Strings, durations ("90s", "5m", or seconds) and anything else.
      input = el("input", { name, type: "text", value: v === undefined ? "" : (typeof v === "string" ? v : JSON.stringify(v)) });
      read = () => {
        const t = input.value.trim();
        if (t === "") return undefined;
        if (s.type === "string") return t;
        const n = Number(t);
        if (!Number.isNaN(n) && /^[0-9.eE+-]+$/.test(t)) return n;
        try { return JSON.parse(t); } catch (_) { return t; }
      };
    }
    out.push({ name, node: field(`params.${name}`, label, input, help), read });
  }
  return out;
}

async function renderRuleForm(params) {
  const id = params.get("id");
  const title = id ? "Edit rule" : "New rule";
  loading(title);
  const sub = params.get("subscription") || "";
  let types, receivers, rule;
  try {
    [types, receivers, rule] = await Promise.all([
      api("GET", "/api/v1/notification-rule-types"),
      api("GET", "/api/v1/receivers"),
      id ? api("GET", `/api/v1/notification-rules/${encodeURIComponent(id)}${sub ? `?subscription=${encodeURIComponent(sub)}` : ""}`) : Promise.resolve(null),
    ]);
  } catch (e) { failure(title, e); return; }
  rule = rule || {
    name: "", description: "", type: params.get("pipe") ? "pump_failed" : types.types[0].type,
    source: params.get("source") || undefined, pipes: params.get("pipe") ? [params.get("pipe")] : ["*"],
    params: {}, severity: "warning", receivers: [], repeat_interval: "1h", subscription: sub,
  };
  const name = el("input", { name: "name", value: rule.name, maxlength: 200, required: true });
  const description = el("textarea", { name: "description", rows: 2 }, rule.description || "");
  const type = el("select", { name: "type" }, types.types.map((t) => el("option", { value: t.type, selected: t.type === rule.type }, t.type)));
  const typeHelp = el("p", { class: "help", id: "type-description" });
  const subscription = el("input", { name: "subscription", value: rule.subscription || "" });
  const source = el("input", { name: "source", value: rule.source || "", placeholder: "every source" });
  const pipes = el("input", { name: "pipes", value: listInput(rule.pipes) });
  const severity = el("select", { name: "severity" }, ["critical", "warning", "info"].map((s) => el("option", { value: s, selected: s === rule.severity }, s)));
  const mine = receivers.receivers.filter((r) => !ADMIN || !rule.subscription || r.subscription === rule.subscription);
  const recv = el("select", { name: "receivers", multiple: true, size: Math.max(2, Math.min(5, mine.length)) },
    mine.map((r) => el("option", { value: r.name, selected: (rule.receivers || []).includes(r.name) }, r.name)));
  const repeat = el("input", { name: "repeat_interval", value: rule.repeat_interval || "" });
  const paramsBox = el("fieldset", { id: "params", "data-field": "params", tabindex: "-1" });
  const paramsErr = el("p", { class: "field-error", id: "params-error", role: "alert", hidden: true });
  let inputs = [];
  const showType = (values) => {
    const t = types.types.find((x) => x.type === type.value);
    typeHelp.textContent = t ? t.description : "";
    inputs = t ? paramFields(t.params_schema, values) : [];
    paramsBox.id = "params";
    paramsBox.replaceChildren(el("legend", {}, `Parameters of ${type.value}`),
      ...(inputs.length ? inputs.map((i) => i.node) : [el("p", { class: "muted" }, "This type has no parameters.")]));
  };
  type.addEventListener("change", () => showType({}));
  showType(rule.params || {});
  const formError = el("p", { class: "error form-error", role: "alert", hidden: true });
  const form = el("form", { class: "card rule-form", id: "rule-form", "aria-label": title },
    field("name", "Name", name, "Shown in notifications (Alertmanager's alertname)."),
    field("description", "Description", description),
    field("type", "Type", type), typeHelp,
    ADMIN ? field("subscription", "Subscription", subscription, "The subscription whose records the rule watches.") : null,
    field("source", "Source", source, "Glob on the node id; empty for every source."),
    field("pipes", "Pipes", pipes, "Comma-separated globs on pipe ids (*, ?, [...]); * for every pipe."),
    field("severity", "Severity", severity),
    field("receivers", "Receivers", recv, mine.length ? "Ctrl-click to pick several." : "No receivers yet: alerts are kept but not sent."),
    field("repeat_interval", "Repeat interval", repeat, "Time before a still-firing alert notifies again, e.g. 1h."),
    paramsBox, paramsErr,
    el("div", { class: "row" }, el("button", { type: "submit", id: "rule-save" }, "Save rule"), link("rules", {}, "Cancel")),
    formError);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const p = {};
    for (const i of inputs) {
      const v = i.read();
      if (v !== undefined) p[i.name] = v;
    }
    const body = {
      id: rule.id || undefined, name: name.value, description: description.value, type: type.value,
      source: source.value.trim() || undefined, pipes: parseList(pipes.value), params: p, severity: severity.value,
      receivers: [...recv.selectedOptions].map((o) => o.value), repeat_interval: repeat.value.trim() || undefined,
    };
    if (rule.group_by) body.group_by = rule.group_by;
    if (rule.group_wait) body.group_wait = rule.group_wait;
    if (ADMIN) body.subscription = subscription.value.trim();
    try {
      const r = id
        ? await api("PUT", `/api/v1/notification-rules/${encodeURIComponent(id)}`, body)
        : await api("POST", "/api/v1/notification-rules", body);
      tell(`Rule ${r.rule.name} saved.`, { items: r.warnings, warn: (r.warnings || []).length > 0, carried: true });
      location.hash = "#rules";
    } catch (x) {
      if (x.body && x.body.field === "params") {
        paramsErr.hidden = false; paramsErr.textContent = x.message; paramsBox.focus();
      } else {
        paramsErr.hidden = true;
        showFieldError(form, x);
      }
    }
  });
  page(title, form);
  name.focus();
}

async function renderReceiverForm(params) {
  const name0 = params.get("name");
  const title = name0 ? `Receiver ${name0}` : "New receiver";
  const sub = params.get("subscription") || "";
  let r = { name: "", type: "webhook", url: "", timeout: "10s", send_resolved: true, subscription: sub };
  if (name0) {
    try { r = await api("GET", `/api/v1/receivers/${encodeURIComponent(name0)}${sub ? `?subscription=${encodeURIComponent(sub)}` : ""}`); } catch (e) { failure(title, e); return; }
    r = r.receiver || r;
  }
  const name = el("input", { name: "name", value: r.name, required: true, readonly: !!name0 });
  const type = el("select", { name: "type" }, ["webhook", "alertmanager"].map((t) => el("option", { value: t, selected: t === r.type }, t)));
  const url = el("input", { name: "url", type: "url", value: r.url, required: true });
  const secret = el("input", { name: "secret", type: "password", autocomplete: "off", placeholder: r.secret ? "(set; leave empty to keep it)" : "" });
  const timeout = el("input", { name: "timeout", value: r.timeout || "" });
  const resolved = el("select", { name: "send_resolved" }, el("option", { value: "true", selected: r.send_resolved !== false }, "yes"), el("option", { value: "false", selected: r.send_resolved === false }, "no"));
  const subscription = el("input", { name: "subscription", value: r.subscription || "" });
  const formError = el("p", { class: "error form-error", role: "alert", hidden: true });
  const form = el("form", { class: "card", id: "receiver-form", "aria-label": title },
    field("name", "Name", name, "Rules name their receivers by it."),
    ADMIN ? field("subscription", "Subscription", subscription) : null,
    field("type", "Type", type, "webhook: a JSON POST in Alertmanager's webhook format; alertmanager: its v2 API."),
    field("url", "URL", url, "http or https; the collector's egress policy applies."),
    field("secret", "Signing secret", secret, "Webhook only: signs each body (X-Signature)."),
    field("timeout", "Timeout", timeout),
    field("send_resolved", "Send resolved", resolved),
    el("div", { class: "row" }, el("button", { type: "submit", id: "receiver-save" }, "Save receiver"), link("rules", {}, "Cancel")),
    formError);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { type: type.value, url: url.value.trim(), timeout: timeout.value.trim() || undefined, send_resolved: resolved.value === "true" };
    if (secret.value) body.secret = secret.value;
    else if (r.secret) body.secret = "<set>"; // the API keeps the stored secret
    if (ADMIN) body.subscription = subscription.value.trim();
    const n = name.value.trim();
    if (!n) { showFieldError(form, { message: "a receiver needs a name", body: { field: "name" } }); return; }
    try {
      await api("PUT", `/api/v1/receivers/${encodeURIComponent(n)}`, body);
      tell(`Receiver ${n} saved.`, { carried: true });
      location.hash = "#rules";
    } catch (x) { showFieldError(form, x); }
  });
  page(title, form);
}

// ---- notifications ----

async function renderNotifications() {
  loading("Notifications");
  let r;
  try { r = await api("GET", "/api/v1/notifications?limit=200"); } catch (e) { failure("Notifications", e); return; }
  const rows = r.notifications.map((n) => {
    const l = (n.alert && n.alert.labels) || {};
    return el("tr", { class: `notification status-${n.status}` },
      el("td", {}, time(n.created_at)),
      el("td", {}, n.kind),
      el("td", {}, el("span", { class: `badge delivery-${n.status}` }, n.status)),
      el("td", { class: "num" }, n.attempts),
      el("td", {}, n.receiver),
      el("td", {}, l.alertname || n.rule_id, l.pipe ? ` (${l.pipe})` : "", (n.alerts || []).length > 1 ? ` +${n.alerts.length - 1}` : ""),
      el("td", { class: "reason" }, n.last_error || ""));
  });
  page("Notifications",
    rows.length ? el("table", { id: "notifications" },
      el("thead", {}, el("tr", {}, ["Created", "Kind", "Status", "Attempts", "Receiver", "Alert", "Last error"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)) : el("p", { id: "no-notifications", class: "muted" }, "No notifications yet."));
}

Object.assign(PAGES, {
  pipes: renderPipes,
  pipe: renderPipe,
  alerts: renderAlerts,
  rules: renderRules,
  rule: renderRuleForm,
  "rule-new": renderRuleForm,
  receiver: renderReceiverForm,
  "receiver-new": renderReceiverForm,
  notifications: renderNotifications,
});
