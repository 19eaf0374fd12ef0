// Upload client for the load benchmark: streams --bytes of body (one POST, Content-Length, with
// backpressure) to 127.0.0.1:--port carrying `X-Cmux-Port-Internal: --target-port`, and prints one
// JSON line { status, sent, received, ms } where `received` is the byte count the sink answered.
// --h2c sends it as one HTTP/2 stream (prior knowledge) instead of HTTP/1.1.
import http from 'node:http';
import http2 from 'node:http2';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    'target-port': { type: 'string' },
    bytes: { type: 'string', default: String(256 * 1024 * 1024) },
    chunk: { type: 'string', default: String(256 * 1024) },
    h2c: { type: 'boolean', default: false },
  },
});
const total = Number(values.bytes);
const chunk = Buffer.alloc(Number(values.chunk), 0x61);

const headers = {
  'x-cmux-port-internal': values['target-port'],
  'content-type': 'application/octet-stream',
  'content-length': String(total),
};
const started = process.hrtime.bigint();
let req;
if (values.h2c) {
  const session = http2.connect(`http://127.0.0.1:${values.port}`);
  session.on('error', (err) => req.emit('error', err));
  req = session.request({ ':method': 'POST', ':path': '/upload', ...headers });
  // an http.ClientRequest-like surface: 'response' with a readable carrying statusCode
  req.on('response', (h) => {
    req.statusCode = h[':status'];
    req.emit('h1response', req);
  });
} else {
  req = http.request({ host: '127.0.0.1', port: Number(values.port), method: 'POST', path: '/upload', agent: false, headers });
}
let sent = 0;
function pump() {
  while (sent < total) {
    const n = Math.min(chunk.length, total - sent);
    sent += n;
    if (!req.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
      req.once('drain', pump);
      return;
    }
  }
  req.end();
}
req.on(values.h2c ? 'h1response' : 'response', (res) => {
  let body = '';
  res.setEncoding('utf8');
  res.on('data', (c) => (body += c));
  res.on('end', () => {
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    console.log(JSON.stringify({ status: res.statusCode, sent, received: Number(body) || 0, ms }));
    process.exit(0);
  });
});
req.on('error', (err) => {
  console.log(JSON.stringify({ error: err.message, sent }));
  process.exit(1);
});
pump();
