// Resource bounds against fan-out: one HTTP/2 connection may hold at most
// `http2MaxConcurrentStreams` streams (each may hold an upstream socket), every tunnel
// (HTTP/1.1 CONNECT and WebSocket, HTTP/2 CONNECT and RFC 8441 extended CONNECT) counts against
// `maxSocketsPerUpstream`, and running out of file descriptors (ulimit -n 1024, in a child
// process) never crashes the proxy or drops a client without an answer.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { resolveOptions } from '../dist/options.js';
import { runCli } from './helpers/cli.mjs';
import { startProxy, startRawServer, rawRequest, sleep, waitFor } from './helpers/servers.mjs';
import { ERROR, FRAME, FLAG, H2RawClient, SETTING, headersFrame, requestHeaders } from './helpers/h2-raw.mjs';

/** An HTTP/1.1 upstream that holds every request until `releaseAll()`. */
async function startHoldingUpstream() {
  const held = [];
  const server = http.createServer((req, res) => {
    held.push(res);
    if (release) res.end('late');
  });
  let release = false;
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const sockets = new Set();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  return {
    held,
    sockets,
    port: server.address().port,
    releaseAll() {
      release = true;
      for (const res of held.splice(0)) res.end('ok');
    },
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

/** The value of `id` in the server's first (non-ACK) SETTINGS frame. */
function settingValue(client, id) {
  const settings = client.frames.find((f) => f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) === 0);
  if (settings === undefined) return undefined;
  for (let at = 0; at + 6 <= settings.payload.length; at += 6) {
    if (settings.payload.readUInt16BE(at) === id) return settings.payload.readUInt32BE(at + 2);
  }
  return undefined;
}

/** `count` GET HEADERS frames (END_STREAM) on streams 1, 3, 5, ... routed to `port`, in one buffer. */
function manyRequests(port, count, firstStream = 1) {
  const frames = [];
  for (let i = 0; i < count; i++) frames.push(headersFrame(firstStream + 2 * i, requestHeaders(port, { path: `/s${i}` }), { endStream: true }));
  return Buffer.concat(frames);
}

describe('http2MaxConcurrentStreams', () => {
  it('is an option (default 100) with a CLI flag and an environment variable', async () => {
    assert.equal(resolveOptions({ listenPort: 0 }).http2MaxConcurrentStreams, 100);
    assert.equal(resolveOptions({ listenPort: 0, http2MaxConcurrentStreams: 7 }).http2MaxConcurrentStreams, 7);
    assert.throws(() => resolveOptions({ listenPort: 0, http2MaxConcurrentStreams: 0 }), /http2MaxConcurrentStreams/);
    assert.throws(() => resolveOptions({ listenPort: 0, http2MaxConcurrentStreams: 1.5 }), /http2MaxConcurrentStreams/);
    // The CLI hands the value to the option validation; a bad one is a bad command line (exit 2)
    // naming the flag or variable it came from.
    const flag = await runCli(['--port', '0', '--http2-max-concurrent-streams', '0']);
    assert.equal(flag.code, 2);
    assert.match(flag.stderr, /--http2-max-concurrent-streams 0: expected an integer from 1 to 10000/);
    const env = await runCli(['--port', '0'], { env: { CMUX_PROXY_HTTP2_MAX_CONCURRENT_STREAMS: '100001' } });
    assert.equal(env.code, 2);
    assert.match(env.stderr, /CMUX_PROXY_HTTP2_MAX_CONCURRENT_STREAMS=100001: expected an integer from 1 to 10000/);
    assert.match((await runCli(['--help'])).stdout, /--http2-max-concurrent-streams <n>/);
  });

  describe('one connection opening 150 streams to a slow upstream', () => {
    let upstream;
    let proxy;
    let port;
    before(async () => {
      upstream = await startHoldingUpstream();
      ({ proxy, port } = await startProxy({}));
    });
    after(async () => {
      await proxy.stop();
      await upstream.close();
    });

    it('advertises SETTINGS_MAX_CONCURRENT_STREAMS 100; streams past it are refused and never reach the upstream', async () => {
      const client = await H2RawClient.connect(port, { keepData: false });
      // The attack: 150 HEADERS in one write, right behind the preface (before the server's
      // SETTINGS could be acknowledged), each a GET the upstream will hold.
      client.send(manyRequests(upstream.port, 150));
      await waitFor(() => upstream.held.length >= 100, { timeoutMs: 5000 });
      await sleep(300);
      assert.equal(settingValue(client, SETTING.MAX_CONCURRENT_STREAMS), 100);
      assert.equal(upstream.held.length, 100, 'upstream requests in flight for one client connection');
      assert.ok(upstream.sockets.size <= 100, `upstream sockets: ${upstream.sockets.size}`);
      const refused = client.frames.filter((f) => f.type === FRAME.RST_STREAM);
      assert.equal(refused.length, 50);
      assert.ok(refused.every((f) => f.errorCode === ERROR.REFUSED_STREAM && f.streamId > 199));
      // The first 100 are answered once the upstream answers.
      upstream.releaseAll();
      const outcome = await client.streamOutcome(199, { timeoutMs: 5000 });
      assert.equal(outcome.status, 200);
      client.close();
    });

    it('a client that ignores the acknowledged limit loses its connection, not the proxy its descriptors', async () => {
      const before = upstream.held.length;
      const client = await H2RawClient.connect(port, { keepData: false });
      await client.waitForFrame((f) => f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) !== 0);
      await sleep(50); // our ACK of the server's SETTINGS is on its way
      client.send(manyRequests(upstream.port, 150));
      assert.equal(await client.waitForClose({ timeoutMs: 5000 }), true);
      await sleep(200);
      assert.ok(upstream.held.length - before <= 100, `reached the upstream: ${upstream.held.length - before}`);
      // Others are still served.
      const res = await rawRequest(port, `GET /after HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nConnection: close\r\n\r\n`, { timeoutMs: 3000 });
      assert.match(res, /^HTTP\/1\.1 200 /);
    });
  });
});

/**
 * A raw upstream for tunnels: a WebSocket upgrade request gets its 101 (with the right
 * Sec-WebSocket-Accept), anything else (CONNECT tunnel bytes) is held open. Counts connections.
 */
async function startTunnelUpstream() {
  const { createHash } = await import('node:crypto');
  let connections = 0;
  const server = await startRawServer((socket) => {
    connections++;
    let head = '';
    socket.on('data', (c) => {
      head += c.toString('latin1');
      const key = /sec-websocket-key: *(\S+)/i.exec(head);
      if (key && head.includes('\r\n\r\n')) {
        const accept = createHash('sha1').update(`${key[1]}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
        socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
        head = '';
      }
    });
  });
  return Object.assign(server, { connections: () => connections });
}

/** Opens a raw client connection, writes `head`, resolves { socket, text } once `until` matches the answer. */
async function openRaw(port, head, until = /\r\n\r\n/, timeoutMs = 4000) {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write(head);
  let text = '';
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    socket.on('data', (c) => {
      text += c.toString('latin1');
      if (until.test(text)) {
        clearTimeout(timer);
        resolve();
      }
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  return { socket, text };
}

const connectHead = (port) => `CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;
const upgradeHead = (port) =>
  `GET /ws HTTP/1.1\r\nHost: localhost\r\nX-Cmux-Port-Internal: ${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
  `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;

describe('tunnels count against maxSocketsPerUpstream', () => {
  let upstream;
  let proxy;
  let port;
  const open = [];
  before(async () => {
    upstream = await startTunnelUpstream();
    ({ proxy, port } = await startProxy({ maxSocketsPerUpstream: 2, upstreamConnectTimeoutMs: 400 }));
  });
  after(async () => {
    for (const s of open) s.destroy();
    await proxy.stop();
    await upstream.close();
  });

  it('HTTP/1.1 WebSocket upgrades and CONNECT: a third tunnel waits for a slot, then gets 503; a closed tunnel frees its slot', async () => {
    const ws1 = await openRaw(port, upgradeHead(upstream.port));
    open.push(ws1.socket);
    assert.match(ws1.text, /^HTTP\/1\.1 101 /);
    const tunnel = await openRaw(port, connectHead(upstream.port));
    open.push(tunnel.socket);
    assert.match(tunnel.text, /^HTTP\/1\.1 200 /);
    // Both slots are held by tunnels now: neither another CONNECT nor another upgrade opens a socket.
    const started = Date.now();
    const third = await openRaw(port, connectHead(upstream.port));
    assert.match(third.text, /^HTTP\/1\.1 503 /);
    assert.match(third.text, /upstream socket limit reached$/);
    assert.ok(Date.now() - started >= 350, 'waited for a slot first');
    // An upgrade waits for a slot as a CONNECT does, and is answered 503 when none frees up in
    // time (it becomes a tunnel that holds its slot: waiting without bound would leave the
    // client unanswered for as long as the open WebSockets stay open).
    const upgradeStarted = Date.now();
    const ws2 = await openRaw(port, upgradeHead(upstream.port), /limit reached$/, 4000);
    assert.match(ws2.text, /^HTTP\/1\.1 503 /);
    assert.match(ws2.text, /upstream socket limit reached$/);
    assert.ok(Date.now() - upgradeStarted >= 350, 'the upgrade waited for a slot first');
    ws2.socket.destroy();
    assert.equal(upstream.connections(), 2);
    assert.equal(proxy.getStats().upstreamErrors.SOCKET_LIMIT, 2);
    // An upgrade that gets a slot within its wait opens, and its wait's end fails nothing later.
    const waitingUpgrade = openRaw(port, upgradeHead(upstream.port));
    await sleep(100);
    tunnel.socket.destroy();
    const ws3 = await waitingUpgrade;
    open.push(ws3.socket);
    assert.match(ws3.text, /^HTTP\/1\.1 101 /);
    await sleep(500);
    assert.equal(ws3.socket.destroyed, false, 'the upgraded socket stays open past the wait bound');
    assert.equal(proxy.getStats().upstreamErrors.SOCKET_LIMIT, 2);
    assert.equal(upstream.connections(), 3);
    // A tunnel that closes gives its slot to a waiting one.
    const waiting = openRaw(port, connectHead(upstream.port));
    await sleep(100);
    ws1.socket.destroy();
    const fourth = await waiting;
    open.push(fourth.socket);
    assert.match(fourth.text, /^HTTP\/1\.1 200 /);
    assert.equal(upstream.connections(), 4);
    for (const s of open.splice(0)) s.destroy();
    assert.ok(await waitFor(() => proxy.getStats().upstreamSocketsActive === 0), 'slots freed once the tunnels closed');
  });

  it('HTTP/2 CONNECT and extended CONNECT (RFC 8441) on one connection: the third gets 503', async () => {
    const before = upstream.connections();
    const client = await H2RawClient.connect(port, { keepData: false });
    const connect = (id) => headersFrame(id, [[':method', 'CONNECT'], [':authority', `127.0.0.1:${upstream.port}`]]);
    const extended = (id) =>
      headersFrame(id, [[':method', 'CONNECT'], [':protocol', 'websocket'], [':scheme', 'http'], [':path', '/ws'], [':authority', 'localhost'],
        ['x-cmux-port-internal', String(upstream.port)], ['sec-websocket-version', '13']]);
    client.send(connect(1), extended(3), connect(5));
    const third = await client.streamOutcome(5, { timeoutMs: 3000 });
    assert.equal(third.status, 503);
    const statuses = [1, 3].map((id) => Number(client.frames.find((f) => f.streamId === id && f.type === FRAME.HEADERS)?.headers.find(([n]) => n === ':status')?.[1]));
    assert.deepEqual(statuses, [200, 200]);
    assert.equal(upstream.connections() - before, 2);
    client.close();
    assert.ok(await waitFor(() => proxy.getStats().upstreamSocketsActive === 0), 'slots freed once the session closed');
  });
});

const PROXY_CHILD = fileURLToPath(new URL('./helpers/proxy-child.mjs', import.meta.url));

/** The proxy in a child process limited to 1024 descriptors; resolves { child, port, stats() }. */
async function startLimitedProxy(options) {
  const child = spawn('bash', ['-c', 'ulimit -n 1024 && exec "$0" "$1" "$2"', process.execPath, PROXY_CHILD, JSON.stringify(options)], {
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  const [msg] = await once(child, 'message');
  let id = 0;
  const stats = () =>
    new Promise((resolve) => {
      const want = ++id;
      const onMessage = (m) => {
        if (m?.type === 'stats' && m.id === want) {
          child.off('message', onMessage);
          resolve(m.stats);
        }
      };
      child.on('message', onMessage);
      child.send({ type: 'stats', id: want });
    });
  return { child, port: msg.port, stats, stderr: () => stderr };
}

describe('out of file descriptors (ulimit -n 1024)', () => {
  it('12 HTTP/2 connections x 100 streams to a slow upstream: every stream and every new client gets an answer, the proxy lives and serves again', async () => {
    const upstream = await startHoldingUpstream();
    const proxy = await startLimitedProxy({ logLevel: 'warn' });
    const clients = [];
    try {
      // The attack: 12 connections, each 100 GET HEADERS frames in one write, to an upstream that
      // holds every request: 1,200 upstream sockets wanted by a process allowed 1,024 descriptors.
      for (let c = 0; c < 12; c++) {
        const client = await H2RawClient.connect(proxy.port, { keepData: true });
        clients.push(client);
        client.send(manyRequests(upstream.port, 100));
      }
      const answered = (client) => client.frames.filter((f) => f.type === FRAME.HEADERS && f.headers).length;
      assert.ok(
        await waitFor(() => upstream.held.length + clients.reduce((n, c) => n + answered(c), 0) >= 1200, { timeoutMs: 15_000 }),
        `held ${upstream.held.length}, answered ${clients.map(answered)}`,
      );
      const refused = clients.flatMap((c) => c.frames.filter((f) => f.type === FRAME.HEADERS && f.headers));
      assert.ok(refused.length > 0, 'some streams could not get an upstream socket');
      for (const f of refused) assert.equal(f.headers.find(([n]) => n === ':status')[1], '503');
      const one = await clients.find((c) => answered(c) > 0).streamOutcome(refused[0].streamId);
      assert.equal(one.body, 'proxy out of file descriptors');
      assert.ok(clients.every((c) => !c.closed), 'no client connection was dropped');
      // A new client while upstream sockets hold nearly every descriptor is accepted and answered.
      const during = await rawRequest(proxy.port, `GET /during HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nConnection: close\r\n\r\n`, { timeoutMs: 5000 });
      assert.match(during, /^HTTP\/1\.1 503 /);
      assert.ok((await proxy.stats()).upstreamErrors.FD_LIMIT > 0);
      // Once the upstream answers, descriptors come back and the proxy serves as before.
      upstream.releaseAll();
      for (const c of clients) c.close();
      await sleep(500);
      const res = await rawRequest(proxy.port, `GET /after HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nConnection: close\r\n\r\n`, { timeoutMs: 5000 });
      assert.match(res, /^HTTP\/1\.1 200 /);
      assert.equal(proxy.child.exitCode, null, `proxy exited: ${proxy.stderr()}`);
      assert.doesNotMatch(proxy.stderr(), /Error|uncaught/i);
    } finally {
      for (const c of clients) c.close();
      proxy.child.send({ type: 'stop' });
      await once(proxy.child, 'exit');
      await upstream.close();
    }
  });

  it('1,100 idle connections: the ones past the descriptor budget get 503, none is closed without an answer', async () => {
    const proxy = await startLimitedProxy({ logLevel: 'warn', requestHeadersTimeoutMs: 20_000 });
    const sockets = [];
    try {
      // The attack: connect and say nothing, 1,100 times (one byte short of a request line would do the same).
      const results = [];
      for (let i = 0; i < 1100; i++) {
        const socket = net.connect(proxy.port, '127.0.0.1');
        const r = { data: '', closed: false };
        results.push(r);
        sockets.push(socket);
        socket.on('data', (c) => (r.data += c.toString('latin1')));
        socket.on('close', () => (r.closed = true));
        socket.on('error', () => {});
        if (i % 50 === 49) await sleep(20);
      }
      await sleep(1500);
      const refused = results.filter((r) => r.data !== '');
      assert.ok(refused.length > 0, 'some connections were past the budget');
      for (const r of refused) assert.match(r.data, /^HTTP\/1\.1 503 /);
      const dropped = results.filter((r) => r.closed && r.data === '').length;
      assert.equal(dropped, 0, 'connections closed without an answer');
      for (const s of sockets.splice(0)) s.destroy();
      await sleep(300);
      // Descriptors are back: a request is served.
      const res = await rawRequest(proxy.port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', { timeoutMs: 5000 });
      assert.match(res, /^HTTP\/1\.1 \d{3} /);
      assert.equal(proxy.child.exitCode, null);
    } finally {
      for (const s of sockets) s.destroy();
      proxy.child.send({ type: 'stop' });
      await once(proxy.child, 'exit');
    }
  });
});
