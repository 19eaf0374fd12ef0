// A real browser end to end: headless Chromium (Debian's `chromium`, driven by
// playwright-core) loads https://app.<appPort>.localhost:<proxyPort>/ through the proxy's TLS port.
// The page fetches JSON and opens a wss:// WebSocket back through the proxy; the test checks the
// data arrived, the WebSocket echoed, the page came over HTTP/2, and the proxy counted an RFC 8441
// extended CONNECT (the browser carried the WebSocket on its h2 connection, not on a new
// HTTP/1.1 one).
//
// Chromium and extended CONNECT: Chromium uses RFC 8441 for a wss:// WebSocket by default, with no
// switch (shipped in M91; the old `--enable-websocket-over-http2` switch and the
// `websocket_over_http2` field-trial parameter are gone: Chromium 156's binary holds neither
// string, nor a `WebSocketOverHttp2` feature; only `EnableWebsocketsOverHttp3` remains, for h3).
// It does so only on an h2 session to the same origin that already exists and whose SETTINGS
// carried SETTINGS_ENABLE_CONNECT_PROTOCOL = 1; it never opens a connection just for that, so the
// page opens its WebSocket after `load`, when the navigation's h2 session is up. Otherwise it
// would open a new TLS connection with ALPN http/1.1 and send an Upgrade
// (websocketsUpgradeTotal), which the last assertion would catch.
//
// Flags: --no-sandbox because the tests run as root; --ignore-certificate-errors because the
// certificate comes from a throwaway CA; --disable-quic and the background-networking flags
// because this machine's network is closed (Chromium otherwise keeps trying Google's hosts);
// --disable-dev-shm-usage so a small /dev/shm (containers) cannot crash the renderer. playwright-core
// launches Debian's build (executablePath) and never downloads a browser. A fresh profile: a new
// temp dir per run, given to launchPersistentContext as --user-data-dir and removed in after().
// Chromium resolves *.localhost to loopback itself, so no --host-resolver-rules is needed.
//
// The proxy runs in a child process (test/helpers/proxy-child.mjs; stats over IPC), not in this
// one: playwright-core enables an AsyncLocalStorage here, and on Node 20/22 that makes every async
// resource created afterwards get a property set on it; the proxy hands llhttp a frozen resource
// object (PARSER_RESOURCE in src/h1/parser.ts), so its first connection threw "Cannot add property
// Symbol(kResourceStore), object is not extensible" and the process died.
//
// Skipped only when /usr/bin/chromium is missing (`bash scripts/install-test-deps.sh` installs it).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, fork } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const HAVE_CHROMIUM = existsSync(CHROMIUM);
const GEN = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--ignore-certificate-errors',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

const DATA = { message: 'hello from the app', n: 42 };

// The page: fetch JSON, then (after load, when the h2 session exists) a WebSocket to the same
// host; results land in window globals the test polls.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>cmux-proxy browser test</title></head>
<body><p>browser test</p>
<script>
window.__data = null; window.__dataError = null;
window.__echo = null; window.__wsError = null; window.__wsOpened = false;
fetch('/api/data')
  .then((r) => { if (!r.ok) throw new Error('status ' + r.status); return r.json(); })
  .then((d) => { window.__data = d; })
  .catch((e) => { window.__dataError = String(e); });
window.addEventListener('load', () => {
  const ws = new WebSocket('wss://' + location.host + '/ws');
  ws.onopen = () => { window.__wsOpened = true; ws.send('ping from the page'); };
  ws.onmessage = (e) => { window.__echo = String(e.data); ws.close(1000, 'done'); };
  ws.onerror = () => { window.__wsError = 'WebSocket error (opened: ' + window.__wsOpened + ')'; };
});
</script>
</body></html>`;

/** The local app: / serves PAGE, /api/data JSON, /ws an echoing WebSocket server. */
async function startApp() {
  const upgrades = [];
  const server = http.createServer((req, res) => {
    if (req.url === '/api/data') {
      const body = JSON.stringify(DATA);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
      res.end(body);
    } else if (req.url === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(PAGE), 'cache-control': 'no-store' });
      res.end(PAGE);
    } else {
      res.writeHead(404, { 'content-type': 'text/plain', 'content-length': 9 });
      res.end('not found');
    }
  });
  const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false });
  wss.on('connection', (ws, req) => {
    upgrades.push(req.headers);
    ws.on('message', (data, binary) => ws.send(data, { binary }));
    ws.on('error', () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: server.address().port,
    upgrades,
    async close() {
      for (const c of wss.clients) c.terminate();
      await new Promise((r) => wss.close(() => r()));
      server.closeAllConnections();
      await new Promise((r) => server.close(() => r()));
    },
  };
}

/**
 * Starts test/helpers/proxy-child.mjs with `options`; resolves { port, stats(), stop(), exited }.
 * stats() rejects if the child has died (with its exit code in the message).
 */
async function startProxyProcess(options) {
  const child = fork(fileURLToPath(new URL('./helpers/proxy-child.mjs', import.meta.url)), [JSON.stringify(options)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let exit = null;
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve((exit = { code, signal }))));
  const waiting = new Map();
  let nextId = 0;
  child.on('message', (msg) => {
    if (msg?.type === 'stats') waiting.get(msg.id)?.resolve(msg.stats);
  });
  exited.then(() => {
    for (const w of waiting.values()) w.reject(new Error(`proxy process exited (${JSON.stringify(exit)})`));
  });
  const ready = new Promise((resolve, reject) => {
    child.on('message', (msg) => msg?.type === 'ready' && resolve(msg.port));
    exited.then(() => reject(new Error(`proxy process exited before listening (${JSON.stringify(exit)})`)));
  });
  const port = await bounded(ready, 15_000, 'proxy process start').catch((err) => {
    child.kill('SIGKILL');
    throw err;
  });
  return {
    port,
    exited,
    stats() {
      if (exit) return Promise.reject(new Error(`proxy process exited (${JSON.stringify(exit)})`));
      const id = nextId++;
      return bounded(
        new Promise((resolve, reject) => {
          waiting.set(id, { resolve, reject });
          child.send({ type: 'stats', id });
        }),
        5_000,
        'proxy stats',
      ).finally(() => waiting.delete(id));
    },
    async stop() {
      if (exit) return;
      child.send({ type: 'stop' });
      await bounded(exited, 12_000, 'proxy process stop').catch((err) => {
        child.kill('SIGKILL');
        throw err;
      });
    },
  };
}

/** Rejects after `ms` with `what` in the message; clears its timer either way. */
async function bounded(promise, ms, what) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

describe('a real browser through the TLS port', { timeout: 120_000 }, () => {
  let dir;
  let app;
  let px;
  let context;
  const logs = [];

  before(async () => {
    if (!HAVE_CHROMIUM) return;
    dir = mkdtempSync(join(tmpdir(), 'cmux-browser-'));
    app = await startApp();
    execFileSync('bash', [GEN, '--out', join(dir, 'certs'), '--name', 'browser', `*.${app.port}.localhost`], {
      stdio: 'ignore',
      timeout: 30_000,
    });
    px = await startProxyProcess({
      tls: { certFile: join(dir, 'certs', 'browser.pem'), keyFile: join(dir, 'certs', 'browser-key.pem') },
    });
    context = await chromium.launchPersistentContext(join(dir, 'profile'), {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      ignoreHTTPSErrors: true,
      timeout: 30_000,
    });
  });

  after(async () => {
    // Each step bounded and independent, so one that hangs or fails does not leak the others.
    const steps = [
      ['browser', () => context?.close()],
      ['proxy', () => px?.stop()],
      ['app', () => app?.close()],
    ];
    for (const [what, step] of steps) {
      try {
        await bounded(Promise.resolve(step()), 15_000, `closing the ${what}`);
      } catch (err) {
        console.error(`browser.test: ${err.message}`);
      }
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('loads the page over h2, gets its JSON, and its wss:// WebSocket echoes over RFC 8441', { timeout: 60_000 }, async (t) => {
    if (!HAVE_CHROMIUM) {
      t.skip(`${CHROMIUM} not found: run \`bash scripts/install-test-deps.sh\` (Debian package chromium)`);
      return;
    }
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(15_000);
    page.on('console', (m) => logs.push(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
    page.on('requestfailed', (r) => logs.push(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));

    const url = `https://app.${app.port}.localhost:${px.port}/`;
    const response = await page.goto(url, { waitUntil: 'load', timeout: 20_000 });
    assert.equal(response?.status(), 200, `GET ${url}`);

    const diag = async () =>
      JSON.stringify({ logs, stats: await px.stats().catch((e) => e.message), upgrades: app.upgrades.length });
    await page
      .waitForFunction(
        () => (window.__data !== null || window.__dataError !== null) && (window.__echo !== null || window.__wsError !== null),
        null,
        { timeout: 15_000, polling: 50 },
      )
      .catch(async (err) => assert.fail(`page did not finish: ${err.message}\n${await diag()}`));
    const result = await page.evaluate(() => ({
      data: window.__data,
      dataError: window.__dataError,
      echo: window.__echo,
      wsError: window.__wsError,
      navigationProtocol: performance.getEntriesByType('navigation')[0]?.nextHopProtocol,
      fetchProtocol: performance.getEntriesByName(new URL('/api/data', location.href).href)[0]?.nextHopProtocol,
    }));

    if (result.dataError !== null || result.wsError !== null) {
      assert.fail(`fetch: ${result.dataError}; WebSocket: ${result.wsError}\n${await diag()}`);
    }
    assert.deepEqual(result.data, DATA);
    assert.equal(result.echo, 'ping from the page');
    assert.equal(result.navigationProtocol, 'h2', 'the page came over HTTP/2');
    assert.equal(result.fetchProtocol, 'h2', 'the fetch came over HTTP/2');

    const stats = await px.stats();
    assert.ok(
      stats.websocketsExtendedConnectTotal >= 1,
      `the browser's WebSocket came over extended CONNECT (websocketsExtendedConnectTotal ${stats.websocketsExtendedConnectTotal}, websocketsUpgradeTotal ${stats.websocketsUpgradeTotal})`,
    );
    // The app got it as an ordinary HTTP/1.1 Upgrade, marked as having come over https.
    assert.equal(app.upgrades.length, 1);
    assert.equal(app.upgrades[0]['x-forwarded-proto'], 'https');
  });
});
