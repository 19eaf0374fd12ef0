// The embedding API: createProxyServer / start / stop / isRunning / getStats, maxConnections and drain.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { createProxyServer } from '../dist/index.js';
import { startProxy, startUpstream, request, rawRequest, h2connect, h2request, sleep, waitFor } from './helpers/servers.mjs';

describe('embedding API', () => {
  it('validates options with a TypeError naming the option and the value', () => {
    assert.throws(() => createProxyServer({ listenPort: -1 }), (e) => e instanceof TypeError && /listenPort/.test(e.message) && /-1/.test(e.message));
    assert.throws(() => createProxyServer({ listenPort: 1, maxConnections: 'many' }), (e) => e instanceof TypeError && /maxConnections/.test(e.message) && /many/.test(e.message));
    assert.throws(() => createProxyServer({}), TypeError);
  });

  it('starts, refuses a second start, stops, refuses a second stop, and starts again', async () => {
    const proxy = createProxyServer({ listenPort: 0, logLevel: 'silent' });
    assert.equal(proxy.isRunning(), false);
    await assert.rejects(proxy.stop(), /not running/);
    await proxy.start();
    assert.equal(proxy.isRunning(), true);
    const port = proxy.address().port;
    assert.ok(port > 0);
    await assert.rejects(proxy.start(), /already running/);
    await proxy.stop();
    assert.equal(proxy.isRunning(), false);
    await assert.rejects(proxy.stop(), /not running/);
    await assert.rejects(rawRequest(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n'), /ECONNREFUSED/);
    await proxy.start();
    assert.equal(proxy.isRunning(), true);
    const res = await request(`http://127.0.0.1:${proxy.address().port}/`);
    assert.equal(res.status, 400);
    await proxy.stop();
  });

  it('rejects start() with a clear error when the port is taken', async () => {
    const first = await startProxy();
    const second = createProxyServer({ listenPort: first.port, logLevel: 'silent' });
    await assert.rejects(second.start(), (e) => /address already in use/.test(e.message) && e.message.includes(String(first.port)));
    assert.equal(second.isRunning(), false);
    await first.proxy.stop();
  });
});

describe('stats', () => {
  let up;
  let px;
  before(async () => {
    up = await startUpstream();
    px = await startProxy();
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
  });

  it('counts requests, connections, protocols, outcomes and bytes as plain numbers', async () => {
    const before = px.proxy.getStats();
    for (const v of Object.values(before)) {
      if (typeof v === 'object') for (const n of Object.values(v)) assert.equal(typeof n, 'number');
      else assert.equal(typeof v, 'number');
    }
    assert.equal(before.totalRequests, 0);
    assert.equal(before.activeConnections, 0);
    await request(px.url, { method: 'POST', headers: { 'x-cmux-port-internal': String(up.port) }, body: 'hello' });
    await request(px.url); // 400, no route
    const session = h2connect(px.port);
    await h2request(session, { ':path': '/', 'x-cmux-port-internal': String(up.port) });
    assert.equal(px.proxy.getStats().http2Connections, 1);
    session.close();
    assert.ok(await waitFor(() => px.proxy.getStats().activeConnections === 0));
    const s = px.proxy.getStats();
    assert.equal(s.totalRequests, 3);
    assert.equal(s.http1Requests, 2);
    assert.equal(s.http2Requests, 1);
    assert.equal(s.http2Connections, 0);
    assert.equal(s.responses2xx, 2);
    assert.equal(s.responses4xx, 1);
    assert.equal(s.proxyErrorResponses, 1);
    assert.equal(s.websocketConnections, 0);
    assert.ok(s.bytesTransferred > 300, `bytesTransferred ${s.bytesTransferred}`);
    assert.equal(s.connectionsTotal, 3);
  });

  it('counts bytes of connections that are still open', async () => {
    const socket = net.connect(px.port, '127.0.0.1');
    await new Promise((r) => socket.on('connect', r));
    const before = px.proxy.getStats().bytesTransferred;
    socket.write(`GET / HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`);
    await new Promise((r) => socket.once('data', r));
    await sleep(20);
    const s = px.proxy.getStats();
    assert.equal(s.activeConnections, 1);
    assert.ok(s.bytesTransferred - before > 100);
    socket.destroy();
    assert.ok(await waitFor(() => px.proxy.getStats().activeConnections === 0));
  });
});

describe('maxConnections', () => {
  it('makes extra connections wait, serves them when a slot frees, and answers 503 after the bound', async () => {
    const up = await startUpstream();
    const px = await startProxy({ maxConnections: 1, connectionQueueTimeoutMs: 400 });
    try {
      const holder = net.connect(px.port, '127.0.0.1');
      await new Promise((r) => holder.on('connect', r));
      await waitFor(() => px.proxy.getStats().activeConnections === 1);
      // Past the limit for longer than the bound: 503.
      const t0 = Date.now();
      const refused = await rawRequest(px.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`, { timeoutMs: 3000 });
      assert.match(refused, /^HTTP\/1\.1 503 /);
      assert.ok(Date.now() - t0 >= 350, 'it waited for the bound first');
      assert.equal(px.proxy.getStats().connectionsRefusedAtCapacity, 1);
      // A waiting connection is served once the slot frees.
      const waiting = rawRequest(px.port, `GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`, { timeoutMs: 3000 });
      await waitFor(() => px.proxy.getStats().connectionsQueued === 1);
      assert.equal(px.proxy.getStats().activeConnections, 1, 'never more than the limit at once');
      holder.destroy();
      assert.match(await waiting, /^HTTP\/1\.1 200 /);
    } finally {
      await px.proxy.stop();
      await up.close();
    }
  });
});

describe('graceful stop', () => {
  it('refuses new connections at once, lets in-flight exchanges finish, closes idle keep-alive connections', async () => {
    const up = await startUpstream((req, res) => {
      if (req.url === '/slow') setTimeout(() => res.end('slow done'), 300);
      else res.end('fast');
    });
    const px = await startProxy({ drainTimeoutMs: 5000 });
    try {
      const idle = net.connect(px.port, '127.0.0.1');
      await new Promise((r) => idle.on('connect', r));
      const idleClosed = new Promise((r) => idle.on('close', r));
      const slow = request(`${px.url}/slow`, { headers: { 'x-cmux-port-internal': String(up.port) } });
      await waitFor(() => up.requests.length === 1);
      const stopped = px.proxy.stop();
      await sleep(20);
      await assert.rejects(rawRequest(px.port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n'), /ECONNREFUSED/);
      await idleClosed;
      const res = await slow;
      assert.equal(res.status, 200);
      assert.equal(res.body, 'slow done');
      assert.equal(res.headers.connection, 'close');
      await stopped;
      assert.equal(px.proxy.isRunning(), false);
    } finally {
      await up.close();
    }
  });

  it('answers a client that connected before stop() and sends its request just after (connection: close), not a reset', { timeout: 20_000 }, async () => {
    // Its request was on the way when the drain began: a new connection that is reset before any
    // answer is not something a client may retry (only a reused keep-alive connection is).
    const up = await startUpstream((req, res) => res.end(`ok ${req.url}`));
    const px = await startProxy({ drainTimeoutMs: 5000 });
    try {
      for (const proto of ['h1', 'h2']) {
        const socket = net.connect(px.port, '127.0.0.1');
        await once(socket, 'connect');
        const t0 = Date.now();
        const stopped = px.proxy.stop();
        await sleep(100);
        let answer = '';
        socket.on('data', (d) => (answer += d.toString('latin1')));
        const closed = new Promise((r) => socket.on('close', r));
        socket.on('error', () => {});
        if (proto === 'h1') {
          socket.write(`GET /late HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`);
          await closed;
          assert.match(answer, /^HTTP\/1\.1 200 /, `h1 answer: ${JSON.stringify(answer)}`);
          assert.match(answer, /\r\nconnection: close\r\n/i);
          assert.ok(answer.endsWith('ok /late'), answer);
        } else {
          // HTTP/2 preface + SETTINGS: the session opens during the drain and gets GOAWAY at once.
          socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
          await closed;
          const bytes = Buffer.from(answer, 'latin1');
          let goaway = false;
          for (let at = 0; at + 9 <= bytes.length; at += 9 + bytes.readUIntBE(at, 3)) if (bytes[at + 3] === 7) goaway = true;
          assert.ok(goaway, 'h2: GOAWAY, not a bare reset');
        }
        await stopped;
        assert.ok(Date.now() - t0 < 4000, 'the drain did not wait for its timeout');
        await px.proxy.start();
        px.port = px.proxy.address().port;
      }
    } finally {
      await px.proxy.stop().catch(() => {});
      await up.close();
    }
  });

  it('closes what is left after the drain timeout', async () => {
    const up = await startUpstream(() => {}); // never answers
    const px = await startProxy({ drainTimeoutMs: 200, upstreamResponseTimeoutMs: 60_000 });
    try {
      const pending = request(px.url, { headers: { 'x-cmux-port-internal': String(up.port) } }).catch((e) => e);
      await waitFor(() => up.requests.length === 1);
      const t0 = Date.now();
      await px.proxy.stop();
      assert.ok(Date.now() - t0 < 2000);
      assert.ok((await pending) instanceof Error, 'the stuck exchange was closed');
    } finally {
      await up.close();
    }
  });
});

describe('stop() in the turn a response finished', () => {
  it('with no drain time: the finished response still reaches its client before the close', async () => {
    const up = await startUpstream((req, res) => {
      if (req.url === '/now') res.end('done');
      // '/later' stays unanswered: its connection is busy when stop() comes
    });
    let px = null;
    let stopping = null;
    px = await startProxy({
      drainTimeoutMs: 0,
      // The access log is written as the exchange ends, in the turn its response was written.
      accessLog: () => {
        stopping ??= px.proxy.stop();
      },
    });
    try {
      const socket = net.connect(px.port, '127.0.0.1');
      await once(socket, 'connect');
      let text = '';
      socket.on('data', (c) => (text += c.toString('latin1')));
      socket.on('error', () => {});
      const closed = new Promise((r) => socket.on('close', r));
      const head = `Host: x\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`;
      socket.write(`GET /now HTTP/1.1\r\n${head}GET /later HTTP/1.1\r\n${head}`);
      await closed;
      await stopping;
      assert.match(text, /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\ndone$/);
    } finally {
      await up.close();
    }
  });
});

describe('silent connections', () => {
  it('closes a connection that sends nothing within requestHeadersTimeoutMs', async () => {
    const px = await startProxy({ requestHeadersTimeoutMs: 300 });
    try {
      const socket = net.connect(px.port, '127.0.0.1');
      const t0 = Date.now();
      await new Promise((r) => socket.on('close', r));
      const took = Date.now() - t0;
      assert.ok(took >= 250 && took < 2000, `closed after ${took} ms`);
      assert.equal(px.proxy.getStats().requestHeadersTimeouts, 1);
      assert.ok(await waitFor(() => px.proxy.getStats().activeConnections === 0));
    } finally {
      await px.proxy.stop();
    }
  });

  it('answers 408 to a head that does not complete in time (slowloris)', async () => {
    const px = await startProxy({ requestHeadersTimeoutMs: 500 });
    try {
      const t0 = Date.now();
      const answer = await rawRequest(px.port, ['GET / HTTP/1.1\r\n', 'Host: x\r\n', 'X-Slow: 1\r\n'], { timeoutMs: 4000 });
      assert.match(answer, /^HTTP\/1\.1 408 /);
      assert.ok(Date.now() - t0 < 2500);
    } finally {
      await px.proxy.stop();
    }
  });

  it('a pipelined head left incomplete behind a slow response gets its own deadline, then 408 after the response', async () => {
    const up = await startUpstream((req, res) => setTimeout(() => res.end('slow done'), 2500));
    const px = await startProxy({ requestHeadersTimeoutMs: 300 });
    try {
      const socket = net.connect(px.port, '127.0.0.1');
      await once(socket, 'connect');
      let answer = '';
      socket.setEncoding('latin1').on('data', (d) => (answer += d));
      const closed = once(socket, 'close');
      socket.write(`GET /slow HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n`);
      // The second head's deadline runs while the first response is still awaited.
      assert.ok(
        await waitFor(() => px.proxy.getStats().requestHeadersTimeouts === 1, { timeoutMs: 1500 }),
        'no head deadline ran for the pipelined request while the first was in flight',
      );
      assert.equal(answer, '', 'nothing is answered before the first response');
      await closed;
      assert.match(answer, /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nslow done/);
      assert.match(answer, /slow doneHTTP\/1\.1 408 /);
    } finally {
      await px.proxy.stop();
      await up.close();
    }
  });
});

describe('stop() with WebSockets open', () => {
  it('does not wait the whole drain timeout for WebSockets once in-flight exchanges are done', async () => {
    const { WebSocketServer, WebSocket } = await import('ws');
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    await new Promise((r) => wss.on('listening', r));
    const up = await startUpstream((req, res) => setTimeout(() => res.end('slow done'), 300));
    const px = await startProxy({ drainTimeoutMs: 5000 });
    try {
      const ws = new WebSocket(`ws://127.0.0.1:${px.port}/`, { headers: { 'x-cmux-port-internal': String(wss.address().port) } });
      await new Promise((r, j) => (ws.on('open', r), ws.on('error', j)));
      const closed = new Promise((r) => ws.on('close', r));
      const slow = request(px.url, { headers: { 'x-cmux-port-internal': String(up.port) } });
      await waitFor(() => up.requests.length === 1);
      const t0 = Date.now();
      await px.proxy.stop();
      const took = Date.now() - t0;
      assert.equal((await slow).body, 'slow done', 'the in-flight exchange finished');
      assert.ok(took >= 250 && took < 2500, `stop() took ${took} ms: after the exchange, not the 5 s drain timeout`);
      await closed;
      assert.equal(px.proxy.getStats().websocketConnections, 0);
    } finally {
      wss.close();
      await up.close();
    }
  });
});
