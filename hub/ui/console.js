// Nave's web console: a client of the hub's JSON API, with the key the user gives.
// Every value from the API goes into the page as text (textContent), never as markup,
// and the page runs under a Content-Security-Policy that allows only this file.
"use strict";

const KEY = "nave.key";
const state = { role: null, page: null, timers: [], losses: new Map() };

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k === "data") for (const [d, dv] of Object.entries(v)) e.dataset[d] = dv;
    else if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function badge(text, kind) {
  return el("span", { class: "badge " + (kind || "") }, text);
}

function num(v, digits) {
  if (v === null || v === undefined) return "–";
  return typeof v === "number" && digits !== undefined ? v.toFixed(digits) : String(v);
}

function bytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function bar(used, total) {
  const fill = el("span");
  fill.style.width = (total ? Math.min(100, (100 * used) / total) : 0) + "%";
  return el("span", {}, el("span", { class: "bar" }, fill));
}

function fillRows(table, rows) {
  const body = $(table).tBodies[0];
  body.replaceChildren(...rows);
}

// --- the API ------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY) } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) {
    const msg = (data && data.error && data.error.message) || text || r.statusText;
    throw new ApiError(r.status, msg);
  }
  return data;
}

// --- signing in ---------------------------------------------------------------------

async function signIn() {
  $("login-error").textContent = "";
  try {
    await api("GET", "/admin/v1/status");
    state.role = "admin";
  } catch (e) {
    // The admin API answers any other key 403, known or not: the key's own usage tells.
    let known = e.status === 403;
    if (known) {
      try { await api("GET", "/v1/usage"); } catch (u) { known = false; e = u; }
    }
    if (known) {
      state.role = "user";
    } else {
      sessionStorage.removeItem(KEY);
      showLogin(e.status === 401 ? "That key is not valid here." : "The hub did not answer: " + e.message);
      return;
    }
  }
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  for (const a of document.querySelectorAll("#nav a")) {
    a.hidden = (a.hasAttribute("data-admin") && state.role !== "admin") || (a.hasAttribute("data-user") && state.role !== "user");
  }
  $("summary").textContent = state.role === "admin" ? "admin" : "API key";
  document.body.dataset.role = state.role;
  route();
}

function showLogin(message) {
  stopTimers();
  state.role = null;
  document.body.dataset.role = "";
  for (const p of document.querySelectorAll(".page")) p.hidden = true;
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("summary").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

// --- pages --------------------------------------------------------------------------

const PAGES = {
  cluster: { admin: true, start: () => every(1500, refreshCluster) },
  charts: { admin: true, start: () => every(5000, refreshCharts) },
  keys: { admin: true, start: () => every(5000, refreshKeys) },
  join: { admin: true, start: () => {} },
  training: { admin: true, start: () => every(2000, refreshJobs) },
  usage: { admin: false, start: () => every(10000, refreshOwnUsage) },
  playground: { admin: false, start: loadModels },
};

function stopTimers() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
}

function every(ms, f) {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try { await f(); } catch (e) { if (e.status === 401) showLogin("The key was refused: sign in again."); else console.warn(e); }
    running = false;
  };
  tick();
  state.timers.push(setInterval(tick, ms));
}

function route() {
  if (!state.role) return;
  let name = location.hash.replace(/^#/, "");
  const fallback = state.role === "admin" ? "cluster" : "usage";
  if (!PAGES[name] || (PAGES[name].admin && state.role !== "admin") || (name === "usage" && state.role === "admin")) name = fallback;
  stopTimers();
  state.page = name;
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + name;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + name);
  PAGES[name].start();
}

// --- cluster ------------------------------------------------------------------------

function stateBadge(s) {
  return badge(s, { active: "good", draining: "warn", drained: "warn", down: "bad" }[s] || "");
}

async function refreshCluster() {
  // Replication lags are the leader's to know: a follower asks it for them.
  const s = await api("GET", "/admin/v1/status?lag=leader");
  $("summary").textContent = "admin · leader " + (s.leader || "none") + " · term " + s.term;
  const own = s.hubs.find((h) => h.id === s.hub) || {};
  const line = $("raft-line");
  line.replaceChildren("Answered by " + s.hub + " (" + (own.raft_state || "?") + "), term " + s.term + ", applied index " +
    num(s.applied_index) + ", snapshot " + num(s.snapshot_index) + ".");
  const leaderRow = s.hubs.find((h) => h.role === "leader");
  const lagKnown = s.hubs.some((h) => h.role !== "leader" && h.lag !== null && h.lag !== undefined);
  if (s.leader !== s.hub && leaderRow && !lagKnown) {
    // Only the leader knows how far behind each replica is.
    line.append(" The leader did not tell its replication lags: ");
    line.append(leaderRow.http ? el("a", { href: location.protocol + "//" + leaderRow.http + "/ui" }, "open the console on " + leaderRow.id) : leaderRow.id);
    line.append(".");
  }
  fillRows("hubs", s.hubs.map((h) => el("tr", { data: { hub: h.id, role: h.role, lag: h.lag === null || h.lag === undefined ? "" : String(h.lag) } },
    el("td", {}, el("b", {}, h.id), h.id === s.hub ? " (this hub)" : ""),
    el("td", {}, h.role === "leader" ? badge("leader", "leader") : badge(h.role)),
    el("td", {}, h.http || "–"),
    el("td", {}, h.quic),
    el("td", { class: "num" }, h.role === "leader" ? "–" : num(h.lag) + (h.lag === null || h.lag === undefined ? "" : " entries")))));
  fillRows("models", s.models.map((m) => el("tr", { data: { model: m.model } },
    el("td", {}, el("b", {}, m.model)),
    el("td", {}, typeof m.routing === "string" ? m.routing : JSON.stringify(m.routing)),
    el("td", {}, m.spokes.length ? m.spokes.join(", ") : badge("no active spoke", "bad")))));
  fillRows("spokes", s.spokes.map((p) => {
    const actions = el("td", {});
    const draining = p.state === "draining" || p.state === "drained";
    if (p.state !== "down") {
      actions.append(el("button", { class: "small", type: "button", on: { click: () => drain(p.id, draining) } }, draining ? "Resume" : "Drain"), " ");
    }
    if (p.joined) {
      actions.append(el("button", { class: "small danger", type: "button", on: { click: () => removeSpoke(p.id) } }, "Remove"));
    }
    return el("tr", { data: { spoke: p.id, state: p.state } },
      el("td", {}, el("b", {}, p.id), p.joined ? el("span", { class: "muted" }, " joined") : ""),
      el("td", {}, stateBadge(p.state)),
      el("td", {}, badge(p.circuit, p.circuit === "closed" ? "good" : "bad")),
      el("td", { class: "num" }, p.queue),
      el("td", { class: "num" }, p.running),
      el("td", { class: "num" }, num(p.tokens_per_s, 1)),
      el("td", {}, bar(p.kv_blocks_total - p.kv_blocks_free, p.kv_blocks_total), (p.kv_blocks_total - p.kv_blocks_free) + " / " + p.kv_blocks_total),
      el("td", {}, bar(p.serving_used, p.serving_total), bytes(p.serving_used) + " / " + bytes(p.serving_total)),
      el("td", {}, bar(p.training_used, p.training_total), bytes(p.training_used) + " / " + bytes(p.training_total)),
      el("td", { class: "num" }, num(p.replica_lag)),
      el("td", { class: "wrap" }, p.models.join(", ")),
      actions);
  }));
}

async function drain(id, undo) {
  try {
    const r = await api("POST", "/admin/v1/spokes/" + encodeURIComponent(id) + "/drain", { undo });
    $("spoke-msg").textContent = undo ? id + " takes requests again." : id + " is draining: " + r.in_flight + " request(s) still running there.";
  } catch (e) { $("spoke-msg").textContent = "Drain failed: " + e.message; }
  refreshCluster().catch(() => {});
}

async function removeSpoke(id) {
  if (!confirm("Remove spoke " + id + "? The hubs stop using it and its certificate is revoked.")) return;
  try {
    await api("DELETE", "/admin/v1/spokes/" + encodeURIComponent(id));
    $("spoke-msg").textContent = id + " removed.";
  } catch (e) { $("spoke-msg").textContent = "Removal failed: " + e.message; }
  refreshCluster().catch(() => {});
}

// --- charts -------------------------------------------------------------------------

const COLORS = ["#2f6fed", "#e0702b", "#1a9c5b", "#b23ad8", "#c0352b", "#6b7a90"];

// Lines of [ms, value] points over the last hour, with a y axis from zero.
function drawChart(canvas, series, unit) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 52, right = 10, top = 22, bottom = 22;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  // The last hour, or less while the hub has been up less: at least five minutes.
  const now = Date.now();
  const first = Math.min(...series.flatMap((s) => s.points.map(([t]) => t)), now);
  const from = Math.max(now - 3600 * 1000, Math.min(first, now - 300 * 1000));
  let max = 0;
  for (const s of series) for (const [, v] of s.points) if (v > max) max = v;
  max = max > 0 ? max * 1.15 : 1;
  const x = (t) => left + ((t - from) / (now - from)) * (w - left - right);
  const y = (v) => h - bottom - (v / max) * (h - top - bottom);
  ctx.strokeStyle = "#e3e6eb";
  ctx.fillStyle = "#667085";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(w - right, y(v)); ctx.stroke();
    ctx.fillText(v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(3), 4, y(v) + 4);
  }
  const span = (now - from) / 60000;
  for (let i = 4; i >= 0; i--) {
    const m = (span * i) / 4;
    ctx.fillText(i ? "-" + (m >= 10 ? m.toFixed(0) : m.toFixed(1)) + " min" : "now", x(now - m * 60000) - (i ? 18 : 20), h - 6);
  }
  let legend = left;
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    for (const [t, v] of s.points) {
      if (v === null || v === undefined) { started = false; continue; }
      if (started) ctx.lineTo(x(t), y(v)); else { ctx.moveTo(x(t), y(v)); started = true; }
    }
    ctx.stroke();
    for (const [t, v] of s.points) if (v !== null && v !== undefined && s.points.length < 3) ctx.fillRect(x(t) - 2, y(v) - 2, 4, 4);
    const label = s.name + (unit ? " (" + unit + ")" : "");
    ctx.fillRect(legend, 6, 10, 10);
    ctx.fillStyle = "#1d2430";
    ctx.fillText(label, legend + 14, 15);
    legend += 24 + ctx.measureText(label).width;
  });
  if (!series.some((s) => s.points.some(([, v]) => v !== null && v !== undefined))) {
    ctx.fillStyle = "#667085";
    ctx.fillText("no data in the last hour yet", w / 2 - 70, h / 2);
  }
  canvas.dataset.points = String(series.reduce((n, s) => n + s.points.filter(([, v]) => v !== null && v !== undefined).length, 0));
}

async function refreshCharts() {
  const hist = await api("GET", "/admin/v1/history");
  const pts = (f) => hist.samples.map((s) => [s.at_ms, f(s)]);
  $("charts-note").textContent = "The last hour of hub " + hist.hub + " (the hub this page talks to), one sample every " +
    hist.interval_s + " s; " + hist.samples.length + " sample(s) so far. Tokens/s is the whole cluster's, as the spokes report it.";
  drawChart($("chart-requests"), [{ name: "requests/s", points: pts((s) => s.requests_per_s) }]);
  drawChart($("chart-tokens"), [{ name: "tokens/s", points: pts((s) => s.tokens_per_s) }]);
  drawChart($("chart-ttft"), [{ name: "p50", points: pts((s) => s.ttft_p50_s) }, { name: "p99", points: pts((s) => s.ttft_p99_s) }]);
  drawChart($("chart-itl"), [{ name: "p50", points: pts((s) => s.itl_p50_s) }, { name: "p99", points: pts((s) => s.itl_p99_s) }]);
  const reasons = [...new Set(hist.samples.flatMap((s) => Object.keys(s.refusals_per_s)))].sort();
  drawChart($("chart-refusals"), reasons.length
    ? reasons.map((r) => ({ name: r, points: pts((s) => s.refusals_per_s[r] || 0) }))
    : [{ name: "none", points: pts(() => 0) }]);
}

// --- keys ---------------------------------------------------------------------------

async function refreshKeys() {
  const r = await api("GET", "/admin/v1/keys");
  const keys = r.keys.slice().sort((a, b) => a.name.localeCompare(b.name));
  fillRows("keys", keys.map((k) => el("tr", { data: { key: k.name } },
    el("td", {}, el("b", {}, k.name)),
    el("td", {}, k.revoked ? badge("revoked", "bad") : badge("live", "good")),
    el("td", { class: "num" }, num(k.limits.rpm)),
    el("td", { class: "num" }, num(k.limits.tpm)),
    el("td", { class: "num" }, num(k.limits.daily_tokens)),
    el("td", { class: "num" }, num(k.limits.max_concurrent)),
    el("td", { class: "num" }, k.tokens_today),
    el("td", { class: "num" }, k.total_tokens),
    el("td", { class: "num" }, k.total_requests),
    el("td", { class: "num" }, k.in_flight),
    el("td", {},
      el("button", { class: "small", type: "button", on: { click: () => keyUsage(k.name) } }, "Usage"), " ",
      k.revoked ? "" : el("button", { class: "small", type: "button", on: { click: () => editLimits(k) } }, "Limits"), " ",
      k.revoked ? "" : el("button", { class: "small danger", type: "button", on: { click: () => revokeKey(k.name) } }, "Revoke")))));
}

function optionalNumber(id) {
  const v = $(id).value.trim();
  if (v === "") return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(id.replace(/^(new-key|limits)-/, "") + ": a whole number, or empty for none");
  return n;
}

// The four limit fields of a form whose inputs are PREFIX-rpm, -tpm, -daily, -conc.
function limitsFrom(prefix) {
  const body = {};
  for (const [field, id] of [["rpm", "rpm"], ["tpm", "tpm"], ["daily_tokens", "daily"], ["max_concurrent", "conc"]]) {
    const n = optionalNumber(prefix + "-" + id);
    if (n !== undefined) body[field] = n;
  }
  return body;
}

function editLimits(k) {
  $("limits-name").textContent = k.name;
  $("limits-card").dataset.key = k.name;
  const show = (v) => (v === null || v === undefined ? "" : String(v));
  $("limits-rpm").value = show(k.limits.rpm);
  $("limits-tpm").value = show(k.limits.tpm);
  $("limits-daily").value = show(k.limits.daily_tokens);
  $("limits-conc").value = k.limits.max_concurrent === null || k.limits.max_concurrent === undefined ? "0" : String(k.limits.max_concurrent);
  $("limits-msg").textContent = "";
  $("limits-card").hidden = false;
}

async function saveLimits(ev) {
  ev.preventDefault();
  const name = $("limits-card").dataset.key;
  try {
    await api("PUT", "/admin/v1/keys/" + encodeURIComponent(name) + "/limits", limitsFrom("limits"));
    $("limits-card").hidden = true;
  } catch (e) {
    $("limits-msg").textContent = e.message;
  }
  refreshKeys().catch(() => {});
}

async function createKey(ev) {
  ev.preventDefault();
  $("key-msg").textContent = "";
  $("created-key").hidden = true;
  let body;
  try {
    body = { name: $("new-key-name").value.trim(), ...limitsFrom("new-key") };
    const created = await api("POST", "/admin/v1/keys", body);
    $("created-key-name").textContent = created.name;
    $("created-key-value").textContent = created.key;
    $("created-key").hidden = false;
    $("key-form").reset();
  } catch (e) {
    $("key-msg").textContent = e.message;
  }
  refreshKeys().catch(() => {});
}

async function revokeKey(name) {
  if (!confirm("Revoke key " + name + "? Requests with it are refused from now on.")) return;
  try { await api("DELETE", "/admin/v1/keys/" + encodeURIComponent(name)); } catch (e) { $("key-msg").textContent = e.message; }
  refreshKeys().catch(() => {});
}

function usageRows(rows) {
  return rows.map((u) => el("tr", {},
    el("td", {}, u.day), el("td", {}, u.model), el("td", { class: "num" }, u.requests),
    el("td", { class: "num" }, u.prompt_tokens), el("td", { class: "num" }, u.completion_tokens),
    el("td", { class: "num" }, u.total_tokens)));
}

async function keyUsage(name) {
  const r = await api("GET", "/admin/v1/usage?key=" + encodeURIComponent(name));
  $("key-usage-name").textContent = name;
  fillRows("key-usage", r.usage.length ? usageRows(r.usage) : [el("tr", {}, el("td", { colSpan: 6, class: "muted" }, "No requests yet."))]);
  $("key-usage-card").hidden = false;
}

async function refreshOwnUsage() {
  const r = await api("GET", "/v1/usage");
  fillRows("own-usage", usageRows(r.usage));
  $("own-usage-msg").textContent = r.usage.length ? "" : "No requests with this key yet.";
}

// --- join tokens --------------------------------------------------------------------

async function createToken(ev) {
  ev.preventDefault();
  $("token-msg").textContent = "";
  $("created-token").hidden = true;
  try {
    const t = await api("POST", "/admin/v1/tokens", { ttl_s: Number($("token-ttl").value), uses: Number($("token-uses").value) });
    $("join-command").textContent = t.join;
    $("created-token").hidden = false;
  } catch (e) {
    $("token-msg").textContent = e.message;
  }
}

// --- training -----------------------------------------------------------------------

async function refreshJobs() {
  const r = await api("GET", "/admin/v1/train");
  // Each job carries its curve: (step, loss) pairs, thinned by the spoke.
  state.losses = new Map(r.jobs.map((j) => [j.name, j.losses || []]));
  fillRows("jobs", r.jobs.map((j) => el("tr", { data: { job: j.name, state: j.state } },
    el("td", {}, el("b", {}, j.name)), el("td", {}, j.model), el("td", {}, j.spoke),
    el("td", {}, badge(j.state, { done: "good", running: "warn", failed: "bad", cancelled: "bad" }[j.state] || ""), j.error ? " " + j.error : ""),
    el("td", { class: "num" }, j.step + " / " + j.steps),
    el("td", { class: "num" }, num(j.loss, 4)),
    el("td", { class: "num" }, num(j.tokens_per_s, 1)),
    el("td", { class: "num" }, bytes(j.memory_bytes)),
    el("td", {}, j.state === "running" || j.state === "queued"
      ? el("button", { class: "small danger", type: "button", on: { click: () => cancelJob(j.name) } }, "Cancel") : ""))));
  $("jobs-msg").textContent = r.jobs.length ? "" : "No training jobs. Submit one with nave train submit.";
  drawLoss();
}

function drawLoss() {
  const canvas = $("chart-loss"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 52, right = 10, top = 22, bottom = 22;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  const all = [...state.losses.entries()].filter(([, p]) => p.length);
  const maxStep = Math.max(1, ...all.flatMap(([, p]) => p.map(([s]) => s)));
  const maxLoss = Math.max(0.001, ...all.flatMap(([, p]) => p.map(([, l]) => l))) * 1.1;
  const x = (s) => left + (s / maxStep) * (w - left - right);
  const y = (l) => h - bottom - (l / maxLoss) * (h - top - bottom);
  ctx.strokeStyle = "#e3e6eb"; ctx.fillStyle = "#667085";
  for (let i = 0; i <= 4; i++) {
    const v = (maxLoss * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(w - right, y(v)); ctx.stroke();
    ctx.fillText(v.toFixed(2), 4, y(v) + 4);
  }
  ctx.fillText("step " + maxStep, w - right - 50, h - 6);
  let legend = left;
  all.forEach(([name, points], i) => {
    const color = COLORS[i % COLORS.length];
    ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach(([s, l], k) => (k ? ctx.lineTo(x(s), y(l)) : ctx.moveTo(x(s), y(l))));
    ctx.stroke();
    ctx.fillRect(legend, 6, 10, 10);
    ctx.fillStyle = "#1d2430";
    ctx.fillText(name, legend + 14, 15);
    legend += 24 + ctx.measureText(name).width;
  });
  if (!all.length) { ctx.fillStyle = "#667085"; ctx.fillText("no steps yet", w / 2 - 30, h / 2); }
  canvas.dataset.points = String(all.reduce((n, [, p]) => n + p.length, 0));
}

async function cancelJob(name) {
  try { await api("DELETE", "/admin/v1/train/" + encodeURIComponent(name)); } catch (e) { $("jobs-msg").textContent = e.message; }
  refreshJobs().catch(() => {});
}

// --- playground ---------------------------------------------------------------------

async function loadModels() {
  if ($("pg-model").options.length) return;
  try {
    const r = await api("GET", "/v1/models");
    $("pg-model").replaceChildren(...r.data.map((m) => el("option", { value: m.id }, m.id)));
  } catch (e) {
    $("pg-stats").textContent = "Models: " + e.message;
  }
}

let controller = null;

async function send(ev) {
  ev.preventDefault();
  if (controller) return;
  const out = $("pg-output");
  const messages = [];
  if ($("pg-system").value.trim()) messages.push({ role: "system", content: $("pg-system").value });
  messages.push({ role: "user", content: $("pg-input").value });
  const body = { model: $("pg-model").value, messages, stream: true, stream_options: { include_usage: true } };
  const max = Number($("pg-max").value);
  if (max > 0) body.max_tokens = max;
  out.textContent = "";
  out.dataset.state = "streaming";
  out.dataset.chunks = "0";
  $("pg-stats").textContent = "";
  $("pg-send").disabled = true;
  $("pg-stop").disabled = false;
  controller = new AbortController();
  const started = performance.now();
  let first = null, chunks = 0, usage = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY), "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!r.ok) {
      const text = await r.text();
      let msg = text;
      try { msg = JSON.parse(text).error.message; } catch (_) { /* not JSON */ }
      throw new ApiError(r.status, msg);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            if (first === null) first = performance.now();
            chunks++;
            out.append(delta.content);
            out.dataset.chunks = String(chunks);
          }
        }
      }
    }
    const secs = (performance.now() - started) / 1000;
    $("pg-stats").textContent = "first token after " + (first === null ? "–" : ((first - started) / 1000).toFixed(2) + " s") +
      ", " + secs.toFixed(2) + " s in all" + (usage ? ", " + usage.completion_tokens + " tokens (" + usage.total_tokens + " with the prompt)" : "");
    out.dataset.state = "done";
  } catch (e) {
    out.dataset.state = e.name === "AbortError" ? "stopped" : "error";
    if (e.name !== "AbortError") out.append(el("div", { class: "error" }, "Error: " + e.message));
  } finally {
    controller = null;
    $("pg-send").disabled = false;
    $("pg-stop").disabled = true;
  }
}

// --- start --------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) { $("login-error").textContent = "Paste a key first."; return; }
    sessionStorage.setItem(KEY, key);
    $("key-input").value = "";
    signIn();
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(); });
  $("key-form").addEventListener("submit", createKey);
  $("token-form").addEventListener("submit", createToken);
  $("limits-form").addEventListener("submit", saveLimits);
  $("limits-cancel").addEventListener("click", () => { $("limits-card").hidden = true; });
  $("pg-form").addEventListener("submit", send);
  $("pg-stop").addEventListener("click", () => controller && controller.abort());
  window.addEventListener("hashchange", route);
  if (sessionStorage.getItem(KEY)) signIn(); else showLogin();
});
