// The workloads of the load benchmark. Each one names the systems it compares, the columns it
// reports, the ratios it shows, and how to run one repetition against one system. A repetition
// returns plain numbers (and `errors` > 0 when some requests failed); CPU figures are the proxy's
// process tree only (null for "direct", which has no proxy).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cpuSeconds, hwmKiB, parseH2load, parseWrk, resetHwm, rssKiB, runQueueWaitMs, withCpu } from './measure.mjs';
import { runCommand, sleep, startProcess, stopProcess } from './processes.mjs';
import { endpoint, LARGE_BYTES } from './servers.mjs';
import { adminStats, openFleet, PER_PROCESS, perWorker, startEchoServers } from './ws-fleet.mjs';

const here = new URL('.', import.meta.url).pathname;
const MiB = 1024 * 1024;
const header = (port) => `X-Cmux-Port-Internal: ${port}`;
const pid = (system) => system.handle?.pid ?? null;
const round = (x, digits = 2) => (x === null || x === undefined ? null : Number(x.toFixed(digits)));

function assertOk(res, what) {
  if (res.timedOut) throw new Error(`${what} timed out`);
  if (res.code !== 0) throw new Error(`${what} exited ${res.code ?? res.signal}: ${(res.stderr || res.stdout).trim().slice(-500)}`);
}

async function wrk(system, { backendPort, path, connections, seconds, directPort, tls = false }) {
  const { port, targetPort } = endpoint(system, backendPort, { directPort, tls });
  const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}${path}`;
  const args = ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency', '-H', header(targetPort), url];
  const { result: res, cpu } = await withCpu(pid(system), () => runCommand('wrk', 'wrk', args, { timeoutMs: (seconds + 20) * 1000 }));
  assertOk(res, 'wrk');
  const out = parseWrk(res.stdout);
  if (out.requests === 0) throw new Error(`wrk completed no request:\n${res.stdout}`);
  return { ...out, cpu };
}

async function h2load(system, { backendPort, directPort, args, seconds, requests, path = '/small', h2c = true, tls = false }) {
  const { port, targetPort } = endpoint(system, backendPort, { h2c, tls, directPort });
  const amount = requests ? ['-n', String(requests)] : ['-D', String(seconds)];
  const argv = [...args, ...amount, '-H', header(targetPort), `${tls ? 'https' : 'http'}://127.0.0.1:${port}${path}`];
  const { result: res, cpu, wall } = await withCpu(pid(system), () =>
    runCommand('h2load', 'h2load', argv, { timeoutMs: ((seconds ?? 10) + 20) * 1000 }),
  );
  assertOk(res, 'h2load');
  const out = parseH2load(res.stdout);
  if (out.succeeded === 0) throw new Error(`h2load: no request succeeded:\n${res.stdout}`);
  return { ...out, cpu, wall };
}

/** Systems that accept h2c (prior knowledge) and the ones that speak HTTP/1.1. */
const H2C = new Set(['direct', 'cmux-proxy', 'cmux-proxy-ref', 'nginx', 'http2-proxy', 'fastify']);
const H1 = new Set(['direct', 'cmux-proxy', 'cmux-proxy-ref', 'cmux-proxy-observed', 'baseline', 'baseline-ka', 'nginx', 'fastify', 'http-proxy-3', 'node-splice']);
/** Systems that terminate TLS (h2 and HTTP/1.1 by ALPN); direct is the upstream nginx's TLS port. */
const TLS = new Set(['direct', 'cmux-proxy', 'cmux-proxy-ref', 'nginx']);

/**
 * Warms a long-lived system once after it starts (JIT, pools), by request count so every system
 * gets the same amount: small responses over HTTP/1.1 and h2c, and a few 1 MiB downloads.
 */
export async function warmUp(ctx, system) {
  const up = ctx.backends.upstream;
  if (H1.has(system.name)) {
    await h2load(system, { backendPort: up.port, args: ['--h1', '-c50'], requests: 3000, h2c: false });
    await h2load(system, { backendPort: up.port, args: ['--h1', '-c4'], requests: 100, path: '/1m', h2c: false });
  }
  if (H2C.has(system.name)) {
    await h2load(system, { backendPort: up.port, directPort: up.h2cPort, args: ['-c10', '-m10'], requests: 3000 });
  }
  if (TLS.has(system.name)) {
    await h2load(system, { backendPort: up.port, directPort: up.tlsPort, args: ['-c8', '-m10'], requests: 3000, tls: true });
    await h2load(system, { backendPort: up.port, directPort: up.tlsPort, args: ['--h1', '-c8'], requests: 3000, tls: true });
  }
}

const cpuPer = (cpu, n) => (cpu === null || !n ? null : round((cpu * 1e6) / n, 1));

// ---- workloads --------------------------------------------------------------------------------

const h1Small = {
  name: 'h1-small',
  title: 'HTTP/1.1 keep-alive, 100 B responses (wrk -t1 -c50 --latency)',
  // cmux-proxy-observed: the row "HTTP/1.1 with access log and metrics on" (access log to a file,
  // admin listener up), its CPU per request beside the plain cmux-proxy row.
  // node-splice: no HTTP at all, the floor a Node process pays for the same bytes (a reference).
  systems: ['direct', 'cmux-proxy', 'cmux-proxy-ref', 'cmux-proxy-observed', 'baseline', 'baseline-ka', 'nginx', 'fastify', 'http-proxy-3', 'node-splice'],
  columns: [
    { key: 'rps', label: 'req/s', digits: 0 },
    { key: 'p99Ms', label: 'p99 ms', digits: 2 },
    { key: 'cpuUsPerReq', label: 'CPU µs/req', digits: 1 },
  ],
  ratios: [
    { key: 'rps', label: 'req/s', refs: ['direct', 'baseline-ka', 'nginx'] },
    { key: 'cpuUsPerReq', label: 'CPU/req', refs: ['cmux-proxy', 'baseline-ka', 'nginx', 'fastify', 'http-proxy-3', 'node-splice'] },
    { key: 'p99Ms', label: 'p99', refs: ['nginx'] },
  ],
  async run(ctx, system) {
    const r = await wrk(system, { backendPort: ctx.backends.upstream.port, path: '/small', connections: 50, seconds: ctx.cfg.seconds.h1 });
    return {
      rps: round(r.rps, 0),
      p50Ms: r.p50Ms,
      p99Ms: r.p99Ms,
      requests: r.requests,
      errors: r.non2xx + r.socketErrors,
      cpuUsPerReq: cpuPer(r.cpu, r.requests),
    };
  },
};

const h2cSmall = {
  name: 'h2c-small',
  title: 'h2c (prior knowledge), 100 B responses (h2load -c10 -m10); proxies forward over HTTP/1.1',
  systems: ['direct', 'cmux-proxy', 'cmux-proxy-ref', 'http2-proxy', 'nginx', 'fastify'],
  columns: [
    { key: 'rps', label: 'req/s', digits: 0 },
    { key: 'meanMs', label: 'mean ms', digits: 2 },
    { key: 'cpuUsPerReq', label: 'CPU µs/req', digits: 1 },
  ],
  ratios: [
    { key: 'rps', label: 'req/s', refs: ['direct', 'http2-proxy', 'nginx'] },
    { key: 'cpuUsPerReq', label: 'CPU/req', refs: ['http2-proxy', 'nginx', 'fastify'] },
  ],
  async run(ctx, system) {
    const up = ctx.backends.upstream;
    const r = await h2load(system, { backendPort: up.port, directPort: up.h2cPort, args: ['-c10', '-m10'], seconds: ctx.cfg.seconds.h2c });
    return {
      rps: round(r.rps, 0),
      meanMs: r.meanMs,
      requests: r.succeeded,
      errors: r.failed + r.errored + r.timeout + r.statusErrors,
      cpuUsPerReq: cpuPer(r.cpu, r.done),
    };
  },
};

/**
 * TLS, what a browser pays (Chromium speaks HTTP/2 only over TLS): keep-alive connections, so
 * the figure is the per-request cost of records and HTTP, not handshakes. Every system uses the
 * same ECDSA P-256 certificate; nginx has a session cache; proxies forward over cleartext HTTP/1.1.
 */
const tlsH2Small = {
  name: 'tls-h2-small',
  title: 'TLS h2 (ALPN), 100 B responses (h2load -c8 -m10, ECDSA P-256); proxies forward over HTTP/1.1',
  systems: ['direct', 'cmux-proxy', 'cmux-proxy-ref', 'nginx'],
  columns: h2cSmall.columns,
  ratios: [
    { key: 'rps', label: 'req/s', refs: ['direct', 'nginx'] },
    { key: 'cpuUsPerReq', label: 'CPU/req', refs: ['cmux-proxy-ref', 'nginx'] },
  ],
  async run(ctx, system) {
    const up = ctx.backends.upstream;
    const r = await h2load(system, { backendPort: up.port, directPort: up.tlsPort, args: ['-c8', '-m10'], seconds: ctx.cfg.seconds.h2c, tls: true });
    return {
      rps: round(r.rps, 0),
      meanMs: r.meanMs,
      requests: r.succeeded,
      errors: r.failed + r.errored + r.timeout + r.statusErrors,
      cpuUsPerReq: cpuPer(r.cpu, r.done),
    };
  },
};

/**
 * TLS HTTP/1.1 measured as TLS h2 is: 8 connections with 10 requests in flight on each, which
 * over HTTP/1.1 means pipelined (answered in order, one at a time per connection).
 */
const tlsH1Small = {
  name: 'tls-h1-small',
  title: 'TLS HTTP/1.1 keep-alive, 100 B responses (h2load --h1 -c8 -m10: pipelined, ECDSA P-256)',
  systems: ['direct', 'cmux-proxy', 'cmux-proxy-ref', 'nginx'],
  columns: h2cSmall.columns,
  ratios: [
    { key: 'rps', label: 'req/s', refs: ['direct', 'nginx'] },
    { key: 'cpuUsPerReq', label: 'CPU/req', refs: ['cmux-proxy-ref', 'nginx'] },
  ],
  async run(ctx, system) {
    const up = ctx.backends.upstream;
    const r = await h2load(system, { backendPort: up.port, directPort: up.tlsPort, args: ['--h1', '-c8', '-m10'], seconds: ctx.cfg.seconds.h1, tls: true });
    return {
      rps: round(r.rps, 0),
      meanMs: r.meanMs,
      requests: r.succeeded,
      errors: r.failed + r.errored + r.timeout + r.statusErrors,
      cpuUsPerReq: cpuPer(r.cpu, r.done),
    };
  },
};

/**
 * 1 MiB downloads of a file nginx serves with sendfile and tcp_nopush, over `connections`
 * keep-alive connections. The proxy is held to ≥ DOWNLOAD_FLOOR × direct in the same run (see
 * checkFloors). `uncorked`: the same file without tcp_nopush (not gated; bench/MEASUREMENTS.md).
 */
function download(connections, uncorked = false) {
  const path = uncorked ? '/1m-uncorked' : '/1m';
  return {
    name: uncorked ? `uncorked-download-1m-c${connections}` : `download-1m-c${connections}`,
    title: `1 MiB downloads (wrk -t1 -c${connections}${uncorked ? '; upstream without tcp_nopush' : ''})`,
    systems: ['direct', 'cmux-proxy', 'cmux-proxy-ref', 'baseline', 'baseline-ka', 'nginx'],
    columns: [
      { key: 'mibps', label: 'MiB/s', digits: 0 },
      { key: 'cpuUsPerReq', label: 'CPU µs/MiB', digits: 0 },
      { key: 'peakRssMiB', label: 'peak RSS MiB', digits: 1 },
      { key: 'cpuWaitMs', label: 'waited for its CPU, ms', digits: 0 },
    ],
    ratios: [
      { key: 'mibps', label: 'MiB/s', refs: ['direct', 'baseline-ka', 'nginx'] },
      { key: 'cpuUsPerReq', label: 'CPU/MiB', refs: ['baseline-ka', 'nginx'] },
    ],
    async run(ctx, system) {
      const hwmReset = pid(system) ? resetHwm(pid(system)) : null;
      const wait0 = pid(system) ? runQueueWaitMs(pid(system)) : null;
      const r = await wrk(system, { backendPort: ctx.backends.upstream.port, path, connections, seconds: ctx.cfg.seconds.download });
      const wait1 = pid(system) ? runQueueWaitMs(pid(system)) : null;
      const complete = r.bytes >= r.requests * LARGE_BYTES * 0.99;
      return {
        mibps: round((r.requests * LARGE_BYTES) / MiB / r.seconds, 1),
        requests: r.requests,
        errors: r.non2xx + r.socketErrors + (complete ? 0 : 1),
        cpuUsPerReq: cpuPer(r.cpu, r.requests),
        peakRssMiB: pid(system) ? round(hwmKiB(pid(system)) / 1024, 1) : null,
        // the proxy's main thread runnable but not running: the machine's share of the figure
        cpuWaitMs: wait0 === null || wait1 === null ? null : round(wait1 - wait0, 0),
        hwmReset,
      };
    },
  };
}

/** Gated download workloads, by connection count (each one's proxy/direct ratio is a floor); the uncorked one is not. */
export const DOWNLOAD_CONNECTIONS = [1, 4, 16];
const downloads = [...DOWNLOAD_CONNECTIONS.map((c) => download(c)), download(4, true)];

const upload = {
  name: 'upload-256m',
  title: '256 MiB upload, one streamed POST (Node client -> Node sink); proxy started fresh for every repetition',
  systems: ['direct', 'cmux-proxy', 'cmux-proxy-ref', 'baseline', 'baseline-ka', 'nginx'],
  freshPerRep: true,
  columns: [
    { key: 'mibps', label: 'MiB/s', digits: 0 },
    { key: 'cpuUsPerMiB', label: 'CPU µs/MiB', digits: 0 },
    { key: 'idleRssMiB', label: 'RSS before MiB', digits: 1 },
    { key: 'peakRssMiB', label: 'peak RSS MiB', digits: 1 },
    { key: 'peakGrowthMiB', label: 'peak − before MiB', digits: 1 },
  ],
  ratios: [
    { key: 'mibps', label: 'MiB/s', refs: ['direct', 'baseline-ka', 'nginx'] },
    { key: 'cpuUsPerMiB', label: 'CPU/MiB', refs: ['baseline-ka', 'nginx'] },
  ],
  async upload(ctx, system, bytes) {
    const { port, targetPort } = endpoint(system, ctx.backends.sink.port);
    const args = [join(here, 'upload-client.mjs'), '--port', String(port), '--target-port', String(targetPort), '--bytes', String(bytes)];
    const { result: res, cpu } = await withCpu(pid(system), () =>
      runCommand('upload-client', process.execPath, args, { timeoutMs: 120000 }),
    );
    assertOk(res, 'upload client');
    const out = JSON.parse(res.stdout.trim().split('\n').pop());
    if (out.status !== 200 || out.received !== bytes) {
      throw new Error(`upload: status ${out.status}, sink received ${out.received} of ${bytes} bytes`);
    }
    return { ...out, cpu };
  },
  async run(ctx, system) {
    const p = pid(system);
    const bytes = ctx.cfg.uploadBytes;
    await sleep(300); // let the fresh process settle
    const rssBefore = p ? rssKiB(p) : null;
    const hwmReset = p ? resetHwm(p) : null;
    const r = await this.upload(ctx, system, bytes);
    const peak = p ? hwmKiB(p) : null;
    return {
      mibps: round(bytes / MiB / (r.ms / 1000), 1),
      cpuUsPerMiB: r.cpu === null ? null : round((r.cpu * 1e6) / (bytes / MiB), 0),
      idleRssMiB: p ? round(rssBefore / 1024, 1) : null,
      peakRssMiB: p ? round(peak / 1024, 1) : null,
      peakGrowthMiB: p ? round((peak - rssBefore) / 1024, 1) : null,
      hwmReset,
      errors: 0,
    };
  },
};

/**
 * HTTP/2 bodies against HTTP/1.1 ones on the same system in the same repetition: h2c minus
 * HTTP/1.1 is what the proxy's HTTP/2 side costs (proxies forward both to HTTP/1.1 upstreams).
 */
const h2cUpload = {
  name: 'h2c-upload-64m',
  title: '64 MiB upload, one POST over h2c (one stream) and over HTTP/1.1, in turn (Node client -> Node sink)',
  systems: ['cmux-proxy', 'cmux-proxy-ref', 'nginx'],
  columns: [
    { key: 'h2cMibps', label: 'h2c MiB/s', digits: 0 },
    { key: 'h1Mibps', label: 'HTTP/1.1 MiB/s', digits: 0 },
    { key: 'h2cVsH1', label: 'h2c ÷ HTTP/1.1', digits: 2 },
    { key: 'h2cCpuUsPerMiB', label: 'h2c CPU µs/MiB', digits: 0 },
    { key: 'h1CpuUsPerMiB', label: 'HTTP/1.1 CPU µs/MiB', digits: 0 },
  ],
  ratios: [
    { key: 'h2cMibps', label: 'h2c MiB/s', refs: ['nginx'] },
    { key: 'h2cCpuUsPerMiB', label: 'h2c CPU/MiB', refs: ['nginx'] },
  ],
  /** One upload; its MiB/s and the proxy's CPU µs per MiB (null for a system without a process of its own). */
  async upload(ctx, system, h2c) {
    const bytes = 64 * MiB;
    const { port, targetPort } = endpoint(system, ctx.backends.sink.port, { h2c });
    const args = [join(here, 'upload-client.mjs'), '--port', String(port), '--target-port', String(targetPort), '--bytes', String(bytes)];
    if (h2c) args.push('--h2c');
    const { result: res, cpu } = await withCpu(pid(system), () =>
      runCommand('upload-client', process.execPath, args, { timeoutMs: 120000 }),
    );
    assertOk(res, 'upload client');
    const out = JSON.parse(res.stdout.trim().split('\n').pop());
    if (out.status !== 200 || out.received !== bytes) throw new Error(`upload: status ${out.status}, sink received ${out.received} of ${bytes} bytes`);
    return { mibps: bytes / MiB / (out.ms / 1000), cpuUsPerMiB: cpu === null ? null : round((cpu * 1e6) / (bytes / MiB), 0) };
  },
  /** Processes whose upload paths were warmed: system name -> its pid when warmed. */
  warmed: new Map(),
  async run(ctx, system) {
    // The first large h2c body through a process costs it 3-5x the CPU of later ones (its body
    // path compiled, its heap grown for the garbage of Node's per-read DATA buffers), and the
    // HTTP/1.1 upload after it in the same repetition never pays that: one unmeasured upload of
    // each kind first, so repetition 1 compares warm paths like the others.
    if (this.warmed.get(system.name) !== pid(system)) {
      await this.upload(ctx, system, true);
      await this.upload(ctx, system, false);
      this.warmed.set(system.name, pid(system));
    }
    const h2c = await this.upload(ctx, system, true);
    const h1 = await this.upload(ctx, system, false);
    return {
      h2cMibps: round(h2c.mibps, 1),
      h1Mibps: round(h1.mibps, 1),
      h2cVsH1: round(h2c.mibps / h1.mibps, 3),
      h2cCpuUsPerMiB: h2c.cpuUsPerMiB,
      h1CpuUsPerMiB: h1.cpuUsPerMiB,
      errors: 0,
    };
  },
};

const h2cDownload = {
  name: 'h2c-download-1m',
  title: '1 MiB downloads over h2c (h2load -c4 -m1) and over HTTP/1.1 (wrk -t1 -c4), in turn',
  systems: ['direct', 'cmux-proxy', 'nginx'],
  columns: [
    { key: 'h2cMibps', label: 'h2c MiB/s', digits: 0 },
    { key: 'h1Mibps', label: 'HTTP/1.1 MiB/s', digits: 0 },
    { key: 'h2cVsH1', label: 'h2c ÷ HTTP/1.1', digits: 2 },
    { key: 'cpuUsPerMiB', label: 'h2c CPU µs/MiB', digits: 0 },
  ],
  ratios: [{ key: 'h2cMibps', label: 'h2c MiB/s', refs: ['direct', 'nginx'] }],
  async run(ctx, system) {
    const up = ctx.backends.upstream;
    const seconds = ctx.cfg.seconds.download;
    const h2 = await h2load(system, { backendPort: up.port, directPort: up.h2cPort, args: ['-c4', '-m1'], seconds, path: '/1m' });
    const h1 = await wrk(system, { backendPort: up.port, path: '/1m', connections: 4, seconds });
    const h2cMibps = (h2.succeeded * LARGE_BYTES) / MiB / h2.seconds;
    const h1Mibps = (h1.requests * LARGE_BYTES) / MiB / h1.seconds;
    return {
      h2cMibps: round(h2cMibps, 1),
      h1Mibps: round(h1Mibps, 1),
      h2cVsH1: round(h2cMibps / h1Mibps, 3),
      cpuUsPerMiB: cpuPer(h2.cpu, h2.succeeded),
      errors: h2.failed + h2.errored + h2.timeout + h2.statusErrors + h1.non2xx + h1.socketErrors,
    };
  },
};

async function readJsonLine(handle, index, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const lines = handle.stdout.split('\n').filter((l) => l.startsWith('{'));
    if (lines.length > index) return JSON.parse(lines[index]);
    if (handle.hasExited()) break;
    await sleep(50);
  }
  throw new Error(`ws client: no result line ${index} (${handle.hasExited() ? 'exited' : 'timeout'}):\n${handle.output()}`);
}

const WS_WARM_UP = 200;

const websockets = {
  name: 'ws',
  title: 'concurrent WebSockets, one echo each (proxy started fresh for every repetition)',
  systems: ['direct', 'cmux-proxy', 'cmux-proxy-ref', 'baseline', 'nginx'],
  freshPerRep: true,
  columns: [
    { key: 'ok', label: 'echoed & open', digits: 0 },
    { key: 'kibPerConn', label: 'RSS KiB/conn', digits: 1 },
    { key: 'openSeconds', label: 'open+echo s', digits: 2 },
    { key: 'cpuUsPerConn', label: 'CPU µs/conn', digits: 0 },
  ],
  ratios: [
    { key: 'kibPerConn', label: 'KiB/conn', refs: ['baseline', 'nginx'] },
    { key: 'cpuUsPerConn', label: 'CPU/conn', refs: ['baseline', 'nginx'] },
  ],
  async clients(ctx, system, count, hold) {
    const { port, targetPort } = endpoint(system, ctx.backends.echo.port);
    const args = [join(here, 'ws-client.mjs'), '--port', String(port), '--target-port', String(targetPort), '--count', String(count)];
    if (hold) args.push('--hold');
    return startProcess('ws-client', process.execPath, args, { nofile: 20000, stdin: 'pipe' });
  },
  async run(ctx, system) {
    const p = pid(system);
    const count = ctx.cfg.wsConnections;
    // Warm up with enough connections that V8's optimising compiler has run (its first use
    // pages in ~4 MiB of the node binary once, which 20 connections did not reach), then let
    // the proxy settle: the figure is memory per connection, not one-time start-up cost.
    const warm = await this.clients(ctx, system, WS_WARM_UP, false);
    await readJsonLine(warm, 0, 20000);
    await warm.exited;
    await sleep(200);
    const rssBefore = p ? rssKiB(p) : null;
    const cpu0 = p ? cpuSeconds(p) : null;
    const client = await this.clients(ctx, system, count, true);
    try {
      const first = await readJsonLine(client, 0, 30000 + count * 10);
      await sleep(200);
      const rssAfter = p ? rssKiB(p) : null;
      const cpu = p ? cpuSeconds(p) - cpu0 : null;
      client.child.stdin.write('report\n');
      const second = await readJsonLine(client, 1, 10000);
      const ok = Math.min(first.echoed, second.stillOpen);
      if (ok === 0) throw new Error(`no WebSocket echoed: ${first.firstError}`);
      return {
        ok,
        requested: count,
        failed: first.failed,
        openSeconds: round(first.ms / 1000, 2),
        kibPerConn: p && ok ? round((rssAfter - rssBefore) / ok, 2) : null,
        rssBeforeMiB: p ? round(rssBefore / 1024, 1) : null,
        rssAfterMiB: p ? round(rssAfter / 1024, 1) : null,
        cpuUsPerConn: cpuPer(cpu, ok),
        errors: count - ok,
        firstError: first.firstError,
      };
    } finally {
      await stopProcess(client, 5000);
    }
  },
};

/** Resident set size of one process (not its children), KiB. */
function ownRssKiB(p) {
  try {
    return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

const WS20K_WARM_UP_PER_WORKER = 200;

/** The kernel's slab memory (socket, file and epoll structures among it), KiB, machine-wide. */
function slabKiB() {
  try {
    return Number(/^Slab:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

const ws20k = {
  name: 'ws-20k',
  title:
    'WebSockets held open together through the CLI with --workers 4 (20,000; young2: node --max-semi-space-size=2) and as one process (9,500: its fd limit), one echo each; ' +
    'echo upstreams and load generators over several processes, sources over 127.0.0.x, nothing pinned (proxy started fresh for every repetition)',
  systems: ['cmux-proxy-workers4', 'cmux-proxy-workers4-young2', 'cmux-proxy-single'],
  freshPerRep: true,
  columns: [
    { key: 'ok', label: 'echoed & open', digits: 0 },
    { key: 'idleMiB', label: 'idle RSS MiB', digits: 1 },
    { key: 'openMiB', label: 'RSS MiB, all open', digits: 1 },
    { key: 'kibPerWs', label: 'KiB/WS', digits: 2 },
    { key: 'openPerSecond', label: 'opened/s', digits: 0 },
    { key: 'p50Ms', label: 'echo p50 ms', digits: 2 },
    { key: 'p99Ms', label: 'echo p99 ms', digits: 2 },
    { key: 'fewestOnAWorker', label: 'fewest on a worker', digits: 0 },
    { key: 'mostOnAWorker', label: 'most on a worker', digits: 0 },
  ],
  ratios: [],
  async run(ctx, system) {
    const p = system.handle.pid;
    const total = system.workers > 1 ? ctx.cfg.ws20kConnections : Math.min(ctx.cfg.ws20kConnections, ctx.cfg.wsConnections);
    const echoes = await startEchoServers(Math.ceil(total / PER_PROCESS));
    const targetPorts = echoes.map((e) => e.port);
    try {
      const coldKiB = rssKiB(p);
      // Warm up every worker (as the ws workload does) so that V8's first optimising compile is
      // not counted per socket, then let the proxy settle: the figure is memory per WebSocket.
      const warm = await openFleet({ proxyPort: system.port, targetPorts, total: WS20K_WARM_UP_PER_WORKER * system.workers, hold: false });
      if (warm.echoed !== warm.requested) throw new Error(`warm-up: ${warm.echoed}/${warm.requested} echoed: ${warm.firstError}`);
      await sleep(1000);
      const before = await adminStats(system.adminPort);
      const idleKiB = rssKiB(p);
      const slab0 = slabKiB();
      const cpu0 = cpuSeconds(p);
      const fleet = await openFleet({ proxyPort: system.port, targetPorts, total });
      let held;
      try {
        await sleep(1000);
        const stats = await adminStats(system.adminPort);
        held = {
          openKiB: rssKiB(p),
          slab: slabKiB() - slab0,
          primaryKiB: system.workers > 1 ? ownRssKiB(p) : null,
          cpu: cpuSeconds(p) - cpu0,
          spread: perWorker(stats),
          restarts: (stats.workerRestarts ?? 0) - (before.workerRestarts ?? 0),
          pidsChanged: JSON.stringify(stats.workers?.map((w) => w.pid)) !== JSON.stringify(before.workers?.map((w) => w.pid)),
          refused: stats.connectionsRefusedAtCapacity - before.connectionsRefusedAtCapacity,
          upstreamErrors: stats.upstreamErrors,
        };
      } finally {
        held = { ...held, stillOpen: await fleet.release() };
      }
      const ok = Math.min(fleet.echoed, held.stillOpen, held.spread.reduce((a, b) => a + b, 0));
      if (ok === 0) throw new Error(`no WebSocket echoed: ${fleet.firstError}`);
      const problems = [];
      if (held.restarts > 0 || held.pidsChanged) problems.push(`${held.restarts} worker restart(s)`);
      if (held.refused > 0) problems.push(`${held.refused} refused at capacity`);
      if (fleet.firstError) problems.push(fleet.firstError);
      const result = {
        ok,
        requested: total,
        workers: system.workers,
        scheduling: system.scheduling ?? 'one process',
        echoed: fleet.echoed,
        failed: fleet.failed,
        stillOpen: held.stillOpen,
        coldIdleMiB: round(coldKiB / 1024, 1),
        idleMiB: round(idleKiB / 1024, 1),
        openMiB: round(held.openKiB / 1024, 1),
        primaryMiB: held.primaryKiB === null ? null : round(held.primaryKiB / 1024, 1),
        kibPerWs: round((held.openKiB - idleKiB) / ok, 2),
        kibPerWsFromCold: round((held.openKiB - coldKiB) / ok, 2),
        // every process's sockets (client, proxy both sides, echo: 4 per WebSocket) and whatever
        // else the machine did meanwhile
        kernelSlabKibPerWs: round(held.slab / ok, 2),
        openSeconds: round(fleet.openSeconds, 2),
        openPerSecond: round(fleet.openPerSecond, 0),
        p50Ms: fleet.p50Ms,
        p99Ms: fleet.p99Ms,
        maxMs: fleet.maxMs,
        cpuUsPerWs: cpuPer(held.cpu, ok),
        perWorker: held.spread,
        fewestOnAWorker: Math.min(...held.spread),
        mostOnAWorker: Math.max(...held.spread),
        clientProcesses: fleet.processes,
        echoProcesses: echoes.length,
        errors: total - ok,
        firstError: problems.join('; ') || null,
      };
      process.stderr.write(`    ${system.name}: ${JSON.stringify({ ...result, ok: undefined, requested: undefined })}\n`);
      return result;
    } finally {
      await Promise.all(echoes.map((e) => stopProcess(e.handle, 3000)));
    }
  },
};

const idle = {
  name: 'idle',
  title: 'idle RSS 1 s after start (all started together, each pinned to the proxy CPU)',
  systems: ['bare-node', 'cmux-proxy', 'baseline', 'http2-proxy', 'nginx'],
  parallelFresh: true,
  columns: [{ key: 'rssMiB', label: 'RSS MiB', digits: 1 }],
  ratios: [{ key: 'rssMiB', label: 'RSS', refs: ['bare-node', 'baseline', 'nginx'], diff: true }],
  async run(ctx, system) {
    return { rssMiB: round(rssKiB(pid(system)) / 1024, 1), errors: 0 };
  },
};

async function paced(ctx, system, seconds) {
  const { port, targetPort } = endpoint(system, ctx.backends.upstream.port);
  const args = [join(here, 'paced-client.mjs'), '--port', String(port), '--target-port', String(targetPort)];
  args.push('--rate', '1000', '--connections', '10', '--seconds', String(seconds));
  const { result: res, cpu } = await withCpu(pid(system), () =>
    runCommand('paced-client', process.execPath, args, { timeoutMs: (seconds + 20) * 1000 }),
  );
  assertOk(res, 'paced client');
  return { ...JSON.parse(res.stdout.trim().split('\n').pop()), cpu };
}

const rps1000 = {
  name: 'rps-1000',
  title: 'CPU at a fixed 1,000 req/s, HTTP/1.1 100 B (paced Node client: 10 keep-alive connections, a burst of 10 requests every 10 ms)',
  systems: ['cmux-proxy', 'cmux-proxy-ref', 'baseline', 'baseline-ka', 'nginx', 'node-splice'],
  columns: [
    { key: 'cpuPct', label: 'CPU % of a core', digits: 1 },
    { key: 'rps', label: 'req/s', digits: 0 },
    { key: 'p99Ms', label: 'p99 ms', digits: 2 },
  ],
  ratios: [{ key: 'cpuPct', label: 'CPU', refs: ['cmux-proxy-ref', 'baseline-ka', 'nginx', 'node-splice'] }],
  async run(ctx, system) {
    const r = await paced(ctx, system, ctx.cfg.seconds.rps);
    return {
      cpuPct: r.cpu === null ? null : round((r.cpu / r.seconds) * 100, 2),
      rps: round(r.rps, 0),
      meanMs: round(r.meanMs, 3),
      p99Ms: round(r.p99Ms, 3),
      requests: r.ok,
      errors: r.failed,
    };
  },
};

// Long-lived systems first (they share one warmed-up process each), then the ones that start their own.
export const WORKLOADS = [h1Small, h2cSmall, tlsH2Small, tlsH1Small, ...downloads, h2cDownload, rps1000, upload, h2cUpload, websockets, ws20k, idle];
