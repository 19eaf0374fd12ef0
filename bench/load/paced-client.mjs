// Paced HTTP/1.1 load (wrk2-like open loop) for the fixed-rate CPU measurement: issues --rate
// requests per second for --seconds over at most --connections keep-alive connections (a request
// whose connection closes just uses a new one), each with `X-Cmux-Port-Internal: --target-port`,
// then waits for the stragglers and prints one JSON line
// { sent, ok, failed, seconds, rps, meanMs, p99Ms }.
// Requests leave in bursts every --tick-ms (default 10 ms: 10 requests per burst at 1,000 req/s,
// the pattern of `h2load --rps 100 -c10`). CPU at a fixed rate depends strongly on this: on this
// VM, spreading the same 1,000 req/s evenly (1 ms ticks) costs nginx ~2.5x the CPU of 10 ms bursts,
// because every wake-up of an idle core is expensive. We do not use h2load --rps itself because it
// hangs when the server answers `Connection: close` (the baseline without keep-alive does).

import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    'target-port': { type: 'string' },
    path: { type: 'string', default: '/small' },
    rate: { type: 'string', default: '1000' },
    seconds: { type: 'string', default: '5' },
    connections: { type: 'string', default: '10' },
    'tick-ms': { type: 'string', default: '10' },
  },
});
const rate = Number(values.rate);
const durationMs = Number(values.seconds) * 1000;
const agent = new http.Agent({ keepAlive: true, maxSockets: Number(values.connections) });
const options = {
  host: '127.0.0.1',
  port: Number(values.port),
  path: values.path,
  agent,
  headers: { 'x-cmux-port-internal': values['target-port'] },
};

const latencies = [];
let sent = 0;
let ok = 0;
let failed = 0;
const start = performance.now();

function fire() {
  sent++;
  const t0 = performance.now();
  const req = http.get(options, (res) => {
    res.resume();
    res.on('end', () => {
      if (res.statusCode === 200) {
        ok++;
        latencies.push(performance.now() - t0);
      } else failed++;
      maybeDone();
    });
    res.on('error', () => {
      failed++;
      maybeDone();
    });
  });
  req.on('error', () => {
    failed++;
    maybeDone();
  });
}

let stopped = false;
const ticker = setInterval(() => {
  const elapsed = performance.now() - start;
  const due = Math.min(Math.floor((elapsed * rate) / 1000), Math.floor((durationMs * rate) / 1000));
  while (sent < due) fire();
  if (elapsed >= durationMs) {
    clearInterval(ticker);
    stopped = true;
    maybeDone();
  }
}, Number(values['tick-ms']));

const giveUp = setTimeout(report, durationMs + 5000);

function maybeDone() {
  if (stopped && ok + failed === sent) report();
}

function report() {
  clearTimeout(giveUp);
  const seconds = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  const mean = latencies.reduce((a, b) => a + b, 0) / (latencies.length || 1);
  const p99 = latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * 0.99))] ?? null;
  console.log(JSON.stringify({ sent, ok, failed: failed + (sent - ok - failed), seconds, rps: ok / seconds, meanMs: mean, p99Ms: p99 }));
  agent.destroy();
  process.exit(0);
}
