// The weft node's dashboard: the API's own endpoints, one event stream (GET /v1/events),
// nothing fetched from elsewhere. Everything shown goes through textContent: task names,
// args, results and errors are user data.
"use strict";

const UNFINISHED = new Set(["PENDING", "SCHEDULED", "STARTED", "RETRY"]);
const MAX_ROWS = 500;
const HISTORY = 300; // stats points kept: 5 minutes at one a second

const tasks = new Map(); // id -> task info
let token = sessionStorage.getItem("weft-token") || "";
let history = []; // {at, finished, failed}
let streamAbort = null;
let renderQueued = false;

const $ = (id) => document.getElementById(id);

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (res.status === 401) { askToken("the token was refused"); throw new Error("unauthorized"); }
  if (!res.ok) throw new Error((data && data.error) || ("HTTP " + res.status));
  return data;
}

function askToken(why) {
  if (streamAbort) streamAbort.abort();
  $("main").hidden = true;
  $("token-form").hidden = false;
  $("token-error").textContent = why || "";
  $("connection").textContent = "needs a token";
}

function runtime(t) {
  // A task that finished without running (revoked before it started) has none.
  if (!t.finished_at_ms || !t.started_at_ms) return "";
  const ms = Math.max(0, t.finished_at_ms - t.started_at_ms);
  return ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(1) + " s";
}

function clock(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "";
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const state = $("filter-state").value;
    const name = $("filter-name").value.trim();
    const rows = [...tasks.values()]
      .filter((t) => (!state || t.state === state) && (!name || t.name.includes(name)))
      .sort((a, b) => b.submitted_at_ms - a.submitted_at_ms || (a.id < b.id ? 1 : -1));
    const body = document.createElement("tbody");
    for (const t of rows) {
      const tr = document.createElement("tr");
      tr.dataset.id = t.id;
      tr.appendChild(cell(t.id.slice(0, 8), "id"));
      tr.appendChild(cell(t.name));
      tr.appendChild(cell(t.state, "state state-" + t.state));
      tr.appendChild(cell(runtime(t)));
      tr.appendChild(cell(String(t.attempts)));
      tr.appendChild(cell(clock(t.submitted_at_ms)));
      const actions = document.createElement("td");
      if (UNFINISHED.has(t.state)) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = "Cancel";
        b.addEventListener("click", (e) => { e.stopPropagation(); cancel(t.id); });
        actions.appendChild(b);
      }
      tr.appendChild(actions);
      tr.addEventListener("click", () => showDetail(t.id));
      body.appendChild(tr);
    }
    $("tasks").replaceChild(body, $("tasks").tBodies[0]);
  });
}

function upsert(t) {
  const known = tasks.get(t.id);
  // Events arrive in order; a list fetched meanwhile may be older than them.
  if (known && known.state !== t.state && !UNFINISHED.has(known.state) && UNFINISHED.has(t.state)) return;
  tasks.set(t.id, Object.assign({}, known || {}, t));
  if (tasks.size > MAX_ROWS) {
    const oldest = [...tasks.values()].sort((a, b) => a.submitted_at_ms - b.submitted_at_ms);
    for (const o of oldest.slice(0, tasks.size - MAX_ROWS)) tasks.delete(o.id);
  }
  render();
  if (!$("detail").hidden && $("detail").dataset.id === t.id) showDetail(t.id);
}

function stats(s) {
  for (const lane of ["high", "normal", "low"]) $("lane-" + lane).textContent = s.queued[lane];
  $("lane-scheduled").textContent = s.scheduled;
  $("workers").textContent = s.workers;
  $("busy").textContent = s.busy;
  $("idle").textContent = Math.max(0, s.workers - s.busy);
  $("in-flight").textContent = s.in_flight;
  history.push({ at: s.at_ms, finished: s.succeeded + s.failed + s.revoked, failed: s.failed });
  if (history.length > HISTORY + 1) history = history.slice(-HISTORY - 1);
  const rates = [];
  for (let i = 1; i < history.length; i++) {
    const dt = Math.max(1, history[i].at - history[i - 1].at) / 1000;
    rates.push({
      done: Math.max(0, history[i].finished - history[i - 1].finished) / dt,
      failed: Math.max(0, history[i].failed - history[i - 1].failed) / dt,
    });
  }
  const last = rates[rates.length - 1] || { done: 0, failed: 0 };
  $("rate").textContent = last.done.toFixed(1);
  $("fail-rate").textContent = last.failed.toFixed(1);
  draw(rates);
}

function draw(rates) {
  const c = $("chart");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const top = Math.max(1, ...rates.map((r) => r.done));
  const x = (i) => c.width - (rates.length - 1 - i) * (c.width / HISTORY);
  const y = (v) => c.height - 4 - (v / top) * (c.height - 16);
  for (const [key, color] of [["done", "#0969da"], ["failed", "#cf222e"]]) {
    g.beginPath();
    g.strokeStyle = color;
    rates.forEach((r, i) => (i ? g.lineTo(x(i), y(r[key])) : g.moveTo(x(i), y(r[key]))));
    g.stroke();
  }
  g.fillStyle = "#6e7781";
  g.fillText(top.toFixed(1) + " /s", 4, 10);
}

async function showDetail(id) {
  let t;
  try { t = await api("GET", "/v1/tasks/" + encodeURIComponent(id)); } catch (e) { return; }
  const d = $("detail");
  d.hidden = false;
  d.dataset.id = id;
  $("detail-id").textContent = id;
  const dl = document.createElement("dl");
  dl.id = "detail-fields";
  const field = (k, v) => {
    if (v === undefined || v === null || v === "") return;
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = typeof v === "string" ? v : JSON.stringify(v, null, 1);
    dl.append(dt, dd);
  };
  field("name", t.name);
  field("state", t.state);
  field("args", t.args);
  field("result", t.result);
  field("error", t.error);
  field("attempts", String(t.attempts));
  if (t.interrupted) field("interrupted", String(t.interrupted));
  field("submitted", t.submitted_at_ms && new Date(t.submitted_at_ms).toISOString());
  field("started", t.started_at_ms && new Date(t.started_at_ms).toISOString());
  field("finished", t.finished_at_ms && new Date(t.finished_at_ms).toISOString());
  field("runtime", runtime(t));
  d.replaceChild(dl, $("detail-fields"));
}

async function cancel(id) {
  try {
    const r = await api("DELETE", "/v1/tasks/" + encodeURIComponent(id));
    const t = tasks.get(id);
    if (t && r.state) upsert(Object.assign({}, t, { state: r.state }));
  } catch (e) {
    $("submit-status").textContent = "cancel failed: " + e.message;
  }
}

async function submit(ev) {
  ev.preventDefault();
  const status = $("submit-status");
  let args;
  try { args = JSON.parse($("args").value || "[]"); } catch (e) {
    status.className = "error";
    status.textContent = "args is not JSON: " + e.message;
    return;
  }
  const body = { args };
  if ($("priority").value) body.priority = $("priority").value;
  if ($("delay").value) body.delay_ms = Number($("delay").value);
  try {
    const r = await api("POST", "/v1/tasks/" + encodeURIComponent($("task-name").value), body);
    status.className = "muted";
    status.textContent = "submitted " + r.id.slice(0, 8);
    upsert({ id: r.id, name: r.name, state: r.state, attempts: 0, submitted_at_ms: Date.now() });
  } catch (e) {
    status.className = "error";
    status.textContent = e.message;
  }
}

async function stream() {
  streamAbort = new AbortController();
  const res = await fetch("/v1/events", { headers: headers(), signal: streamAbort.signal });
  if (res.status === 401) { askToken("the token was refused"); return; }
  if (!res.ok || !res.body) throw new Error("HTTP " + res.status);
  $("connection").textContent = "live";
  const reader = res.body.getReader();
  const text = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += text.decode(value, { stream: true });
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const frame = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let kind = "message";
      let data = "";
      for (const line of frame.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (!data) continue;
      const value = JSON.parse(data);
      if (kind === "task") upsert(value);
      else if (kind === "stats") stats(value);
    }
  }
}

async function load() {
  const list = await api("GET", "/v1/tasks?limit=200");
  for (const t of list.tasks) upsert(t);
}

async function run() {
  $("token-form").hidden = true;
  $("main").hidden = false;
  const registry = await api("GET", "/v1/registry");
  const select = $("task-name");
  select.replaceChildren();
  for (const t of registry.tasks) {
    const o = document.createElement("option");
    o.value = t.name;
    o.textContent = t.name;
    select.appendChild(o);
  }
  for (;;) {
    try {
      await load();
      await stream();
    } catch (e) {
      if (e.message === "unauthorized" || (e.name === "AbortError" && !$("token-form").hidden)) return;
    }
    if (!$("token-form").hidden) return;
    $("connection").textContent = "reconnecting…";
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function start() {
  const health = await fetch("/healthz").then((r) => r.json()).catch(() => ({}));
  if (health.token_required && !token) { askToken(""); return; }
  run().catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("weft-token", token);
    run().catch(() => {});
  });
  $("submit-form").addEventListener("submit", submit);
  $("filter-state").addEventListener("change", render);
  $("filter-name").addEventListener("input", render);
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  start();
});
