// Observability: the admin listener (/metrics in Prometheus text, /healthz, /readyz, /stats),
// checked with promtool and scraped by a real Prometheus server.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { createProxyServer } from '../dist/index.js';
import { startProxy, startUpstream, request, h2connect, h2request, sleep, waitFor, refusedPort } from './helpers/servers.mjs';
import { startWsEcho, openWs, closed } from './helpers/ws.mjs';

function get(port, urlPath, { method = 'GET' } = {}) {
  return request(`http://127.0.0.1:${port}${urlPath}`, { method });
}

/** Parses Prometheus text into { name -> [{ labels, value }] } and the TYPE lines. */
function parseMetrics(text) {
  const samples = new Map();
  const types = new Map();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1], type[2]);
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$/.exec(line);
    assert.ok(m, `bad sample line: ${line}`);
    const labels = {};
    if (m[3]) for (const pair of m[3].split(/,(?=[a-z_]+=)/)) labels[pair.slice(0, pair.indexOf('='))] = JSON.parse(pair.slice(pair.indexOf('=') + 1));
    if (!samples.has(m[1])) samples.set(m[1], []);
    samples.get(m[1]).push({ labels, value: Number(m[4]) });
  }
  return { samples, types };
}

function sample(parsed, name, labels = {}) {
  const list = parsed.samples.get(name) ?? [];
  const hit = list.find((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return hit?.value;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

describe('admin listener', () => {
  let up;
  let ws;
  let px;
  let admin;
  before(async () => {
    up = await startUpstream();
    ws = await startWsEcho();
    px = await startProxy({ adminPort: 0 });
    admin = px.proxy.adminAddress().port;
  });
  after(async () => {
    if (px.proxy.isRunning()) await px.proxy.stop();
    await up.close();
    await ws.close();
  });

  it('is off unless adminPort is set, and never on the proxied port', async () => {
    const plain = await startProxy();
    assert.equal(plain.proxy.adminAddress(), null);
    // The proxied port routes /metrics like any request (no route here: 400), it never answers it.
    const res = await get(plain.port, '/metrics');
    assert.notEqual(res.status, 200);
    await plain.proxy.stop();
    assert.notEqual(admin, px.port);
    assert.equal(px.proxy.adminAddress().address, '127.0.0.1');
    assert.throws(() => createProxyServer({ listenPort: 0, adminPort: 70000 }), /adminPort/);
    assert.throws(() => createProxyServer({ listenPort: 0, adminPort: 0, adminHost: '' }), /adminHost/);
  });

  it('is not reachable through the proxied port: a port header, Host route or CONNECT to it is refused', async () => {
    const REFUSED = "invalid port: reserved for the proxy's admin listener";
    // A proxy of its own: the shared one's counters are asserted elsewhere.
    const px = await startProxy({ adminPort: 0 });
    const admin = px.proxy.adminAddress().port;
    try {
      await refusedEverywhere(px, admin, REFUSED);
    } finally {
      await px.proxy.stop();
    }
  });

  async function refusedEverywhere(px, admin, REFUSED) {
    const viaHeader = await request(`${px.url}/stats`, { headers: { 'x-cmux-port-internal': String(admin) } });
    assert.equal(viaHeader.status, 400);
    assert.equal(viaHeader.body, REFUSED);
    const viaHost = await request(`${px.url}/metrics`, { headers: { host: `127.0.0.1:${admin}` } });
    assert.notEqual(viaHost.status, 200);
    assert.doesNotMatch(viaHost.body, /cmux_proxy_/);
    const session = h2connect(px.port);
    try {
      const h2 = await h2request(session, { ':method': 'GET', ':path': '/stats', 'x-cmux-port-internal': String(admin) });
      assert.equal(h2.status, 400);
      assert.equal(h2.body, REFUSED);
    } finally {
      session.close();
    }
    const tunnel = await new Promise((resolve) => {
      const s = net.connect(px.port, '127.0.0.1');
      let out = '';
      s.on('data', (c) => (out += c));
      s.on('error', () => {});
      s.on('close', () => resolve(out));
      s.write(`CONNECT 127.0.0.1:${admin} HTTP/1.1\r\nHost: 127.0.0.1:${admin}\r\n\r\nGET /stats HTTP/1.1\r\nHost: x\r\n\r\n`);
      setTimeout(() => s.destroy(), 3000);
    });
    assert.match(tunnel, /^HTTP\/1\.1 400 /, tunnel);
    assert.ok(tunnel.includes(REFUSED), tunnel);
    assert.doesNotMatch(tunnel, /totalRequests/);
  }

  it('answers /healthz, /readyz, /stats, 404 for anything else and 405 for other methods', async () => {
    assert.equal((await get(admin, '/healthz')).status, 200);
    const ready = await get(admin, '/readyz');
    assert.equal(ready.status, 200);
    const stats = await get(admin, '/stats');
    assert.equal(stats.status, 200);
    assert.match(stats.headers['content-type'], /application\/json/);
    assert.deepEqual(Object.keys(JSON.parse(stats.body)).sort(), Object.keys(px.proxy.getStats()).sort());
    assert.equal((await get(admin, '/nope')).status, 404);
    assert.equal((await get(admin, '/metrics', { method: 'POST' })).status, 405);
  });

  it('exposes every getStats() field and the histograms in valid Prometheus text (promtool)', async () => {
    for (let i = 0; i < 5; i++) assert.equal((await request(`${px.url}/x`, { headers: { 'x-cmux-port-internal': String(up.port) } })).status, 200);
    const session = h2connect(px.port);
    for (let i = 0; i < 3; i++) {
      const r = await h2request(session, { ':path': '/h2', 'x-cmux-port-internal': String(up.port) });
      assert.equal(r.status, 200);
    }
    session.close();
    const sock = await openWs(`ws://127.0.0.1:${px.port}/`, undefined, { headers: { 'x-cmux-port-internal': String(ws.port) } });
    sock.close();
    await closed(sock);
    // An upstream that refuses: counted by code.
    const dead = await refusedPort();
    assert.equal((await request(`${px.url}/`, { headers: { 'x-cmux-port-internal': String(dead) } })).status, 502);
    await waitFor(() => px.proxy.getStats().websocketConnections === 0);
    await sleep(50);

    const res = await get(admin, '/metrics');
    assert.equal(res.status, 200);
    assert.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/);
    const m = parseMetrics(res.body);
    const stats = px.proxy.getStats();
    // Every counter and gauge of getStats() is there with the same value.
    const counters = {
      totalRequests: 'cmux_proxy_requests_total',
      http1Requests: 'cmux_proxy_http1_requests_total',
      http2Requests: 'cmux_proxy_http2_requests_total',
      websocketsUpgradeTotal: 'cmux_proxy_websocket_upgrades_total',
      upstreamSocketsCreated: 'cmux_proxy_upstream_sockets_created_total',
      activeConnections: 'cmux_proxy_active_connections',
      websocketConnections: 'cmux_proxy_websocket_connections',
    };
    for (const [field, name] of Object.entries(counters)) assert.equal(sample(m, name), stats[field], name);
    const scalarFields = Object.keys(stats).filter((k) => typeof stats[k] === 'number' && !/^responses\dxx$/.test(k));
    const scalarNames = [...m.samples.keys()].filter((n) => !/_(bucket|sum|count)$/.test(n) && n !== 'cmux_proxy_responses_total' && n !== 'cmux_proxy_upstream_errors_total');
    assert.equal(scalarNames.length, scalarFields.length, 'one metric per getStats() number');
    for (const name of m.types.keys()) assert.match(name, /^cmux_proxy_/);
    for (const [name, type] of m.types) if (type === 'counter') assert.match(name, /_total$/);
    assert.equal(sample(m, 'cmux_proxy_responses_total', { class: '2xx' }), stats.responses2xx);
    assert.equal(sample(m, 'cmux_proxy_upstream_errors_total', { code: 'ECONNREFUSED' }), stats.upstreamErrors.ECONNREFUSED);
    assert.ok(stats.upstreamErrors.ECONNREFUSED >= 1);
    // Histograms: each finished exchange once, by client protocol and status class.
    assert.equal(sample(m, 'cmux_proxy_request_duration_seconds_count', { protocol: 'http1', status_class: '2xx' }), 5);
    assert.equal(sample(m, 'cmux_proxy_request_duration_seconds_count', { protocol: 'http2', status_class: '2xx' }), 3);
    assert.equal(sample(m, 'cmux_proxy_request_duration_seconds_count', { protocol: 'http1', status_class: '5xx' }), 1);
    assert.equal(sample(m, 'cmux_proxy_request_duration_seconds_bucket', { protocol: 'http1', status_class: '2xx', le: '+Inf' }), 5);
    assert.ok(sample(m, 'cmux_proxy_request_duration_seconds_sum', { protocol: 'http1', status_class: '2xx' }) > 0);
    assert.ok(sample(m, 'cmux_proxy_upstream_connect_seconds_count') >= 1);
    assert.equal(sample(m, 'cmux_proxy_tunnel_duration_seconds_count', { kind: 'websocket' }), 1);
    assert.equal(m.types.get('cmux_proxy_request_duration_seconds'), 'histogram');

    const check = spawnSync('promtool', ['check', 'metrics'], { input: res.body, encoding: 'utf8', timeout: 20_000 });
    assert.equal(check.status, 0, `promtool: ${check.stdout}${check.stderr}`);
  });

  it('/readyz is 503 while draining, and the admin listener closes with stop()', async () => {
    let release;
    const slow = await startUpstream((_req, res) => {
      release = () => res.end('late');
    });
    const local = await startProxy({ adminPort: 0, drainTimeoutMs: 20_000 });
    const port = local.proxy.adminAddress().port;
    assert.equal((await get(port, '/readyz')).status, 200);
    const pending = request(`${local.url}/`, { headers: { 'x-cmux-port-internal': String(slow.port) } });
    assert.ok(await waitFor(() => release !== undefined, { timeoutMs: 10_000 }));
    const stopping = local.proxy.stop();
    const during = await get(port, '/readyz');
    assert.equal(during.status, 503);
    assert.equal((await get(port, '/healthz')).status, 200);
    release();
    assert.equal((await pending).status, 200);
    await stopping;
    await assert.rejects(get(port, '/healthz'), /ECONNREFUSED/);
    assert.equal(local.proxy.adminAddress(), null);
    await slow.close();
  });

  it('bounds the connections a client can hold: at most 64 at once, idle ones closed by the head timeout', { timeout: 30_000 }, async () => {
    const local = await startProxy({ adminPort: 0 });
    const port = local.proxy.adminAddress().port;
    const sockets = [];
    try {
      let open = 0;
      for (let i = 0; i < 150; i++) {
        const s = net.connect({ port, host: '127.0.0.1' });
        s.on('error', () => {});
        s.on('connect', () => open++);
        s.on('close', () => open--);
        sockets.push(s);
      }
      // Connections past 64 are closed by the server as they arrive.
      assert.ok(await waitFor(() => open > 0 && open <= 64, { timeoutMs: 5000 }), `open: ${open}`);
      await sleep(300);
      assert.ok(open <= 64, `open: ${open}`);
      // Sending nothing, the rest are closed within the 5 s head timeout (checked every second).
      assert.ok(await waitFor(() => open === 0, { timeoutMs: 12_000 }), `still open: ${open}`);
      const res = await get(port, '/healthz');
      assert.equal(res.status, 200);
    } finally {
      for (const s of sockets) s.destroy();
      await local.proxy.stop();
    }
  });

  it('start() fails cleanly when the admin port is taken', async () => {
    const taken = await startProxy({ adminPort: 0 });
    const port = taken.proxy.adminAddress().port;
    const second = createProxyServer({ listenPort: 0, logLevel: 'silent', adminPort: port });
    await assert.rejects(second.start(), (e) => /admin/.test(e.message) && e.message.includes(String(port)));
    assert.equal(second.isRunning(), false);
    await taken.proxy.stop();
  });
});

describe('a real Prometheus server scraping the admin listener', () => {
  const promtool = spawnSync('sh', ['-c', 'command -v prometheus'], { encoding: 'utf8' }).stdout.trim();

  it('scrapes /metrics and its query API returns the proxy request count', { timeout: 60_000 }, async () => {
    assert.ok(promtool !== '', 'prometheus is installed by scripts/install-test-deps.sh');
    const up = await startUpstream();
    const px = await startProxy({ adminPort: 0 });
    const admin = px.proxy.adminAddress().port;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cmux-prom-'));
    const promPort = await freePort();
    fs.writeFileSync(
      path.join(dir, 'prometheus.yml'),
      `global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: cmux\n    static_configs:\n      - targets: ['127.0.0.1:${admin}']\n`,
    );
    const prom = spawn(
      'prometheus',
      [
        `--config.file=${path.join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${path.join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
        '--storage.tsdb.retention.time=1h',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let log = '';
    prom.stderr.on('data', (c) => (log += c));
    try {
      for (let i = 0; i < 4; i++) await request(`${px.url}/`, { headers: { 'x-cmux-port-internal': String(up.port) } });
      let value = 0;
      const ok = await waitFor(
        async () => {
          const res = await request(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent('cmux_proxy_requests_total{job="cmux"}')}`).catch(() => null);
          if (res === null || res.status !== 200) return false;
          const body = JSON.parse(res.body);
          value = Number(body.data?.result?.[0]?.value?.[1] ?? 0);
          return value > 0;
        },
        { timeoutMs: 30_000, stepMs: 250 },
      );
      assert.ok(ok, `Prometheus never saw cmux_proxy_requests_total > 0; its log:\n${log.slice(-2000)}`);
      assert.equal(value, 4);
      const target = await request(`http://127.0.0.1:${promPort}/api/v1/targets`);
      assert.equal(JSON.parse(target.body).data.activeTargets[0].health, 'up');
    } finally {
      const exited = new Promise((resolve) => prom.once('exit', resolve));
      process.kill(prom.pid, 'SIGTERM');
      await Promise.race([exited, sleep(10_000)]);
      if (prom.exitCode === null && prom.signalCode === null) process.kill(prom.pid, 'SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
      await px.proxy.stop();
      await up.close();
    }
  });
});

describe('CLI --admin-port', () => {
  it('serves the admin endpoints and names their address', async () => {
    const { startCli, stopCli } = await import('./helpers/cli.mjs');
    const cli = await startCli(['--port', '0', '--admin-port', '0']);
    try {
      assert.ok(await waitFor(() => /admin on 127\.0\.0\.1:\d+/.test(cli.stderr()), { timeoutMs: 10_000 }), cli.stderr());
      const port = Number(/admin on 127\.0\.0\.1:(\d+)/.exec(cli.stderr())[1]);
      assert.equal((await get(port, '/healthz')).status, 200);
      assert.equal((await get(port, '/readyz')).status, 200);
      assert.match((await get(port, '/metrics')).body, /^# HELP cmux_proxy_/m);
    } finally {
      assert.equal((await stopCli(cli.child)).code, 0);
    }
  });
});

describe('CLI --log-level debug', () => {
  it('logs each routing decision in one line', async () => {
    const { startCli, stopCli } = await import('./helpers/cli.mjs');
    const up = await startUpstream();
    const cli = await startCli(['--port', '0', '--log-level', 'debug']);
    try {
      const base = `http://127.0.0.1:${cli.port}`;
      assert.equal((await request(`${base}/routed?q=1`, { headers: { 'x-cmux-port-internal': String(up.port), 'x-request-id': 'dbg-1' } })).status, 200);
      assert.equal((await request(`${base}/lost`)).status, 400);
      const connect = await new Promise((resolve) => {
        const s = net.connect(cli.port, '127.0.0.1', () => s.write(`CONNECT 127.0.0.1:${up.port} HTTP/1.1\r\nHost: 127.0.0.1:${up.port}\r\n\r\n`));
        s.once('data', (c) => {
          s.destroy();
          resolve(String(c));
        });
      });
      assert.match(connect, /^HTTP\/1\.1 200/);
      assert.ok(await waitFor(() => (cli.stderr().match(/route /g) ?? []).length >= 3));
      const lines = cli.stderr().split('\n').filter((l) => l.includes(' route '));
      assert.equal(lines.length, 3, lines.join('\n'));
      assert.match(lines[0], new RegExp(`route GET host="127\\.0\\.0\\.1:${cli.port}" path="/routed\\?q=1" port-header="${up.port}" -> 127\\.0\\.0\\.1:${up.port} \\(header\\) id=dbg-1$`));
      assert.match(lines[1], /route GET host="127\.0\.0\.1:\d+" path="\/lost" -> 400 CMUX_NO_ROUTE id=\S+$/);
      assert.match(lines[2], new RegExp(`route CONNECT authority="127\\.0\\.0\\.1:${up.port}" -> 127\\.0\\.0\\.1:${up.port} \\(connect\\)$`));
    } finally {
      assert.equal((await stopCli(cli.child)).code, 0);
      await up.close();
    }
  });
});
