// The live page: the ticker topic through WebSocket, SSE, long polling and short polling, one
// fullduplex.js client (served at /fullduplex.js) per card, each pinned to its transport with
// the library's `transports` option. Plain JavaScript, no build step, nothing from a CDN.
"use strict";

const TOPIC = "ticker";
const POLL_INTERVAL_MS = 1000;
const WINDOW_MS = 60000;
const KEEP_SAMPLES = 300;

// id: the card (and the page's element ids); lib: the library's transport name.
const transports = [
  { id: "ws", lib: "websocket", name: "WebSocket", color: "#1f77b4" },
  { id: "sse", lib: "sse", name: "Server-Sent Events", color: "#2ca02c" },
  { id: "longpoll", lib: "longpoll", name: "Long polling", color: "#ff7f0e" },
  { id: "poll", lib: "poll", name: "Short polling", color: "#d62728" },
];
const byId = Object.fromEntries(transports.map((t) => [t.id, t]));
let requestHeadBytes = 0; // measured by the server, see /api/request-size

for (const t of transports) {
  Object.assign(t, {
    seqs: [], latencies: [], points: [], bytes: 0, messages: 0, requests: [], prices: {},
    client: null, state: "idle", transport: null, // as the library reports them
  });
}

function frameHeaderSize(n) { return n < 126 ? 2 : n < 65536 ? 4 : 10; }
function chunkOverhead(n) { return n.toString(16).length + 4; } // "<hex>\r\n" + data + "\r\n"

function receive(t, item) {
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

// -- traffic: the library's onWire hook plus Resource Timing for the polls' responses ---------

const pollUrls = new Map(); // poll request URL -> card, until Resource Timing reports it

function onWire(t, ev) {
  if (ev.kind === "request") {
    t.requests.push(Date.now());
    if (t.lib === "longpoll" || t.lib === "poll") {
      t.bytes += requestHeadBytes; // the browser does not expose it: measured by the server
      pollUrls.set(ev.url, t);
    }
  } else if (t.lib === "websocket") {
    t.bytes += ev.bytes + frameHeaderSize(ev.bytes);
  } else if (t.lib === "sse") {
    t.bytes += ev.bytes + chunkOverhead(ev.bytes);
  }
}

// Resource Timing: transferSize = response head + body as received (0 if not exposed).
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    const t = pollUrls.get(e.name);
    if (!t) continue;
    pollUrls.delete(e.name);
    t.bytes += e.transferSize || 0;
  }
  performance.clearResourceTimings(); // the buffer holds 250 entries; the observer sees all
}).observe({ type: "resource" });

// -- the four clients: one library client per card, pinned to its transport ------------------

function start(t, since) {
  const client = new fullduplex.Client("", {
    transports: [t.lib],
    pollInterval: POLL_INTERVAL_MS,
    onWire: (ev) => onWire(t, ev),
  });
  t.client = client;
  client.on("state", (ev) => { t.state = ev.state; t.transport = ev.transport; render(); });
  client.subscribe(TOPIC, {
    since,
    onMessage: (m) => receive(t, m),
    onGap: (g) => receive(t, { gap: g }),
  });
}

// -- rendering -------------------------------------------------------------------------------

const cards = document.getElementById("cards");
for (const t of transports) {
  const card = document.createElement("div");
  card.className = "card";
  card.id = `card-${t.id}`;
  card.innerHTML = `<h2><span><span class="swatch" style="background:${t.color}"></span>${t.name}</span>
    <span class="state" id="${t.id}-state">idle</span></h2>
    <table>
    <tr><td>transport</td><td id="${t.id}-transport">-</td></tr>
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
    el("transport").textContent = t.transport || "-";
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
  const startCursor = (await (await fetch(`/poll?topic=${TOPIC}`, { cache: "no-store" })).json()).cursor;
  document.getElementById("start-cursor").textContent = startCursor;
  for (const t of transports) start(t, startCursor);
}

// For tests and the curious: what each transport received.
window.fdLive = {
  transports: byId,
  seqs: (id) => byId[id].seqs.slice(),
  // What each card's library client reports: {state, transport} (client.state, client.transport).
  reported: () => Object.fromEntries(transports.map((t) => [t.id, {
    state: t.client ? t.client.state : "idle",
    transport: t.client ? t.client.transport : null,
    shown: document.getElementById(`${t.id}-transport`).textContent,
  }])),
  stats: () => Object.fromEntries(transports.map((t) => [t.id, {
    messages: t.messages,
    p50: quantile(t.latencies, 0.5),
    p95: quantile(t.latencies, 0.95),
    bytesPerMessage: t.messages ? t.bytes / t.messages : null,
    requestsPerMinute: t.requests.length,
  }])),
};
main();
