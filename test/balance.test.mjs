// Route groups: smooth weighted round-robin, least-connections (tunnels counted while open),
// consistent hashing by client address or header. Distributions under concurrent load.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import http2 from 'node:http2';
import { once } from 'node:events';
import { WebSocketServer } from 'ws';
import { startProxy, startUpstream, request, rawRequest, sleep, waitFor } from './helpers/servers.mjs';

async function named(name, handler) {
  const up = await startUpstream(handler ?? ((req, res) => res.end(name)));
  up.name = name;
  return up;
}

function countBy(list) {
  const out = {};
  for (const x of list) out[x] = (out[x] ?? 0) + 1;
  return out;
}

async function load(port, host, n, { concurrency = 16, headers = () => ({}) } = {}) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  try {
    return await Promise.all(
      Array.from({ length: n }, (_, i) => request(`http://127.0.0.1:${port}/`, { agent, headers: { host, ...headers(i) } }).then((r) => (assert.equal(r.status, 200), r.body))),
    );
  } finally {
    agent.destroy();
  }
}

describe('round-robin', () => {
  it('weights 1:2:3 under 16 concurrent connections: exactly 100/200/300 of 600', async () => {
    const ups = await Promise.all(['a', 'b', 'c'].map((n) => named(n)));
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'rr.localhost' }, upstreams: ups.map((u, i) => ({ address: `127.0.0.1:${u.port}`, weight: i + 1 })) }],
    });
    try {
      // Picks happen one at a time on the event loop, so concurrency does not skew them: tolerance 0.
      assert.deepEqual(countBy(await load(port, 'rr.localhost', 600)), { a: 100, b: 200, c: 300 });
    } finally {
      await proxy.stop();
      await Promise.all(ups.map((u) => u.close()));
    }
  });

  it('is smooth: weights 5:1:1 give a a b a c a a, not a burst of five', async () => {
    const ups = await Promise.all(['a', 'b', 'c'].map((n) => named(n)));
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'rr.localhost' }, upstreams: ups.map((u, i) => ({ address: `127.0.0.1:${u.port}`, weight: i === 0 ? 5 : 1 })) }],
    });
    try {
      const seq = [];
      for (let i = 0; i < 7; i++) seq.push((await request(`http://127.0.0.1:${port}/`, { headers: { host: 'rr.localhost' } })).body);
      assert.equal(seq.join(' '), 'a a b a c a a');
    } finally {
      await proxy.stop();
      await Promise.all(ups.map((u) => u.close()));
    }
  });
});

describe('least-connections', () => {
  it('a slow upstream gets fewer of 300 concurrent requests than a fast one', async () => {
    const slow = await named('slow', (req, res) => setTimeout(() => res.end('slow'), 100));
    const fast = await named('fast');
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'lc.localhost' }, upstreams: [`127.0.0.1:${slow.port}`, `127.0.0.1:${fast.port}`], balance: 'least-connections' }],
    });
    try {
      const counts = countBy(await load(port, 'lc.localhost', 300, { concurrency: 20 }));
      // Round-robin would give 150 each; the fast one takes what the slow one cannot.
      assert.ok((counts.fast ?? 0) > 2 * (counts.slow ?? 0), JSON.stringify(counts));
      for (const u of proxy.getStats().routeUpstreams) assert.equal(u.inFlight, 0);
    } finally {
      await proxy.stop();
      await slow.close();
      await fast.close();
    }
  });

  it('held requests spread evenly, and WebSockets count until they close', async () => {
    const held = [];
    const handler = (req, res) => held.push(res);
    const ups = await Promise.all(['a', 'b'].map((n) => named(n, handler)));
    for (const up of ups) {
      up.server.on('upgrade', (req, socket) => {
        socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
        socket.on('error', () => {});
        socket.on('end', () => socket.end());
      });
    }
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'lc.localhost' }, upstreams: ups.map((u) => `127.0.0.1:${u.port}`), balance: 'least-connections' }],
    });
    const inFlight = () => proxy.getStats().routeUpstreams.map((u) => u.inFlight);
    const sockets = [];
    try {
      // Six WebSockets: three each, and they keep counting while open.
      for (let i = 0; i < 6; i++) {
        const s = net.connect(port, '127.0.0.1');
        sockets.push(s);
        s.on('error', () => {});
        s.write('GET /ws HTTP/1.1\r\nHost: lc.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
        await new Promise((resolve) => s.once('data', resolve));
      }
      assert.deepEqual(inFlight(), [3, 3]);
      for (const s of sockets) s.destroy();
      assert.ok(await waitFor(() => inFlight().every((n) => n === 0)), `tunnels released: ${inFlight()}`);
      // 40 held requests over 40 connections: 20 each (ties rotate).
      const agent = new http.Agent({ keepAlive: true, maxSockets: 40 });
      const pending = Array.from({ length: 40 }, () => request(`http://127.0.0.1:${port}/`, { agent, headers: { host: 'lc.localhost' } }));
      assert.ok(await waitFor(() => held.length === 40), `held ${held.length}`);
      assert.deepEqual(inFlight(), [20, 20]);
      for (const res of held.splice(0)) res.end('x');
      await Promise.all(pending);
      agent.destroy();
      assert.deepEqual(inFlight(), [0, 0]);
    } finally {
      for (const s of sockets) s.destroy();
      await proxy.stop();
      await Promise.all(ups.map((u) => u.close()));
    }
  });
});

describe('least-connections over HTTP/2', () => {
  it('RFC 8441 WebSockets count in their upstream\'s load until they close, and go to the emptier upstream', async () => {
    const servers = [];
    for (let i = 0; i < 2; i++) {
      const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false });
      await once(wss, 'listening');
      wss.on('connection', (ws) => ws.on('error', () => {}));
      servers.push(wss);
    }
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'ws.localhost' }, upstreams: servers.map((w) => `127.0.0.1:${w.address().port}`), balance: 'least-connections' }],
    });
    const inFlight = () => proxy.getStats().routeUpstreams.map((u) => u.inFlight);
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', () => {});
    await once(session, 'remoteSettings');
    const streams = [];
    try {
      for (let i = 0; i < 4; i++) {
        const stream = session.request({ ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': '/', ':authority': 'ws.localhost', 'sec-websocket-version': '13' }, { endStream: false });
        stream.on('error', () => {});
        const [headers] = await once(stream, 'response');
        assert.equal(headers[':status'], 200);
        streams.push(stream);
      }
      assert.deepEqual(inFlight(), [2, 2]);
      for (const s of streams) s.close();
      assert.ok(await waitFor(() => inFlight().every((n) => n === 0)), `released: ${inFlight()}`);
      // A refused one (nothing listening) gives its load back too.
      const wsDead = servers[0].address().port;
      await new Promise((r) => servers[0].close(r));
      proxy.updateRoutes([{ match: { host: 'ws.localhost' }, upstreams: [`127.0.0.1:${wsDead}`], balance: 'least-connections' }]);
      const stream = session.request({ ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': '/', ':authority': 'ws.localhost', 'sec-websocket-version': '13' }, { endStream: false });
      stream.on('error', () => {});
      const [headers] = await once(stream, 'response');
      assert.equal(headers[':status'], 502);
      assert.ok(await waitFor(() => inFlight()[0] === 0), `released: ${inFlight()}`);
    } finally {
      session.close();
      await proxy.stop();
      for (const w of servers) w.close();
    }
  });
});

describe('hash', () => {
  it('by header: sticky per key, even within ±40% over 600 keys, and a fourth upstream takes keys only for itself', async () => {
    const ups = await Promise.all(['a', 'b', 'c', 'd'].map((n) => named(n)));
    const route = (n) => [
      { match: { host: 'h.localhost' }, upstreams: ups.slice(0, n).map((u) => `127.0.0.1:${u.port}`), balance: 'hash', hashOn: { header: 'X-User' } },
    ];
    const { proxy, port } = await startProxy({ routes: route(3) });
    try {
      const keys = Array.from({ length: 600 }, (_, i) => `user-${i}`);
      const first = await load(port, 'h.localhost', keys.length, { headers: (i) => ({ 'x-user': keys[i] }) });
      const again = await load(port, 'h.localhost', keys.length, { headers: (i) => ({ 'x-user': keys[i] }) });
      assert.deepEqual(again, first, 'the same key goes to the same upstream');
      const counts = countBy(first);
      for (const n of ['a', 'b', 'c']) assert.ok(counts[n] > 200 * 0.6 && counts[n] < 200 * 1.4, JSON.stringify(counts));
      proxy.updateRoutes(route(4));
      const after = await load(port, 'h.localhost', keys.length, { headers: (i) => ({ 'x-user': keys[i] }) });
      let moved = 0;
      for (let i = 0; i < keys.length; i++) {
        if (after[i] === first[i]) continue;
        moved++;
        assert.equal(after[i], 'd', `key ${keys[i]} moved between old upstreams (${first[i]} -> ${after[i]})`);
      }
      // Expected 1/4 of the keys; a modulo hash would move about 3/4.
      assert.ok(moved > 600 * 0.15 && moved < 600 * 0.35, `moved ${moved}`);
    } finally {
      await proxy.stop();
      await Promise.all(ups.map((u) => u.close()));
    }
  });

  it('a hash header given twice hashes as its combined value; without it the client address is used', async () => {
    const ups = await Promise.all(['a', 'b', 'c', 'd', 'e'].map((n) => named(n)));
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'h.localhost' }, upstreams: ups.map((u) => `127.0.0.1:${u.port}`), balance: 'hash', hashOn: { header: 'x-user' } }],
    });
    const body = (raw) => raw.slice(raw.indexOf('\r\n\r\n') + 4);
    try {
      for (let i = 0; i < 10; i++) {
        const twice = body(await rawRequest(port, `GET / HTTP/1.1\r\nHost: h.localhost\r\nX-User: k${i}\r\nx-user: z${i}\r\nConnection: close\r\n\r\n`));
        const combined = body(await rawRequest(port, `GET / HTTP/1.1\r\nHost: h.localhost\r\nX-User: k${i}, z${i}\r\nConnection: close\r\n\r\n`));
        assert.equal(twice, combined);
      }
      const noHeader = new Set(await load(port, 'h.localhost', 50));
      assert.equal(noHeader.size, 1, 'one client address: one upstream');
    } finally {
      await proxy.stop();
      await Promise.all(ups.map((u) => u.close()));
    }
  });

  it('by client address: every connection from one address sticks to one upstream', async () => {
    const ups = await Promise.all(['a', 'b', 'c'].map((n) => named(n)));
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'h.localhost' }, upstreams: ups.map((u) => `127.0.0.1:${u.port}`), balance: 'hash', hashOn: 'client-address' }],
    });
    try {
      const seen = new Set(await load(port, 'h.localhost', 100, { concurrency: 10 }));
      assert.equal(seen.size, 1);
      await sleep(0);
    } finally {
      await proxy.stop();
      await Promise.all(ups.map((u) => u.close()));
    }
  });
});
