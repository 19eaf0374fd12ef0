// A real HAProxy (Debian package `haproxy`, scripts/install-test-deps.sh) in front of two
// cmux-proxy CLI instances, one sent `send-proxy-v2` headers and one `send-proxy` (v1),
// round-robin, on loopback. Clients connect from 127.0.0.77, HAProxy from 127.0.0.1: the
// upstream (which echoes the request) must see 127.0.0.77 in X-Forwarded-For from both instances.
// The Via token tells which instance served a request. HAProxy runs on a private config file in a
// temp dir and is started and stopped by its PID.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startUpstream, sleep, waitFor } from './helpers/servers.mjs';
import { startCli, stopCli } from './helpers/cli.mjs';

const HAPROXY = ['/usr/sbin/haproxy', '/usr/bin/haproxy'].find((p) => existsSync(p));
const CLIENT = '127.0.0.77';

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

/** One GET through `port` on a new connection from 127.0.0.77: { status, seen } (seen: what the upstream got). */
function get(port, upPort, path = '/') {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, localAddress: CLIENT, agent: false, headers: { 'x-cmux-port-internal': String(upPort) } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let seen = null;
        try {
          seen = JSON.parse(text);
        } catch {
          // not the upstream's answer
        }
        resolve({ status: res.statusCode, seen, text });
      });
      res.on('error', reject);
    });
    req.setTimeout(15000, () => req.destroy(new Error('client timeout')));
    req.on('error', reject);
    req.end();
  });
}

/**
 * Runs 8 client loops through `port`; after both instances have served, stops instance `inst` with
 * SIGTERM and keeps the load on for 300 more answers. Resolves what the assertions need.
 */
async function stopUnderLoad(port, upPort, inst) {
  const counts = new Map();
  const failures = [];
  let total = 0;
  let stopAt = 0;
  let afterStop = 0;
  let running = true;
  const loop = async () => {
    while (running) {
      try {
        const r = await get(port, upPort, '/load');
        total++;
        if (r.status !== 200 || r.seen?.headers['x-forwarded-for'] !== CLIENT) failures.push(`${r.status} ${r.text.slice(0, 200)}`);
        else {
          const v = r.seen.headers.via;
          counts.set(v, (counts.get(v) ?? 0) + 1);
          if (stopAt !== 0) afterStop++;
        }
      } catch (err) {
        total++;
        failures.push(err.message);
      }
    }
  };
  const loops = Array.from({ length: 8 }, loop);
  await waitFor(() => counts.size === 2 && total > 100, { timeoutMs: 20000 });
  const servedBefore = counts.size;
  stopAt = Date.now();
  const exit = await stopCli(inst.child, 'SIGTERM');
  // Load goes on after the instance is gone: refused connects are retried on the other one.
  await waitFor(() => afterStop > 300, { timeoutMs: 20000 });
  running = false;
  await Promise.all(loops);
  return { failures, total, exit, servedBefore, afterStop };
}

describe('HAProxy in front of two instances with the PROXY protocol', { skip: HAPROXY === undefined && 'haproxy is not installed (scripts/install-test-deps.sh)' }, () => {
  let dir;
  let up;
  let a;
  let b;
  let haproxy;
  let tcpPort;
  let httpPort;
  let haproxyLog = '';

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-haproxy-'));
    up = await startUpstream();
    a = await startCli(['--port', '0', '--accept-proxy-protocol', 'v2', '--log-level', 'info']);
    b = await startCli(['--port', '0', '--accept-proxy-protocol', 'any', '--log-level', 'info']);
    tcpPort = await freePort();
    httpPort = await freePort();
    const servers = `  server a 127.0.0.1:${a.port} send-proxy-v2 check inter 300ms\n  server b 127.0.0.1:${b.port} send-proxy check inter 300ms\n`;
    const config = [
      'global',
      '  maxconn 2000',
      'defaults',
      '  timeout connect 2s',
      '  timeout client 30s',
      '  timeout server 30s',
      '  retries 3',
      '  option redispatch 1',
      'frontend fe_tcp',
      '  mode tcp',
      `  bind 127.0.0.1:${tcpPort}`,
      '  default_backend be_tcp',
      'backend be_tcp',
      '  mode tcp',
      '  balance roundrobin',
      servers,
      'frontend fe_http',
      '  mode http',
      `  bind 127.0.0.1:${httpPort}`,
      '  default_backend be_http',
      'backend be_http',
      '  mode http',
      '  balance roundrobin',
      '  retry-on all-retryable-errors',
      servers,
    ].join('\n');
    const cfg = join(dir, 'haproxy.cfg');
    writeFileSync(cfg, config);
    haproxy = spawn(HAPROXY, ['-db', '-f', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
    haproxy.stdout.on('data', (c) => (haproxyLog += c));
    haproxy.stderr.on('data', (c) => (haproxyLog += c));
    const up1 = await waitFor(async () => (await canConnect(tcpPort)) && (await canConnect(httpPort)), { timeoutMs: 10000 });
    assert.ok(up1, `haproxy did not listen: ${haproxyLog}`);
  });

  after(async () => {
    if (haproxy !== undefined && haproxy.exitCode === null) {
      const exited = new Promise((resolve) => haproxy.once('exit', resolve));
      process.kill(haproxy.pid, 'SIGTERM');
      await exited;
    }
    for (const inst of [a, b]) if (inst !== undefined && inst.child.exitCode === null) await stopCli(inst.child);
    await up?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('mode tcp, round-robin: every request lands, both instances serve, each sees the client address', async () => {
    const via = new Map();
    for (let i = 0; i < 40; i++) {
      const r = await get(tcpPort, up.port, `/tcp/${i}`);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.seen.headers['x-forwarded-for'], CLIENT);
      via.set(r.seen.headers.via, (via.get(r.seen.headers.via) ?? 0) + 1);
    }
    assert.equal(via.size, 2, `two instances served: ${JSON.stringify([...via])}`);
    for (const n of via.values()) assert.ok(n >= 10, `round-robin spreads the requests: ${JSON.stringify([...via])}`);
  });

  it('mode tcp: h2c (prior knowledge) behind the header, on both instances', async () => {
    const via = new Set();
    for (let i = 0; i < 4; i++) {
      const session = http2.connect(`http://127.0.0.1:${tcpPort}`, { createConnection: () => net.connect({ port: tcpPort, host: '127.0.0.1', localAddress: CLIENT }) });
      session.on('error', () => {});
      const body = await new Promise((resolve, reject) => {
        const stream = session.request({ ':path': '/h2', 'x-cmux-port-internal': String(up.port) });
        const chunks = [];
        stream.on('data', (c) => chunks.push(c));
        stream.on('end', () => resolve(Buffer.concat(chunks).toString()));
        stream.on('error', reject);
      });
      session.close();
      const seen = JSON.parse(body);
      assert.equal(seen.headers['x-forwarded-for'], CLIENT);
      via.add(seen.headers.via);
    }
    assert.equal(via.size, 2);
  });

  // mode http: HAProxy retries a refused connect on the other instance (redispatch) and a GET
  // whose connection closed without an answer (retry-on). (In mode tcp it can retry only the
  // connect: a connection the kernel had queued for the instance when its listener closed is
  // reset and lost with its request; the README says so.)
  for (const mode of ['http']) {
    it(`mode ${mode}: stopping one instance (SIGTERM) under load loses no request`, async () => {
      const inst = mode === 'tcp' ? a : b;
      let r;
      try {
        r = await stopUnderLoad(mode === 'tcp' ? tcpPort : httpPort, up.port, inst);
      } finally {
        // The stopped instance comes back on the same port, so the next test has two again.
        if (inst.child.exitCode === null) await stopCli(inst.child);
        const again = await startCli(['--port', String(inst.port), '--accept-proxy-protocol', inst === a ? 'v2' : 'any']);
        if (inst === a) a = again;
        else b = again;
      }
      assert.deepEqual(r.failures, [], `${r.failures.length} of ${r.total} requests failed; haproxy said: ${haproxyLog.slice(-2000)}`);
      assert.equal(r.exit.code, 0, 'the stopped instance drained and exited cleanly');
      assert.equal(r.servedBefore, 2, 'both instances served before the stop');
      assert.ok(r.afterStop > 300, `requests after the stop: ${r.afterStop} of ${r.total}`);
    });
  }
});
