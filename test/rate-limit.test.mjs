// Per-client rate limits (token buckets): 429 with Retry-After and the IETF RateLimit fields,
// every kind of request counted, per-route buckets, memory bounded by an LRU of clients.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import { once } from 'node:events';
import { createProxyServer, OptionError } from '../dist/index.js';
import { startProxy, startUpstream, request, rawRequest, waitFor } from './helpers/servers.mjs';

function getFrom(port, localAddress, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', localAddress, agent: false, headers }, (res) => {
      res.resume();
      res.on('end', () => resolve(res));
    });
    req.on('error', reject);
  });
}

describe('rateLimit', () => {
  it('a burst of 5 passes, the 6th gets 429 with Retry-After, RateLimit-Policy and RateLimit; a token comes back after 1 s', async () => {
    const up = await startUpstream((req, res) => res.end('ok'));
    const { proxy, port } = await startProxy({ rateLimit: { rate: 1, burst: 5 } });
    const headers = { 'x-cmux-port-internal': String(up.port) };
    try {
      for (let i = 0; i < 5; i++) assert.equal((await request(`http://127.0.0.1:${port}/`, { headers })).status, 200);
      const res = await request(`http://127.0.0.1:${port}/`, { headers });
      assert.equal(res.status, 429);
      assert.equal(res.body, 'too many requests');
      assert.equal(res.headers['retry-after'], '1');
      assert.equal(res.headers['ratelimit-policy'], '"proxy";q=5;w=5');
      assert.equal(res.headers['ratelimit'], '"proxy";r=0;t=1');
      assert.equal(up.requests.length, 5, 'the refused request never reached the upstream');
      assert.ok(await waitFor(async () => (await request(`http://127.0.0.1:${port}/`, { headers })).status === 200, { timeoutMs: 10_000, stepMs: 300 }));
      assert.ok(proxy.getStats().rateLimited >= 1);
    } finally {
      await proxy.stop();
      await up.close();
    }
  });

  it('WebSocket upgrades, CONNECTs and HTTP/2 streams count as requests', async () => {
    const up = await startUpstream((req, res) => res.end('ok'));
    up.server.on('upgrade', (req, socket) => {
      socket.on('error', () => {});
      socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    });
    const { proxy, port } = await startProxy({ rateLimit: { rate: 0.001, burst: 2 } });
    try {
      const ws = await rawRequest(
        port,
        `GET / HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
      assert.match(ws, /^HTTP\/1\.1 101 /);
      const connect = await rawRequest(port, `CONNECT 127.0.0.1:${up.port} HTTP/1.1\r\nHost: 127.0.0.1:${up.port}\r\n\r\n`, { until: (t) => t.includes('\r\n\r\n') });
      assert.match(connect, /^HTTP\/1\.1 200 /);
      const third = await rawRequest(port, `CONNECT 127.0.0.1:${up.port} HTTP/1.1\r\nHost: 127.0.0.1:${up.port}\r\n\r\n`);
      assert.match(third, /^HTTP\/1\.1 429 Too Many Requests\r\n/);
      assert.match(third, /\r\nretry-after: \d+\r\n/);
      const session = http2.connect(`http://127.0.0.1:${port}`);
      session.on('error', () => {});
      try {
        const stream = session.request({ ':path': '/', 'x-cmux-port-internal': String(up.port) });
        const [h] = await once(stream, 'response');
        stream.resume();
        assert.equal(h[':status'], 429);
        assert.equal(h['ratelimit-policy'], '"proxy";q=2;w=2000');
        const tunnel = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${up.port}` }, { endStream: false });
        tunnel.on('error', () => {});
        const [th] = await once(tunnel, 'response');
        assert.equal(th[':status'], 429);
      } finally {
        session.close();
      }
    } finally {
      await proxy.stop();
      await up.close();
    }
  });

  it('a route\'s own limit applies to that route only', async () => {
    const up = await startUpstream((req, res) => res.end('ok'));
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'limited.localhost' }, upstreams: [`127.0.0.1:${up.port}`], rateLimit: { rate: 0.001, burst: 1 } }],
    });
    try {
      assert.equal((await request(`http://127.0.0.1:${port}/`, { headers: { host: 'limited.localhost' } })).status, 200);
      const res = await request(`http://127.0.0.1:${port}/`, { headers: { host: 'limited.localhost' } });
      assert.equal(res.status, 429);
      assert.equal(res.headers['ratelimit-policy'], '"route";q=1;w=1000');
      for (let i = 0; i < 5; i++) assert.equal((await request(`http://127.0.0.1:${port}/`, { headers: { 'x-cmux-port-internal': String(up.port) } })).status, 200);
    } finally {
      await proxy.stop();
      await up.close();
    }
  });

  it('buckets are per client address and bounded: past maxClients the quietest client is forgotten', async () => {
    const up = await startUpstream((req, res) => res.end('ok'));
    const { proxy, port } = await startProxy({ rateLimit: { rate: 0.001, burst: 1, maxClients: 2 } });
    const headers = { 'x-cmux-port-internal': String(up.port) };
    try {
      assert.equal((await getFrom(port, '127.0.0.2', headers)).statusCode, 200);
      assert.equal((await getFrom(port, '127.0.0.3', headers)).statusCode, 200, 'another client has its own bucket');
      assert.equal((await getFrom(port, '127.0.0.2', headers)).statusCode, 429);
      // 300 more clients: memory stays at 2 buckets, so .2 was forgotten and starts full again.
      for (let i = 0; i < 300; i++) await getFrom(port, `127.0.1.${(i % 250) + 1}`, headers);
      assert.equal((await getFrom(port, '127.0.0.2', headers)).statusCode, 200);
    } finally {
      await proxy.stop();
      await up.close();
    }
  });

  it('bad settings are refused with the option path', () => {
    const cases = [
      [{ rateLimit: { rate: 0, burst: 1 } }, 'rateLimit.rate'],
      [{ rateLimit: { rate: Infinity, burst: 1 } }, 'rateLimit.rate'],
      [{ rateLimit: { rate: 1, burst: 1.5 } }, 'rateLimit.burst'],
      [{ rateLimit: { rate: 1, burst: 1, window: 3 } }, 'rateLimit.window'],
      [{ rateLimit: 5 }, 'rateLimit'],
      [{ routes: [{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:1'], rateLimit: { rate: 1 } }] }, 'routes[0].rateLimit.burst'],
    ];
    for (const [options, option] of cases) {
      assert.throws(() => createProxyServer({ listenPort: 0, ...options }), (err) => err instanceof OptionError && err.option === option, option);
    }
  });
});
