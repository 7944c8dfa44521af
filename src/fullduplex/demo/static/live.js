// The live page: the ticker topic through WebSocket, SSE, long polling and short polling.
// Plain JavaScript, no build step, nothing from a CDN.
"use strict";

const TOPIC = "ticker";
const POLL_INTERVAL_MS = 1000;
const WINDOW_MS = 60000;
const KEEP_SAMPLES = 300;
const enc = new TextEncoder();

const transports = [
  { id: "ws", name: "WebSocket", color: "#1f77b4" },
  { id: "sse", name: "Server-Sent Events", color: "#2ca02c" },
  { id: "longpoll", name: "Long polling", color: "#ff7f0e" },
  { id: "poll", name: "Short polling", color: "#d62728" },
];
const byId = Object.fromEntries(transports.map((t) => [t.id, t]));
let requestHeadBytes = 0; // measured by the server, see /api/request-size

for (const t of transports) {
  Object.assign(t, { seqs: [], latencies: [], points: [], bytes: 0, messages: 0, requests: [], state: "connecting", prices: {} });
}

function frameHeaderSize(n) { return n < 126 ? 2 : n < 65536 ? 4 : 10; }
function chunkOverhead(n) { return n.toString(16).length + 4; } // "<hex>\r\n" + data + "\r\n"

function setState(t, state) { t.state = state; render(); }

function countRequest(t) { t.requests.push(Date.now()); }

function receive(t, item, wireBytes) {
  if (wireBytes !== undefined) t.bytes += wireBytes;
  if (item.gap) { t.seqs.push(`gap:${item.gap.since}-${item.gap.first_available}`); return; }
  const now = Date.now();
  const latency = now - item.time * 1000;
  t.seqs.push(item.seq);
  if (t.seqs.length > 5000) t.seqs.splice(0, 1000);
  t.messages += 1;
  t.latencies.push(latency);
  if (t.latencies.length > KEEP_SAMPLES) t.latencies.shift();
  t.points.push([now, latency]);
  t.prices[item.data.symbol] = item.data.price;
}

function quantile(values, q) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function responseBytes(url) {
  // Resource Timing: transferSize = response head + body as received (0 if not exposed).
  const entries = performance.getEntriesByName(new URL(url, location.href).href);
  performance.clearResourceTimings();
  const e = entries[entries.length - 1];
  return e && e.transferSize ? e.transferSize : 0;
}

// -- the four clients ------------------------------------------------------------------------

function startWebSocket(t, since) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/pubsub`);
  countRequest(t);
  ws.onopen = () => { setState(t, "open"); ws.send(JSON.stringify({ op: "subscribe", topic: TOPIC, since })); };
  ws.onmessage = (ev) => {
    const n = enc.encode(ev.data).length;
    const item = JSON.parse(ev.data);
    if (item.error) return;
    receive(t, item, n + frameHeaderSize(n));
    if (!item.gap) since = item.seq; else since = item.gap.first_available - 1;
  };
  ws.onclose = () => { setState(t, "closed"); setTimeout(() => startWebSocket(t, since), 1000); };
}

function startSSE(t, since) {
  const es = new EventSource(`/sse?topic=${TOPIC}&since=${since}`);
  countRequest(t);
  let reconnecting = false;
  es.onopen = () => { if (reconnecting) countRequest(t); reconnecting = false; setState(t, "open"); };
  const onEvent = (ev) => {
    const text = `${ev.type === "gap" ? "event: gap\n" : ""}id: ${ev.lastEventId}\ndata: ${ev.data}\n\n`;
    const n = enc.encode(text).length;
    receive(t, JSON.parse(ev.data), n + chunkOverhead(n));
  };
  es.onmessage = onEvent;
  es.addEventListener("gap", onEvent);
  es.onerror = () => { reconnecting = true; setState(t, es.readyState === EventSource.CLOSED ? "closed" : "reconnecting"); };
}

async function startPolling(t, path, since, interval) {
  setState(t, "open");
  for (;;) { // one request at a time; ends with the page
    const url = `${path}?topic=${TOPIC}&since=${since}`;
    countRequest(t);
    try {
      const reply = await (await fetch(url, { cache: "no-store" })).json();
      const bytes = requestHeadBytes + responseBytes(url);
      t.bytes += bytes;
      for (const item of reply.messages) receive(t, item);
      since = reply.cursor;
      if (t.state !== "open") setState(t, "open");
    } catch (err) {
      setState(t, "retrying");
      await new Promise((r) => setTimeout(r, 1000));
    }
    if (interval) await new Promise((r) => setTimeout(r, interval));
  }
}

// -- rendering -------------------------------------------------------------------------------

const cards = document.getElementById("cards");
for (const t of transports) {
  const card = document.createElement("div");
  card.className = "card";
  card.id = `card-${t.id}`;
  card.innerHTML = `<h2><span><span class="swatch" style="background:${t.color}"></span>${t.name}</span>
    <span class="state" id="${t.id}-state">connecting</span></h2>
    <table>
    <tr><td>last seq</td><td id="${t.id}-seq">-</td></tr>
    <tr><td>messages</td><td id="${t.id}-count">0</td></tr>
    <tr><td>latency median</td><td id="${t.id}-p50">-</td></tr>
    <tr><td>latency p95</td><td id="${t.id}-p95">-</td></tr>
    <tr><td>bytes / message</td><td id="${t.id}-bytes">-</td></tr>
    <tr><td>requests / min</td><td id="${t.id}-rpm">0</td></tr>
    </table><div class="prices" id="${t.id}-prices"></div>`;
  cards.appendChild(card);
}

function fmt(ms) { return Number.isNaN(ms) ? "-" : `${ms.toFixed(ms < 10 ? 1 : 0)} ms`; }

function render() {
  const now = Date.now();
  for (const t of transports) {
    t.requests = t.requests.filter((x) => now - x < WINDOW_MS);
    const el = (k) => document.getElementById(`${t.id}-${k}`);
    el("state").textContent = t.state;
    el("state").dataset.state = t.state;
    const last = t.seqs.filter((s) => typeof s === "number").pop();
    el("seq").textContent = last === undefined ? "-" : last;
    el("count").textContent = t.messages;
    el("p50").textContent = fmt(quantile(t.latencies, 0.5));
    el("p95").textContent = fmt(quantile(t.latencies, 0.95));
    el("bytes").textContent = t.messages ? `${Math.round(t.bytes / t.messages)} B` : "-";
    el("rpm").textContent = t.requests.length;
    el("prices").textContent = Object.entries(t.prices).map(([s, p]) => `${s} ${p.toFixed(2)}`).join("  ");
  }
}

function draw() {
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, now = Date.now();
  ctx.clearRect(0, 0, w, h);
  const y = (ms) => h - 10 - (Math.log10(Math.max(1, ms)) / 4) * (h - 20); // 1 ms .. 10 s
  ctx.strokeStyle = "#eee"; ctx.fillStyle = "#888"; ctx.font = "11px sans-serif";
  for (const ms of [1, 10, 100, 1000, 10000]) {
    ctx.beginPath(); ctx.moveTo(40, y(ms)); ctx.lineTo(w, y(ms)); ctx.stroke();
    ctx.fillText(ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`, 2, y(ms) + 4);
  }
  for (const t of transports) {
    t.points = t.points.filter(([x]) => now - x < WINDOW_MS);
    ctx.strokeStyle = t.color; ctx.beginPath();
    t.points.forEach(([x, ms], i) => {
      const px = 40 + (1 - (now - x) / WINDOW_MS) * (w - 40);
      if (i) ctx.lineTo(px, y(ms)); else ctx.moveTo(px, y(ms));
    });
    ctx.stroke();
  }
}

setInterval(() => { render(); draw(); }, 500);

// -- start: one cursor for all four ----------------------------------------------------------

async function main() {
  const size = await (await fetch("/api/request-size?topic=ticker&since=0000000000", { cache: "no-store" })).json();
  requestHeadBytes = size.head;
  const start = (await (await fetch(`/poll?topic=${TOPIC}`, { cache: "no-store" })).json()).cursor;
  document.getElementById("start-cursor").textContent = start;
  startWebSocket(byId.ws, start);
  startSSE(byId.sse, start);
  startPolling(byId.longpoll, "/longpoll", start, 0);
  startPolling(byId.poll, "/poll", start, POLL_INTERVAL_MS);
}

// For tests and the curious: what each transport received.
window.fdLive = {
  transports: byId,
  seqs: (id) => byId[id].seqs.slice(),
  stats: () => Object.fromEntries(transports.map((t) => [t.id, {
    messages: t.messages,
    p50: quantile(t.latencies, 0.5),
    p95: quantile(t.latencies, 0.95),
    bytesPerMessage: t.messages ? t.bytes / t.messages : null,
    requestsPerMinute: t.requests.length,
  }])),
};
main();
