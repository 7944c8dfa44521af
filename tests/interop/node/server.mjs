// Node's ws as a server for fullduplex's clients: an echo server on 127.0.0.1.
// Prints {"port": N} once listening. Text "close-1003" makes it close with 1003;
// text "shutdown" makes it close every client with 1001.
import { WebSocketServer } from "ws";

const wss = new WebSocketServer({
  host: "127.0.0.1",
  port: 0,
  perMessageDeflate: { threshold: 0 },
  maxPayload: 1024 * 1024,
  handleProtocols: (protocols) => (protocols.has("chat") ? "chat" : false),
  verifyClient: (info) => !info.origin || info.origin === "https://good.example",
});
wss.on("listening", () => process.stdout.write(JSON.stringify({ port: wss.address().port }) + "\n"));
wss.on("connection", (ws) => {
  ws.on("error", () => {}); // ws closes with 1009 itself; keep the server up
  ws.on("message", (data, isBinary) => {
    const text = isBinary ? null : data.toString();
    if (text === "close-1003") return ws.close(1003, "nope");
    if (text === "shutdown") { for (const c of wss.clients) c.close(1001, "going away"); return; }
    ws.send(data, { binary: isBinary });
  });
});
setTimeout(() => process.exit(0), 120000);
