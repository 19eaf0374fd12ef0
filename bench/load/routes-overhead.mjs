// CPU per request of the proxy with and without a `routes` table, interleaved A/B runs:
//   node bench/load/routes-overhead.mjs [--reps 5] [--seconds 5] [--baseline <other cmux-proxy.js>]
// Systems: `header` (X-Cmux-Port-Internal to one upstream, no routes), `routes-2` (Host routed by a
// 2-upstream round-robin group), and with --baseline the same header load on another build.
// The proxy runs on CPU 0 (taskset), wrk/h2load and the upstreams on CPU 1.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuSeconds } from './measure.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i === -1 ? dflt : args[i + 1];
};
const REPS = Number(opt('reps', 5));
const SECONDS = Number(opt('seconds', 5));
const BASELINE = opt('baseline', null);
const CLI = fileURLToPath(new URL('../../dist/cmux-proxy.js', import.meta.url));

function startUpstreams() {
  const code = `
    const http = require('http');
    for (let i = 0; i < 2; i++) http.createServer((q, s) => s.end('hello')).listen(0, '127.0.0.1', function () { console.log(this.address().port); });`;
  const child = spawn('taskset', ['-c', '1', process.execPath, '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(child);
  return new Promise((resolve) => {
    const ports = [];
    child.stdout.on('data', (c) => {
      for (const line of String(c).split('\n')) if (line.trim()) ports.push(Number(line));
      if (ports.length === 2) resolve({ child, ports });
    });
  });
}

function startProxy(cli, extra) {
  const child = spawn('taskset', ['-c', '0', process.execPath, cli, '--port', '0', '--log-level', 'info', ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr.on('data', (c) => {
      err += c;
      const m = /listening on [^:]+:(\d+)/.exec(err);
      if (m) resolve({ child, port: Number(m[1]) });
    });
    child.on('exit', (code) => reject(new Error(`proxy exited ${code}: ${err}`)));
  });
}

function h1(port, header) {
  const out = execFileSync('taskset', ['-c', '1', 'wrk', '-t1', '-c50', `-d${SECONDS}s`, '-H', header, `http://127.0.0.1:${port}/`], { encoding: 'utf8' });
  const m = /(\d+) requests in/.exec(out);
  if (/Non-2xx/.test(out)) throw new Error(`non-2xx answers:\n${out}`);
  return Number(m[1]);
}

function h2c(port, header) {
  const n = 20_000 * SECONDS;
  const out = execFileSync('taskset', ['-c', '1', 'h2load', '-c10', '-m10', `-n${n}`, '-H', header, `http://127.0.0.1:${port}/`], { encoding: 'utf8' });
  const m = /status codes: (\d+) 2xx/.exec(out);
  return Number(m[1]);
}

/** Children to kill if this script is stopped. */
const children = new Set();
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    for (const c of children) c.kill('SIGKILL');
    process.exit(130);
  });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const ups = await startUpstreams();
const dir = mkdtempSync(join(tmpdir(), 'routes-bench-'));
const config = join(dir, 'routes.json');
writeFileSync(config, JSON.stringify({ routes: [{ match: { host: 'g.localhost' }, upstreams: ups.ports.map((p) => `127.0.0.1:${p}`) }] }));
const systems = [
  { name: 'header', cli: CLI, extra: [], header: `x-cmux-port-internal: ${ups.ports[0]}`, h2header: `x-cmux-port-internal: ${ups.ports[0]}` },
  { name: 'routes-2', cli: CLI, extra: ['--config', config], header: 'Host: g.localhost', h2header: ':authority: g.localhost' },
];
if (BASELINE) systems.unshift({ name: 'baseline-header', cli: BASELINE, extra: [], header: systems[0].header, h2header: systems[0].h2header });
const results = {};
try {
  for (let rep = 0; rep < REPS; rep++) {
    for (const s of systems) {
      for (const proto of ['http1', 'h2c']) {
        const px = await startProxy(s.cli, s.extra);
        try {
          const run = proto === 'http1' ? () => h1(px.port, s.header) : () => h2c(px.port, s.h2header);
          run(); // warm-up
          const before = cpuSeconds(px.child.pid);
          const requests = run();
          const us = ((cpuSeconds(px.child.pid) - before) * 1e6) / requests;
          (results[`${s.name} ${proto}`] ??= []).push(us);
          process.stderr.write(`rep ${rep + 1} ${s.name} ${proto}: ${us.toFixed(1)} µs/req (${requests} requests)\n`);
        } finally {
          px.child.kill('SIGKILL');
        }
      }
    }
  }
} finally {
  ups.child.kill();
  rmSync(dir, { recursive: true, force: true });
}
for (const [key, xs] of Object.entries(results)) {
  console.log(`${key}: median ${median(xs).toFixed(1)} µs/req (${xs.map((x) => x.toFixed(1)).join(', ')})`);
}
for (const proto of ['http1', 'h2c']) {
  const a = results[`header ${proto}`];
  const b = results[`routes-2 ${proto}`];
  console.log(`${proto}: routes-2 / header = ${(median(b) / median(a)).toFixed(3)}`);
  if (BASELINE) console.log(`${proto}: header / baseline-header = ${(median(a) / median(results[`baseline-header ${proto}`])).toFixed(3)}`);
}
