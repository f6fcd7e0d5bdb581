// Vigil live page: open alerts from the SSE stream, one sensor's scores, the flow's status.
//
// Plain ES module, no build step. The API is the page's own origin (paths relative to the
// page, so a reverse proxy may mount it under a prefix). The token goes in an Authorization
// header on every request, the live stream included: the stream is read with fetch() and a
// ReadableStream rather than EventSource (which cannot send headers), so the token never
// appears in a URL, a proxy's access log or the browser history.

const API = new URL("../", window.location.href);
const KEY_TOKEN = "vigil.token";
const KEY_BY = "vigil.by";
const MAX_SHOWN = 200; // cards in the list; more are counted, not drawn
const STATUS_EVERY_MS = 3000;
const SENSOR_EVERY_MS = 5000;

const $ = (id) => document.getElementById(id);

// --- token ------------------------------------------------------------------------------------
const store = {
  token: localStorage.getItem(KEY_TOKEN) ?? sessionStorage.getItem(KEY_TOKEN) ?? "",
  by: localStorage.getItem(KEY_BY) ?? sessionStorage.getItem(KEY_BY) ?? "",
  remembered: localStorage.getItem(KEY_TOKEN) !== null,
  save(token, by, remember) {
    for (const s of [localStorage, sessionStorage]) {
      s.removeItem(KEY_TOKEN);
      s.removeItem(KEY_BY);
    }
    const s = remember ? localStorage : sessionStorage;
    if (token) s.setItem(KEY_TOKEN, token);
    if (by) s.setItem(KEY_BY, by);
    Object.assign(this, { token, by, remembered: remember && !!token });
  },
};

let tokenWaiters = [];
function tokenChanged() {
  const waiters = tokenWaiters;
  tokenWaiters = [];
  waiters.forEach((w) => w());
}
const waitForToken = () => new Promise((resolve) => tokenWaiters.push(resolve));

function askToken(why) {
  const dialog = $("token-dialog");
  $("token-why").textContent = why ||
    "Enter the API token (VIGIL_API_TOKEN) to acknowledge and resolve alerts.";
  $("token-input").value = store.token;
  $("by-input").value = store.by;
  $("remember-input").checked = store.remembered;
  if (!dialog.open) dialog.showModal();
  $("token-input").focus();
}

$("token-button").addEventListener("click", () => askToken());
$("token-dialog").addEventListener("close", () => {
  const choice = $("token-dialog").returnValue;
  if (choice === "save") {
    store.save($("token-input").value.trim(), $("by-input").value.trim(),
      $("remember-input").checked);
  } else if (choice === "forget") {
    store.save("", store.by, false);
  } else {
    return;
  }
  banners.clear("auth");
  tokenChanged();
  restartStream();
  refreshSensors();
});

// --- errors -----------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(kind, status, detail) {
    super(detail);
    this.kind = kind; // "unreachable", "auth", "http"
    this.status = status;
  }
}

const banners = {
  shown: new Map(),
  set(key, text, kind = "error", action = null) {
    let el = this.shown.get(key);
    if (!el) {
      el = document.createElement("div");
      el.dataset.banner = key;
      el.setAttribute("role", "alert");
      $("banners").append(el);
      this.shown.set(key, el);
    }
    el.className = `banner ${kind}`;
    el.replaceChildren(Object.assign(document.createElement("span"), { textContent: text }));
    if (action) {
      const b = Object.assign(document.createElement("button"), { type: "button",
        textContent: action.label });
      b.addEventListener("click", action.run);
      el.append(b);
    }
  },
  clear(key) {
    this.shown.get(key)?.remove();
    this.shown.delete(key);
  },
  flash(key, text, ms = 8000) {
    this.set(key, text);
    setTimeout(() => this.clear(key), ms);
  },
};

let promptedFor = null; // the token value the dialog last opened by itself for
function authProblem(err) {
  const why = store.token
    ? `The API refused the token (${err.message}). Enter the right one.`
    : "This API needs a token to show anything. Enter VIGIL_API_TOKEN.";
  banners.set("auth", why, "error", { label: "Enter token", run: () => askToken(why) });
  // open the dialog once per token tried; after a Cancel the banner's button reopens it
  if (promptedFor !== store.token && !$("token-dialog").open) {
    promptedFor = store.token;
    askToken(why);
  }
}

function unreachable(err) {
  banners.set("unreachable", `Cannot reach the Vigil API at ${API.origin} (${err.message}); ` +
    "retrying. Check that `python -m api` runs and that this machine can reach it.");
}

function reachable() {
  banners.clear("unreachable");
}

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (store.token) headers.Authorization = `Bearer ${store.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(new URL(path, API), {
      method, headers, signal, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError("unreachable", 0, e.message || "network error");
  }
  if (r.ok) {
    reachable();
    return r.status === 204 ? null : r.json();
  }
  let detail = r.statusText;
  try {
    detail = (await r.json()).detail ?? detail;
  } catch { /* not JSON: keep the status text */ }
  if (r.status === 502 || r.status === 503 || r.status === 504) {
    throw new ApiError("unreachable", r.status, `${r.status} ${detail}`);
  }
  reachable();
  throw new ApiError(r.status === 401 ? "auth" : "http", r.status, detail);
}

function report(err, context) {
  if (err.name === "AbortError") return;
  if (err.kind === "unreachable") unreachable(err);
  else if (err.kind === "auth") authProblem(err);
  else banners.flash(`http-${context}`, `${context}: ${err.message}`);
}

// --- formatting -------------------------------------------------------------------------------
const pad = (n) => String(n).padStart(2, "0");
function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
const num = (x, digits = 2) => (x === null || x === undefined ? "–" :
  Number(x).toLocaleString(undefined, { maximumFractionDigits: digits }));
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

// --- alerts -----------------------------------------------------------------------------------
const alerts = new Map(); // alert_id -> AlertView, unresolved only
const cards = new Map(); // alert_id -> <li>
let lastEventId = null;
let renderQueued = false;

function newest(a, b) {
  return a.start < b.start ? 1 : a.start > b.start ? -1 : a.alert_id < b.alert_id ? 1 : -1;
}

function upsert(view, live) {
  const old = alerts.get(view.alert_id);
  if (old && old.updated_at > view.updated_at) return; // an older copy (list vs stream race)
  if (view.status === "resolved") alerts.delete(view.alert_id);
  else alerts.set(view.alert_id, { ...view, live: live || old?.live });
  if (view.sensor_id === selected) scheduleSensorRefresh();
  if (!selected && live && view.status !== "resolved") selectSensor(view.sensor_id);
  if (!knownSensors.has(view.sensor_id)) addSensors([view.sensor_id]);
  queueRender();
}

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderAlerts();
  });
}

function fillCard(li, a) {
  li.className = `alert sev-${a.severity} st-${a.status}${li.isConnected ? "" : a.live ? " fresh" : ""}`;
  li.dataset.alertId = a.alert_id;
  li.dataset.status = a.status;
  li.dataset.severity = a.severity;
  const sensor = el("button", "link sensor", a.sensor_id);
  sensor.type = "button";
  sensor.title = "show this sensor's scores";
  sensor.addEventListener("click", () => selectSensor(a.sensor_id));
  const line = el("div", "line");
  line.append(el("span", "sev", a.severity), sensor, el("span", "state", a.status));
  const meta = el("div", "meta");
  const t = el("time", "start", when(a.start));
  t.dateTime = a.start;
  meta.append("started ", t, ` · score ${num(a.score)} · ${a.detectors.join(", ")} · ` +
    `${a.windows} window${a.windows === 1 ? "" : "s"}`);
  if (a.acknowledged_by) meta.append(` · acknowledged by ${a.acknowledged_by}`);
  const contrib = el("ul", "contrib");
  contrib.setAttribute("aria-label", "contributing metrics");
  for (const c of a.contributors) contrib.append(el("li", "", `${c.metric} ${num(c.weight)}`));
  const actions = el("div", "actions");
  if (a.status === "open") actions.append(actionButton(a, "acknowledged", "Acknowledge"));
  actions.append(actionButton(a, "resolved", "Resolve"));
  li.replaceChildren(line, meta, contrib, actions);
}

function actionButton(a, status, label) {
  const b = el("button", status === "resolved" ? "ghost" : "", label);
  b.type = "button";
  b.dataset.action = status;
  b.addEventListener("click", () => act(a.alert_id, status, b));
  return b;
}

async function act(id, status, button) {
  if (!store.token) {
    askToken("Acknowledging and resolving need the API token (VIGIL_API_TOKEN). " +
      "Save it, then press the button again.");
    return;
  }
  button.disabled = true;
  try {
    const view = await api(`v1/alerts/${encodeURIComponent(id)}`, {
      method: "PATCH", body: { status, by: store.by || "web page" },
    });
    upsert(view, false);
  } catch (err) {
    if (err.status === 409) {
      banners.flash(`conflict-${id}`, `Alert ${id}: ${err.message}`);
      refreshAlert(id);
    } else {
      report(err, status === "resolved" ? "resolve" : "acknowledge");
    }
  } finally {
    button.disabled = false;
  }
}

async function refreshAlert(id) {
  try {
    upsert(await api(`v1/alerts/${encodeURIComponent(id)}`), false);
  } catch (err) {
    report(err, "alert");
  }
}

function renderAlerts() {
  const sorted = [...alerts.values()].sort(newest);
  const shown = sorted.slice(0, MAX_SHOWN);
  const keep = new Set(shown.map((a) => a.alert_id));
  for (const [id, li] of cards) {
    if (!keep.has(id)) {
      li.remove();
      cards.delete(id);
    }
  }
  const list = $("alerts");
  let at = list.firstElementChild;
  for (const a of shown) {
    let li = cards.get(a.alert_id);
    if (!li) {
      li = el("li");
      cards.set(a.alert_id, li);
    }
    if (li.dataset.updated !== a.updated_at) {
      fillCard(li, a);
      li.dataset.updated = a.updated_at;
    }
    if (li !== at) list.insertBefore(li, at);
    else at = at.nextElementSibling;
  }
  $("alert-count").textContent = String(sorted.length);
  $("alerts-empty").hidden = sorted.length > 0;
  const more = $("alerts-more");
  more.hidden = sorted.length <= MAX_SHOWN;
  more.textContent = `${sorted.length - MAX_SHOWN} older open alerts not shown.`;
}

async function loadAlerts(signal) {
  const fresh = new Map();
  for (const status of ["open", "acknowledged"]) {
    const page = await api(`v1/alerts?status=${status}&limit=500`, { signal });
    for (const a of page.items) fresh.set(a.alert_id, a);
  }
  for (const id of alerts.keys()) if (!fresh.has(id)) alerts.delete(id);
  for (const a of fresh.values()) upsert(a, false);
  queueRender();
}

// --- the live stream (fetch + ReadableStream, Last-Event-ID on reconnect) ---------------------
let streamAbort = null;
let wakeStream = null;

function setStream(state, text) {
  const li = $("st-stream");
  li.dataset.state = state;
  li.querySelector(".v").textContent = text;
}

function restartStream() {
  streamAbort?.abort();
  wakeStream?.();
}

function parseSse(onEvent) {
  let buf = "";
  let fields = {};
  let data = [];
  return (text) => {
    buf += text;
    const lines = buf.split(/\r\n|\r|\n/);
    buf = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (data.length) onEvent({ ...fields, data: data.join("\n") });
        fields = {};
        data = [];
      } else if (!line.startsWith(":")) {
        const i = line.indexOf(":");
        const name = i < 0 ? line : line.slice(0, i);
        let value = i < 0 ? "" : line.slice(i + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (name === "data") data.push(value);
        else fields[name] = value;
      }
    }
  };
}

function onStreamEvent(ev) {
  if (ev.id !== undefined) lastEventId = ev.id;
  if (ev.event !== "alert") return;
  const { alert } = JSON.parse(ev.data);
  upsert(alert, true);
}

async function streamForever() {
  let delay = 1000;
  for (;;) {
    const abort = new AbortController();
    streamAbort = abort;
    try {
      const headers = { Accept: "text/event-stream" };
      if (store.token) headers.Authorization = `Bearer ${store.token}`;
      if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
      let r;
      try {
        r = await fetch(new URL("v1/alerts/stream", API), {
          headers, signal: abort.signal, cache: "no-store",
        });
      } catch (e) {
        if (e.name === "AbortError") throw e;
        throw new ApiError("unreachable", 0, e.message || "network error");
      }
      if (r.status === 401) {
        setStream("bad", "needs token");
        authProblem(new ApiError("auth", 401, "401"));
        await waitForToken();
        continue;
      }
      if (!r.ok) throw new ApiError(r.status >= 500 ? "unreachable" : "http", r.status,
        `${r.status} ${r.statusText}`);
      reachable();
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      const feed = parseSse(onStreamEvent);
      // The server picks its starting point before its first message; load the list only
      // after that message, so nothing falls between the list and the stream.
      const first = await reader.read();
      if (first.done) throw new ApiError("unreachable", 0, "stream closed");
      if (lastEventId === null) await loadAlerts(abort.signal);
      setStream("ok", "live");
      delay = 1000;
      feed(first.value);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        feed(value);
      }
      throw new ApiError("unreachable", 0, "the stream ended");
    } catch (err) {
      if (err.name === "AbortError") {
        setStream("warn", "reconnecting");
        continue; // token changed: reconnect at once
      }
      setStream("bad", "reconnecting");
      report(err, "stream");
    }
    await new Promise((resolve) => {
      const t = setTimeout(resolve, delay);
      wakeStream = () => { clearTimeout(t); resolve(); };
    });
    wakeStream = null;
    delay = Math.min(delay * 2, 10000);
  }
}

// --- status strip (GET /ready: heartbeat age and what the flow reported) ----------------------
let ready = null;
let readyAt = 0;

function setStat(id, text, state = "") {
  const li = $(id);
  li.dataset.state = state;
  li.querySelector(".v").textContent = text;
}

function renderStatus() {
  const flow = ready?.flow;
  if (!flow) return;
  if (flow.age_seconds === null) {
    setStat("st-heartbeat", "none yet", "warn");
  } else {
    const age = flow.age_seconds + (Date.now() - readyAt) / 1000;
    setStat("st-heartbeat", `${num(age, 1)} s ago${flow.stale ? " (stale)" : ""}`,
      flow.stale ? "bad" : "ok");
  }
  setStat("st-readings", flow.readings_per_s === null ? "–" : `${num(flow.readings_per_s, 1)}/s`);
  setStat("st-lag", flow.lag_messages === null ? "–" : `${num(flow.lag_messages, 0)} msgs`,
    flow.lag_messages > 10000 ? "warn" : "");
  if (flow.dead_letters_per_s === null) {
    setStat("st-dead", "–");
  } else {
    const share = flow.readings_per_s ? (100 * flow.dead_letters_per_s) / flow.readings_per_s : 0;
    setStat("st-dead", `${num(flow.dead_letters_per_s, 2)}/s (${num(share, 2)} %)`,
      flow.dead_letters_per_s > 0 ? "warn" : "ok");
  }
}

async function refreshStatus() {
  try {
    ready = await api("ready");
    readyAt = Date.now();
    banners.clear("not-ready");
  } catch (err) {
    if (err.status === 503) {
      banners.set("not-ready", "The API answers but is not ready: its database does not " +
        "respond. Alerts may be missing until it recovers.");
    } else {
      report(err, "status");
    }
  }
  renderStatus();
}

// --- sensor view ------------------------------------------------------------------------------
const knownSensors = new Set();
let selected = "";
let chart = null;
let sensorTimer = null;
let sensorsLoading = null;

async function refreshSensors() {
  if (sensorsLoading) return sensorsLoading;
  sensorsLoading = (async () => {
    try {
      const page = await api("v1/sensors?limit=500");
      addSensors(page.items.map((s) => s.sensor_id));
    } catch (err) {
      report(err, "sensors");
    } finally {
      sensorsLoading = null;
    }
  })();
  return sensorsLoading;
}

function addSensors(ids) {
  const fresh = ids.filter((id) => !knownSensors.has(id));
  if (!fresh.length) return;
  const select = $("sensor-select");
  for (const id of fresh) {
    knownSensors.add(id);
    select.append(new Option(id, id));
  }
  const options = [...select.options].slice(1).sort((a, b) => a.value.localeCompare(b.value));
  select.append(...options);
  select.value = selected;
}

$("sensor-select").addEventListener("change", (e) => selectSensor(e.target.value));

function selectSensor(id) {
  selected = id;
  $("sensor-select").value = id;
  $("sensor-title").textContent = id ? `Sensor ${id}` : "Sensor";
  for (const f of ["sf-model", "sf-score", "sf-threshold", "sf-seen", "sf-open"]) {
    $(f).textContent = "–";
  }
  drawChart(null);
  if (id) refreshSensor();
}

function scheduleSensorRefresh() {
  clearTimeout(sensorTimer);
  sensorTimer = setTimeout(refreshSensor, 300);
}

async function refreshSensor() {
  clearTimeout(sensorTimer);
  const id = selected;
  if (!id) return;
  try {
    const enc = encodeURIComponent(id);
    const [status, series, spans] = await Promise.all([
      api(`v1/sensors/${enc}`),
      api(`v1/sensors/${enc}/scores?limit=1000`),
      api(`v1/alerts?sensor_id=${enc}&limit=200`),
    ]);
    if (id !== selected) return;
    $("sf-model").textContent = status.model_version ?? "–";
    $("sf-score").textContent = num(status.last_score, 3);
    $("sf-threshold").textContent = num(status.threshold, 3);
    $("sf-seen").textContent = when(status.last_seen);
    $("sf-open").textContent = String(status.open_alerts);
    drawChart(series.items, spans.items);
  } catch (err) {
    if (err.status === 404) {
      $("sf-model").textContent = "no scores yet";
    } else {
      report(err, "sensor");
    }
  } finally {
    if (id === selected) sensorTimer = setTimeout(refreshSensor, SENSOR_EVERY_MS);
  }
}

function spansPlugin(getSpans) {
  return {
    hooks: {
      drawClear: [(u) => {
        const { ctx } = u;
        const { left, top, width, height } = u.bbox;
        ctx.save();
        ctx.fillStyle = "rgba(200, 30, 30, 0.18)";
        for (const [a, b] of getSpans()) {
          const x0 = Math.max(left, u.valToPos(a, "x", true));
          const x1 = Math.min(left + width, u.valToPos(b, "x", true));
          if (x1 < left || x0 > left + width) continue;
          ctx.fillRect(x0, top, Math.max(2, x1 - x0), height);
        }
        ctx.restore();
      }],
    },
  };
}

let chartSpans = [];
function drawChart(points, spans = []) {
  const box = $("chart");
  if (!points || !points.length || !window.uPlot) {
    chart?.destroy();
    chart = null;
    box.replaceChildren(el("p", "empty", selected ? "No scores stored for this sensor yet." :
      "Pick a sensor, or click one in an alert."));
    return;
  }
  const xs = points.map((p) => Date.parse(p.window_end) / 1000);
  const data = [xs, points.map((p) => p.score), points.map((p) => p.threshold)];
  // The flow reports an alert's end when it opens and when it resolves, so an incident still
  // running reaches the newest score.
  chartSpans = spans.map((a) => [Date.parse(a.start) / 1000,
    a.flow_status === "open" ? Infinity : Date.parse(a.end) / 1000]);
  const width = Math.max(200, box.clientWidth);
  const height = window.innerWidth < 600 ? 200 : 260;
  if (chart && chart.series.length === 3) {
    chart.setData(data);
    return;
  }
  box.replaceChildren();
  chart = new window.uPlot({
    width, height,
    plugins: [spansPlugin(() => chartSpans)],
    scales: { x: { time: true } },
    series: [
      {},
      { label: "score", stroke: "#2457c5", width: 2, points: { show: false } },
      { label: "threshold", stroke: "#c81e1e", width: 1.5, dash: [6, 4], points: { show: false } },
    ],
    axes: [{ space: 90 }, { size: 50 }],
    legend: { show: false },
  }, data, box);
}

new ResizeObserver(() => {
  if (chart) chart.setSize({ width: Math.max(200, $("chart").clientWidth), height: chart.height });
}).observe($("chart"));

// --- start ------------------------------------------------------------------------------------
function start() {
  drawChart(null);
  refreshStatus();
  setInterval(refreshStatus, STATUS_EVERY_MS);
  setInterval(renderStatus, 1000);
  refreshSensors();
  streamForever();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
