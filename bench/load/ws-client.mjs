// WebSocket client for the load benchmark. Opens --count connections to 127.0.0.1:--port (at most
// --concurrency handshakes at a time, each with `X-Cmux-Port-Internal: --target-port`), sends one
// message on each and waits for its echo, keeping every connection open. Then prints one JSON line
// { count, opened, echoed, failed, ms, firstError }. With --hold it then waits for a line on stdin
// (the harness reads the proxy's memory meanwhile), prints { stillOpen } and closes everything.
import { parseArgs } from 'node:util';
import WebSocket from 'ws';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    'target-port': { type: 'string' },
    count: { type: 'string', default: '100' },
    concurrency: { type: 'string', default: '200' },
    hold: { type: 'boolean', default: false },
  },
});
const count = Number(values.count);
const concurrency = Number(values.concurrency);
const url = `ws://127.0.0.1:${values.port}/echo`;
const headers = { 'x-cmux-port-internal': values['target-port'] };

const sockets = [];
let next = 0;
let inFlight = 0;
let opened = 0;
let echoed = 0;
let failed = 0;
let firstError = null;
const started = process.hrtime.bigint();

function finish() {
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  console.log(JSON.stringify({ count, opened, echoed, failed, ms, firstError }));
  if (!values.hold) closeAll(0);
  process.stdin.once('data', () => {
    const stillOpen = sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length;
    console.log(JSON.stringify({ stillOpen }));
    closeAll(0);
  });
}

function closeAll(code) {
  for (const ws of sockets) ws.terminate();
  process.exit(code);
}

function openOne(i) {
  inFlight++;
  let done = false;
  const settle = (ok) => {
    if (done) return;
    done = true;
    if (ok) echoed++;
    else failed++;
    inFlight--;
    if (echoed + failed === count) finish();
    else launch();
  };
  const ws = new WebSocket(url, { headers, perMessageDeflate: false, handshakeTimeout: 30000 });
  sockets.push(ws);
  const payload = `echo-${i}`;
  ws.on('open', () => {
    opened++;
    ws.send(payload);
  });
  ws.on('message', (data) => settle(String(data) === payload));
  ws.on('unexpected-response', (_req, res) => {
    firstError ??= `HTTP ${res.statusCode} instead of 101`;
    ws.terminate();
  });
  ws.on('error', (err) => {
    firstError ??= err.message;
    settle(false);
  });
  ws.on('close', () => {
    firstError ??= 'closed before the echo';
    settle(false);
  });
}

function launch() {
  while (inFlight < concurrency && next < count) openOne(next++);
}
if (count === 0) finish();
else launch();
