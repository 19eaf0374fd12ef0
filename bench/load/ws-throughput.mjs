#!/usr/bin/env node
// WebSocket echo throughput through the proxy: one `ws` echo server and --conns `ws` clients in
// this process (pinned to CPU 1), the proxy CLI (--proxy, default dist/cmux-proxy.js) as a child
// pinned to CPU 0. Each client keeps --window binary messages of --size bytes in flight for
// --seconds; prints one JSON line per repetition and the medians: MiB/s echoed (counted once,
// each byte crosses the proxy twice) and the proxy's CPU ms per GiB echoed (/proc/<pid>/stat).
//
//   node bench/load/ws-throughput.mjs [--proxy dist/cmux-proxy.js] [--size 65536] [--window 8]
//                                     [--conns 4] [--seconds 5] [--reps 5]
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { once } from 'node:events';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import WebSocket, { WebSocketServer } from 'ws';

const { values } = parseArgs({
  options: {
    proxy: { type: 'string', default: 'dist/cmux-proxy.js' },
    size: { type: 'string', default: '65536' },
    window: { type: 'string', default: '8' },
    conns: { type: 'string', default: '4' },
    seconds: { type: 'string', default: '5' },
    reps: { type: 'string', default: '5' },
  },
});
const size = Number(values.size);
const windowSize = Number(values.window);
const conns = Number(values.conns);
const seconds = Number(values.seconds);
const reps = Number(values.reps);

spawnSync('taskset', ['-pc', '1', String(process.pid)], { stdio: 'ignore' });
const TICKS = 100;
function cpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS;
}

const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false });
await once(wss, 'listening');
wss.on('connection', (ws) => ws.on('message', (data) => ws.send(data, { binary: true })));
const targetPort = wss.address().port;

async function startProxy() {
  const child = spawn('taskset', ['-c', '0', process.execPath, resolve(values.proxy), '--port', '0', '--log-level', 'info'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  for (let i = 0; i < 200; i++) {
    const m = /listening on [^:\s]+:(\d+)/.exec(stderr);
    if (m) return { child, port: Number(m[1]) };
    await new Promise((r) => setTimeout(r, 25));
  }
  child.kill('SIGKILL');
  throw new Error(`proxy did not start: ${stderr}`);
}

async function repetition() {
  const { child, port } = await startProxy();
  try {
    const payload = Buffer.alloc(size, 0x5a);
    const clients = await Promise.all(
      Array.from({ length: conns }, async () => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/echo`, { headers: { 'x-cmux-port-internal': String(targetPort) }, perMessageDeflate: false });
        await once(ws, 'open');
        return ws;
      }),
    );
    let echoed = 0;
    let running = true;
    for (const ws of clients) {
      ws.on('message', (data) => {
        echoed += data.length;
        if (running) ws.send(payload);
      });
    }
    // Warm-up second, then the measured window.
    for (const ws of clients) for (let i = 0; i < windowSize; i++) ws.send(payload);
    await new Promise((r) => setTimeout(r, 1000));
    const bytes0 = echoed;
    const cpu0 = cpuSeconds(child.pid);
    const t0 = process.hrtime.bigint();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const bytes = echoed - bytes0;
    const cpu = cpuSeconds(child.pid) - cpu0;
    const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
    running = false;
    for (const ws of clients) ws.terminate();
    const gib = bytes / 2 ** 30;
    return { mibPerSecond: bytes / 2 ** 20 / elapsed, cpuMsPerGiB: (cpu * 1000) / gib, proxyCpuPercent: (cpu / elapsed) * 100 };
  } finally {
    child.kill('SIGKILL');
    await once(child, 'exit');
  }
}

const runs = [];
for (let i = 0; i < reps; i++) {
  const r = await repetition();
  runs.push(r);
  console.log(JSON.stringify({ rep: i + 1, ...r }));
}
const median = (key) => {
  const sorted = runs.map((r) => r[key]).sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
};
console.log(JSON.stringify({ proxy: values.proxy, size, window: windowSize, conns, seconds, reps, medianMiBPerSecond: median('mibPerSecond'), medianCpuMsPerGiB: median('cpuMsPerGiB'), medianProxyCpuPercent: median('proxyCpuPercent') }));
wss.close();
