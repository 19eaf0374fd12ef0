// A peer in the load benchmark: http-proxy-3 (the maintained fork of http-proxy) inside a plain
// `http.createServer`, as its README's "custom server logic" example, with a keep-alive agent
// (without one it sends `Connection: close` upstream) and `proxy.ws()` on 'upgrade' for
// WebSockets; routed by X-Cmux-Port-Internal to 127.0.0.1 over HTTP/1.1.
//   node http-proxy-3-server.mjs --port <p>
import http from 'node:http';
import { parseArgs } from 'node:util';
import { createProxyServer } from 'http-proxy-3';

const { values } = parseArgs({ options: { port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' } } });
const agent = new http.Agent({ keepAlive: true, maxSockets: 1024 });
const proxy = createProxyServer({ agent, ws: true });

/** The upstream port from X-Cmux-Port-Internal, or 0 when the header is not a port. */
function targetPort(req) {
  const port = Number(req.headers['x-cmux-port-internal']);
  return Number.isInteger(port) && port >= 1 && port <= 65535 ? port : 0;
}

proxy.on('error', (err, _req, res) => {
  // `res` is the ServerResponse for requests and the client socket for WebSockets
  if (typeof res?.writeHead !== 'function') {
    res?.destroy?.();
  } else if (!res.headersSent) {
    res.writeHead(502, { 'content-type': 'text/plain' });
    res.end(`proxy error: ${err.message}`);
  } else {
    res.destroy();
  }
});

const server = http.createServer((req, res) => {
  const port = targetPort(req);
  if (!port) {
    res.writeHead(400, { 'content-type': 'text/plain' });
    res.end('missing X-Cmux-Port-Internal');
    return;
  }
  proxy.web(req, res, { target: { host: '127.0.0.1', port } });
});
server.on('upgrade', (req, socket, head) => {
  const port = targetPort(req);
  if (!port) {
    socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    return;
  }
  proxy.ws(req, socket, head, { target: { host: '127.0.0.1', port } });
});
server.listen(Number(values.port), values.host, () => console.log(`http-proxy-3 on ${values.port}`));
// held WebSockets would keep a graceful close waiting: the benchmark only needs the process gone
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
