// HTTP/1.1 WebSockets (Upgrade) and CONNECT tunnels through the proxy, with the
// `ws` package as client and upstream echo server. Real sockets on 127.0.0.1; what the upstream
// received is checked, not only what the client negotiated (ws silently falls back when a header
// is lost on the way).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import WebSocket from 'ws';
import { startProxy, startRawServer, waitFor, sleep, refusedPort } from './helpers/servers.mjs';
import { startWsEcho, openWs, refusedWs, nextMessage, closed } from './helpers/ws.mjs';

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const MiB = 1024 * 1024;

/** ws client options that route to `port` by header or by Host. */
function routeTo(via, port, extra = {}) {
  const headers = via === 'header' ? { 'X-Cmux-Port-Internal': String(port) } : { Host: `app.${port}.localhost` };
  return { ...extra, headers: { ...headers, ...(extra.headers ?? {}) } };
}

let pathSeq = 0;
function uniquePath(name) {
  return `/${name}-${++pathSeq}`;
}

/** A client-to-server frame (masked, FIN set), payload < 126 bytes. */
function maskedFrame(opcode, payload) {
  assert.ok(payload.length < 126);
  const key = crypto.randomBytes(4);
  const masked = Buffer.alloc(payload.length);
  for (let i = 0; i < payload.length; i++) masked[i] = payload[i] ^ key[i % 4];
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length]), key, masked]);
}

function acceptFor(key) {
  return crypto.createHash('sha1').update(key + WS_GUID).digest('base64');
}

/** A raw client: connects, writes `data` in one write, resolves { socket, read() } (read = all bytes so far). */
async function rawConnect(port, data) {
  const socket = net.connect({ port, host: '127.0.0.1' });
  socket.on('error', () => {});
  await once(socket, 'connect');
  let buf = Buffer.alloc(0);
  const waiters = [];
  socket.on('data', (c) => {
    buf = Buffer.concat([buf, c]);
    for (const w of [...waiters]) w();
  });
  let ended = false;
  socket.on('end', () => {
    ended = true;
    for (const w of [...waiters]) w();
  });
  /** Waits until `pred(buf)` is true; rejects on timeout. */
  const until = (pred, timeoutMs = 5000) =>
    new Promise((resolve, reject) => {
      if (pred(buf)) return resolve(buf);
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(check), 1);
        reject(new Error(`timed out; got ${JSON.stringify(buf.toString('latin1').slice(0, 300))}, ended=${ended}`));
      }, timeoutMs);
      const check = () => {
        if (!pred(buf)) return;
        clearTimeout(timer);
        waiters.splice(waiters.indexOf(check), 1);
        resolve(buf);
      };
      waiters.push(check);
    });
  if (data !== undefined) socket.write(data);
  return { socket, until, get buf() { return buf; }, get ended() { return ended; } };
}

function upgradeHead(path, port, key, extraLines = '') {
  return (
    `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Cmux-Port-Internal: ${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extraLines}\r\n`
  );
}

for (const via of ['header', 'host']) {
  describe(`WebSocket over HTTP/1.1 Upgrade, routed by ${via === 'header' ? 'X-Cmux-Port-Internal' : 'Host app.<port>.localhost'}`, () => {
    let proxy;
    let echo;
    let echoProto;
    let echoDeflate;
    const url = (path) => `ws://127.0.0.1:${proxy.port}${path}`;

    before(async () => {
      echo = await startWsEcho();
      echoProto = await startWsEcho({ handleProtocols: (protocols) => (protocols.has('b') ? 'b' : false) });
      echoDeflate = await startWsEcho({ perMessageDeflate: { threshold: 0 } });
      proxy = await startProxy();
    });
    after(async () => {
      await proxy?.proxy.stop();
      await echo?.close();
      await echoProto?.close();
      await echoDeflate?.close();
    });

    it('forwards the upgrade head: path, Upgrade/Connection, Sec-WebSocket-Key, routing headers removed', async () => {
      const path = uniquePath('head');
      const ws = await openWs(url(path), undefined, routeTo(via, echo.port));
      try {
        const srv = await echo.connectionFor(path);
        const h = srv.request.headers;
        assert.equal(srv.request.url, path);
        assert.equal(h.upgrade.toLowerCase(), 'websocket');
        assert.match(h.connection, /upgrade/i);
        assert.equal(h['sec-websocket-version'], '13');
        assert.match(h['sec-websocket-key'], /^[A-Za-z0-9+/]{22}==$/);
        assert.equal(h['x-cmux-port-internal'], undefined);
        if (via === 'host') assert.equal(h.host, `app.${echo.port}.localhost`);
      } finally {
        ws.terminate();
      }
    });

    it('echoes a text message', async () => {
      const ws = await openWs(url(uniquePath('text')), undefined, routeTo(via, echo.port));
      try {
        const got = nextMessage(ws);
        ws.send('héllo wörld ✓');
        const { data, isBinary } = await got;
        assert.equal(isBinary, false);
        assert.equal(data.toString('utf8'), 'héllo wörld ✓');
      } finally {
        ws.terminate();
      }
    });

    it('echoes a binary message byte-exact', async () => {
      const ws = await openWs(url(uniquePath('bin')), undefined, routeTo(via, echo.port));
      try {
        const payload = crypto.randomBytes(70_000);
        payload[0] = 0;
        payload[1] = 0xff;
        const got = nextMessage(ws);
        ws.send(payload);
        const { data, isBinary } = await got;
        assert.equal(isBinary, true);
        assert.ok(Buffer.isBuffer(data));
        assert.equal(data.length, payload.length);
        assert.ok(data.equals(payload), 'binary echo differs');
      } finally {
        ws.terminate();
      }
    });

    it('passes a fragmented message (fin:false parts) as one message, both text and binary', async () => {
      const path = uniquePath('frag');
      const ws = await openWs(url(path), undefined, routeTo(via, echo.port));
      try {
        const srv = await echo.connectionFor(path);
        let got = nextMessage(ws);
        ws.send('part-1|', { fin: false });
        ws.send('part-2|', { fin: false });
        ws.send('part-3', { fin: true });
        let m = await got;
        assert.equal(m.isBinary, false);
        assert.equal(m.data.toString('utf8'), 'part-1|part-2|part-3');

        const parts = [crypto.randomBytes(1000), crypto.randomBytes(200_000), crypto.randomBytes(3)];
        got = nextMessage(ws);
        ws.send(parts[0], { binary: true, fin: false });
        ws.send(parts[1], { binary: true, fin: false });
        ws.send(parts[2], { binary: true, fin: true });
        m = await got;
        assert.equal(m.isBinary, true);
        assert.ok(m.data.equals(Buffer.concat(parts)), 'fragmented binary echo differs');
        // The upstream saw exactly two messages (the fragments were reassembled by it, not lost).
        assert.equal(srv.messages.length, 2);
      } finally {
        ws.terminate();
      }
    });

    it('echoes a 16 MiB message byte-exact', { timeout: 30_000 }, async () => {
      const ws = await openWs(url(uniquePath('big')), undefined, routeTo(via, echo.port));
      try {
        const payload = crypto.randomBytes(16 * MiB);
        const got = nextMessage(ws, 25_000);
        ws.send(payload);
        const { data, isBinary } = await got;
        assert.equal(isBinary, true);
        assert.equal(data.length, payload.length);
        assert.equal(crypto.createHash('sha256').update(data).digest('hex'), crypto.createHash('sha256').update(payload).digest('hex'));
      } finally {
        ws.terminate();
      }
    });

    it('passes ping/pong both ways with their payloads', async () => {
      const path = uniquePath('ping');
      const ws = await openWs(url(path), undefined, routeTo(via, echo.port));
      try {
        const srv = await echo.connectionFor(path);
        // client ping -> server (auto-pong) -> client pong
        const pong = once(ws, 'pong');
        const srvPing = once(srv, 'ping');
        ws.ping(Buffer.from('client-ping'));
        assert.equal((await srvPing)[0].toString(), 'client-ping');
        assert.equal((await pong)[0].toString(), 'client-ping');
        // server ping -> client (auto-pong) -> server pong
        const cliPing = once(ws, 'ping');
        const srvPong = once(srv, 'pong');
        srv.ping(Buffer.from('server-ping'));
        assert.equal((await cliPing)[0].toString(), 'server-ping');
        assert.equal((await srvPong)[0].toString(), 'server-ping');
      } finally {
        ws.terminate();
      }
    });

    it('client close 4001 "bye" reaches the upstream and its answer comes back', async () => {
      const path = uniquePath('cclose');
      const ws = await openWs(url(path), undefined, routeTo(via, echo.port));
      const srv = await echo.connectionFor(path);
      const srvClosed = closed(srv);
      const cliClosed = closed(ws);
      ws.close(4001, 'bye');
      assert.deepEqual(await srvClosed, { code: 4001, reason: 'bye' });
      assert.deepEqual(await cliClosed, { code: 4001, reason: 'bye' });
    });

    it('server close 4002 "srv" reaches the client', async () => {
      const path = uniquePath('sclose');
      const ws = await openWs(url(path), undefined, routeTo(via, echo.port));
      const srv = await echo.connectionFor(path);
      const srvClosed = closed(srv);
      const cliClosed = closed(ws);
      srv.close(4002, 'srv');
      assert.deepEqual(await cliClosed, { code: 4002, reason: 'srv' });
      assert.deepEqual(await srvClosed, { code: 4002, reason: 'srv' });
    });

    it('negotiates a subprotocol: client offers a,b, upstream picks b', async () => {
      const path = uniquePath('proto');
      const ws = await openWs(url(path), ['a', 'b'], routeTo(via, echoProto.port));
      try {
        assert.equal(ws.protocol, 'b');
        const srv = await echoProto.connectionFor(path);
        assert.equal(srv.protocol, 'b');
        const offered = srv.request.headers['sec-websocket-protocol'];
        assert.equal(typeof offered, 'string', 'the upstream got no Sec-WebSocket-Protocol');
        assert.deepEqual(offered.split(',').map((s) => s.trim()), ['a', 'b']);
        const got = nextMessage(ws);
        ws.send('with-protocol');
        assert.equal((await got).data.toString(), 'with-protocol');
      } finally {
        ws.terminate();
      }
    });

    it('negotiates permessage-deflate end to end and compressed messages echo exactly', async () => {
      const path = uniquePath('deflate');
      const ws = await openWs(url(path), undefined, routeTo(via, echoDeflate.port, { perMessageDeflate: { threshold: 0 } }));
      try {
        assert.match(ws.extensions, /(^|,\s*)permessage-deflate(;|,|$)/);
        const srv = await echoDeflate.connectionFor(path);
        const offered = srv.request.headers['sec-websocket-extensions'];
        assert.equal(typeof offered, 'string', 'the upstream got no Sec-WebSocket-Extensions');
        assert.match(offered, /permessage-deflate/);
        const text = 'compress me '.repeat(20_000);
        const got = nextMessage(ws);
        ws.send(text);
        const m = await got;
        assert.equal(m.isBinary, false);
        assert.equal(m.data.toString(), text);
        const bin = Buffer.alloc(300_000, 7);
        const got2 = nextMessage(ws);
        ws.send(bin);
        assert.ok((await got2).data.equals(bin));
      } finally {
        ws.terminate();
      }
    });
  });
}

describe('WebSocket refusals and failures', () => {
  it('upstream refusing with 403 (ws verifyClient): the client gets the 403 as a normal response', async () => {
    const echo = await startWsEcho({ verifyClient: (_info, cb) => cb(false, 403, 'Forbidden') });
    const { proxy, port } = await startProxy();
    try {
      const res = await refusedWs(`ws://127.0.0.1:${port}/refused`, undefined, routeTo('header', echo.port));
      assert.equal(res.status, 403);
      assert.equal(res.body, 'Forbidden');
      assert.equal(echo.upgrades.length, 1);
      assert.equal(echo.upgrades[0].url, '/refused');
      assert.ok(await waitFor(() => proxy.getStats().websocketConnections === 0));
      assert.equal(proxy.getStats().websocketConnections, 0);
    } finally {
      await proxy.stop();
      await echo.close();
    }
  });

  it('upstream answering 403 and keeping its socket: 403 relayed, the upstream socket destroyed', async () => {
    const body = 'nope!!';
    const upstream = await startRawServer((socket) => {
      let head = '';
      socket.on('data', (c) => {
        head += c.toString('latin1');
        if (head.includes('\r\n\r\n')) {
          socket.write(`HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\nconnection: keep-alive\r\n\r\n${body}`);
        }
      });
    });
    const { proxy, port } = await startProxy();
    try {
      const res = await refusedWs(`ws://127.0.0.1:${port}/raw403`, undefined, routeTo('header', upstream.port));
      assert.equal(res.status, 403);
      assert.equal(res.body, body);
      // An upstream that answers anything but 101 gets its answer relayed and its socket destroyed.
      const closedUp = await waitFor(() => upstream.sockets.size === 0);
      const s = proxy.getStats();
      assert.ok(closedUp, `the proxy kept the refusing upstream socket open (upstreamSocketsIdle=${s.upstreamSocketsIdle}, upstreamSocketsActive=${s.upstreamSocketsActive})`);
      assert.equal(proxy.getStats().websocketConnections, 0);
    } finally {
      await proxy.stop();
      await upstream.close();
    }
  });

  it('upstream down -> 502 upstream request error: ECONNREFUSED', async () => {
    const dead = await refusedPort();
    const { proxy, port } = await startProxy();
    try {
      const res = await refusedWs(`ws://127.0.0.1:${port}/down`, undefined, routeTo('header', dead));
      assert.equal(res.status, 502);
      assert.equal(res.body, 'upstream request error: ECONNREFUSED');
      assert.equal(proxy.getStats().websocketConnections, 0);
    } finally {
      await proxy.stop();
    }
  });

  it('enableWebsockets: false -> 501 "websockets disabled", nothing reaches the upstream', async () => {
    const echo = await startWsEcho();
    const { proxy, port } = await startProxy({ enableWebsockets: false });
    try {
      const res = await refusedWs(`ws://127.0.0.1:${port}/off`, undefined, routeTo('header', echo.port));
      assert.equal(res.status, 501);
      assert.equal(res.body, 'websockets disabled');
      assert.equal(echo.upgrades.length, 0);
      assert.equal(proxy.getStats().websocketConnections, 0);
      assert.equal(proxy.getStats().websocketsUpgradeTotal, 0);
    } finally {
      await proxy.stop();
      await echo.close();
    }
  });

  it('client vanishing mid-message: the upstream side is closed and websocketConnections returns to 0', { timeout: 20_000 }, async () => {
    const echo = await startWsEcho({}, { echo: false });
    const { proxy, port } = await startProxy();
    try {
      const ws = await openWs(`ws://127.0.0.1:${port}/cvanish`, undefined, routeTo('header', echo.port));
      const srv = await echo.connectionFor('/cvanish');
      assert.equal(proxy.getStats().websocketConnections, 1);
      const srvClosed = closed(srv);
      let received = 0;
      srv._socket.on('data', (c) => {
        received += c.length;
        if (received >= MiB && !ws._socket.destroyed) ws._socket.destroy();
      });
      ws.send(crypto.randomBytes(32 * MiB));
      const { code } = await srvClosed;
      assert.equal(code, 1006);
      assert.equal(srv.messages.length, 0, 'the upstream got a whole message the client never finished sending');
      assert.ok(received >= MiB && received < 32 * MiB, `upstream received ${received} bytes`);
      assert.ok(await waitFor(() => proxy.getStats().websocketConnections === 0), `websocketConnections = ${proxy.getStats().websocketConnections}`);
      assert.ok(await waitFor(() => proxy.getStats().activeConnections === 0), `activeConnections = ${proxy.getStats().activeConnections}`);
      assert.ok(await waitFor(() => echo.openCount() === 0));
    } finally {
      await proxy.stop();
      await echo.close();
    }
  });

  it('upstream vanishing mid-message: the client side is closed and websocketConnections returns to 0', { timeout: 20_000 }, async () => {
    const echo = await startWsEcho({}, { echo: false });
    const { proxy, port } = await startProxy();
    try {
      const ws = await openWs(`ws://127.0.0.1:${port}/svanish`, undefined, routeTo('header', echo.port));
      const srv = await echo.connectionFor('/svanish');
      assert.equal(proxy.getStats().websocketConnections, 1);
      const cliClosed = closed(ws);
      let messages = 0;
      ws.on('message', () => messages++);
      let received = 0;
      ws._socket.on('data', (c) => {
        received += c.length;
        if (received >= MiB && !srv._socket.destroyed) srv._socket.destroy();
      });
      srv.send(crypto.randomBytes(32 * MiB));
      const { code } = await cliClosed;
      assert.equal(code, 1006);
      assert.equal(messages, 0, 'the client got a whole message the upstream never finished sending');
      assert.ok(received >= MiB && received < 32 * MiB, `client received ${received} bytes`);
      assert.ok(await waitFor(() => proxy.getStats().websocketConnections === 0), `websocketConnections = ${proxy.getStats().websocketConnections}`);
      assert.ok(await waitFor(() => proxy.getStats().activeConnections === 0), `activeConnections = ${proxy.getStats().activeConnections}`);
    } finally {
      await proxy.stop();
      await echo.close();
    }
  });

  it('client half-close (FIN, no close frame) against an upstream that never closes: no half-open leak', { timeout: 20_000 }, async () => {
    // The upstream accepts the upgrade, then ignores the FIN forever.
    const upstream = await startRawServer((socket) => {
      let head = '';
      const onData = (c) => {
        head += c.toString('latin1');
        const m = /sec-websocket-key: *([^\r\n]+)/i.exec(head);
        if (head.includes('\r\n\r\n') && m) {
          socket.removeListener('data', onData);
          socket.on('data', () => {});
          socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(m[1].trim())}\r\n\r\n`);
        }
      };
      socket.on('data', onData);
      socket.on('end', () => {}); // allowHalfOpen is false on net servers: Node ends our side on FIN
    });
    const { proxy, port } = await startProxy();
    try {
      const key = crypto.randomBytes(16).toString('base64');
      const client = await rawConnect(port, upgradeHead('/halfopen', upstream.port, key));
      await client.until((b) => b.includes('\r\n\r\n'));
      assert.match(client.buf.toString('latin1'), /^HTTP\/1\.1 101 /);
      assert.equal(proxy.getStats().websocketConnections, 1);
      client.socket.end();
      assert.ok(await waitFor(() => proxy.getStats().websocketConnections === 0, { timeoutMs: 10_000 }), `websocketConnections = ${proxy.getStats().websocketConnections}`);
      assert.ok(await waitFor(() => upstream.sockets.size === 0, { timeoutMs: 10_000 }), 'the upstream socket is still open');
      assert.ok(await waitFor(() => client.socket.destroyed || client.ended, { timeoutMs: 10_000 }));
    } finally {
      await proxy.stop();
      await upstream.close();
    }
  });

  it('websocketsUpgradeTotal counts upgrades; websocketConnections is exact while open and back to 0 after', async () => {
    const echo = await startWsEcho();
    const { proxy, port } = await startProxy();
    try {
      const sockets = [];
      for (let i = 0; i < 3; i++) sockets.push(await openWs(`ws://127.0.0.1:${port}/count-${i}`, undefined, routeTo(i % 2 ? 'host' : 'header', echo.port)));
      let s = proxy.getStats();
      assert.equal(s.websocketsUpgradeTotal, 3);
      assert.equal(s.websocketConnections, 3);
      assert.equal(s.websocketsExtendedConnectTotal, 0);
      await Promise.all(sockets.map((ws) => {
        const c = closed(ws);
        ws.close(1000, 'done');
        return c;
      }));
      assert.ok(await waitFor(() => proxy.getStats().websocketConnections === 0), `websocketConnections = ${proxy.getStats().websocketConnections}`);
      s = proxy.getStats();
      assert.equal(s.websocketsUpgradeTotal, 3);
      assert.equal(s.websocketConnections, 0);
    } finally {
      await proxy.stop();
      await echo.close();
    }
  });
});

describe('WebSocket lifetime', () => {
  it('an open WebSocket outlives the client and upstream idle timeouts', { timeout: 10_000 }, async () => {
    const echo = await startWsEcho();
    const { proxy, port } = await startProxy({ clientIdleTimeoutMs: 300, upstreamIdleTimeoutMs: 300 });
    try {
      const ws = await openWs(`ws://127.0.0.1:${port}/idle`, undefined, routeTo('header', echo.port));
      const cliClosed = closed(ws, 30_000).catch(() => null);
      let wasClosed = false;
      ws.once('close', () => (wasClosed = true));
      await sleep(1500);
      assert.equal(wasClosed, false, 'the WebSocket was closed while idle');
      const got = nextMessage(ws);
      ws.send('still here');
      assert.equal((await got).data.toString(), 'still here');
      assert.equal(proxy.getStats().websocketConnections, 1);
      ws.close(1000);
      await cliClosed;
    } finally {
      await proxy.stop();
      await echo.close();
    }
  });

  it('a spliced WebSocket\'s two proxy sockets keep one listener per event, no idle Timeout, no session or pool state; closing settles every count', { timeout: 10_000 }, async () => {
    const echo = await startWsEcho();
    const { proxy, port } = await startProxy({ clientIdleTimeoutMs: 60_000, upstreamIdleTimeoutMs: 60_000 });
    try {
      const ws = await openWs(`ws://127.0.0.1:${port}/lean`, undefined, routeTo('header', echo.port));
      const got = nextMessage(ws);
      ws.send('hi');
      assert.equal((await got).data.toString(), 'hi');
      // The proxy runs in this process: its client-side socket listens on `port`, its upstream
      // socket connects to the echo server's.
      const sockets = process._getActiveHandles().filter((h) => h instanceof net.Socket);
      const client = sockets.filter((s) => s.localPort === port);
      const upstream = sockets.filter((s) => s.remotePort === echo.port && s.localPort !== echo.port);
      assert.equal(client.length, 1);
      assert.equal(upstream.length, 1);
      for (const [side, socket] of [['client', client[0]], ['upstream', upstream[0]]]) {
        for (const event of ['close', 'error', 'end', 'data', 'drain']) {
          const own = socket.listeners(event).filter((l) => l.name !== 'onReadableStreamEnd');
          assert.equal(own.length, 1, `${side} '${event}' listeners: ${own.map((l) => l.name)}`);
        }
        assert.equal(socket.listenerCount('timeout'), 0, `${side}: a 'timeout' listener while nothing can time out`);
        const symbols = Object.getOwnPropertySymbols(socket);
        const timeout = symbols.find((k) => k.description === 'timeout');
        assert.ok(timeout === undefined || socket[timeout] == null, `${side}: still holds a (cleared) idle Timeout`);
        for (const name of ['cmux.h1', 'cmux.upstream']) {
          const key = symbols.find((k) => k.description === name);
          assert.ok(key === undefined || socket[key] === undefined, `${side}: still points at its ${name} state`);
        }
      }
      const stats = proxy.getStats();
      assert.equal(stats.websocketConnections, 1);
      assert.equal(stats.activeConnections, 1);
      assert.equal(stats.upstreamSocketsActive, 1);
      const cliClosed = closed(ws, 5_000);
      ws.close(1000);
      await cliClosed;
      const settled = await waitFor(() => {
        const s = proxy.getStats();
        return s.websocketConnections === 0 && s.activeConnections === 0 && s.upstreamSocketsActive === 0;
      });
      assert.ok(settled, `counts after the close: ${JSON.stringify(proxy.getStats(), ['websocketConnections', 'activeConnections', 'upstreamSocketsActive'])}`);
    } finally {
      await proxy.stop();
      await echo.close();
    }
  });

  it('TCP keep-alive (keepaliveMs) is armed on both spliced sockets', { skip: !fs.existsSync('/proc/net/tcp') && 'needs /proc/net/tcp' }, async () => {
    const echo = await startWsEcho();
    const { proxy, port } = await startProxy({ keepaliveMs: 1000 });
    try {
      const ws = await openWs(`ws://127.0.0.1:${port}/keepalive`, undefined, routeTo('header', echo.port));
      const srv = await echo.connectionFor('/keepalive');
      await sleep(100);
      // /proc/net/tcp: local, remote, state, queues, "tr:when" (tr 2 = keep-alive timer, when in 1/100 s).
      const hex = (p) => p.toString(16).toUpperCase().padStart(4, '0');
      const rows = fs.readFileSync('/proc/net/tcp', 'utf8').trim().split('\n').slice(1).map((l) => l.trim().split(/\s+/));
      const timer = (localPort, remotePort) => {
        const row = rows.find((r) => r[1].endsWith(`:${hex(localPort)}`) && r[2].endsWith(`:${hex(remotePort)}`));
        assert.ok(row, `no /proc/net/tcp row for ${localPort} -> ${remotePort}`);
        const [tr, when] = row[5].split(':');
        return { tr, ms: parseInt(when, 16) * 10 };
      };
      const clientSide = timer(port, ws._socket.localPort);
      const upstreamSide = timer(srv._socket.remotePort, echo.port);
      const control = timer(ws._socket.localPort, port); // the test's own client: no keep-alive
      assert.equal(control.tr, '00');
      assert.equal(clientSide.tr, '02', 'no keep-alive timer on the proxy\'s client socket');
      assert.ok(clientSide.ms <= 1000, `client socket keep-alive fires in ${clientSide.ms} ms, keepaliveMs is 1000`);
      assert.equal(upstreamSide.tr, '02', 'no keep-alive timer on the proxy\'s upstream socket');
      assert.ok(upstreamSide.ms <= 1000, `upstream socket keep-alive fires in ${upstreamSide.ms} ms, keepaliveMs is 1000`);
      ws.terminate();
    } finally {
      await proxy.stop();
      await echo.close();
    }
  });

  it('stop() closes open WebSockets on both sides and resolves; websocketConnections returns to 0', { timeout: 15_000 }, async () => {
    const echo = await startWsEcho();
    const { proxy, port } = await startProxy({ drainTimeoutMs: 300 });
    let stopped = false;
    try {
      const ws = await openWs(`ws://127.0.0.1:${port}/stop`, undefined, routeTo('header', echo.port));
      const srv = await echo.connectionFor('/stop');
      const cliClosed = closed(ws);
      const srvClosed = closed(srv);
      const t0 = Date.now();
      await proxy.stop();
      stopped = true;
      const took = Date.now() - t0;
      assert.ok(took < 3000, `stop() took ${took} ms`);
      await cliClosed;
      await srvClosed;
      assert.ok(await waitFor(() => proxy.getStats().websocketConnections === 0), `websocketConnections = ${proxy.getStats().websocketConnections}`);
      assert.ok(await waitFor(() => proxy.getStats().activeConnections === 0), `activeConnections = ${proxy.getStats().activeConnections}`);
      assert.ok(await waitFor(() => echo.openCount() === 0));
    } finally {
      if (!stopped) await proxy.stop().catch(() => {});
      await echo.close();
    }
  });
});

describe('bytes already read when the upgrade happens', () => {
  let proxy;
  let echo;
  before(async () => {
    echo = await startWsEcho();
    proxy = await startProxy();
  });
  after(async () => {
    await proxy?.proxy.stop();
    await echo?.close();
  });

  it('a frame sent in the same TCP write as the upgrade request reaches the upstream', async () => {
    const key = crypto.randomBytes(16).toString('base64');
    const frame = maskedFrame(0x1, Buffer.from('early'));
    const client = await rawConnect(proxy.port, Buffer.concat([Buffer.from(upgradeHead('/early', echo.port, key), 'latin1'), frame]));
    try {
      const srv = await echo.connectionFor('/early');
      await waitFor(() => srv.messages.length > 0);
      assert.equal(srv.messages.length, 1);
      assert.equal(srv.messages[0].data.toString(), 'early');
      const buf = await client.until((b) => {
        const at = b.indexOf('\r\n\r\n');
        return at !== -1 && b.length >= at + 4 + 7;
      });
      const at = buf.indexOf('\r\n\r\n');
      const head = buf.subarray(0, at).toString('latin1');
      assert.match(head, /^HTTP\/1\.1 101 /);
      assert.match(head, new RegExp(`\\r\\nsec-websocket-accept: ${acceptFor(key).replace(/[+/]/g, '\\$&')}(\\r\\n|$)`, 'i'));
      assert.deepEqual([...buf.subarray(at + 4, at + 4 + 7)], [0x81, 5, ...Buffer.from('early')]);
    } finally {
      client.socket.destroy();
    }
  });

  it('a frame the upstream sends in the same write as its 101 reaches the client', async () => {
    const upstream = await startRawServer((socket) => {
      let head = '';
      socket.on('data', (c) => {
        head += c.toString('latin1');
        const m = /sec-websocket-key: *([^\r\n]+)/i.exec(head);
        if (head.includes('\r\n\r\n') && m && !socket.answered) {
          socket.answered = true;
          socket.write(
            Buffer.concat([
              Buffer.from(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(m[1].trim())}\r\n\r\n`, 'latin1'),
              Buffer.from([0x81, 5]),
              Buffer.from('hello'),
            ]),
          );
        }
      });
    });
    try {
      const ws = new WebSocket(`ws://127.0.0.1:${proxy.port}/greet`, routeTo('header', upstream.port));
      ws.on('error', () => {});
      const got = nextMessage(ws, 5000);
      try {
        const { data, isBinary } = await got;
        assert.equal(isBinary, false);
        assert.equal(data.toString(), 'hello');
      } finally {
        ws.terminate();
      }
    } finally {
      await upstream.close();
    }
  });
});

describe('upgrade request shapes', () => {
  let proxy;
  let echo;
  before(async () => {
    echo = await startWsEcho();
    proxy = await startProxy();
  });
  after(async () => {
    await proxy?.proxy.stop();
    await echo?.close();
  });

  it('Connection: keep-alive, Upgrade (as Firefox sends it) is an upgrade', async () => {
    const key = crypto.randomBytes(16).toString('base64');
    const head = upgradeHead('/firefox', echo.port, key).replace('Connection: Upgrade', 'Connection: keep-alive, Upgrade');
    const client = await rawConnect(proxy.port, head);
    try {
      const buf = await client.until((b) => b.includes('\r\n\r\n'));
      assert.match(buf.toString('latin1'), /^HTTP\/1\.1 101 /);
      const srv = await echo.connectionFor('/firefox');
      assert.match(srv.request.headers.connection, /upgrade/i);
      assert.doesNotMatch(srv.request.headers.connection, /keep-alive/i);
    } finally {
      client.socket.destroy();
    }
  });

  it('an upgrade after a normal request on the same keep-alive connection', async () => {
    const client = await rawConnect(proxy.port, `GET /plain HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Cmux-Port-Internal: ${echo.port}\r\n\r\n`);
    try {
      await client.until((b) => b.includes('\r\n0\r\n\r\n'));
      assert.match(client.buf.toString('latin1'), /^HTTP\/1\.1 426 /);
      const start = client.buf.length;
      const key = crypto.randomBytes(16).toString('base64');
      client.socket.write(Buffer.concat([Buffer.from(upgradeHead('/second', echo.port, key), 'latin1'), maskedFrame(0x1, Buffer.from('again'))]));
      const buf = await client.until((b) => {
        const at = b.indexOf('\r\n\r\n', start);
        return at !== -1 && b.length >= at + 4 + 7;
      });
      const rest = buf.subarray(start);
      const at = rest.indexOf('\r\n\r\n');
      assert.match(rest.toString('latin1'), /^HTTP\/1\.1 101 /);
      assert.deepEqual([...rest.subarray(at + 4, at + 4 + 7)], [0x81, 5, ...Buffer.from('again')]);
    } finally {
      client.socket.destroy();
    }
  });

  it('the client leaving while the upgrade is pending closes the upstream socket', async () => {
    const heads = [];
    const upstream = await startRawServer((socket) => {
      socket.on('data', (c) => heads.push(c.toString('latin1'))); // never answers
    });
    try {
      const key = crypto.randomBytes(16).toString('base64');
      const client = await rawConnect(proxy.port, upgradeHead('/pending', upstream.port, key));
      assert.ok(await waitFor(() => heads.join('').includes('\r\n\r\n')), 'the upgrade request never reached the upstream');
      client.socket.destroy();
      assert.ok(await waitFor(() => upstream.sockets.size === 0), 'the upstream socket stayed open after the client left');
      assert.equal(proxy.proxy.getStats().websocketConnections, 0);
    } finally {
      await upstream.close();
    }
  });
});

describe('CONNECT tunnels over HTTP/1.1', () => {
  it('CONNECT 127.0.0.1:<port> with X-Cmux-Port-Internal -> 200, then bytes both ways, then either close ends it', { timeout: 15_000 }, async () => {
    const upstream = await startRawServer((socket) => {
      socket.write('greeting\n');
      socket.pipe(socket);
    });
    const { proxy, port } = await startProxy();
    try {
      const client = await rawConnect(
        port,
        `CONNECT 127.0.0.1:${upstream.port} HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\nX-Cmux-Port-Internal: ${upstream.port}\r\n\r\n`,
      );
      let buf = await client.until((b) => b.includes('greeting\n'));
      const at = buf.indexOf('\r\n\r\n');
      assert.ok(at !== -1);
      assert.match(buf.subarray(0, at).toString('latin1'), /^HTTP\/1\.1 200 /);
      assert.equal(buf.subarray(at + 4).toString('latin1'), 'greeting\n');
      assert.equal(proxy.getStats().tunnelsOpen, 1);
      const start = buf.length;
      const payload = crypto.randomBytes(2 * MiB);
      client.socket.write(payload);
      buf = await client.until((b) => b.length >= start + payload.length);
      assert.equal(buf.length, start + payload.length);
      assert.ok(buf.subarray(start).equals(payload), 'tunnel echo differs');
      // The upstream closing ends the client side.
      for (const s of upstream.sockets) s.end();
      assert.ok(await waitFor(() => client.ended), 'the client never got the upstream FIN');
      client.socket.end();
      assert.ok(await waitFor(() => proxy.getStats().tunnelsOpen === 0), `tunnelsOpen = ${proxy.getStats().tunnelsOpen}`);
      assert.equal(proxy.getStats().websocketConnections, 0);
    } finally {
      await proxy.stop();
      await upstream.close();
    }
  });

  it('the client closing a CONNECT tunnel closes the upstream socket', async () => {
    const upstream = await startRawServer((socket) => socket.pipe(socket));
    const { proxy, port } = await startProxy();
    try {
      const client = await rawConnect(port, `CONNECT 127.0.0.1:${upstream.port} HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\nX-Cmux-Port-Internal: ${upstream.port}\r\n\r\nx`);
      const buf = await client.until((b) => b.includes('\r\n\r\nx'));
      assert.match(buf.toString('latin1'), /^HTTP\/1\.1 200 /);
      assert.equal(upstream.sockets.size, 1);
      client.socket.destroy();
      assert.ok(await waitFor(() => upstream.sockets.size === 0), 'the upstream socket is still open');
      assert.ok(await waitFor(() => proxy.getStats().tunnelsOpen === 0));
    } finally {
      await proxy.stop();
      await upstream.close();
    }
  });

  it('CONNECT to a dead port -> 502 and the connection closes', async () => {
    const dead = await refusedPort();
    const { proxy, port } = await startProxy();
    try {
      const client = await rawConnect(port, `CONNECT 127.0.0.1:${dead} HTTP/1.1\r\nHost: 127.0.0.1:${dead}\r\nX-Cmux-Port-Internal: ${dead}\r\n\r\n`);
      const buf = await client.until((b) => b.includes('\r\n\r\n'));
      assert.match(buf.toString('latin1'), /^HTTP\/1\.1 502 /);
      assert.ok(await waitFor(() => client.ended || client.socket.destroyed), 'the connection stayed open after the 502');
      assert.match(client.buf.toString('latin1'), /\r\n\r\nupstream request error: ECONNREFUSED$/);
      assert.equal(proxy.getStats().tunnelsOpen, 0);
    } finally {
      await proxy.stop();
      await sleep(0);
    }
  });
});
