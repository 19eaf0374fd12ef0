// WebSocket client for the load benchmark. Opens --count connections to 127.0.0.1:--port (at most
// --concurrency handshakes at a time, each with `X-Cmux-Port-Internal: <target port>`), sends one
// message on each and waits for its echo, keeping every connection open. Then prints one JSON line
// { count, opened, echoed, failed, ms, startedAt, endedAt, firstError } (epoch ms); with
// --latency-file it first writes there a JSON array of each echo's time (send to echo, ms). With --hold it then waits
// for a line on stdin (the harness reads the proxy's memory meanwhile), prints { stillOpen } and
// closes everything.
//
// --target-port and --local-address take comma-separated lists, used in turn by connection: the
// upstream each connection is routed to, and the source address it binds (127.0.0.x) so that no
// (source, destination) address pair runs out of ephemeral ports.
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    'target-port': { type: 'string' },
    'local-address': { type: 'string' },
    count: { type: 'string', default: '100' },
    concurrency: { type: 'string', default: '200' },
    hold: { type: 'boolean', default: false },
    'latency-file': { type: 'string' },
    'echo-timeout-ms': { type: 'string', default: '60000' },
  },
});
const list = (s) => (s ? s.split(',').map((x) => x.trim()).filter(Boolean) : []);
const count = Number(values.count);
const concurrency = Number(values.concurrency);
const url = `ws://127.0.0.1:${values.port}/echo`;
const targets = list(values['target-port']).map((port) => ({ 'x-cmux-port-internal': port }));
const sources = list(values['local-address']);
if (targets.length === 0) throw new Error('--target-port is required');

const now = () => performance.timeOrigin + performance.now();
const sockets = [];
const latencyMs = [];
let next = 0;
let inFlight = 0;
let opened = 0;
let echoed = 0;
let failed = 0;
let firstError = null;
const startedAt = now();
const echoTimeoutMs = Number(values['echo-timeout-ms']);
// Each connection that has not echoed within --echo-timeout-ms of its start counts as failed
// (whatever stage it is stuck in), so the run always ends; stages say where they stuck.
const stuck = { connecting: 0, awaitingEcho: 0 };

// progress on stderr, for a run that stalls
const progress = setInterval(() => {
  process.stderr.write(`ws-client ${process.pid}: opened ${opened} echoed ${echoed} failed ${failed} in flight ${inFlight}\n`);
}, 5000);
progress.unref();

function finish() {
  clearInterval(progress);
  const endedAt = now();
  const result = { count, opened, echoed, failed, ms: endedAt - startedAt, startedAt, endedAt, firstError, stuck };
  if (values['latency-file']) writeFileSync(values['latency-file'], JSON.stringify(latencyMs));
  console.log(JSON.stringify(result));
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
  let sentAt = 0;
  const timer = setTimeout(() => {
    if (sentAt === 0) stuck.connecting++;
    else stuck.awaitingEcho++;
    firstError ??= `no echo within ${echoTimeoutMs} ms (${sentAt === 0 ? 'not open' : 'sent'})`;
    settle(false);
  }, echoTimeoutMs);
  const settle = (ok) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    if (ok) {
      echoed++;
      latencyMs.push(Math.round((now() - sentAt) * 100) / 100);
    } else failed++;
    inFlight--;
    if (echoed + failed === count) finish();
    else launch();
  };
  const options = { headers: targets[i % targets.length], perMessageDeflate: false, handshakeTimeout: 30000 };
  if (sources.length > 0) options.localAddress = sources[i % sources.length];
  const ws = new WebSocket(url, options);
  sockets.push(ws);
  const payload = `echo-${i}`;
  ws.on('open', () => {
    opened++;
    sentAt = now();
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
    if (!done) firstError ??= 'closed before the echo';
    settle(false);
  });
}

function launch() {
  while (inFlight < concurrency && next < count) openOne(next++);
}
if (count === 0) finish();
else launch();
