// Node's ws: echo, or relay to every other client with --broadcast. Prints its port.
// Same settings as the Python servers: no permessage-deflate, 16 MiB messages, no pings.
import { WebSocketServer } from 'ws';

const args = process.argv.slice(2);
const broadcast = args.includes('--broadcast');
const portIndex = args.indexOf('--port');
const port = portIndex >= 0 ? Number(args[portIndex + 1]) : 0;
const hostIndex = args.indexOf('--host');
const host = hostIndex >= 0 ? args[hostIndex + 1] : '127.0.0.1';

const wss = new WebSocketServer({
  host,
  port,
  backlog: 1024,
  perMessageDeflate: false,
  maxPayload: 16 * 1024 * 1024,
  clientTracking: broadcast,
});

wss.on('listening', () => console.log(String(wss.address().port)));

wss.on('connection', (ws) => {
  ws.on('error', () => {});
  if (broadcast) {
    ws.on('message', (data, isBinary) => {
      for (const client of wss.clients) {
        if (client !== ws && client.readyState === 1) client.send(data, { binary: isBinary });
      }
    });
  } else {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  }
});

process.on('SIGTERM', () => process.exit(0));
