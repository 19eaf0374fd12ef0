// start() and stop() in every order, overlapping or not: calls take effect one after the other in
// call order, so each sequence ends in one defined state. Checked by isRunning(), by connecting
// (really open, or ECONNREFUSED), and by the handles left in this process.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { chmodSync, copyFileSync, linkSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createProxyServer } from '../dist/index.js';
import { startUpstream, request } from './helpers/servers.mjs';

const INDEX = fileURLToPath(new URL('../dist/index.js', import.meta.url));

/** 'open' or 'refused' (any other outcome fails the test). The probe socket is closed before it resolves. */
function portState(port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let state = null;
    socket.once('connect', () => {
      state = 'open';
      socket.destroy();
    });
    socket.once('error', (err) => {
      if (err.code === 'ECONNREFUSED') state = 'refused';
      else reject(err);
    });
    socket.once('close', () => (state === null ? reject(new Error('probe closed without an outcome')) : resolve(state)));
  });
}

/** A port nothing listens on right now. */
async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Listening servers and sockets this process holds. */
function netHandles() {
  return process.getActiveResourcesInfo().filter((r) => r === 'TCPServerWrap' || r === 'TCPSocketWrap').length;
}

/**
 * Asserts that this process holds `expected` TCP handles once closing ones are gone (a handle is
 * released a loop turn after close(), a failed listen() included). Nothing else in this file
 * keeps a socket open between tests.
 */
async function assertHandles(expected) {
  for (let i = 0; i < 100 && netHandles() !== expected; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(netHandles(), expected, `handles: ${process.getActiveResourcesInfo().join(', ')}`);
}

/** A proxy on a fixed free port, and a check that it left no handle behind once stopped. */
async function fixture(extra = {}) {
  const port = await freePort();
  const proxy = createProxyServer({ listenPort: port, logLevel: 'silent', ...extra });
  return {
    proxy,
    port,
    async assertStopped() {
      assert.equal(proxy.isRunning(), false);
      assert.equal(proxy.address(), null);
      assert.equal(await portState(port), 'refused');
      await assertHandles(0);
    },
    async assertRunning() {
      assert.equal(proxy.isRunning(), true);
      assert.equal(proxy.address().port, port);
      assert.equal(await portState(port), 'open');
      const res = await request(`http://127.0.0.1:${port}/`);
      assert.equal(res.status, 400, 'an unrouted request gets the proxy\'s own 400');
    },
  };
}

describe('start() and stop() in every order', () => {
  it('start, then start again while the first is pending: the second rejects, the proxy runs', async () => {
    const f = await fixture();
    const first = f.proxy.start();
    const second = f.proxy.start();
    await assert.rejects(second, /already running/);
    await first;
    await f.assertRunning();
    await f.proxy.stop();
    await f.assertStopped();
  });

  it('stop while start is pending: stop waits for the start, then stops; the port is closed', async () => {
    const f = await fixture();
    const started = f.proxy.start();
    assert.equal(f.proxy.isRunning(), false, 'not running until the listener is open');
    const stopped = f.proxy.stop();
    await started;
    await stopped;
    await f.assertStopped();
    // A settled state: another stop says so, and start works again.
    await assert.rejects(f.proxy.stop(), /not running/);
    await f.proxy.start();
    await f.assertRunning();
    await f.proxy.stop();
    await f.assertStopped();
  });

  it('stop, then start while the stop is pending: the start waits for the stop, then the proxy runs', async () => {
    const f = await fixture();
    await f.proxy.start();
    const stopped = f.proxy.stop();
    assert.equal(f.proxy.isRunning(), false, 'not running while stopping');
    const started = f.proxy.start();
    await Promise.all([stopped, started]);
    await f.assertRunning();
    await f.proxy.stop();
    await f.assertStopped();
  });

  it('stop twice: the second call returns the pending stop; both resolve; a third rejects', async () => {
    const f = await fixture();
    await f.proxy.start();
    const a = f.proxy.stop();
    const b = f.proxy.stop();
    assert.equal(a, b);
    await Promise.all([a, b]);
    await f.assertStopped();
    await assert.rejects(f.proxy.stop(), /not running/);
  });

  it('stop before any start rejects and changes nothing', async () => {
    const f = await fixture();
    await assert.rejects(f.proxy.stop(), /not running/);
    await f.assertStopped();
    await f.proxy.start();
    await f.assertRunning();
    await f.proxy.stop();
    await f.assertStopped();
  });

  it('start, stop, start, all at once: they run in order and the proxy ends running', async () => {
    const f = await fixture();
    const results = await Promise.allSettled([f.proxy.start(), f.proxy.stop(), f.proxy.start()]);
    assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'fulfilled', 'fulfilled']);
    await f.assertRunning();
    // And the mirror image ends stopped.
    const again = await Promise.allSettled([f.proxy.stop(), f.proxy.start(), f.proxy.stop()]);
    assert.deepEqual(again.map((r) => r.status), ['fulfilled', 'fulfilled', 'fulfilled']);
    await f.assertStopped();
  });

  it('stop, start, stop queued behind a draining request: the request finishes, the proxy ends stopped', async () => {
    const up = await startUpstream((req, res) => setTimeout(() => res.end('late'), 300));
    const f = await fixture({ drainTimeoutMs: 5000 });
    try {
      await f.proxy.start();
      const inFlight = request(`http://127.0.0.1:${f.port}/`, { headers: { 'x-cmux-port-internal': String(up.port) } });
      await new Promise((r) => setTimeout(r, 100));
      // stop, start, stop queued behind the request's drain.
      const all = Promise.all([f.proxy.stop(), f.proxy.start(), f.proxy.stop()]);
      const res = await inFlight;
      assert.equal(res.status, 200);
      assert.equal(res.body, 'late');
      await all;
    } finally {
      await up.close();
    }
    await f.assertStopped();
  });

  it('start on a taken port rejects with .code EADDRINUSE; the proxy is cleanly stopped and starts once the port is free', async () => {
    const blocker = net.createServer();
    await new Promise((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = blocker.address().port;
    const proxy = createProxyServer({ listenPort: port, logLevel: 'silent' });
    await assert.rejects(proxy.start(), (e) => {
      assert.ok(e instanceof Error);
      assert.equal(e.code, 'EADDRINUSE');
      assert.match(e.message, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: address already in use`));
      return true;
    });
    assert.equal(proxy.isRunning(), false);
    await assertHandles(1); // the blocker
    await assert.rejects(proxy.stop(), /not running/);
    await new Promise((resolve) => blocker.close(resolve));
    await proxy.start();
    assert.equal(proxy.isRunning(), true);
    assert.equal(await portState(port), 'open');
    await proxy.stop();
    assert.equal(await portState(port), 'refused');
    await assertHandles(0);
  });

  it('stop during a start that fails: start rejects with its code, stop resolves, nothing is left', async () => {
    const blocker = net.createServer();
    await new Promise((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = blocker.address().port;
    // A fallback handler makes the start open a private server first, which the failure must close.
    const proxy = createProxyServer({ listenPort: port, logLevel: 'silent', fallback: { handler: (req, res) => res.end('app') } });
    const started = proxy.start();
    const stopped = proxy.stop();
    await assert.rejects(started, (e) => e.code === 'EADDRINUSE');
    await stopped;
    assert.equal(proxy.isRunning(), false);
    await assertHandles(1); // the blocker
    await new Promise((resolve) => blocker.close(resolve));
    // Nothing queued is left behind: start and stop work as on a fresh proxy.
    await proxy.start();
    assert.equal(await portState(port), 'open');
    await proxy.stop();
    assert.equal(await portState(port), 'refused');
    await assertHandles(0);
  });

  // Ports below net.ipv4.ip_unprivileged_port_start need privilege; some container runtimes set
  // it to 0, and then no port does.
  const unprivilegedStart = (() => {
    try {
      return Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8'));
    } catch {
      return 1024;
    }
  })();
  const skipEacces = unprivilegedStart === 0 ? 'every port is unprivileged here (net.ipv4.ip_unprivileged_port_start = 0)' : false;

  it('start on a privileged port without the right rejects with .code EACCES and leaves nothing open', { skip: skipEacces }, async () => {
    // Run as an unprivileged user: root may bind any port. The child exits by itself only if
    // no handle was left open.
    const port = unprivilegedStart - 1;
    const script = `
      const { createProxyServer } = await import(${JSON.stringify(INDEX)});
      const proxy = createProxyServer({ listenPort: ${port}, logLevel: 'silent' });
      let out;
      try { await proxy.start(); out = { started: true }; } catch (e) { out = { code: e.code, message: e.message, running: proxy.isRunning() }; }
      // A failed listener's handle is released a loop turn later.
      await new Promise((r) => setTimeout(r, 50));
      out.handles = process.getActiveResourcesInfo().filter((r) => r.startsWith('TCP'));
      process.stdout.write(JSON.stringify(out));
    `;
    const options = process.getuid() === 0 ? { uid: 65534, gid: 65534 } : {};
    const nodePath = process.getuid() === 0 ? nodeOthersCanRun() : process.execPath;
    after(() => {
      if (nodePath !== process.execPath) rmSync(dirname(nodePath), { recursive: true, force: true });
    });
    const child = spawn(nodePath, ['--input-type=module', '-e', script], { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    const code = await new Promise((resolve) => child.on('exit', resolve));
    clearTimeout(timer);
    assert.equal(code, 0, `child exited with ${code} (a leaked handle keeps it alive until killed): ${stderr}`);
    const out = JSON.parse(stdout);
    assert.equal(out.code, 'EACCES');
    assert.equal(out.message, `cannot listen on 127.0.0.1:${port}: permission denied (EACCES)`);
    assert.equal(out.running, false);
    assert.deepEqual(out.handles, []);
  });

  it('logs one info line per start naming the address', async () => {
    const lines = [];
    const logger = { debug() {}, info: (m) => lines.push(m), warn() {}, error() {} };
    const port = await freePort();
    const proxy = createProxyServer({ listenPort: port, logger, logLevel: 'info' });
    await proxy.start();
    await proxy.stop();
    await proxy.start();
    await proxy.stop();
    const listening = lines.filter((l) => l.startsWith('listening on'));
    assert.deepEqual(listening, [`listening on 127.0.0.1:${port} (HTTP/1.1, h2c)`, `listening on 127.0.0.1:${port} (HTTP/1.1, h2c)`]);
  });
});

/**
 * This Node binary as a path an unprivileged user can run: itself when every folder above it is
 * searchable by others, else a link or copy in a temporary folder (a Node installed under root's
 * 0700 home, as scripts/with-node.sh does for CI).
 */
function nodeOthersCanRun() {
  const exec = process.execPath;
  let ok = (statSync(exec).mode & 0o001) !== 0;
  for (let dir = dirname(exec); ok && dir !== dirname(dir); dir = dirname(dir)) ok = (statSync(dir).mode & 0o001) !== 0;
  if (ok) return exec;
  const dir = mkdtempSync(join(tmpdir(), 'cmux-node-'));
  chmodSync(dir, 0o755);
  const copy = join(dir, 'node');
  try {
    linkSync(exec, copy);
  } catch {
    copyFileSync(exec, copy);
  }
  chmodSync(copy, 0o755);
  return copy;
}
