#!/usr/bin/env node
// Load benchmark: cmux-proxy against direct, the baseline (a re-creation of the old cmux Node
// proxy, bench/baseline/old-cmux-proxy.mjs, with and without keep-alive), nginx as a reverse
// proxy, http2-proxy, fastify + @fastify/http-proxy and http-proxy-3, on this machine, in one run;
// node-splice (a Node process piping the same bytes with no HTTP) as the floor under Node proxies.
//
//   npm run bench                    full run (5 repetitions, ~35 minutes on 2 vCPUs)
//   npm run bench -- --quick         3 repetitions, short loads (under 2 minutes)
//   options: --reps N  --only h1-small,ws,...  --systems direct,nginx,...  --ws-conns N  --ws20k-conns N
//            --seconds S (every timed load)  --json FILE (default bench/results/latest.json)
//            --ref-cli FILE (another build's dist/cmux-proxy.js, measured as cmux-proxy-ref; node_modules
//            must resolve from its directory)
//            (--only download-1m runs download-1m-c1, -c4 and -c16)
//            --upload-mib N: the upload-256m workload's size (default 256)
// Exit status 3 when a gated floor fails: 1 MiB downloads through cmux-proxy under 0.8× direct.
//
// Needs wrk, h2load, nginx, openssl, taskset (scripts/install-bench-deps.sh) and a built dist/cmux-proxy.js.
// Everything listens on 127.0.0.1; every child is killed by PID at the end, on error and on SIGINT.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { installCleanupHandlers, pinSelf, sleep, stopAll } from './processes.mjs';
import { checkFloors, markdownReport, summarizeRuns } from './report.mjs';
import { cmuxAvailable, refCli, LOAD_CPU, NGINX, paths, PROXY_CPU, repoRoot, startBackends, startSystem, SMALL_BODY, LARGE_BYTES } from './servers.mjs';
import { warmUp, WORKLOADS } from './workloads.mjs';

const { values: opts } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    reps: { type: 'string' },
    only: { type: 'string' },
    systems: { type: 'string' },
    'ws-conns': { type: 'string' },
    'ws20k-conns': { type: 'string' },
    seconds: { type: 'string' },
    'ref-cli': { type: 'string' },
    'upload-mib': { type: 'string' },
    json: { type: 'string', default: 'bench/results/latest.json' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

if (opts.help) {
  console.log(readFileSync(new URL(import.meta.url), 'utf8').split('\n').slice(1, 15).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
  process.exit(0);
}

const quick = opts.quick;
const cfg = {
  mode: quick ? 'quick' : 'full',
  reps: Number(opts.reps ?? (quick ? 3 : 5)),
  seconds: quick ? { h1: 1, h2c: 1, download: 1, rps: 1 } : { h1: 8, h2c: 8, download: 5, rps: 5 },
  uploadBytes: Number(opts['upload-mib'] ?? 256) * 1024 * 1024,
  wsConnections: Number(opts['ws-conns'] ?? (quick ? 1000 : 9500)),
  ws20kConnections: Number(opts['ws20k-conns'] ?? (quick ? 2000 : 20000)),
};
if (opts.seconds) {
  // wrk takes whole seconds
  for (const k of Object.keys(cfg.seconds)) cfg.seconds[k] = Math.max(1, Math.round(Number(opts.seconds)));
}
if (!Number.isInteger(cfg.uploadBytes) || cfg.uploadBytes < 1) fail(`--upload-mib must be a positive integer, got ${opts['upload-mib']}`);
if (!Number.isInteger(cfg.reps) || cfg.reps < 1) fail(`--reps must be a positive integer, got ${opts.reps}`);
if (!Number.isInteger(cfg.wsConnections) || cfg.wsConnections < 1) fail(`--ws-conns must be a positive integer, got ${opts['ws-conns']}`);
if (!Number.isInteger(cfg.ws20kConnections) || cfg.ws20kConnections < 1) fail(`--ws20k-conns must be a positive integer, got ${opts['ws20k-conns']}`);
if (Object.values(cfg.seconds).some((x) => !Number.isFinite(x))) fail(`--seconds must be a number, got ${opts.seconds}`);

const log = (msg) => process.stderr.write(`${msg}\n`);
function fail(msg) {
  console.error(`bench: ${msg}`);
  process.exit(2);
}

function listOption(value, known, what) {
  if (!value) return known;
  const items = value.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = items.filter((i) => !known.includes(i));
  if (unknown.length) fail(`unknown ${what}: ${unknown.join(', ')} (known: ${known.join(', ')})`);
  return items;
}

// `download-1m` names every download workload (-c1, -c4, -c16)
const onlyNames = opts.only?.replace(/(^|,)\s*download-1m\s*(?=,|$)/g, `$1${WORKLOADS.filter((w) => w.name.startsWith('download-1m-')).map((w) => w.name).join(',')}`);
const workloads = listOption(onlyNames, WORKLOADS.map((w) => w.name), 'workload').map((n) => WORKLOADS.find((w) => w.name === n));
const allSystems = [...new Set(WORKLOADS.flatMap((w) => w.systems))];
let systemsWanted = listOption(opts.systems, allSystems, 'system');
if (!cmuxAvailable() && systemsWanted.includes('cmux-proxy')) {
  log(`bench: ${paths.cli} not found (run \`npm run build\`); measuring without cmux-proxy`);
  systemsWanted = systemsWanted.filter((s) => s !== 'cmux-proxy');
}
if (opts['ref-cli']) {
  refCli.file = resolve(opts['ref-cli']);
  if (!existsSync(refCli.file)) fail(`--ref-cli ${refCli.file} not found`);
} else {
  if (opts.systems && systemsWanted.includes('cmux-proxy-ref')) fail('system cmux-proxy-ref needs --ref-cli FILE');
  systemsWanted = systemsWanted.filter((s) => s !== 'cmux-proxy-ref');
}

/** The part of `cmd args` output (stdout or stderr) matching re, or null when absent or not runnable. */
function version(cmd, args, re) {
  const res = spawnSync(cmd, args, { encoding: 'utf8' });
  return `${res.stdout ?? ''}${res.stderr ?? ''}`.match(re)?.[0] ?? null;
}

function checkTools() {
  const found = {
    wrk: version('wrk', ['-v'], /wrk \S+/),
    h2load: version('h2load', ['--version'], /nghttp2\/\S+/),
    nginx: version(NGINX, ['-v'], /nginx\/\S+/),
    taskset: version('taskset', ['-V'], /util-linux \S+/),
    openssl: version('openssl', ['version'], /OpenSSL \S+/),
  };
  const missing = Object.entries(found).filter(([, v]) => !v).map(([k]) => k);
  if (missing.length) fail(`missing ${missing.join(', ')}: run scripts/install-bench-deps.sh`);
  if (cpus().length < 2) fail('needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)');
  return found;
}

/** Estimated seconds, to print the plan. */
function estimate() {
  const perRep = {
    'h1-small': cfg.seconds.h1 + 0.1,
    'h2c-small': cfg.seconds.h2c + 0.1,
    'tls-h2-small': cfg.seconds.h2c + 0.1,
    'tls-h1-small': cfg.seconds.h1 + 0.1,
    'download-1m-c1': cfg.seconds.download + 0.1,
    'download-1m-c4': cfg.seconds.download + 0.1,
    'download-1m-c16': cfg.seconds.download + 0.1,
    'uncorked-download-1m-c4': cfg.seconds.download + 0.1,
    'h2c-download-1m': 2 * cfg.seconds.download + 0.2,
    'h2c-upload-64m': 1,
    'rps-1000': cfg.seconds.rps + 0.2,
    'upload-256m': 1.2,
    ws: 1.5 + cfg.wsConnections / 1500,
    'ws-20k': 4 + cfg.ws20kConnections / 2000,
  };
  const pooled = new Set();
  let total = 0;
  for (const w of workloads) {
    const names = w.systems.filter((s) => systemsWanted.includes(s));
    if (w.parallelFresh) total += cfg.reps * 2;
    else total += names.length * cfg.reps * perRep[w.name];
    if (!w.parallelFresh && !w.freshPerRep) names.forEach((n) => pooled.add(n));
  }
  return Math.round(total + pooled.size * 1.5);
}

async function checkBackends(backends) {
  const get = async (path) => {
    const res = await fetch(`http://127.0.0.1:${backends.upstream.port}${path}`);
    return Buffer.from(await res.arrayBuffer());
  };
  const small = await get('/small');
  const large = await get('/1m');
  if (small.toString() !== SMALL_BODY) throw new Error(`upstream /small returned ${small.length} bytes, expected ${SMALL_BODY.length}`);
  if (large.length !== LARGE_BYTES) throw new Error(`upstream /1m returned ${large.length} bytes`);
  const uncorked = await get('/1m-uncorked');
  if (!uncorked.equals(large)) throw new Error(`upstream /1m-uncorked returned ${uncorked.length} bytes, not /1m's`);
}

async function runOne(ctx, workload, system, label) {
  const t0 = Date.now();
  try {
    if (system.handle?.hasExited()) throw new Error(`${system.name} is not running (${JSON.stringify(system.handle.exitInfo)}): ${system.handle.output()}`);
    const result = await workload.run(ctx, system);
    log(`  ${label} ${system.name.padEnd(12)} ${summaryLine(workload, result)} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    return result;
  } catch (err) {
    log(`  ${label} ${system.name.padEnd(12)} FAILED: ${err.message.split('\n').slice(0, 4).join(' | ')}`);
    return { error: err.message };
  }
}

function summaryLine(workload, result) {
  return workload.columns.map((c) => `${c.label}=${result[c.key] ?? '–'}`).join('  ');
}

/**
 * Long-lived systems shared by the workloads that do not need a fresh process: each is started
 * (pinned to the proxy CPU) and warmed up the first time a workload asks for it, and stopped at the end.
 */
class SystemPool {
  constructor(ctx) {
    this.ctx = ctx;
    this.systems = new Map();
  }

  async get(name) {
    if (!this.systems.has(name)) {
      let system;
      try {
        system = await startSystem(name, this.ctx);
        await warmUp(this.ctx, system);
      } catch (err) {
        log(`  could not start/warm ${name}: ${err.message.split('\n').slice(0, 6).join(' | ')}`);
        if (system) await system.stop();
        system = { name, failedToStart: err.message };
      }
      this.systems.set(name, system);
    }
    return this.systems.get(name);
  }

  async stopAll() {
    await Promise.all([...this.systems.values()].filter((s) => !s.failedToStart).map((s) => s.stop()));
    this.systems.clear();
  }
}

const startFresh = (ctx, name) => startSystem(name, ctx).catch((err) => ({ name, failedToStart: err.message }));
const stopFresh = (systems) => Promise.all(systems.filter((s) => !s.failedToStart).map((s) => s.stop()));
const failedStart = (s) => ({ error: `could not start: ${s.failedToStart.split('\n')[0]}` });

async function runWorkload(ctx, pool, workload) {
  const names = workload.systems.filter((s) => systemsWanted.includes(s));
  const runs = Object.fromEntries(names.map((n) => [n, []]));
  log(`\n== ${workload.name}: ${workload.title} [${names.join(', ')}]`);
  const t0 = Date.now();
  for (let rep = 1; rep <= cfg.reps; rep++) {
    const label = `rep ${rep}`;
    if (workload.parallelFresh) {
      // start everything together, let it settle, measure each, stop everything
      const systems = await Promise.all(names.map((n) => startFresh(ctx, n)));
      await sleep(1000);
      for (const s of systems) runs[s.name].push(s.failedToStart ? failedStart(s) : await runOne(ctx, workload, s, label));
      await stopFresh(systems);
      continue;
    }
    for (const name of names) {
      if (workload.freshPerRep) {
        const s = await startFresh(ctx, name);
        runs[name].push(s.failedToStart ? failedStart(s) : await runOne(ctx, workload, s, label));
        await stopFresh([s]);
      } else {
        const s = await pool.get(name);
        runs[name].push(s.failedToStart ? failedStart(s) : await runOne(ctx, workload, s, label));
      }
    }
  }
  log(`   ${workload.name} took ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return Object.fromEntries(Object.entries(runs).map(([name, r]) => [name, { runs: r, summary: summarizeRuns(r) }]));
}

async function main() {
  const tools = checkTools();
  pinSelf(LOAD_CPU);
  const workDir = mkdtempSync(join(tmpdir(), 'cmux-bench-'));
  installCleanupHandlers(() => rmSync(workDir, { recursive: true, force: true }));
  const started = Date.now();
  log(`bench: ${cfg.mode} mode, ${cfg.reps} reps, workloads ${workloads.map((w) => w.name).join(', ')}`);
  log(`bench: systems ${systemsWanted.join(', ')}; estimated ${estimate()} s; temp dir ${workDir}`);

  const results = {};
  try {
    const backends = await startBackends(workDir);
    await checkBackends(backends);
    log(`bench: upstream nginx :${backends.upstream.port} (h2c :${backends.upstream.h2cPort}, TLS :${backends.upstream.tlsPort}), upload sink :${backends.sink.port}, ws echo :${backends.echo.port}`);
    // nginx (as a proxy) routes X-Cmux-Port-Internal to these upstream groups; the first is its default
    const nginxRoutes = { up_main: backends.upstream.port, up_sink: backends.sink.port, up_ws: backends.echo.port };
    const ctx = { cfg, workDir, backends, nginxRoutes };
    const pool = new SystemPool(ctx);
    for (const workload of workloads) {
      results[workload.name] = await runWorkload(ctx, pool, workload);
      // the long-lived systems are not needed once the remaining workloads all start their own
      if (workloads.slice(workloads.indexOf(workload) + 1).every((w) => w.freshPerRep || w.parallelFresh)) await pool.stopAll();
    }
  } finally {
    await stopAll();
    rmSync(workDir, { recursive: true, force: true });
  }

  const meta = {
    date: new Date().toISOString(),
    mode: cfg.mode,
    reps: cfg.reps,
    config: cfg,
    node: process.version,
    nginx: tools.nginx,
    wrk: tools.wrk,
    h2load: tools.h2load,
    cpuModel: cpus()[0]?.model ?? 'unknown CPU',
    cpus: cpus().length,
    proxyCpu: PROXY_CPU,
    loadCpu: LOAD_CPU,
    command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
    durationSeconds: Math.round((Date.now() - started) / 1000),
  };
  const floors = checkFloors(results, cfg);
  const markdown = markdownReport({ meta, workloads, results, floors });
  console.log(markdown);
  const jsonFile = resolve(repoRoot, opts.json);
  mkdirSync(dirname(jsonFile), { recursive: true });
  writeFileSync(jsonFile, `${JSON.stringify({ meta, results, floors }, null, 2)}\n`);
  writeFileSync(jsonFile.replace(/\.json$/, '') + '.md', `${markdown}\n`);
  log(`\nbench: done in ${meta.durationSeconds} s; wrote ${jsonFile} and ${jsonFile.replace(/\.json$/, '')}.md`);
  const failed = floors.filter((f) => f.gate && f.met === false);
  if (failed.length) {
    log(`bench: FAIL: ${failed.map((f) => `${f.floor} (${f.value} < ${Math.round(f.limit)}${f.unit})`).join('; ')}`);
    process.exitCode = 3;
  }
}

main().catch(async (err) => {
  console.error(`bench: ${err.stack ?? err}`);
  await stopAll();
  process.exit(1);
});
