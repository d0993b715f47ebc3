// The imctl demo web client: plain JavaScript, no build step. It does what the reference
// client (control/cli/client.py) does: ask /v1/endpoint, open the WebSocket with the
// ticket (the answer's fallbacks when a node cannot be reached), ping every interval the
// answer gives, follow `reconnect` frames back to the scheduler, and wait out failures
// with the backoff policy the scheduler sent.
"use strict";

const DEFAULT_BACKOFF = { base_s: 1, factor: 2, jitter: 0.5, max_s: 60 };
const MAX_ATTEMPTS = 10; // failures in a row before giving up
const $ = (id) => document.getElementById(id);

// What the page knows, also read by tests (window.imctl).
const state = {
  status: "idle", node: null, frames: [], notes: [], ws: null, stopped: true, seq: 0,
};
window.imctl = state;

function show(kind, text) {
  const line = document.createElement("div");
  line.className = kind;
  line.textContent = `${new Date().toISOString().slice(11, 23)} ${text}`;
  const box = $("frames");
  box.appendChild(line);
  box.scrollTop = box.scrollHeight;
}

function note(text) {
  state.notes.push(text);
  show("note", text);
}

function setStatus(status) {
  state.status = status;
  $("status").textContent = status + (state.node ? ` (${state.node})` : "");
  const open = status === "connected";
  $("send").disabled = !open;
  $("connect").disabled = !state.stopped;
  $("disconnect").disabled = state.stopped;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function backoffDelay(policy, attempt) {
  const raw = Math.min(policy.max_s, policy.base_s * policy.factor ** attempt);
  return raw * (1 - policy.jitter * Math.random());
}

// The uid a JWT is for (its sub), so the field fills itself from the token.
function tokenSubject(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub || "";
  } catch (e) {
    return "";
  }
}

class Refused extends Error {
  constructor(status, message, retryAfter) {
    super(`HTTP ${status}: ${message}`);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function ask(server, token, uid, device) {
  const query = new URLSearchParams({ uid, device, platform: "web", version: "1.0.0" });
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const resp = await fetch(`${server}/v1/endpoint?${query}`, { headers, mode: "cors" });
  let body;
  try {
    body = await resp.json();
  } catch (e) {
    body = { message: resp.statusText };
  }
  if (!resp.ok) {
    throw new Refused(resp.status, body.message || body.error, Number(resp.headers.get("Retry-After") || 0));
  }
  return body;
}

function openSocket(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const failed = () => reject(new Error("refused or unreachable"));
    ws.addEventListener("error", failed);
    ws.addEventListener("close", failed);
    ws.addEventListener("open", () => {
      ws.removeEventListener("error", failed);
      ws.removeEventListener("close", failed);
      resolve(ws);
    }, { once: true });
  });
}

// The answer's node first, then its fallbacks.
async function openAny(answer) {
  const candidates = [answer, ...(answer.fallbacks || [])];
  for (let i = 0; i < candidates.length; i++) {
    const c = candidates[i];
    const url = `${c.endpoint}?ticket=${encodeURIComponent(c.ticket)}&platform=web&version=1.0.0`;
    try {
      const ws = await openSocket(url);
      return { ws, node: c.node };
    } catch (e) {
      const then = i + 1 < candidates.length ? `trying ${candidates[i + 1].node}` : "none left";
      note(`${c.node}: cannot connect (${e.message}); ${then}`);
    }
  }
  return null;
}

// One connection until it ends: {kind: done | reconnect | kicked | lost, afterMs}.
function session(ws, intervalS) {
  return new Promise((resolve) => {
    let reconnectAfter = null;
    const beat = setInterval(() => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ t: "ping" }));
    }, intervalS * 1000);
    ws.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        show("error", `not JSON: ${event.data}`);
        return;
      }
      if (frame.t === "pong") return;
      state.frames.push(frame);
      show("in", JSON.stringify(frame));
      if (frame.t === "reconnect") {
        reconnectAfter = Number(frame.after_ms || 0) + Math.random() * 500;
        ws.close(1000);
      }
    });
    ws.addEventListener("close", (event) => {
      clearInterval(beat);
      if (reconnectAfter !== null) resolve({ kind: "reconnect", afterMs: reconnectAfter });
      else if (state.stopped) resolve({ kind: "done" });
      else if (event.code === 4001) resolve({ kind: "kicked" });
      else {
        note(`closed by the node: code ${event.code}`);
        resolve({ kind: "lost" });
      }
    });
  });
}

async function run(server, token, uid, device) {
  let policy = DEFAULT_BACKOFF;
  let failures = 0;
  const failed = async (why, atLeastS = 0) => {
    failures += 1;
    if (failures >= MAX_ATTEMPTS) return false;
    const delay = Math.max(backoffDelay(policy, failures - 1), atLeastS);
    note(`${why}; again in ${delay.toFixed(1)}s`);
    setStatus("waiting");
    await sleep(delay * 1000);
    return !state.stopped;
  };
  while (!state.stopped) {
    setStatus("asking");
    let answer;
    try {
      answer = await ask(server, token, uid, device);
    } catch (e) {
      if (e.status === 401 || e.status === 403) {
        note(`scheduler: ${e.message}; giving up (check the token)`);
        break;
      }
      if (!(await failed(`scheduler: ${e.message}`, e.retryAfter || 0))) break;
      continue;
    }
    policy = answer.backoff || DEFAULT_BACKOFF;
    const fallbacks = (answer.fallbacks || []).map((f) => f.node);
    note(`scheduler: node ${answer.node} (${answer.region}, track ${answer.track}), fallbacks [${fallbacks}]`);
    const opened = await openAny(answer);
    if (opened === null) {
      if (!(await failed("no node could be reached"))) break;
      continue;
    }
    failures = 0;
    state.ws = opened.ws;
    state.node = opened.node;
    setStatus("connected");
    const ending = await session(opened.ws, answer.heartbeat.interval_s);
    state.ws = null;
    if (ending.kind === "done") break;
    if (ending.kind === "kicked") {
      note("kicked: this device logged in elsewhere");
      break;
    }
    if (ending.kind === "reconnect") {
      note(`reconnecting in ${(ending.afterMs / 1000).toFixed(1)}s`);
      setStatus("reconnecting");
      await sleep(ending.afterMs);
      continue;
    }
    if (!(await failed("connection lost; asking the scheduler"))) break;
  }
  if (failures >= MAX_ATTEMPTS) note(`giving up after ${failures} failed attempts in a row`);
  state.stopped = true;
  state.node = null;
  setStatus("stopped");
}

function start() {
  if (!state.stopped) return;
  const server = $("server").value.replace(/\/+$/, "");
  const token = $("token").value.trim();
  const uid = $("uid").value.trim() || tokenSubject(token);
  $("uid").value = uid;
  if (!uid) {
    note("a uid is needed: paste a token (imctl token --uid alice) or type one");
    return;
  }
  state.stopped = false;
  run(server, token, uid, $("device").value.trim() || "web-1");
}

function stop() {
  state.stopped = true;
  if (state.ws) state.ws.close(1000);
  setStatus("stopped");
}

function send() {
  const to = $("to").value.trim();
  if (!state.ws || !to) return;
  state.seq += 1;
  const frame = { t: "msg", to, body: $("body").value, id: state.seq };
  state.ws.send(JSON.stringify(frame));
  show("out", JSON.stringify(frame));
}

// ?server=&token=&uid=&device=&connect=1 fill the form (and connect).
const params = new URLSearchParams(location.search);
$("server").value = params.get("server") || location.origin;
for (const name of ["token", "uid", "device"]) {
  if (params.get(name)) $(name).value = params.get(name);
}
$("token").addEventListener("change", () => {
  if (!$("uid").value) $("uid").value = tokenSubject($("token").value.trim());
});
$("connect").addEventListener("click", start);
$("disconnect").addEventListener("click", stop);
$("send").addEventListener("click", send);
window.imctl.send = (to, body) => { $("to").value = to; $("body").value = body; send(); };
if (params.get("connect") === "1") start();
