// Routing end to end: each rule reaches the right upstream address through the proxy.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import { startProxy, startUpstream, request } from './helpers/servers.mjs';

/** An upstream that says which address it was reached on. */
async function namedUpstream(name, host, port = 0) {
  const server = http.createServer((req, res) => {
    res.setHeader('x-upstream', name);
    res.end(JSON.stringify({ name, host: req.headers.host, url: req.url }));
  });
  server.listen(port, host);
  await once(server, 'listening');
  return { server, port: server.address().port, close: () => new Promise((r) => (server.closeAllConnections(), server.close(r))) };
}

describe('routing through the proxy', () => {
  let ws1; // on 127.18.0.1:P
  let local; // on 127.0.0.1:P, the same port
  let wsA; // on 127.18.176.32:P (workspace-a)
  let px;
  before(async () => {
    ws1 = await namedUpstream('workspace-1', '127.18.0.1');
    local = await namedUpstream('local', '127.0.0.1', ws1.port);
    wsA = await namedUpstream('workspace-a', '127.18.176.32', ws1.port);
    px = await startProxy();
  });
  after(async () => {
    await px.proxy.stop();
    await Promise.all([ws1.close(), local.close(), wsA.close()]);
  });

  const get = (headers, path = '/') => request(`${px.url}${path}`, { headers });

  it('X-Cmux-Port-Internal goes to 127.0.0.1', async () => {
    const res = await get({ 'x-cmux-port-internal': ` ${ws1.port} ` });
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-upstream'], 'local');
  });

  it('X-Cmux-Workspace-Internal goes to the workspace IP, not 127.0.0.1 on the same port', async () => {
    const one = await get({ 'x-cmux-port-internal': String(ws1.port), 'x-cmux-workspace-internal': 'workspace-1' });
    assert.equal(one.headers['x-upstream'], 'workspace-1');
    const a = await get({ 'x-cmux-port-internal': String(ws1.port), 'x-cmux-workspace-internal': 'team/workspace-a' });
    assert.equal(a.headers['x-upstream'], 'workspace-a');
  });

  it('answers the routing header errors with the exact texts', async () => {
    const raw = await rawHead(px.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal:   \r\n\r\n`);
    assert.match(raw, /^HTTP\/1\.1 400 /);
    assert.ok(raw.endsWith('\r\n\r\nheader value cannot be empty'), raw);
    for (const bad of ['0', '65536', 'abc', '80x']) {
      const res = await get({ 'x-cmux-port-internal': bad });
      assert.equal(res.status, 400);
      assert.equal(res.body, 'invalid port in X-Cmux-Port-Internal');
      assert.equal(res.headers['content-type'], 'text/plain; charset=utf-8');
    }
    const emptyWs = await rawHead(px.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${ws1.port}\r\nX-Cmux-Workspace-Internal: \r\n\r\n`);
    assert.ok(emptyWs.endsWith('header value cannot be empty'), emptyWs);
    const overflow = await get({ 'x-cmux-port-internal': String(ws1.port), 'x-cmux-workspace-internal': 'ws-99999999999' });
    assert.equal(overflow.status, 400);
  });

  it('routes Host patterns (rules 2-4)', async () => {
    const p = ws1.port;
    const cases = [
      [`app.${p}.localhost`, 'local'],
      [`my.dotted.app.${p}.localhost:9776`, 'local'],
      [`workspace-1-${p}.localhost`, 'workspace-1'],
      [`WORKSPACE-A-${p}.localhost`, 'workspace-a'],
      [`${p}.cmux.local`, 'local'],
      [`${p}.cmux.sh`, 'local'],
      [`${p}.cmux.dev`, 'local'],
      [`port-${p}-abc123.cmux.sh`, 'local'],
      [`cmux-abc123-workspace-1-${p}.cmux.sh`, 'workspace-1'],
      [`cmux-abc123-base-${p}.cmux.sh`, 'local'],
      [`cmux-abc123-${p}.cmux.sh`, 'local'],
    ];
    for (const [host, expected] of cases) {
      const res = await get({ host });
      assert.equal(res.status, 200, host);
      assert.equal(res.headers['x-upstream'], expected, host);
      assert.equal(JSON.parse(res.body).host, host, 'Host is kept');
    }
  });

  it('absolute-form targets route by their authority; the upstream gets origin-form', async () => {
    const raw = await rawHead(px.port, `GET http://app.${ws1.port}.localhost/deep/path?q=1 HTTP/1.1\r\nHost: ignored.example\r\n\r\n`);
    assert.match(raw, /^HTTP\/1\.1 200 /);
    const body = JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4));
    assert.equal(body.url, '/deep/path?q=1');
    assert.equal(body.name, 'local');
  });

  it('answers 400 saying how to route when nothing matches and no fallback is set', async () => {
    const res = await get({ host: 'example.com' });
    assert.equal(res.status, 400);
    assert.match(res.body, /X-Cmux-Port-Internal/);
    assert.match(res.body, /localhost/);
  });

  it('refuses loops with 508', async () => {
    const self = await get({ 'x-cmux-port-internal': String(px.port) });
    assert.equal(self.status, 508);
    assert.equal(self.body, 'Loop detected in proxy');
    const viaHost = await get({ host: `loop.${px.port}.localhost` });
    assert.equal(viaHost.status, 508);
  });
});

describe('routing switches, resolver and fallback', () => {
  let up;
  before(async () => {
    up = await startUpstream();
  });
  after(() => up.close());

  it('refuses a request whose Via shows this proxy more than a few times (508)', async () => {
    const px = await startProxy();
    try {
      const first = await request(px.url, { headers: { 'x-cmux-port-internal': String(up.port) } });
      const entry = JSON.parse(first.body).headers.via; // e.g. "1.1 cmux-proxy-1a2b3c4d"
      assert.match(entry, /^1\.1 cmux-proxy-[0-9a-f]{8}$/);
      const twice = await request(px.url, { headers: { 'x-cmux-port-internal': String(up.port), via: `${entry}, ${entry}` } });
      assert.equal(twice.status, 200, 'a proxy chain may pass through us a few times');
      const looped = await request(px.url, { headers: { 'x-cmux-port-internal': String(up.port), via: Array(4).fill(entry).join(', ') } });
      assert.equal(looped.status, 508);
      assert.equal(looped.body, 'Loop detected in proxy');
    } finally {
      await px.proxy.stop();
    }
  });

  it('workspaceIsolation: false routes workspaces to 127.0.0.1', async () => {
    const px = await startProxy({ workspaceIsolation: false });
    try {
      const res = await request(px.url, { headers: { 'x-cmux-port-internal': String(up.port), 'x-cmux-workspace-internal': 'workspace-1' } });
      assert.equal(res.status, 200);
      assert.equal(JSON.parse(res.body).localAddress, '127.0.0.1');
    } finally {
      await px.proxy.stop();
    }
  });

  it('headerRoutingEnabled: false ignores the routing headers (and strips them)', async () => {
    const px = await startProxy({ headerRoutingEnabled: false });
    try {
      const res = await request(px.url, { headers: { 'x-cmux-port-internal': String(up.port) } });
      assert.equal(res.status, 400);
      const byHost = await request(px.url, { headers: { host: `app.${up.port}.localhost`, 'x-cmux-port-internal': '1' } });
      assert.equal(byHost.status, 200);
      assert.equal(JSON.parse(byHost.body).headers['x-cmux-port-internal'], undefined);
    } finally {
      await px.proxy.stop();
    }
  });

  it('asks the container port resolver, caches it, and maps unknown / failing look-ups to 404 / 502', async () => {
    const calls = [];
    const px = await startProxy({
      portResolverCacheTtlMs: 60_000,
      containerPortResolver: async (container, port) => {
        calls.push(`${container}:${port}`);
        if (container === 'broken') throw new Error('docker down');
        return container === 'web' && port === 3000 ? up.port : null;
      },
    });
    try {
      const ok = await request(px.url, { headers: { host: 'web.3000.localhost' } });
      assert.equal(ok.status, 200);
      assert.equal(JSON.parse(ok.body).headers.host, 'web.3000.localhost');
      await request(px.url, { headers: { host: 'web.3000.localhost' } });
      assert.deepEqual(calls, ['web:3000'], 'second request served from the cache');
      const vscode = await request(px.url, { headers: { host: 'web.vscode.localhost' } });
      assert.equal(vscode.status, 404);
      assert.equal(vscode.body, 'container not found');
      assert.ok(calls.includes('web:39378'), 'known port names map to their numbers');
      const broken = await request(px.url, { headers: { host: 'broken.3000.localhost' } });
      assert.equal(broken.status, 502);
    } finally {
      await px.proxy.stop();
    }
  });

  it('sends unrouted requests to a fallback port', async () => {
    const px = await startProxy({ fallback: { port: up.port } });
    try {
      const res = await request(`${px.url}/ui`, { headers: { host: 'localhost:9776' } });
      assert.equal(res.status, 200);
      assert.equal(JSON.parse(res.body).url, '/ui');
    } finally {
      await px.proxy.stop();
    }
  });

  it('serves unrouted requests with a fallback handler', async () => {
    const px = await startProxy({
      fallback: {
        handler: (req, res) => {
          res.setHeader('content-type', 'text/plain');
          res.end(`app saw ${req.method} ${req.url} from ${req.headers['x-forwarded-for']}`);
        },
      },
    });
    try {
      const res = await request(`${px.url}/index.html`);
      assert.equal(res.status, 200);
      assert.equal(res.body, 'app saw GET /index.html from 127.0.0.1');
      const routed = await request(px.url, { headers: { 'x-cmux-port-internal': String(up.port) } });
      assert.equal(JSON.parse(routed.body).url, '/', 'routed requests do not reach the fallback');
    } finally {
      await px.proxy.stop();
    }
  });
});

/** Raw request, returns the whole answer (the connection is closed by us after a short wait). */
async function rawHead(port, text) {
  const { rawRequest } = await import('./helpers/servers.mjs');
  return rawRequest(port, text, { timeoutMs: 1500, until: (s) => {
    const end = s.indexOf('\r\n\r\n');
    if (end === -1) return false;
    const m = /content-length: (\d+)/i.exec(s.slice(0, end));
    return m !== null && s.length >= end + 4 + Number(m[1]);
  } });
}
