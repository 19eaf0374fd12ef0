#!/usr/bin/env node
// The load benchmark's baseline: a re-creation of the Node proxy cmux used before cmux-proxy,
// built the way that proxy was built, so the benchmark measures the cost of its design:
//
// - a plain `http.createServer`; every request creates a NEW `http-proxy` server
//   (`httpProxy.createProxyServer`) with `changeOrigin: true` and 120 s timeouts, and calls
//   `proxy.web(req, res)`; proxy errors become a `502` with a short text body;
// - routing by the `X-Cmux-Port-Internal` header, else by a `<container>.<port>.localhost` Host;
//   the container part is not looked up: every target is the port on 127.0.0.1, as the old proxy
//   did for local ports; anything else gets `400`;
// - WebSocket upgrades go through http-proxy's ws mode (`proxy.ws(req, socket, head)`), again
//   with a new http-proxy server per upgrade;
// - no keep-alive to upstreams (http-proxy's default: a new connection per request). The
//   `--keep-alive` variant gives every request's http-proxy one shared keep-alive `http.Agent`:
//   a second, fairer baseline.
//
//   node bench/baseline/old-cmux-proxy.mjs --port 9777 [--host 127.0.0.1] [--keep-alive]
//
// Needs the npm package http-proxy (a devDependency of this repository).
import http from 'node:http';
import { parseArgs } from 'node:util';
import httpProxy from 'http-proxy';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '9777' },
    host: { type: 'string', default: '127.0.0.1' },
    'keep-alive': { type: 'boolean', default: false },
  },
});

const TIMEOUT_MS = 120_000;
const agent = values['keep-alive'] ? new http.Agent({ keepAlive: true, maxSockets: 1024 }) : undefined;
/** `<container>.<port>.localhost`, with an optional `:port` of the proxy itself. */
const CONTAINER_HOST = /^[a-z0-9][a-z0-9_.-]*\.(\d{1,5})\.localhost(?::\d+)?$/i;

/** The upstream port a request names, or 0. */
function targetPort(req) {
  const header = req.headers['x-cmux-port-internal'];
  let text;
  if (header !== undefined) text = header;
  else {
    const match = CONTAINER_HOST.exec(req.headers.host ?? '');
    if (match === null) return 0;
    text = match[1];
  }
  const port = Number(text);
  return Number.isInteger(port) && port > 0 && port < 65536 ? port : 0;
}

const server = http.createServer((req, res) => {
  const port = targetPort(req);
  if (port === 0) {
    res.writeHead(400, { 'content-type': 'text/plain' });
    res.end('no route: send X-Cmux-Port-Internal or use <container>.<port>.localhost');
    return;
  }
  const proxy = httpProxy.createProxyServer({
    target: `http://127.0.0.1:${port}`,
    changeOrigin: true,
    timeout: TIMEOUT_MS,
    proxyTimeout: TIMEOUT_MS,
    agent,
  });
  proxy.on('error', (err) => {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.writeHead(502, { 'content-type': 'text/plain' });
    res.end(`proxy error: ${err.message}`);
  });
  proxy.web(req, res);
});

server.on('upgrade', (req, socket, head) => {
  const port = targetPort(req);
  if (port === 0) {
    socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    return;
  }
  socket.setNoDelay(true);
  socket.setKeepAlive(true, 30_000);
  const proxy = httpProxy.createProxyServer({ target: `ws://127.0.0.1:${port}`, ws: true, changeOrigin: true });
  proxy.on('error', () => {
    if (socket.writable) socket.end('HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    else socket.destroy();
  });
  proxy.ws(req, socket, head);
});

server.listen(Number(values.port), values.host, () => {
  const { address, port } = server.address();
  process.stdout.write(`old cmux proxy (baseline${agent ? ', keep-alive' : ''}) listening on ${address}:${port}\n`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
