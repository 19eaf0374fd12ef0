// Route groups: passive health (circuit per upstream), retries across the group, `503 no
// healthy upstream` with Retry-After, half-open probes, active checks, stats and metrics.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import http2 from 'node:http2';
import { once } from 'node:events';
import { startProxy, startUpstream, startRawServer, request, h2connect, h2request, sleep, waitFor, refusedPort } from './helpers/servers.mjs';

async function named(name, handler) {
  return startUpstream(handler ?? ((req, res) => res.end(name)));
}

function get(port, host = 'g.localhost', opts = {}) {
  return request(`http://127.0.0.1:${port}/`, { ...opts, headers: { host, ...(opts.headers ?? {}) } });
}

function member(proxy, port) {
  return proxy.getStats().routeUpstreams.find((u) => u.upstream.endsWith(`:${port}`));
}

describe('passive health and retries across the group', () => {
  it('idempotent requests refused by one upstream move to the next: 60 concurrent GETs all succeed, the dead one opens', async () => {
    const dead = await refusedPort();
    const live = await named('live');
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'g.localhost' }, upstreams: [`127.0.0.1:${dead}`, `127.0.0.1:${live.port}`], circuitBreaker: { failures: 3, openMs: 60_000 } }],
    });
    try {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 12 });
      const results = await Promise.all(Array.from({ length: 60 }, () => get(port, 'g.localhost', { agent })));
      agent.destroy();
      assert.deepEqual(new Set(results.map((r) => `${r.status} ${r.body}`)), new Set(['200 live']));
      const stats = proxy.getStats();
      assert.equal(member(proxy, dead).state, 'open');
      assert.equal(stats.circuitOpenings, 1);
      assert.ok(stats.upstreamRetries >= 3, `retries ${stats.upstreamRetries}`);
      assert.ok(stats.upstreamErrors.ECONNREFUSED >= 3);
      assert.equal(stats.routeUpstreamsUnavailable, 1);
      for (const u of stats.routeUpstreams) assert.equal(u.inFlight, 0);
    } finally {
      await proxy.stop();
      await live.close();
    }
  });

  it('h2c upstreams: a GET whose session to one upstream is refused moves to the next', async () => {
    const dead = await refusedPort();
    const h2 = http2.createServer((req, res) => res.end('h2 live'));
    h2.listen(0, '127.0.0.1');
    await once(h2, 'listening');
    const { proxy, port } = await startProxy({
      upstreamProtocol: 'h2c',
      routes: [{ match: { host: 'g.localhost' }, upstreams: [`127.0.0.1:${dead}`, `127.0.0.1:${h2.address().port}`] }],
    });
    try {
      const results = await Promise.all(Array.from({ length: 20 }, () => get(port)));
      assert.deepEqual(new Set(results.map((r) => `${r.status} ${r.body}`)), new Set(['200 h2 live']));
      assert.ok(proxy.getStats().upstreamRetries >= 1);
    } finally {
      await proxy.stop();
      await new Promise((r) => h2.close(r));
    }
  });

  it('a POST is not moved to another upstream: 502 from the refused one', async () => {
    const dead = await refusedPort();
    const live = await named('live');
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'g.localhost' }, upstreams: [`127.0.0.1:${dead}`, `127.0.0.1:${live.port}`] }],
    });
    try {
      // Round-robin starts with the first upstream.
      const first = await get(port, 'g.localhost', { method: 'POST', body: 'x' });
      assert.equal(first.status, 502);
      assert.equal(first.body, 'upstream request error: ECONNREFUSED');
      const second = await get(port, 'g.localhost', { method: 'POST', body: 'x' });
      assert.equal(second.body, 'live');
      assert.equal(live.requests.length, 1);
    } finally {
      await proxy.stop();
      await live.close();
    }
  });

  it('every upstream open: 503 no healthy upstream at once, with Retry-After, on HTTP/1.1 and HTTP/2', async () => {
    const [d1, d2] = [await refusedPort(), await refusedPort()];
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'g.localhost' }, upstreams: [`127.0.0.1:${d1}`, `127.0.0.1:${d2}`], circuitBreaker: { failures: 1, openMs: 30_000 } }],
    });
    try {
      const first = await get(port);
      assert.equal(first.status, 502, 'both tried, both refused');
      const res = await get(port);
      assert.equal(res.status, 503);
      assert.equal(res.body, 'no healthy upstream');
      const retryAfter = Number(res.headers['retry-after']);
      assert.ok(retryAfter >= 29 && retryAfter <= 30, `Retry-After ${res.headers['retry-after']}`);
      const session = h2connect(port);
      try {
        const h2 = await h2request(session, { ':path': '/', ':authority': 'g.localhost' });
        assert.equal(h2.status, 503);
        assert.equal(h2.body, 'no healthy upstream');
        assert.ok(Number(h2.headers['retry-after']) >= 29);
      } finally {
        session.close();
      }
      const stats = proxy.getStats();
      assert.equal(stats.noHealthyUpstream, 2);
      assert.equal(stats.routeUpstreamsUnavailable, 2);
    } finally {
      await proxy.stop();
    }
  });

  it('proxy-made 504s open the circuit; the upstream\'s own 500s do not', async () => {
    const five = await named('500', (req, res) => {
      res.statusCode = 500;
      res.end('boom');
    });
    const hang = await named('hang', () => {});
    const { proxy, port } = await startProxy({
      upstreamResponseTimeoutMs: 300,
      routes: [
        { match: { host: 'five.localhost' }, upstreams: [`127.0.0.1:${five.port}`], circuitBreaker: { failures: 2 } },
        { match: { host: 'hang.localhost' }, upstreams: [`127.0.0.1:${hang.port}`], circuitBreaker: { failures: 2, openMs: 30_000 } },
      ],
    });
    try {
      for (let i = 0; i < 5; i++) assert.equal((await get(port, 'five.localhost')).status, 500);
      assert.equal(member(proxy, five.port).state, 'closed');
      assert.equal((await get(port, 'hang.localhost')).status, 504);
      assert.equal((await get(port, 'hang.localhost')).status, 504);
      assert.equal(member(proxy, hang.port).state, 'open');
      assert.equal((await get(port, 'hang.localhost')).status, 503);
    } finally {
      await proxy.stop();
      await five.close();
      await hang.close();
    }
  });
});

describe('circuit breaker: open, half-open, closed', () => {
  it('a flapping upstream: open time doubles while it keeps failing, one probe at a time, closed once it answers', async () => {
    let hold = null;
    const handler = (req, res) => {
      if (hold !== null) hold.push(res);
      else res.end('up');
    };
    const first = await named('up', handler);
    const upPort = first.port;
    await first.close();
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'g.localhost' }, upstreams: [`127.0.0.1:${upPort}`], circuitBreaker: { failures: 1, openMs: 1000, maxOpenMs: 10_000 } }],
    });
    let up = null;
    try {
      assert.equal((await get(port)).status, 502);
      let res = await get(port);
      assert.equal(res.status, 503);
      assert.equal(res.headers['retry-after'], '1');
      // Half-open after 1 s: the probe fails, the circuit opens again for 2 s.
      assert.ok(await waitFor(async () => (await get(port)).status === 502, { timeoutMs: 10_000, stepMs: 100 }));
      res = await get(port);
      assert.equal(res.status, 503);
      assert.equal(res.headers['retry-after'], '2', 'the second opening lasts twice as long');
      assert.equal(proxy.getStats().circuitOpenings, 2);
      // It comes back, slowly: the half-open probe is held, a second request meanwhile is refused.
      hold = [];
      up = await startUpstream(handler, { port: upPort });
      // Requests get 503 at once until the circuit turns half-open; the first one after is the probe (held).
      let probe = null;
      assert.ok(
        await waitFor(
          async () => {
            if (probe === null) {
              const r = get(port);
              const early = await Promise.race([r, sleep(200).then(() => null)]);
              if (early === null) probe = r;
            }
            return probe !== null;
          },
          { timeoutMs: 15_000, stepMs: 100 },
        ),
      );
      assert.equal(hold.length, 1);
      assert.equal(member(proxy, upPort).state, 'half-open');
      const during = await get(port);
      assert.equal(during.status, 503, 'only one probe while half-open');
      const held = hold;
      hold = null;
      held[0].end('probe');
      assert.equal((await probe).body, 'probe');
      assert.equal(member(proxy, upPort).state, 'closed');
      assert.equal((await get(port)).body, 'up');
      assert.equal(proxy.getStats().circuitCloses, 1);
    } finally {
      await proxy.stop();
      await up?.close();
    }
  });

  it('an upstream flapping under load (listener closed and reopened every 50 ms): every GET still answered 200', async () => {
    const stable = await named('stable');
    let server = await named('flappy');
    const flappyPort = server.port;
    const { proxy, port } = await startProxy({
      routes: [{ match: { host: 'g.localhost' }, upstreams: [`127.0.0.1:${flappyPort}`, `127.0.0.1:${stable.port}`], circuitBreaker: { failures: 2, openMs: 100 } }],
    });
    let flapping = true;
    const flap = (async () => {
      for (let i = 0; flapping; i++) {
        await sleep(50);
        if (server !== null) {
          const s = server;
          server = null;
          s.server.close();
        } else {
          try {
            server = await startUpstream((req, res) => res.end('flappy'), { port: flappyPort });
          } catch {
            server = null;
          }
        }
      }
    })();
    try {
      const agent = new http.Agent({ keepAlive: false, maxSockets: 10 });
      const results = await Promise.all(Array.from({ length: 400 }, () => get(port, 'g.localhost', { agent })));
      agent.destroy();
      const bad = results.filter((r) => r.status !== 200);
      assert.deepEqual(bad.map((r) => `${r.status} ${r.body}`), []);
      for (const u of proxy.getStats().routeUpstreams) assert.equal(u.inFlight, 0);
    } finally {
      flapping = false;
      await flap;
      await proxy.stop();
      await stable.close();
      await server?.close();
    }
  });
});

describe('reload', () => {
  it('an upstream kept under the same match keeps its open circuit across updateRoutes(); a changed match starts healthy', async () => {
    const dead = await refusedPort();
    const live = await named('live');
    const other = await named('other');
    const route = (host, extra = []) => ({
      match: { host },
      upstreams: [`127.0.0.1:${dead}`, `127.0.0.1:${live.port}`, ...extra],
      circuitBreaker: { failures: 1, openMs: 60_000 },
    });
    const { proxy, port } = await startProxy({ routes: [route('g.localhost')] });
    try {
      assert.equal((await get(port)).body, 'live');
      assert.equal(member(proxy, dead).state, 'open');
      proxy.updateRoutes([route('g.localhost', [`127.0.0.1:${other.port}`]), route('h.localhost')]);
      const [g, , , h] = proxy.getStats().routeUpstreams;
      assert.equal(g.state, 'open', 'same match, same upstream: still open');
      assert.equal(g.openings, 1);
      assert.equal(h.state, 'closed', 'another route starts healthy');
      // Only the live upstreams of g are asked now: no connect to the dead one.
      const errors = proxy.getStats().upstreamErrors.ECONNREFUSED;
      for (let i = 0; i < 6; i++) assert.match((await get(port)).body, /^(live|other)$/);
      assert.equal(proxy.getStats().upstreamErrors.ECONNREFUSED, errors);
    } finally {
      await proxy.stop();
      await live.close();
      await other.close();
    }
  });
});

describe('active health checks', () => {
  it('an upstream failing its check gets no requests until it passes again; garbage, silence and 5xx all fail', async () => {
    let aHealthy = false;
    const a = await named('a', (req, res) => {
      if (req.url === '/healthz') {
        res.statusCode = aHealthy ? 204 : 503;
        return res.end();
      }
      res.end('a');
    });
    const b = await named('b', (req, res) => res.end(req.url === '/healthz' ? '' : 'b'));
    const garbage = await startRawServer((s) => s.end('SSH-2.0-OpenSSH\r\n'));
    const silent = await startRawServer(() => {});
    const { proxy, port } = await startProxy({
      routes: [
        {
          match: { host: 'g.localhost' },
          upstreams: [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`, `127.0.0.1:${garbage.port}`, `127.0.0.1:${silent.port}`],
          // 300 ms for a check's connect and status line: the healthy ones pass on a busy machine.
          healthCheck: { path: '/healthz', intervalMs: 300, timeoutMs: 300 },
        },
      ],
    });
    try {
      const healthy = () => proxy.getStats().routeUpstreams.map((u) => u.healthy);
      assert.ok(await waitFor(() => healthy().join() === 'false,true,false,false', { timeoutMs: 10_000 }), `${healthy()}`);
      for (let i = 0; i < 10; i++) assert.equal((await get(port)).body, 'b');
      aHealthy = true;
      assert.ok(await waitFor(() => healthy()[0] === true, { timeoutMs: 10_000 }));
      const seen = new Set();
      for (let i = 0; i < 10; i++) seen.add((await get(port)).body);
      assert.deepEqual(seen, new Set(['a', 'b']));
      assert.ok(proxy.getStats().activeCheckChanges >= 4);
    } finally {
      await proxy.stop();
      await Promise.all([a, b, garbage, silent].map((u) => u.close()));
    }
  });

  it('a check answered one byte at a time fails at its timeout, not kept alive by each byte; checks do not pile up', async () => {
    // A status line dripped a byte every 100 ms, never finished: each byte comes well within the
    // check's timeout, the whole line never does.
    let open = 0;
    let maxOpen = 0;
    const drip = await startRawServer((socket) => {
      open++;
      maxOpen = Math.max(maxOpen, open);
      const timer = setInterval(() => socket.write('H'), 100);
      socket.on('error', () => {});
      socket.on('close', () => {
        open--;
        clearInterval(timer);
      });
    });
    const b = await named('b');
    const { proxy, port } = await startProxy({
      routes: [
        {
          match: { host: 'g.localhost' },
          upstreams: [`127.0.0.1:${drip.port}`, `127.0.0.1:${b.port}`],
          healthCheck: { path: '/healthz', intervalMs: 500, timeoutMs: 400 },
        },
      ],
    });
    try {
      const healthy = () => proxy.getStats().routeUpstreams.map((u) => u.healthy);
      assert.ok(await waitFor(() => healthy().join() === 'false,true', { timeoutMs: 10_000 }), `${healthy()}`);
      for (let i = 0; i < 5; i++) assert.equal((await get(port)).body, 'b');
      await sleep(2000);
      // One check per interval, each closed at its timeout: never more than two at once.
      assert.ok(maxOpen <= 2, `${maxOpen} checks open at once`);
    } finally {
      await proxy.stop();
      await Promise.all([drip, b].map((u) => u.close()));
    }
  });

  it('checks stop with the proxy and with a route reload', async () => {
    let checks = 0;
    const a = await named('a', (req, res) => {
      if (req.url === '/hc') checks++;
      res.end('a');
    });
    const { proxy } = await startProxy({
      routes: [{ match: { host: 'g.localhost' }, upstreams: [`127.0.0.1:${a.port}`], healthCheck: { path: '/hc', intervalMs: 100 } }],
    });
    try {
      assert.ok(await waitFor(() => checks >= 2));
      proxy.updateRoutes([]);
      await sleep(50);
      const after = checks;
      await sleep(400);
      assert.ok(checks <= after + 1, `checks went on after the reload: ${after} -> ${checks}`);
    } finally {
      await proxy.stop();
      await a.close();
    }
  });
});

describe('access log', () => {
  it('an exchange moved to the next upstream is logged once, as route "routes" with the upstream that answered', async () => {
    const dead = await refusedPort();
    const live = await named('live');
    const entries = [];
    const { proxy, port } = await startProxy({
      accessLog: (e) => entries.push(e),
      routes: [{ match: { host: 'g.localhost' }, upstreams: [`127.0.0.1:${dead}`, `127.0.0.1:${live.port}`] }],
    });
    try {
      assert.equal((await get(port)).body, 'live');
      assert.ok(await waitFor(() => entries.length === 1));
      assert.equal(entries[0].route, 'routes');
      assert.equal(entries[0].target, `127.0.0.1:${live.port}`);
      assert.equal(entries[0].status, 200);
    } finally {
      await proxy.stop();
      await live.close();
    }
  });
});

describe('metrics', () => {
  it('/metrics has each route upstream\'s circuit state and load, and the circuit counters', async () => {
    const dead = await refusedPort();
    const live = await named('live');
    const { proxy, port } = await startProxy({
      adminPort: 0,
      routes: [{ match: { host: 'g.localhost' }, upstreams: [`127.0.0.1:${dead}`, `127.0.0.1:${live.port}`], circuitBreaker: { failures: 1, openMs: 60_000 } }],
    });
    try {
      assert.equal((await get(port)).body, 'live');
      const text = (await request(`http://127.0.0.1:${proxy.adminAddress().port}/metrics`)).body;
      assert.match(text, new RegExp(`cmux_proxy_route_upstream_state\\{route="g.localhost",upstream="127.0.0.1:${dead}"\\} 1`));
      assert.match(text, new RegExp(`cmux_proxy_route_upstream_state\\{route="g.localhost",upstream="127.0.0.1:${live.port}"\\} 0`));
      assert.match(text, /cmux_proxy_route_upstream_in_flight\{route="g.localhost",upstream="127.0.0.1:\d+"\} 0/);
      assert.match(text, /^cmux_proxy_circuit_openings_total 1$/m);
      assert.match(text, /^cmux_proxy_route_upstreams_unavailable 1$/m);
    } finally {
      await proxy.stop();
      await live.close();
    }
  });
});
