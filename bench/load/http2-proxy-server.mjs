// The h2c comparison point: the npm `http2-proxy` package inside a plain `http2.createServer`
// (cleartext, prior knowledge), routed by X-Cmux-Port-Internal to 127.0.0.1 over HTTP/1.1 with a
// keep-alive agent. `node http2-proxy-server.mjs --port <p>`
import http from 'node:http';
import http2 from 'node:http2';
import { parseArgs } from 'node:util';
import proxy from 'http2-proxy';

const { values } = parseArgs({ options: { port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' } } });
const agent = new http.Agent({ keepAlive: true, maxSockets: 1024 });

const server = http2.createServer();
server.on('request', (req, res) => {
  const port = Number(req.headers['x-cmux-port-internal']);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    res.writeHead(400, { 'content-type': 'text/plain' });
    res.end('missing X-Cmux-Port-Internal');
    return;
  }
  proxy.web(
    req,
    res,
    { hostname: '127.0.0.1', port, onReq: (_req, options) => http.request({ ...options, agent }) },
    (err) => {
      if (err && !res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`proxy error: ${err.message}`);
      }
    },
  );
});
server.listen(Number(values.port), values.host, () => console.log(`http2-proxy on ${values.port}`));
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
