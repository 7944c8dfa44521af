// Node's ws as a client of a fullduplex server: runs one scenario, prints one JSON line per step.
// Usage: node client.mjs URL SCENARIO [subprotocol]
import WebSocket from "ws";

const [url, scenario, subprotocol] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const ws = new WebSocket(url, subprotocol ? [subprotocol] : [], {
  perMessageDeflate: scenario === "compressed" ? { threshold: 0 } : false,
  origin: process.env.WS_ORIGIN || undefined,
});
const timer = setTimeout(() => { out({ error: "timeout" }); process.exit(3); }, 10000);
const received = [];
ws.on("unexpected-response", (req, res) => { out({ status: res.statusCode }); clearTimeout(timer); process.exit(0); });
ws.on("error", (err) => out({ error: String(err.message) }));
ws.on("open", () => {
  out({ open: true, protocol: ws.protocol, extensions: ws.extensions });
  if (scenario === "echo" || scenario === "compressed") {
    ws.send("héllo");
    ws.send(Buffer.from([0, 1, 2, 255]));
    ws.send("frag", { fin: false });
    ws.send("ment", { fin: false });
    ws.send("ed", { fin: true });
    ws.send("z".repeat(100000));
  } else if (scenario === "ping") {
    ws.ping(Buffer.from("node-ping"));
  } else if (scenario === "binary") {
    ws.send(Buffer.from([1, 2, 3]));
  } else if (scenario === "oversize") {
    ws.send("x".repeat(20 * 1024));
  } else if (scenario === "text") {
    ws.send("hi");
  } else if (scenario === "wait") {
    out({ waiting: true });
  }
});
ws.on("pong", (data) => { out({ pong: data.toString() }); ws.close(1000, "done"); });
ws.on("message", (data, isBinary) => {
  received.push(isBinary ? { binary: [...data] } : { text: data.toString() });
  if (scenario === "echo" || scenario === "compressed") {
    if (received.length === 4) {
      out({ received: received.map((m) => (m.text && m.text.length > 1000 ? { text_len: m.text.length } : m)) });
      ws.close(1000, "bye");
    }
  } else {
    out({ message: received[received.length - 1] });
    if (scenario === "text") ws.close(1000, "bye");
  }
});
ws.on("close", (code, reason) => {
  out({ close: code, reason: reason.toString() });
  clearTimeout(timer);
  process.exit(0);
});
