// Proxy CPU for a chunked answer of 1-byte chunks (an upstream streaming tiny pieces), the
// client reading it all, side by side in one run: direct (client to upstream, wall time only),
// this build's CLI, the baseline Node proxy, and optionally another build's CLI. Each proxy runs
// in a process of its own (pinned to CPU 0 when `taskset` is there; client and upstream on CPU
// 1); its CPU is read from /proc/<pid>/stat around each fetch. With --h2c the client speaks h2c
// (prior knowledge, Node's http2 client) and only the proxies that do are measured.
// Usage: node bench/hostile/tiny-chunk-answers.mjs [chunks=1048576] [repeat=3] [--ref-cli FILE] [--h2c]
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const refAt = args.indexOf('--ref-cli');
const REF_CLI = refAt >= 0 ? args.splice(refAt, 2)[1] : null;
const h2cAt = args.indexOf('--h2c');
const H2C = h2cAt >= 0 && args.splice(h2cAt, 1).length === 1;
const CHUNKS = Number(args[0] ?? 1024 * 1024);
const REPEAT = Number(args[1] ?? 3);
const CLI = fileURLToPath(new URL('../../dist/cmux-proxy.js', import.meta.url));
const BASELINE = fileURLToPath(new URL('../baseline/old-cmux-proxy.mjs', import.meta.url));
const TICK_MS = 10; // CLK_TCK 100
const TASKSET = spawnSync('taskset', ['-c', '1', 'true']).status === 0;
if (TASKSET) spawnSync('taskset', ['-pc', '1', String(process.pid)], { stdio: 'ignore' });

function cpuMs(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'latin1').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) * TICK_MS;
}

/** An upstream answering every request with CHUNKS 1-byte chunks, written as fast as it is taken. */
async function startUpstream() {
  const block = Buffer.from('1\r\nz\r\n'.repeat(16384));
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    let text = '';
    socket.on('data', (d) => {
      text += d.toString('latin1');
      if (!text.includes('\r\n\r\n')) return;
      text = '';
      socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n');
      let sent = 0;
      const pump = () => {
        while (sent < CHUNKS) {
          sent += 16384;
          if (!socket.write(block)) return void socket.once('drain', pump);
        }
        socket.write('0\r\n\r\n');
      };
      pump();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

/** Fetches one answer through `port`; resolves with the wall time in ms once its last chunk came. */
function fetchOnce(port, upstreamPort) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.write(`GET /tiny HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstreamPort}\r\nConnection: close\r\n\r\n`);
    });
    let bytes = 0;
    let tail = '';
    socket.on('data', (d) => {
      bytes += d.length;
      tail = (tail + d.toString('latin1')).slice(-5);
      if (tail === '0\r\n\r\n') {
        socket.destroy();
        resolve({ ms: Number(process.hrtime.bigint() - t0) / 1e6, bytes });
      }
    });
    socket.on('error', reject);
    setTimeout(() => reject(new Error(`no end after 120 s (${bytes} bytes)`)), 120_000).unref();
  });
}

/** As fetchOnce, over h2c: resolves once the stream ended (bytes: the answer's data). */
function fetchOnceH2c(port, upstreamPort) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const client = http2.connect(`http://127.0.0.1:${port}`);
    client.on('error', reject);
    const req = client.request({ ':path': '/tiny', 'x-cmux-port-internal': String(upstreamPort) });
    let bytes = 0;
    req.on('data', (d) => (bytes += d.length));
    req.on('end', () => {
      client.close();
      resolve({ ms: Number(process.hrtime.bigint() - t0) / 1e6, bytes });
    });
    req.on('error', reject);
    setTimeout(() => reject(new Error(`no end after 120 s (${bytes} bytes)`)), 120_000).unref();
  });
}

async function startProxy(command, argv, port) {
  const child = spawn(TASKSET ? 'taskset' : command, TASKSET ? ['-c', '0', command, ...argv] : argv, { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise((r) => net.connect(port, '127.0.0.1').on('connect', function () { this.destroy(); r(true); }).on('error', () => r(false)));
    if (ok) return child;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill();
  throw new Error(`${argv.join(' ')}: not listening on ${port}`);
}

async function freePort() {
  const s = net.createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = s.address().port;
  await new Promise((r) => s.close(r));
  return port;
}

const upstream = await startUpstream();
const upstreamPort = upstream.address().port;
const systems = [
  ['direct', null],
  ['cmux-proxy', [process.execPath, CLI, '--host', '127.0.0.1', '--log-level', 'warn', '--port']],
  ['baseline', [process.execPath, BASELINE, '--keep-alive', '--port']],
];
if (REF_CLI !== null) systems.splice(2, 0, ['cmux-proxy-ref', [process.execPath, REF_CLI, '--host', '127.0.0.1', '--log-level', 'warn', '--port']]);
// Over h2c: the proxies only (the upstream and the baseline speak HTTP/1.1).
if (H2C) systems.splice(0, systems.length, ...systems.filter(([name]) => name.startsWith('cmux-proxy')));
const fetchAnswer = H2C ? fetchOnceH2c : fetchOnce;
const rows = [];
for (const [name, cmd] of systems) {
  let child = null;
  let port = upstreamPort;
  if (cmd !== null) {
    port = await freePort();
    child = await startProxy(cmd[0], [...cmd.slice(1), String(port)], port);
  }
  const runs = [];
  for (let i = 0; i < REPEAT; i++) {
    const before = child === null ? 0 : cpuMs(child.pid);
    const { ms, bytes } = await fetchAnswer(port, upstreamPort);
    runs.push({ ms, cpuMs: child === null ? null : cpuMs(child.pid) - before, bytes });
  }
  child?.kill();
  const ms = runs.map((r) => r.ms).sort((a, b) => a - b)[runs.length >> 1];
  const cpu = child === null ? null : runs.map((r) => r.cpuMs).sort((a, b) => a - b)[runs.length >> 1];
  rows.push({ name, ms, cpu });
  console.log(`${name.padEnd(15)} ${(CHUNKS / 2 ** 20 / (ms / 1000)).toFixed(2).padStart(7)} MiB/s payload  wall ${ms.toFixed(0).padStart(6)} ms  proxy CPU ${cpu === null ? '     –' : String(cpu).padStart(6)} ms  (median of ${REPEAT}; ${(runs[0].bytes / 2 ** 20).toFixed(1)} MiB ${H2C ? 'of data' : 'on the wire'})`);
}
const cmux = rows.find((r) => r.name === 'cmux-proxy');
for (const r of rows) if (r !== cmux && r.cpu !== null) console.log(`cmux-proxy CPU ÷ ${r.name}: ${(cmux.cpu / r.cpu).toFixed(2)}`);
upstream.close();
