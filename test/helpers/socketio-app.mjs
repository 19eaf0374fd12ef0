// A small Socket.IO app for the browser: / serves a page that loads the Socket.IO client from
// /socket.io/socket.io.js, connects (long-polling first, then the WebSocket upgrade) and shows
// which app answered; a 'hello' event is acknowledged with the app's name, the payload and the
// transport in use. Used as a workspace's own app (listening on a port) and as the embedding app's
// `fallback: { handler, upgrade }` (in test/helpers/proxy-child.mjs: option `fallbackModule`).
import http from 'node:http';
import { Server as SocketIOServer } from 'socket.io';

const page = (name) => `<!doctype html>
<html><head><meta charset="utf-8"><title>${name}</title></head>
<body><p id="app">${name}</p>
<script src="/socket.io/socket.io.js"></script>
<script>
window.__state = { connected: false, transport: null, welcome: null, error: null };
const socket = io({ reconnection: false });
window.__socket = socket;
socket.on('connect', () => { window.__state.connected = true; window.__state.transport = socket.io.engine.transport.name; });
socket.io.engine.on('upgrade', (t) => { window.__state.transport = t.name; });
socket.on('welcome', (w) => { window.__state.welcome = w; });
socket.on('connect_error', (e) => { window.__state.error = String(e && e.message); });
window.__hello = (payload) => socket.timeout(10000).emitWithAck('hello', payload);
</script></body></html>`;

/** An http.Server (not listening) serving the page and Socket.IO under `name`. */
export function createSocketIoApp(name) {
  const html = page(name);
  const server = http.createServer((req, res) => {
    if (req.url === '/' || req.url?.startsWith('/?')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(html), 'cache-control': 'no-store' });
      res.end(html);
    } else {
      res.writeHead(404, { 'content-type': 'text/plain', 'content-length': 9 });
      res.end('not found');
    }
  });
  const io = new SocketIOServer(server, { serveClient: true });
  io.on('connection', (socket) => {
    socket.emit('welcome', { app: name });
    socket.on('hello', (payload, ack) => ack({ app: name, got: payload, transport: socket.conn.transport.name }));
  });
  return { server, io };
}

/** For proxy-child's `fallbackModule`: the embedding app as a fallback handler. */
export function createFallback() {
  const { server } = createSocketIoApp('embedding app');
  return {
    handler: (req, res) => server.emit('request', req, res),
    upgrade: (req, socket, head) => server.emit('upgrade', req, socket, head),
  };
}
