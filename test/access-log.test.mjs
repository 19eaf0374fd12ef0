// The access log: one JSON line per finished exchange, WebSocket and tunnel; batched writes to a
// file or stdout, reopened for rotation; a function sink gets the entry objects.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createProxyServer } from '../dist/index.js';
import { startProxy, startUpstream, request, rawRequest, h2connect, h2request, sleep, waitFor, refusedPort } from './helpers/servers.mjs';
import { startWsEcho, openWs, nextMessage, closed } from './helpers/ws.mjs';
import { startCli, stopCli } from './helpers/cli.mjs';

const FIELDS = ['time', 'kind', 'client', 'protocol', 'tls', 'method', 'host', 'path', 'route', 'target', 'status', 'bytesIn', 'bytesOut', 'durationMs', 'reused', 'error', 'requestId'];

function tmpFile(name) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cmux-access-'));
  return { dir, file: path.join(dir, name) };
}

function readLines(file) {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l));
}

describe('access log: entries', () => {
  let up;
  let wsUp;
  let px;
  const entries = [];
  before(async () => {
    up = await startUpstream();
    wsUp = await startWsEcho();
    px = await startProxy({ accessLog: (e) => entries.push(e) });
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
    await wsUp.close();
  });

  it('one entry per HTTP/1.1 exchange with every field; the path has no query; reused sockets are marked', async () => {
    entries.length = 0;
    const route = { 'x-cmux-port-internal': String(up.port) };
    const body = 'x'.repeat(100);
    const first = await rawRequest(px.port, `POST /a/b?secret=1 HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${up.port}\r\nContent-Length: 100\r\n\r\n${body}GET /c HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${up.port}\r\nConnection: close\r\n\r\n`);
    assert.match(first, /^HTTP\/1\.1 200/);
    assert.ok(await waitFor(() => entries.length === 2));
    const [a, b] = entries;
    assert.deepEqual(Object.keys(a).sort(), [...FIELDS].sort());
    assert.equal(a.kind, 'http');
    assert.equal(a.client, '127.0.0.1');
    assert.equal(a.protocol, 'HTTP/1.1');
    assert.equal(a.tls, false);
    assert.equal(a.method, 'POST');
    assert.equal(a.host, 'app.test');
    assert.equal(a.path, '/a/b');
    assert.equal(a.route, 'header');
    assert.equal(a.target, `127.0.0.1:${up.port}`);
    assert.equal(a.status, 200);
    assert.equal(a.bytesIn, 100);
    assert.ok(a.bytesOut > 100, String(a.bytesOut));
    assert.ok(a.durationMs >= 0 && a.durationMs < 30_000);
    assert.equal(a.error, null);
    assert.ok(!Number.isNaN(Date.parse(a.time)));
    assert.equal(a.reused, false);
    assert.equal(b.path, '/c');
    assert.equal(b.reused, true);
    void route;
  });

  it('proxy-made answers and upstream failures carry their error code; HTTP/2 is logged as HTTP/2', async () => {
    entries.length = 0;
    const dead = await refusedPort();
    assert.equal((await request(`${px.url}/x`, { headers: { 'x-cmux-port-internal': String(dead) } })).status, 502);
    assert.equal((await request(`${px.url}/y`)).status, 400);
    const session = h2connect(px.port);
    const r = await h2request(session, { ':path': '/h2?q=1', 'x-cmux-port-internal': String(up.port) });
    assert.equal(r.status, 200);
    session.close();
    assert.ok(await waitFor(() => entries.length === 3));
    const [refused, noRoute, h2] = entries;
    assert.equal(refused.status, 502);
    assert.equal(refused.error, 'ECONNREFUSED');
    assert.equal(noRoute.status, 400);
    assert.equal(noRoute.route, 'none');
    assert.equal(noRoute.target, null);
    assert.equal(noRoute.error, 'CMUX_NO_ROUTE');
    assert.equal(h2.protocol, 'HTTP/2');
    assert.equal(h2.path, '/h2');
    assert.equal(h2.status, 200);
  });

  it('a client that goes away mid-response is logged with CLIENT_ABORT', async () => {
    const hang = await startUpstream((_req, res) => res.writeHead(200, { 'content-length': '10' }) && res.write('12345'));
    entries.length = 0;
    const socket = net.connect(px.port, '127.0.0.1');
    socket.write(`GET /hang HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${hang.port}\r\n\r\n`);
    await new Promise((resolve) => socket.once('data', resolve));
    socket.resetAndDestroy();
    assert.ok(await waitFor(() => entries.length === 1));
    assert.equal(entries[0].error, 'CLIENT_ABORT');
    assert.equal(entries[0].status, 200);
    await hang.close();
  });

  it('a WebSocket is one entry when it closes, with its bytes both ways', async () => {
    entries.length = 0;
    const ws = await openWs(`ws://127.0.0.1:${px.port}/chat?token=abc`, undefined, { headers: { 'x-cmux-port-internal': String(wsUp.port) } });
    ws.send('hello world');
    await nextMessage(ws);
    assert.equal(entries.length, 0, 'nothing is logged while it is open');
    ws.close();
    await closed(ws);
    assert.ok(await waitFor(() => entries.length === 1));
    const e = entries[0];
    assert.equal(e.kind, 'websocket');
    assert.equal(e.status, 101);
    assert.equal(e.path, '/chat');
    assert.equal(e.method, 'GET');
    assert.equal(e.target, `127.0.0.1:${wsUp.port}`);
    assert.ok(e.bytesIn > 11 && e.bytesOut > 11, JSON.stringify(e));
  });

  it('a CONNECT tunnel is one entry when it closes', async () => {
    entries.length = 0;
    const socket = net.connect(px.port, '127.0.0.1');
    socket.write(`CONNECT 127.0.0.1:${up.port} HTTP/1.1\r\nHost: 127.0.0.1:${up.port}\r\n\r\n`);
    let got = '';
    socket.on('data', (c) => (got += c));
    assert.ok(await waitFor(() => got.includes('200 Connection Established')));
    socket.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await new Promise((resolve) => socket.once('close', resolve));
    assert.ok(await waitFor(() => entries.length === 1));
    assert.equal(entries[0].kind, 'tunnel');
    assert.equal(entries[0].route, 'connect');
    assert.equal(entries[0].status, 200);
    assert.ok(entries[0].bytesOut > 0);
  });

  it('accessLogQuery keeps the query string', async () => {
    const seen = [];
    const local = await startProxy({ accessLog: (e) => seen.push(e), accessLogQuery: true });
    await request(`${local.url}/p?x=1&y=2`, { headers: { 'x-cmux-port-internal': String(up.port) } });
    assert.ok(await waitFor(() => seen.length === 1));
    assert.equal(seen[0].path, '/p?x=1&y=2');
    await local.proxy.stop();
  });

  it('refuses a bad accessLog option', () => {
    assert.throws(() => createProxyServer({ listenPort: 0, accessLog: 42 }), /accessLog/);
    assert.throws(() => createProxyServer({ listenPort: 0, accessLog: '' }), /accessLog/);
    assert.throws(() => createProxyServer({ listenPort: 0, accessLogQuery: 'yes' }), /accessLogQuery/);
  });
});

describe('access log: files', () => {
  let up;
  before(async () => {
    up = await startUpstream();
  });
  after(async () => {
    await up.close();
  });

  it('writes lines in batches (fewer writes than lines), every line whole', async () => {
    const { dir, file } = tmpFile('access.log');
    const n = 60;
    // The upstream answers all requests at once, so they end together whatever the machine's load.
    const held = [];
    const burst = await startUpstream((_req, res) => {
      held.push(res);
      if (held.length === n) for (const r of held) r.end('ok');
    });
    const px = await startProxy({ accessLog: file });
    const realWrite = fs.write;
    const realWriteSync = fs.writeSync;
    let writes = 0;
    fs.write = function (...args) {
      if (args[0] !== 1 && args[0] !== 2) writes++;
      return realWrite.apply(this, args);
    };
    fs.writeSync = function (...args) {
      if (args[0] !== 1 && args[0] !== 2) writes++;
      return realWriteSync.apply(this, args);
    };
    try {
      await Promise.all(Array.from({ length: n }, (_, i) => request(`${px.url}/r${i}`, { headers: { 'x-cmux-port-internal': String(burst.port) } })));
      assert.ok(await waitFor(() => readLines(file).length === n, { timeoutMs: 10_000 }));
      const lines = readLines(file);
      assert.deepEqual(lines.map((l) => l.path).sort(), Array.from({ length: n }, (_, i) => `/r${i}`).sort());
      assert.ok(writes > 0 && writes <= 5, `${writes} writes for ${n} lines`);
    } finally {
      fs.write = realWrite;
      fs.writeSync = realWriteSync;
      await px.proxy.stop();
      await burst.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('stop() writes out what is buffered; reopenAccessLog() starts a new file after rotation', async () => {
    const { dir, file } = tmpFile('access.log');
    const px = await startProxy({ accessLog: file });
    const headers = { 'x-cmux-port-internal': String(up.port) };
    await request(`${px.url}/before`, { headers });
    assert.ok(await waitFor(() => readLines(file).length === 1));
    fs.renameSync(file, `${file}.1`);
    assert.equal(px.proxy.reopenAccessLog(), true);
    await request(`${px.url}/after`, { headers });
    // Not waited for: stop() must flush it.
    await px.proxy.stop();
    assert.deepEqual(readLines(`${file}.1`).map((l) => l.path), ['/before']);
    assert.deepEqual(readLines(file).map((l) => l.path), ['/after']);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('rotated twice while one write is in flight: every old descriptor is closed, every line lands in a file', async () => {
    const { AccessLog } = await import('../dist/access-log.js');
    const { dir, file } = tmpFile('rot.log');
    const errors = [];
    const log = new AccessLog(file, { debug() {}, info() {}, warn() {}, error: (m) => errors.push(m) });
    const openInDir = () =>
      fs.readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(dir);
        } catch {
          return false;
        }
      }).length;
    try {
      log.addLine('{"n":1}');
      log.flush(); // the write of line 1 is now in flight
      fs.renameSync(file, `${file}.1`);
      log.reopen();
      fs.renameSync(file, `${file}.2`);
      log.reopen();
      log.addLine('{"n":2}');
      await log.close();
      assert.ok(await waitFor(() => openInDir() === 0), `${openInDir()} descriptor(s) still open in ${dir}`);
      assert.deepEqual(readLines(`${file}.1`), [{ n: 1 }]);
      assert.deepEqual(readLines(file), [{ n: 2 }]);
      assert.deepEqual(errors, []);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the CLI logs to a file with --access-log and reopens it on SIGUSR1', async () => {
    const { dir, file } = tmpFile('cli.log');
    const cli = await startCli(['--port', '0', '--access-log', file]);
    try {
      const headers = { 'x-cmux-port-internal': String(up.port) };
      await request(`http://127.0.0.1:${cli.port}/one`, { headers });
      assert.ok(await waitFor(() => readLines(file).length === 1));
      fs.renameSync(file, `${file}.1`);
      cli.child.kill('SIGUSR1');
      await sleep(200);
      await request(`http://127.0.0.1:${cli.port}/two`, { headers });
      assert.ok(await waitFor(() => readLines(file).length === 1), cli.stderr());
      assert.equal(readLines(file)[0].path, '/two');
      assert.deepEqual(readLines(`${file}.1`).map((l) => l.path), ['/one']);
      assert.doesNotMatch(cli.stderr(), /Debugger listening/);
    } finally {
      assert.equal((await stopCli(cli.child)).code, 0);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the CLI writes JSON lines to stdout with --access-log stdout', async () => {
    const cli = await startCli(['--port', '0', '--access-log', 'stdout', '--access-log-query']);
    let out = '';
    cli.child.stdout.on('data', (c) => (out += c));
    try {
      await request(`http://127.0.0.1:${cli.port}/s?k=v`, { headers: { 'x-cmux-port-internal': String(up.port) } });
      assert.ok(await waitFor(() => out.includes('\n')));
      const entry = JSON.parse(out.split('\n')[0]);
      assert.equal(entry.path, '/s?k=v');
      assert.equal(entry.status, 200);
    } finally {
      assert.equal((await stopCli(cli.child)).code, 0);
    }
  });
});

describe('access log: a stdout reader that goes away', () => {
  it('the proxy keeps serving (EPIPE is logged once, lines are dropped), it does not crash', { timeout: 60_000 }, async () => {
    const up = await startUpstream((req, res) => res.end('ok'));
    const cli = await startCli(['--port', '0', '--access-log', 'stdout']);
    let exited = null;
    cli.child.on('exit', (code, signal) => (exited = { code, signal }));
    // The reader closes its end of the pipe, as `cmux-proxy --access-log stdout | head -1` does.
    cli.child.stdout.destroy();
    try {
      const headers = { 'x-cmux-port-internal': String(up.port) };
      for (let i = 0; i < 5; i++) {
        const res = await request(`http://127.0.0.1:${cli.port}/r${i}`, { headers });
        assert.equal(res.status, 200);
        await sleep(120); // past a batch: each request's line is written (and fails) on its own
      }
      assert.equal(exited, null, cli.stderr());
      assert.equal(cli.stderr().match(/access log/g)?.length, 1, cli.stderr());
      assert.match(cli.stderr(), /access log: stdout failed \(EPIPE\)/);
    } finally {
      if (exited === null) assert.equal((await stopCli(cli.child)).code, 0);
      await up.close();
    }
  });
});

describe('access log: a stdout reader slower than the traffic', () => {
  it('lines past 16 MiB waiting are dropped and counted, not buffered without bound in the stdout stream', { timeout: 120_000 }, async () => {
    const up = await startUpstream((req, res) => res.end('ok'));
    const cli = await startCli(['--port', '0', '--access-log', 'stdout']);
    // Nobody reads the proxy's stdout for now: the pipe fills and its writes stop completing.
    cli.child.stdout.pause();
    let out = '';
    const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
    const longPath = `/${'p'.repeat(8000)}`;
    const get = () =>
      new Promise((resolve, reject) => {
        const req = http.get({ host: '127.0.0.1', port: cli.port, path: longPath, agent, headers: { 'x-cmux-port-internal': String(up.port) } }, (res) => {
          res.resume();
          res.on('end', resolve);
        });
        req.on('error', reject);
      });
    try {
      // 2,600 lines of about 8 KiB: 21 MiB, past the 16 MiB the log may hold.
      const REQUESTS = 2600;
      for (let i = 0; i < REQUESTS; i += 100) await Promise.all(Array.from({ length: 100 }, get));
      await sleep(200);
      cli.child.stdout.on('data', (c) => (out += c));
      cli.child.stdout.resume();
      assert.ok(await waitFor(() => /access log: \d+ line\(s\) dropped/.test(cli.stderr()), { timeoutMs: 30_000 }), cli.stderr());
      // The stream may still be delivering the last batch: wait until it is quiet, then read
      // whole lines only.
      for (let seen = -1; seen !== out.length; ) {
        seen = out.length;
        await sleep(300);
      }
      const lines = out.slice(0, out.lastIndexOf('\n') + 1).split('\n').filter((l) => l !== '');
      assert.ok(lines.length < REQUESTS, `${lines.length} lines`);
      for (const l of lines) assert.equal(JSON.parse(l).path, longPath);
    } finally {
      agent.destroy();
      cli.child.stdout.resume();
      assert.equal((await stopCli(cli.child)).code, 0);
      await up.close();
    }
  });
});

describe('access log: line format', () => {
  it('batches encoded into reused Buffers: lines added during a write, non-ASCII and a 300 KB line arrive byte-exact', async () => {
    const { AccessLog } = await import('../dist/access-log.js');
    const { dir, file } = tmpFile('batches.log');
    const errors = [];
    const log = new AccessLog(file, { error: (m) => errors.push(m), warn: (m) => errors.push(m), info() {}, debug() {} });
    const expected = [];
    const add = (line) => {
      expected.push(line);
      log.addLine(line);
    };
    try {
      for (let round = 0; round < 6; round++) {
        for (let i = 0; i < 500; i++) add(JSON.stringify({ round, i, path: `/caf\u00e9/\u2603/${'x'.repeat(i % 97)}` }));
        if (round === 2) add(JSON.stringify({ big: 'y'.repeat(300_000) }));
        // Starts a write, then more lines come while it is in flight.
        log.flush();
        for (let i = 0; i < 50; i++) add(JSON.stringify({ round, during: i }));
        if (round % 2 === 1) await log.drain();
      }
      await log.close();
      assert.equal(fs.readFileSync(file, 'utf8'), `${expected.join('\n')}\n`);
      assert.deepEqual(errors, []);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('formatEntry writes exactly what JSON.stringify writes, escapes included', async () => {
    const { formatEntry } = await import('../dist/access-log.js');
    const base = { time: '2026-01-01T00:00:00.000Z', kind: 'http', client: '::1', protocol: 'HTTP/2', tls: true, method: 'GET', host: null, path: '/', route: 'none', target: null, status: 0, bytesIn: 0, bytesOut: 0, durationMs: 0.125, reused: false, error: null, requestId: null };
    for (const odd of ['plain', 'quo"te', 'back\\slash', 'new\nline', 'tab\t', 'caf\u00e9', '\u2028', 'ctl\u0001', '']) {
      const e = { ...base, host: odd, path: `/${odd}`, method: odd, requestId: odd, error: odd, target: odd };
      assert.equal(formatEntry(e), JSON.stringify(e));
    }
    assert.equal(formatEntry(base), JSON.stringify(base));
  });
});
