// The `routes` option: matching order, validation, hot reload (API and SIGHUP), hostile tables.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { once } from 'node:events';
import { createProxyServer, OptionError } from '../dist/index.js';
import { startProxy, startUpstream, request, h2connect, h2request, sleep, waitFor } from './helpers/servers.mjs';
import { runCli, startCli, stopCli } from './helpers/cli.mjs';

/** An upstream that answers its own name (and the path it got). */
async function named(name, handler) {
  return startUpstream(handler ?? ((req, res) => res.end(`${name} ${req.url}`)));
}

function get(port, host, urlPath = '/', headers = {}) {
  return request(`http://127.0.0.1:${port}${urlPath}`, { headers: { host, ...headers } });
}

describe('routes: matching', () => {
  let a, b, c, d, proxy, port;
  before(async () => {
    [a, b, c, d] = await Promise.all([named('a'), named('b'), named('c'), named('d')]);
    ({ proxy, port } = await startProxy({
      routes: [
        { match: { host: 'api.localhost', pathPrefix: '/v1/' }, upstreams: [`127.0.0.1:${a.port}`] },
        { match: { host: '*.apps.localhost' }, upstreams: [`127.0.0.1:${b.port}`] },
        { match: { host: 'api.localhost' }, upstreams: [`localhost:${c.port}`] },
        // Shaped like a built-in Host pattern: the route wins over the pattern.
        { match: { host: 'web.3000.localhost' }, upstreams: [`[::1]:${d.port}`, `127.0.0.1:${d.port}`] },
      ],
    }));
  });
  after(async () => {
    await proxy.stop();
    await Promise.all([a, b, c, d].map((u) => u.close()));
  });

  it('exact host with a path prefix, then the same host without one, in configuration order', async () => {
    assert.equal((await get(port, 'api.localhost', '/v1/users')).body, 'a /v1/users');
    assert.equal((await get(port, 'API.localhost:9776', '/v2/users')).body, 'c /v2/users', 'case and port do not matter');
    assert.equal((await get(port, 'api.localhost.', '/v1')).body, 'c /v1', 'a trailing dot names the same host; /v1 is not under /v1/');
  });

  it('*.suffix matches one or more labels in front, not the suffix itself', async () => {
    assert.equal((await get(port, 'x.apps.localhost')).body, 'b /');
    assert.equal((await get(port, 'y.x.apps.localhost')).body, 'b /');
    const bare = await get(port, 'apps.localhost');
    assert.equal(bare.status, 400, 'no route: apps.localhost is not under *.apps.localhost');
  });

  it('routes come before the built-in Host patterns and after the header routes', async () => {
    const viaRoute = await get(port, 'web.3000.localhost');
    assert.match(viaRoute.body, /^d /);
    const viaHeader = await get(port, 'api.localhost', '/v1/x', { 'x-cmux-port-internal': String(c.port) });
    assert.equal(viaHeader.body, 'c /v1/x', 'X-Cmux-Port-Internal wins over the route');
  });

  it('HTTP/2 requests route by :authority the same way', async () => {
    const session = h2connect(port);
    try {
      const res = await h2request(session, { ':path': '/v1/h2', ':authority': 'api.localhost' });
      assert.equal(res.body, 'a /v1/h2');
    } finally {
      session.close();
    }
  });

  it('getStats() lists every route upstream with its state', () => {
    const list = proxy.getStats().routeUpstreams;
    assert.equal(list.length, 5);
    assert.deepEqual(list[0], { route: 'api.localhost/v1/', upstream: `127.0.0.1:${a.port}`, state: 'closed', healthy: true, inFlight: 0, openings: 0 });
  });
});

describe('routes: validation names the entry at fault', () => {
  const bad = [
    [[{ match: { host: 'a.localhost' }, upstreams: ['10.0.0.1:80'] }], 'routes[0].upstreams[0]', /loopback/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1'] }], 'routes[0].upstreams[0]', /host:port/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:0'] }], 'routes[0].upstreams[0]', /loopback/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:65536'] }], 'routes[0].upstreams[0]', /loopback/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:+80'] }], 'routes[0].upstreams[0]', /loopback/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.256:80'] }], 'routes[0].upstreams[0]', /loopback/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.1:80'] }], 'routes[0].upstreams[0]', /loopback/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['[::2]:80'] }], 'routes[0].upstreams[0]', /loopback/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['example.com:80'] }], 'routes[0].upstreams[0]', /loopback/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['relative/sock'] }], 'routes[0].upstreams[0]', /unix socket path/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['/tmp/a\nb'] }], 'routes[0].upstreams[0]', /unix socket path/],
    [[{ match: { host: 'a.localhost' }, upstreams: [42] }], 'routes[0].upstreams[0]', /loopback/],
    [[{ match: { host: 'a.localhost' }, upstreams: [{ address: '127.0.0.1:1', weight: 0 }] }], 'routes[0].upstreams[0].weight', /integer from 1/],
    [[{ match: { host: 'a.localhost' }, upstreams: [{ address: '127.0.0.1:1', wieght: 2 }] }], 'routes[0].upstreams[0].wieght', undefined],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:1', '127.0.0.1:1'] }], 'routes[0].upstreams[1]', /each upstream once/],
    [[{ match: { host: 'a.localhost' }, upstreams: [] }], 'routes[0].upstreams', /1 to 1024/],
    [[{ match: { host: 'a b' }, upstreams: ['127.0.0.1:1'] }], 'routes[0].match.host', /host name/],
    [[{ match: { host: 'a.localhost:80' }, upstreams: ['127.0.0.1:1'] }], 'routes[0].match.host', /without a port/],
    [[{ match: { host: '*' }, upstreams: ['127.0.0.1:1'] }], 'routes[0].match.host', /suffix/],
    [[{ match: { host: 'a.localhost', pathPrefix: 'v1' }, upstreams: ['127.0.0.1:1'] }], 'routes[0].match.pathPrefix', /starting with/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:1'], balance: 'random' }], 'routes[0].balance', /least-connections/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:1'], hashOn: 'client-address' }], 'routes[0].hashOn', /balance is "hash"/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:1'], balance: 'hash', hashOn: { header: 'x y' } }], 'routes[0].hashOn.header', /header field name/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:1'], healthCheck: { path: '/h\r\nX: y' } }], 'routes[0].healthCheck.path', /visible ASCII/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:1'], healthCheck: { path: '/h', intervalMs: 1000, timeoutMs: 5000 } }], 'routes[0].healthCheck.timeoutMs', /1 to 1000/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:1'], circuitBreaker: { failures: 0 } }], 'routes[0].circuitBreaker.failures', /integer from 1/],
    [[{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:1'] }, { match: { host: 'A.localhost' }, upstreams: ['127.0.0.1:2'] }], 'routes[1].match', /never be used/],
    [{ host: 'a' }, 'routes', /array/],
    [[null], 'routes[0]', /match, upstreams/],
  ];
  for (const [routes, option, expected] of bad) {
    it(`${option}: ${JSON.stringify(routes).slice(0, 90)}`, () => {
      let err;
      try {
        createProxyServer({ listenPort: 0, routes });
      } catch (e) {
        err = e;
      }
      assert.ok(err instanceof OptionError, `throws an OptionError (got ${err})`);
      assert.equal(err.option, option);
      if (expected === undefined) assert.equal(err.expected, undefined, 'an unknown field');
      else assert.match(err.expected, expected);
    });
  }

  it('a huge table is refused past 100,000 routes, with a short message', () => {
    const routes = Array.from({ length: 100_001 }, (_, i) => ({ match: { host: `h${i}.localhost` }, upstreams: ['127.0.0.1:1'] }));
    assert.throws(
      () => createProxyServer({ listenPort: 0, routes }),
      (err) => err instanceof OptionError && err.option === 'routes' && err.message.length < 500,
    );
  });
});

describe('routes: a large table stays cheap to match', () => {
  it('50,000 exact and 50,000 suffix routes: the last of each still routes, 400 concurrent requests through the table all answer', async () => {
    const up = await named('big');
    const routes = [];
    for (let i = 0; i < 50_000; i++) {
      routes.push({ match: { host: `h${i}.big.localhost` }, upstreams: [`127.0.0.1:${up.port}`] });
      routes.push({ match: { host: `*.s${i}.localhost` }, upstreams: [`127.0.0.1:${up.port}`] });
    }
    const { proxy, port } = await startProxy({ routes });
    try {
      assert.equal((await get(port, 'h49999.big.localhost')).body, 'big /');
      assert.equal((await get(port, 'a.b.s49999.localhost')).body, 'big /');
      assert.equal((await get(port, 'nothing.localhost')).status, 400);
      // The matcher alone: Map look-ups, not a scan of 100,000 routes per request.
      const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: 400 }, (_, i) =>
          request(`http://127.0.0.1:${port}/`, { agent, headers: { host: `x${i}.s${i * 100}.localhost` } }).then((r) => assert.equal(r.status, 200)),
        ),
      );
      const ms = performance.now() - t0;
      agent.destroy();
      assert.ok(ms < 30_000, `400 requests through a 100,000-route table took ${ms} ms`);
    } finally {
      await proxy.stop();
      await up.close();
    }
  });
});

describe('routes: reload', () => {
  it('updateRoutes() swaps the table: running exchanges finish on the old upstream, new ones use the new', async () => {
    let release;
    const slowStarted = new Promise((resolve) => {
      release = resolve;
    });
    let finish;
    const oldUp = await named('old', (req, res) => {
      if (req.url === '/slow') {
        release();
        finish = () => res.end('old slow');
        return;
      }
      res.end('old');
    });
    const newUp = await named('new');
    const { proxy, port } = await startProxy({ routes: [{ match: { host: 'r.localhost' }, upstreams: [`127.0.0.1:${oldUp.port}`] }] });
    try {
      const slow = get(port, 'r.localhost', '/slow');
      await slowStarted;
      proxy.updateRoutes([{ match: { host: 'r.localhost' }, upstreams: [`127.0.0.1:${newUp.port}`] }]);
      assert.equal((await get(port, 'r.localhost')).body, 'new /');
      finish();
      assert.equal((await slow).body, 'old slow');
      // A bad table is refused and the current one stays.
      assert.throws(() => proxy.updateRoutes([{ match: { host: 'r.localhost' }, upstreams: ['8.8.8.8:53'] }]), OptionError);
      assert.equal((await get(port, 'r.localhost')).body, 'new /');
      proxy.updateRoutes([]);
      assert.equal((await get(port, 'r.localhost')).status, 400, 'no routes: back to the built-in rules');
      assert.deepEqual(proxy.getStats().routeUpstreams, []);
    } finally {
      await proxy.stop();
      await oldUp.close();
      await newUp.close();
    }
  });

  it('the CLI refuses a config file with a bad route at start: exit 2 naming the file and the entry', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cmux-routes-'));
    const file = path.join(dir, 'bad.json');
    fs.writeFileSync(file, JSON.stringify({ routes: [{ match: { host: 'a.localhost' }, upstreams: ['127.0.0.1:1', '10.1.2.3:80'] }] }));
    try {
      const { code, stderr } = await runCli(['--port', '0', '--config', file]);
      assert.equal(code, 2);
      assert.match(stderr, /bad\.json: routes\[0\]\.upstreams\[1\]: "10\.1\.2\.3:80" \(expected a loopback/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the CLI reloads the config file\'s routes on SIGHUP and keeps them when the file is bad', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cmux-routes-'));
    const a = await named('a');
    const b = await named('b');
    const file = path.join(dir, 'config.json');
    const write = (routes) => fs.writeFileSync(file, JSON.stringify({ listenPort: 0, routes }));
    write([{ match: { host: 'r.localhost' }, upstreams: [`127.0.0.1:${a.port}`] }]);
    const cli = await startCli(['--config', file]);
    try {
      assert.equal((await get(cli.port, 'r.localhost')).body, 'a /');
      write([{ match: { host: 'r.localhost' }, upstreams: [`127.0.0.1:${b.port}`] }]);
      cli.child.kill('SIGHUP');
      assert.ok(await waitFor(() => /routes reloaded/.test(cli.stderr())), cli.stderr());
      assert.equal((await get(cli.port, 'r.localhost')).body, 'b /');
      write([{ match: { host: 'r.localhost' }, upstreams: ['192.168.1.1:80'] }]);
      cli.child.kill('SIGHUP');
      assert.ok(await waitFor(() => /routes not reloaded, keeping the old ones: routes\[0\]\.upstreams\[0\]/.test(cli.stderr())), cli.stderr());
      assert.equal((await get(cli.port, 'r.localhost')).body, 'b /');
      fs.writeFileSync(file, '{ not json');
      cli.child.kill('SIGHUP');
      assert.ok(await waitFor(() => /invalid JSON/.test(cli.stderr())), cli.stderr());
      assert.equal((await get(cli.port, 'r.localhost')).body, 'b /');
    } finally {
      await stopCli(cli.child);
      await a.close();
      await b.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('routes: hostile', () => {
  it('a route whose upstream is the proxy itself answers 508, not a loop', async () => {
    const proxy = createProxyServer({ listenPort: 0, logLevel: 'silent' });
    await proxy.start();
    const port = proxy.address().port;
    try {
      proxy.updateRoutes([{ match: { host: 'self.localhost' }, upstreams: [`127.0.0.1:${port}`] }]);
      const res = await get(port, 'self.localhost');
      assert.equal(res.status, 508);
      assert.equal(proxy.getStats().routeUpstreams[0].inFlight, 0, 'the refused pick gave its load back');
    } finally {
      await proxy.stop();
    }
  });

  it('a unix socket upstream is served', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cmux-sock-'));
    const sock = path.join(dir, 'up.sock');
    const server = http.createServer((req, res) => res.end(`unix ${req.url}`));
    server.listen(sock);
    await once(server, 'listening');
    const { proxy, port } = await startProxy({ routes: [{ match: { host: 'u.localhost' }, upstreams: [sock] }] });
    try {
      assert.equal((await get(port, 'u.localhost', '/x')).body, 'unix /x');
    } finally {
      await proxy.stop();
      await new Promise((r) => server.close(r));
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('requests racing 200 reloads all get an answer from one of the tables', async () => {
    const a = await named('a');
    const b = await named('b');
    const { proxy, port } = await startProxy({ routes: [{ match: { host: 'r.localhost' }, upstreams: [`127.0.0.1:${a.port}`] }] });
    try {
      let stop = false;
      const flip = (async () => {
        for (let i = 0; !stop && i < 200; i++) {
          proxy.updateRoutes([{ match: { host: 'r.localhost' }, upstreams: [`127.0.0.1:${(i % 2 ? a : b).port}`] }]);
          await sleep(2);
        }
      })();
      const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
      const results = await Promise.all(Array.from({ length: 300 }, () => request(`http://127.0.0.1:${port}/`, { agent, headers: { host: 'r.localhost' } })));
      stop = true;
      await flip;
      agent.destroy();
      for (const r of results) assert.match(r.body, /^[ab] \/$/);
      for (const u of proxy.getStats().routeUpstreams) assert.equal(u.inFlight, 0);
    } finally {
      await proxy.stop();
      await a.close();
      await b.close();
    }
  });
});
