// sound-monitor's page: live view, history, an event, corrections. No framework, no
// network beyond this device: everything it loads comes from the monitor itself.
"use strict";

const COLORS = ["#3a7bd5", "#d9534f", "#5cb85c", "#f0ad4e", "#8e44ad", "#16a085", "#c0392b", "#7f8c8d"];
const S = { csrf: null, state: null, live: null, scores: {}, rules: null, view: null, token: 0 };

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) el.append(kid.nodeType ? kid : String(kid));
  return el;
}
function svg(tag, attrs, ...kids) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const kid of kids.flat()) if (kid) el.append(kid.nodeType ? kid : String(kid));
  return el;
}
const main = () => document.getElementById("main");
const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const enc = encodeURIComponent;

async function api(path, opts) {
  const o = Object.assign({ headers: {} }, opts || {});
  if (o.body !== undefined) {
    o.method = o.method || "POST";
    o.headers["Content-Type"] = "application/json";
    o.headers["X-CSRF-Token"] = S.csrf || "";
    o.body = JSON.stringify(o.body);
  }
  const r = await fetch(path, o);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (r.status === 401) { showLogin(); throw new Error("log in first"); }
  if (!r.ok) throw new Error((data && data.error) || r.statusText);
  return data;
}

// -- login ---------------------------------------------------------------------------
function showLogin(message) {
  const msg = h("p", { class: "msg err", id: "login-msg", text: message || "" });
  const pw = h("input", { type: "password", id: "password", autocomplete: "current-password", autofocus: true });
  const form = h("form", { class: "card", id: "login" },
    h("p", { text: "This page shows what the house sounds like: enter the monitor's web password." }),
    pw, " ", h("button", { class: "primary", type: "submit", text: "Log in" }), msg);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ password: pw.value }) });
    if (r.ok) { await start(); route(); }
    else { const d = await r.json().catch(() => ({})); msg.textContent = d.error || "login failed"; }
  });
  main().replaceChildren(form);
}

// -- live updates ----------------------------------------------------------------------
function connect() {
  if (S.live) S.live.close();
  const es = new EventSource("/api/live");
  S.live = es;
  const conn = document.getElementById("conn");
  es.onopen = () => { conn.textContent = "live"; };
  es.onerror = () => { conn.textContent = "reconnecting…"; };
  es.onmessage = (m) => {
    const d = JSON.parse(m.data);
    d.received = Date.now();
    S.scores[d.source || ""] = d;
    if (S.view === "live") updateLive();
  };
  es.addEventListener("rules", (m) => { S.rules = JSON.parse(m.data); if (S.view === "live" && isLive()) showRules(); });
  es.addEventListener("status", (m) => { S.state.status = JSON.parse(m.data); if (S.view === "live") updateStatus(); });
  es.addEventListener("event", (m) => {
    const ev = JSON.parse(m.data);
    const open = S.state.open_events.filter((e) => e.event_id !== ev.event_id);
    if (ev.type === "start") open.push(ev);
    S.state.open_events = open;
    if (S.view === "live") updateOpen();
  });
}

// -- the live view ---------------------------------------------------------------------
function best(label) {
  // the highest score of ``label`` over the sources' latest windows, with its held reason
  let top = null;
  for (const d of Object.values(S.scores)) {
    const v = d.scores ? d.scores[label] : null;
    if (v === null || v === undefined) continue;
    if (!top || v > top.score) top = { score: v, held: (d.held || {})[label] || "", source: d.source };
  }
  return top;
}

function renderLive() {
  S.view = "live";
  S.token++;
  const info = S.state.info;
  const rules = S.rules || { labels: [], device_enabled: true };
  S.drawn = rules.labels.map((l) => l.name).join("\n");
  const pause = h("button", { id: "pause", class: rules.device_enabled ? "" : "danger",
    text: rules.device_enabled ? "Pause detection" : "Paused: resume",
    onclick: () => post("/api/device/enabled", { on: !(S.rules || rules).device_enabled }) });
  const head = h("div", { class: "card" },
    h("div", {}, h("b", { text: info.model }), info.encoder ? ` · ${info.encoder}` : "",
      info.gate_dbfs !== null ? ` · level gate ${info.gate_dbfs} dBFS` : "",
      info.change_gate ? " · change gate on" : "", " · device ", h("code", { text: info.device })),
    h("div", { id: "sources" }), h("p", {}, pause), h("div", { id: "msg", class: "msg" }));
  const bars = h("div", { class: "card", id: "bars" }, h("h2", { text: "Hearing now" }),
    ...rules.labels.map((l) => h("div", { class: "row", "data-label": l.name },
      h("span", { text: l.name, class: l.active ? "" : "muted" }),
      h("div", { class: "bar" }, h("div", { class: "fill" }), h("div", { class: "mark" })),
      h("span", { class: "value", text: "–" }),
      h("span", { class: "held" }))));
  const open = h("div", { class: "card" }, h("h2", { text: "Open events" }), h("div", { id: "open" }));
  const tune = h("div", { class: "card", id: "tuning" }, h("h2", { text: "Tuning" }),
    h("p", { class: "muted", text: "Thresholds and switches go through the same control as Home Assistant and are kept across restarts." }),
    ...rules.labels.map(tuneRow));
  main().replaceChildren(head, bars, open, tune);
  updateLive(); updateStatus(); updateOpen();
}

function tuneRow(l) {
  const out = h("span", { class: "tv", text: l.threshold.toFixed(2) });
  const slider = h("input", { type: "range", min: "0", max: "1", step: "0.01", value: String(l.threshold),
    "aria-label": `threshold of ${l.name}`, "data-label": l.name });
  slider.addEventListener("input", () => { out.textContent = Number(slider.value).toFixed(2); });
  slider.addEventListener("change", () => post(`/api/labels/${enc(l.name)}/threshold`, { value: Number(slider.value) }));
  const sw = h("input", { type: "checkbox", checked: l.enabled, "aria-label": `${l.name} on`, "data-label": l.name });
  sw.addEventListener("change", () => post(`/api/labels/${enc(l.name)}/enabled`, { on: sw.checked }));
  const hint = h("span", { class: "muted" });
  const suggest = h("button", { text: "Suggest", onclick: async () => {
    const s = await api(`/api/suggest/${enc(l.name)}`);
    hint.replaceChildren();
    if (s.threshold === null) { hint.textContent = s.why; return; }
    hint.append(`${s.threshold.toFixed(2)} (≈${s.would_fire_per_day}/day over ${s.hours} h) `,
      h("button", { text: "Apply", onclick: () => post(`/api/labels/${enc(l.name)}/threshold`, { value: s.threshold }) }));
  } });
  return h("div", { class: "tune" }, h("label", {}, sw, " ", l.name), slider, out, suggest, hint);
}

function updateLive() {
  const rules = S.rules || { labels: [] };
  for (const l of rules.labels) {
    const row = document.querySelector(`#bars .row[data-label="${CSS.escape(l.name)}"]`);
    if (!row) continue;
    const b = best(l.name);
    const v = b ? b.score : 0;
    const fill = row.querySelector(".fill");
    fill.style.width = `${Math.round(v * 100)}%`;
    fill.classList.toggle("over", v >= l.threshold);
    row.querySelector(".mark").style.left = `${l.threshold * 100}%`;
    row.querySelector(".value").textContent = b ? v.toFixed(2) : "–";
    row.querySelector(".held").textContent = b && b.held ? `held: ${b.held}` : (l.active ? "" : l.off_reason);
  }
  updateStatus();
}

function updateStatus() {
  const el = document.getElementById("sources");
  if (!el) return;
  const st = (S.state.status && S.state.status.sources) || [];
  const names = new Set([...st.map((s) => s.name), ...Object.keys(S.scores)]);
  el.replaceChildren(...[...names].map((name) => {
    const s = st.find((x) => x.name === name) || {};
    const d = S.scores[name];
    const level = d ? d.level_dbfs : s.level_dbfs;
    const m = h("div", { class: "meter", title: "input level" }, h("div", { class: "fill" }));
    m.firstChild.style.width = `${Math.max(0, Math.min(100, ((level ?? -90) + 90) / 90 * 100))}%`;
    return h("div", {}, h("span", { text: `${name}: ${s.status || "running"}${s.detail ? ` (${s.detail})` : ""}` }),
      " · ", h("span", { text: level !== undefined ? `${level.toFixed(1)} dBFS` : "" }), m);
  }));
}

function updateOpen() {
  const el = document.getElementById("open");
  if (!el) return;
  const open = S.state.open_events || [];
  el.replaceChildren(open.length ? h("ul", {}, ...open.map((e) =>
    h("li", {}, h("span", { class: "on", text: e.label }), ` since ${fmtTime(e.start_time || e.wall_time)} (${e.source})`)))
    : h("p", { class: "muted", text: "none" }));
}

async function post(path, body) {
  const msg = document.getElementById("msg");
  try {
    await api(path, { body });
    if (msg) { msg.className = "msg"; msg.textContent = "done"; }
  } catch (e) {
    if (msg) { msg.className = "msg err"; msg.textContent = e.message; }
  }
  S.rules = await api("/api/labels");
  if (S.view === "live" && isLive()) showRules();  // the page may have moved on meanwhile
}

function showRules() {
  // the rules changed: the same labels are updated in place (a hint or a focus stays),
  // another set of labels draws the view again
  const rules = S.rules || { labels: [], device_enabled: true };
  if (rules.labels.map((l) => l.name).join("\n") !== S.drawn) { renderLive(); return; }
  const pause = document.getElementById("pause");
  pause.textContent = rules.device_enabled ? "Pause detection" : "Paused: resume";
  pause.className = rules.device_enabled ? "" : "danger";
  for (const l of rules.labels) {
    const slider = document.querySelector(`#tuning input[type=range][data-label="${CSS.escape(l.name)}"]`);
    if (slider && document.activeElement !== slider) {
      slider.value = String(l.threshold);
      slider.parentElement.querySelector(".tv").textContent = l.threshold.toFixed(2);
    }
    const sw = document.querySelector(`#tuning input[type=checkbox][data-label="${CSS.escape(l.name)}"]`);
    if (sw) sw.checked = l.enabled;
    const name = document.querySelector(`#bars .row[data-label="${CSS.escape(l.name)}"] > span`);
    if (name) name.className = l.active ? "" : "muted";
  }
  updateLive();
}

const isLive = () => !location.hash || location.hash.startsWith("#/live");

// -- history ---------------------------------------------------------------------------
async function renderHistory(params) {
  S.view = "history";
  const token = ++S.token;
  const q = new URLSearchParams(params);
  const rules = S.rules || { labels: [] };
  const labelSel = h("select", { id: "f-label" }, h("option", { value: "", text: "every label" }),
    ...rules.labels.map((l) => h("option", { value: l.name, text: l.name, selected: q.get("label") === l.name })));
  const sources = S.state.info.sources || [];
  const sourceSel = h("select", { id: "f-source" }, h("option", { value: "", text: "every source" }),
    ...sources.map((s) => h("option", { value: s, text: s, selected: q.get("source") === s })));
  const day = h("input", { type: "date", id: "f-day", value: q.get("day") || "" });
  const apply = () => {
    const p = new URLSearchParams();
    if (labelSel.value) p.set("label", labelSel.value);
    if (sourceSel.value) p.set("source", sourceSel.value);
    if (day.value) p.set("day", day.value);
    location.hash = `#/history?${p}`;
  };
  for (const el of [labelSel, sourceSel, day]) el.addEventListener("change", apply);
  const query = new URLSearchParams(q);
  if (!q.get("day")) query.set("since", "30d");
  const exportQ = query.toString();
  const filters = h("div", { class: "filters" }, labelSel, sourceSel, day,
    h("a", { href: `/api/events.csv?${exportQ}`, id: "export-csv", text: "Export CSV" }),
    h("a", { href: `/api/events.json?${exportQ}`, id: "export-json", text: "Export JSON" }));
  const chart = h("div", { class: "card chart", id: "chart" });
  const list = h("div", { class: "card", id: "events" });
  main().replaceChildren(h("h2", { text: "History" }), filters, chart, list);
  const by = q.get("day") ? "hour" : "day";
  query.set("tz_offset_min", String(-new Date().getTimezoneOffset()));
  const [events, counts] = await Promise.all([
    api(`/api/events?${query}&limit=500`), api(`/api/counts?${query}&by=${by}`)]);
  if (token !== S.token) return;  // another view was asked for meanwhile
  drawCounts(chart, counts, by, q.get("day"));
  list.replaceChildren(events.length ? h("table", {},
    h("tr", {}, ...["when", "label", "peak", "duration", "source", ""].map((t) => h("th", { text: t }))),
    ...events.map((e) => h("tr", { class: "event" },
      h("td", { text: fmtTime(e.start_time || e.wall_time) }), h("td", { class: "label", text: e.label }),
      h("td", { text: e.peak_score.toFixed(2) }),
      h("td", { text: e.type === "start" ? "open" : (e.duration_s !== null && e.duration_s !== undefined ? `${e.duration_s.toFixed(1)} s` : e.reason || "") }),
      h("td", { text: e.source }), h("td", {}, h("a", { href: `#/event/${e.event_id}`, text: "open" })))))
    : h("p", { class: "muted", text: "No events for these filters." }));
}

function drawCounts(el, counts, by, day) {
  // events per hour of the chosen day, or per day of the last 30
  const buckets = [];
  if (by === "hour") for (let i = 0; i < 24; i++) buckets.push(`${day}T${String(i).padStart(2, "0")}:00`);
  else {
    for (let i = 29; i >= 0; i--) {
      const d = new Date(Date.now() - i * 86400000);
      buckets.push(`${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`);
    }
  }
  const n = Object.fromEntries(counts.map((c) => [c.bucket, c.events]));
  const top = Math.max(1, ...buckets.map((b) => n[b] || 0));
  const w = 1000 / buckets.length;
  const g = svg("svg", { viewBox: "0 0 1000 140", preserveAspectRatio: "none", role: "img",
    "aria-label": by === "hour" ? "events per hour" : "events per day" });
  buckets.forEach((b, i) => {
    const v = n[b] || 0;
    const hgt = (v / top) * 110;
    const r = svg("rect", { x: i * w + 1, y: 115 - hgt, width: w - 2, height: hgt });
    r.append(svg("title", {}, `${b}: ${v}`));
    g.append(r);
    if (by === "hour" ? i % 3 === 0 : i % 5 === 0) g.append(svg("text", { x: i * w + 2, y: 132 }, by === "hour" ? b.slice(11, 13) : b.slice(5)));
  });
  g.append(svg("text", { x: 2, y: 10 }, `max ${top}`));
  el.replaceChildren(h("div", { class: "muted", text: by === "hour" ? `Events per hour, ${day}` : "Events per day, last 30 days" }), g);
}

// -- an event --------------------------------------------------------------------------
async function renderEvent(id) {
  S.view = "event";
  const token = ++S.token;
  const d = await api(`/api/events/${enc(id)}`);
  if (token !== S.token) return;
  const e = d.event;
  const msg = h("div", { class: "msg", id: "event-msg" });
  const parts = [h("h2", { text: `${e.label} · ${fmtTime(e.start_time || e.wall_time)}` }),
    h("p", {}, `peak ${e.peak_score.toFixed(2)} · `,
      d.open ? "still open" : (e.duration_s !== null && e.duration_s !== undefined ? `${e.duration_s.toFixed(1)} s` : e.reason || ""),
      ` · ${e.source} · `, h("code", { text: e.event_id }))];
  if (d.clip) {
    parts.push(h("div", { class: "card" }, h("audio", { controls: true, preload: "metadata", id: "clip", src: `/api/events/${enc(id)}/clip` }),
      h("canvas", { class: "spec", id: "spec", width: "600", height: "128" })));
  } else {
    parts.push(h("p", { class: "muted", text: "No clip kept for this event (clips.enabled: true keeps them)." }));
  }
  parts.push(h("div", { class: "card" }, h("div", { class: "muted", text: "Scores of every label around the event" }),
    drawCurve(d.curve, e)));
  const notThis = h("button", { class: "danger", id: "not-this", disabled: !d.clip, text: "Not this sound",
    title: `teach ${e.label} that this clip is not it (a veto)`, onclick: async () => {
      try {
        const r = await api(`/api/events/${enc(id)}/not-this`, { body: {} });
        msg.className = "msg"; msg.textContent = `taught: ${r.veto} is not ${e.label}`;
        renderEvent(id);
      } catch (err) { msg.className = "msg err"; msg.textContent = err.message; }
    } });
  const others = (S.rules ? S.rules.labels : []).filter((l) => l.name !== e.label);
  const wasSel = h("select", { id: "was-label", "aria-label": "the label it was" },
    ...others.map((l) => h("option", { value: l.name, text: l.name })));
  const thisWas = h("button", { id: "this-was", disabled: !d.clip || !others.length, text: "This was…",
    title: "teach the chosen label this clip as an example", onclick: async () => {
      try {
        const r = await api(`/api/events/${enc(id)}/this-was`, { body: { label: wasSel.value } });
        msg.className = "msg"; msg.textContent = `taught: ${r.clip} is ${r.label}`;
        renderEvent(id);
      } catch (err) { msg.className = "msg err"; msg.textContent = err.message; }
    } });
  const yes = h("button", { id: "confirm", disabled: !d.clip, text: `Yes, that was ${e.label}`,
    title: `keep ${e.label} firing on this sound: taught vetoes must be nearer than it to hold ${e.label} back`,
    onclick: async () => {
      try {
        const r = await api(`/api/events/${enc(id)}/this-was`, { body: { label: e.label } });
        msg.className = "msg"; msg.textContent = `confirmed: ${r.clip} is ${r.label}`;
        renderEvent(id);
      } catch (err) { msg.className = "msg err"; msg.textContent = err.message; }
    } });
  const said = { "not-this": `not ${e.label}`, "this-was": "this was", confirmed: `yes, ${e.label}` };
  const corr = d.corrections.map((c) => h("li", {}, `${fmtTime(c.at)}: ${c.kind === "this-was" ? `this was ${c.label}` : said[c.kind] || c.kind} (${c.name}) `,
    c.undone ? h("span", { class: "muted", text: "undone" }) : h("button", { class: "undo", text: "Undo", onclick: async () => {
      try { await api(`/api/corrections/${c.id}/undo`, { body: {} }); renderEvent(id); }
      catch (err) { msg.className = "msg err"; msg.textContent = err.message; }
    } })));
  parts.push(h("div", { class: "card" }, yes, " ", notThis, " ", thisWas, " ", wasSel, msg,
    corr.length ? h("ul", { id: "corrections" }, ...corr) : null));
  main().replaceChildren(...parts);
  if (d.clip) drawSpectrogram(await api(`/api/events/${enc(id)}/spectrogram`));
}

function drawSpectrogram(s) {
  const c = document.getElementById("spec");
  if (!c) return;
  c.width = s.frames; c.height = s.bins;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(s.frames, s.bins);
  const raw = atob(s.data);
  for (let b = 0; b < s.bins; b++) {
    for (let f = 0; f < s.frames; f++) {
      const v = raw.charCodeAt(b * s.frames + f);
      const o = ((s.bins - 1 - b) * s.frames + f) * 4;  // low frequencies at the bottom
      img.data[o] = Math.min(255, v * 1.4); img.data[o + 1] = Math.max(0, v * 1.2 - 60); img.data[o + 2] = Math.max(0, 120 - v / 2) + v / 4; img.data[o + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
}

function drawCurve(curve, e) {
  const t = curve.t_s;
  const g = svg("svg", { class: "curve", viewBox: "0 0 1000 200", preserveAspectRatio: "none", role: "img", "aria-label": "score curves" });
  if (!t.length) return h("p", { class: "muted", text: "No window scores kept for this event (store.scores_hours)." });
  const t0 = t[0], t1 = Math.max(t[t.length - 1], t0 + 1);
  const x = (v) => ((v - t0) / (t1 - t0)) * 1000;
  const y = (v) => 190 - v * 180;
  const legend = h("div", { class: "legend" });
  const rules = S.rules ? Object.fromEntries(S.rules.labels.map((l) => [l.name, l])) : {};
  Object.entries(curve.scores).forEach(([label, vals], i) => {
    const color = COLORS[i % COLORS.length];
    const pts = vals.map((v, k) => (v === null ? null : `${x(t[k]).toFixed(1)},${y(v).toFixed(1)}`)).filter(Boolean);
    g.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": label === e.label ? 3 : 1.5 }));
    if (rules[label]) g.append(svg("line", { x1: 0, x2: 1000, y1: y(rules[label].threshold), y2: y(rules[label].threshold), stroke: color, "stroke-dasharray": "4 4", "stroke-width": 1 }));
    const key = h("span", { text: `■ ${label}` });
    key.style.color = color;
    legend.append(key);
  });
  const end = e.end_s ?? t1;
  g.append(svg("rect", { x: x(e.start_s), y: 0, width: Math.max(2, x(end) - x(e.start_s)), height: 190, fill: "currentColor", opacity: 0.08 }));
  g.append(svg("text", { x: 2, y: 12 }, "1"), svg("text", { x: 2, y: 188 }, "0"));
  return h("div", {}, g, legend);
}

// -- routing ---------------------------------------------------------------------------
async function route() {
  const hash = location.hash || "#/live";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("here", hash.startsWith(a.getAttribute("href")));
  try {
    if (hash.startsWith("#/history")) await renderHistory(hash.split("?")[1] || "");
    else if (hash.startsWith("#/event/")) await renderEvent(hash.slice(8));
    else renderLive();
  } catch (e) {
    if (e.message !== "log in first") main().replaceChildren(h("p", { class: "msg err", text: e.message }));
  }
}

async function start() {
  const s = await (await fetch("/api/session")).json();
  if (!s.logged_in) { showLogin(); return false; }
  S.csrf = s.csrf;
  S.state = await api("/api/state");
  S.rules = S.state.rules;
  S.scores = S.state.scores || {};
  connect();
  return true;
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => { if (await start()) route(); });
