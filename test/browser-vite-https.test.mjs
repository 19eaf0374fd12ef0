// A dev server that serves HTTPS itself, in a real browser: Vite (npm `vite`) with
// `server.https` and a self-signed certificate (what `@vitejs/plugin-basic-ssl` makes), reached
// through the proxy with `upstreamTls: true` and `upstreamTlsInsecureLoopback: true` by headless
// Chromium (driven as in browser.test.mjs), twice:
//   - https://app.<vitePort>.localhost:<proxyPort>/ on the proxy's TLS port: HTTP/2 from the
//     browser, Vite's HMR WebSocket as RFC 8441 extended CONNECT, bridged to an HTTP/1.1 Upgrade
//     over TLS to Vite;
//   - http://app.<vitePort>.localhost:<proxyPort>/ in cleartext: HTTP/1.1, the HMR WebSocket as an
//     HTTP/1.1 Upgrade, sent on over TLS.
// Each time the page renders (its module ran), the HMR WebSocket connects (Vite's client logs
// "[vite] connected."), and an edit of the CSS file on disk reaches the page as a hot update: the
// computed colour changes and a marker set at load survives (no reload).
//
// Vite allows Hosts under `.localhost` by default (`server.allowedHosts`), so no setting is needed
// for this Host shape. The proxy runs in a child process (see browser.test.mjs for why).
// Skipped only when /usr/bin/chromium is missing (`bash scripts/install-test-deps.sh` installs it).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, fork } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { createServer as createVite } from 'vite';

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

const INDEX = `<!doctype html>
<html><head><meta charset="utf-8"><title>vite over https</title></head>
<body><div id="app">loading</div><script type="module" src="/main.js"></script></body></html>`;
const MAIN = `import './style.css';
document.querySelector('#app').textContent = 'rendered by vite';
window.__marker = Math.random();`;
const css = (color) => `#app { color: ${color}; }\n`;

/** A free loopback port (Vite wants a fixed one). */
async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

/** test/helpers/proxy-child.mjs with `options`; { port, stats(), stop() }. */
async function startProxyProcess(options) {
  const child = fork(fileURLToPath(new URL('./helpers/proxy-child.mjs', import.meta.url)), [JSON.stringify(options)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let exit = null;
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve((exit = { code, signal }))));
  const waiting = new Map();
  let nextId = 0;
  child.on('message', (msg) => {
    if (msg?.type === 'stats') waiting.get(msg.id)?.(msg.stats);
  });
  const port = await bounded(
    new Promise((resolve, reject) => {
      child.on('message', (msg) => msg?.type === 'ready' && resolve(msg.port));
      exited.then(() => reject(new Error(`proxy process exited before listening (${JSON.stringify(exit)})`)));
    }),
    15_000,
    'proxy process start',
  ).catch((err) => {
    child.kill('SIGKILL');
    throw err;
  });
  return {
    port,
    stats() {
      if (exit) return Promise.reject(new Error(`proxy process exited (${JSON.stringify(exit)})`));
      const id = nextId++;
      return bounded(new Promise((resolve) => waiting.set(id, resolve)).finally(() => waiting.delete(id)), 5_000, 'proxy stats', () =>
        child.send({ type: 'stats', id }),
      );
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

/** Rejects after `ms` with `what` in the message; `start` runs once the race is set up. */
async function bounded(promise, ms, what, start) {
  let timer;
  try {
    const race = Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
      }),
    ]);
    start?.();
    return await race;
  } finally {
    clearTimeout(timer);
  }
}

describe('Vite serving HTTPS itself, through the proxy in a real browser', { timeout: 180_000 }, () => {
  let dir;
  let root;
  let vite;
  let vitePort;
  let px;
  let context;

  before(async () => {
    if (!HAVE_CHROMIUM) return;
    dir = mkdtempSync(join(tmpdir(), 'cmux-vite-https-'));
    root = join(dir, 'app');
    mkdirSync(root);
    writeFileSync(join(root, 'index.html'), INDEX);
    writeFileSync(join(root, 'main.js'), MAIN);
    writeFileSync(join(root, 'style.css'), css('rgb(255, 0, 0)'));
    // Vite's own certificate: self-signed for localhost, as @vitejs/plugin-basic-ssl makes it.
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-sha256', '-days', '30', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', join(dir, 'vite-key.pem'), '-out', join(dir, 'vite.pem')], { stdio: 'ignore' });
    vitePort = await freePort();
    vite = await createVite({
      configFile: false,
      root,
      logLevel: 'silent',
      clearScreen: false,
      server: {
        host: '127.0.0.1',
        port: vitePort,
        strictPort: true,
        https: { cert: readFileSync(join(dir, 'vite.pem')), key: readFileSync(join(dir, 'vite-key.pem')) },
      },
    });
    await vite.listen();
    // The proxy's own certificate for the browser side (throwaway CA; Chromium ignores errors).
    execFileSync('bash', [GEN, '--out', join(dir, 'certs'), '--name', 'proxy', `*.${vitePort}.localhost`], { stdio: 'ignore', timeout: 30_000 });
    px = await startProxyProcess({
      tls: { certFile: join(dir, 'certs', 'proxy.pem'), keyFile: join(dir, 'certs', 'proxy-key.pem') },
      upstreamTls: true,
      upstreamTlsInsecureLoopback: true,
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
    const steps = [
      ['browser', () => context?.close()],
      ['proxy', () => px?.stop()],
      ['vite', () => vite?.close()],
    ];
    for (const [what, step] of steps) {
      try {
        await bounded(Promise.resolve(step()), 15_000, `closing ${what}`);
      } catch (err) {
        console.error(`browser-vite-https.test: ${err.message}`);
      }
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Loads the page at `url`, waits for render and HMR, edits the CSS, waits for the hot update. */
  async function renderAndHotUpdate(url, color) {
    const page = await context.newPage();
    const logs = [];
    page.setDefaultTimeout(20_000);
    page.on('console', (m) => logs.push(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
    page.on('requestfailed', (r) => logs.push(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));
    const diag = async () => `\n${JSON.stringify({ logs, stats: await px.stats().catch((e) => e.message) })}`;
    try {
      const response = await page.goto(url, { waitUntil: 'load', timeout: 30_000 });
      assert.equal(response?.status(), 200, `GET ${url}`);
      await page
        .waitForFunction(() => document.querySelector('#app')?.textContent === 'rendered by vite', null, { timeout: 20_000, polling: 50 })
        .catch(async (err) => assert.fail(`the page did not render: ${err.message}${await diag()}`));
      // Vite's client says so once its HMR WebSocket is open.
      const deadline = Date.now() + 20_000;
      while (!logs.some((l) => l.includes('[vite] connected')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.ok(logs.some((l) => l.includes('[vite] connected')), `Vite's HMR WebSocket connected${await diag()}`);
      const marker = await page.evaluate(() => window.__marker);
      writeFileSync(join(root, 'style.css'), css(color));
      await page
        .waitForFunction((c) => getComputedStyle(document.querySelector('#app')).color === c, color, { timeout: 20_000, polling: 50 })
        .catch(async (err) => assert.fail(`the CSS edit did not arrive: ${err.message}${await diag()}`));
      assert.equal(await page.evaluate(() => window.__marker), marker, 'hot update, not a reload');
      return page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol);
    } finally {
      await page.close();
    }
  }

  it('over the proxy TLS port (h2, HMR WebSocket over extended CONNECT)', { timeout: 90_000 }, async (t) => {
    if (!HAVE_CHROMIUM) return t.skip(`${CHROMIUM} not found: run \`bash scripts/install-test-deps.sh\` (Debian package chromium)`);
    const before = await px.stats();
    const protocol = await renderAndHotUpdate(`https://app.${vitePort}.localhost:${px.port}/`, 'rgb(0, 128, 0)');
    assert.equal(protocol, 'h2');
    const stats = await px.stats();
    assert.ok(stats.websocketsExtendedConnectTotal > before.websocketsExtendedConnectTotal, 'the HMR WebSocket came as extended CONNECT');
    assert.equal(stats.upstreamErrors.UPSTREAM_TLS_CERT ?? 0, 0);
  });

  it('over cleartext HTTP/1.1 (HMR WebSocket as an HTTP/1.1 Upgrade)', { timeout: 90_000 }, async (t) => {
    if (!HAVE_CHROMIUM) return t.skip(`${CHROMIUM} not found: run \`bash scripts/install-test-deps.sh\` (Debian package chromium)`);
    const before = await px.stats();
    const protocol = await renderAndHotUpdate(`http://app.${vitePort}.localhost:${px.port}/`, 'rgb(0, 0, 255)');
    assert.equal(protocol, 'http/1.1');
    const stats = await px.stats();
    assert.ok(stats.websocketsUpgradeTotal > before.websocketsUpgradeTotal, 'the HMR WebSocket came as an HTTP/1.1 Upgrade');
  });
});
