// Next.js (npm `next` with `react` and `react-dom`; `next dev`, Turbopack, app router; the
// project from test/fixtures/next-app copied to a temp dir) used through the proxy by headless
// Chromium, once per route of browserRoutes(). The first run's page load is Next's first compile,
// through the proxy (upstreamResponseTimeoutMs, 120 s by default, allows it). Each run: the page
// renders, a <Link> navigates client-side (same document) and back, an edit of a module on disk
// reaches the page over the HMR WebSocket without a reload. Over TLS that WebSocket must come as
// RFC 8441 extended CONNECT. One `next dev` and one proxy serve all runs.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  HAVE_CHROMIUM,
  CHROMIUM,
  REPO,
  browserRoutes,
  closeAll,
  freePort,
  launchChromium,
  makeCert,
  openPage,
  sleep,
  startDevServer,
  startProxyProcess,
} from './helpers/apps.mjs';

const NEXT = join(REPO, 'node_modules/next/dist/bin/next');

describe('Next.js dev server through the proxy in Chromium', { timeout: 300_000 }, () => {
  let dir;
  let app;
  let appPort;
  let px;
  let browser;

  before(async () => {
    if (!HAVE_CHROMIUM) return;
    dir = mkdtempSync(join(tmpdir(), 'cmux-apps-next-'));
    cpSync(join(REPO, 'test/fixtures/next-app'), join(dir, 'app'), { recursive: true });
    symlinkSync(join(REPO, 'node_modules'), join(dir, 'app/node_modules'));
    appPort = await freePort();
    app = await startDevServer(process.execPath, [NEXT, 'dev', '--port', String(appPort), '--hostname', '127.0.0.1'], {
      cwd: join(dir, 'app'),
      env: { NEXT_TELEMETRY_DISABLED: '1' },
      // A path Next answers 404 without compiling a page: the first compile stays for the browser.
      readyUrl: `http://127.0.0.1:${appPort}/_next/static/not-there`,
    });
    px = await startProxyProcess({ tls: makeCert(dir, [`*.${appPort}.localhost`, `${appPort}.cmux.local`]) });
    browser = await launchChromium();
  });

  after(async () => {
    await closeAll('apps-next', [
      ['browser', () => browser?.close()],
      ['proxy', () => px?.stop()],
      ['next', () => app?.stop()],
    ]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const write = (source) => writeFileSync(join(dir, 'app/message.js'), source);
  const routes = browserRoutes('next', 0, 0); // names only
  for (const [i, shape] of routes.entries()) {
    it(`${shape.name}: renders (first compile), <Link> navigation, HMR without reload`, { timeout: 180_000 }, async (t) => {
      if (!HAVE_CHROMIUM) {
        t.skip(`${CHROMIUM} not found: run \`bash scripts/install-test-deps.sh\``);
        return;
      }
      const route = browserRoutes('next', appPort, px.port)[i];
      write(`export const message = 'hello from next';\n`);
      const logs = [];
      const { context, page } = await openPage(browser, route, logs);
      const fail = async (what, err) =>
        assert.fail(`${route.name}: ${what}: ${err.message}\n${logs.join('\n')}\nstats ${JSON.stringify(await px.stats().catch((e) => e.message))}\nnext:\n${app.output()}`);
      try {
        const before = await px.stats();
        const hmr = page.waitForEvent('websocket', { predicate: (ws) => ws.url().includes('/_next/'), timeout: 150_000 });
        const response = await page.goto(`${route.origin}/`, { waitUntil: 'load', timeout: 150_000 });
        assert.equal(response?.status(), 200, `GET ${route.origin}/`);
        await page.waitForFunction(() => document.querySelector('#title')?.textContent === 'hello from next').catch((e) => fail('first render', e));
        const socket = await hmr.catch((e) => fail('HMR WebSocket', e));
        assert.equal(await page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol), route.protocol);
        // Hydrated (the Link is live) once React has attached its props to the anchor.
        await page
          .waitForFunction(() => {
            const a = document.querySelector('#to-about');
            return a && Object.keys(a).some((k) => k.startsWith('__reactProps'));
          }, null, { timeout: 120_000 })
          .catch((e) => fail('hydration', e));

        await page.evaluate(() => {
          window.__sameDocument = true;
        });
        await page.click('#to-about');
        await page.waitForSelector('#about', { timeout: 120_000 }).catch((e) => fail('<Link> to /about', e));
        assert.equal(new URL(page.url()).pathname, '/about');
        await page.click('#to-home');
        await page.waitForSelector('#title').catch((e) => fail('<Link> back to /', e));
        assert.equal(await page.evaluate(() => window.__sameDocument), true, '<Link> navigated without loading a new document');
        assert.equal(socket.isClosed(), false, 'the HMR WebSocket stayed open');

        // An edit arrives over HMR; the document is the same one. The file watcher gets a
        // second chance (a write can pass unseen right after a compile), the page none.
        let updated = false;
        for (let attempt = 0; attempt < 4 && !updated; attempt++) {
          await sleep(150);
          write(`export const message = 'edited ${i}';\n`);
          updated = await page
            .waitForFunction((text) => document.querySelector('#title')?.textContent === text, `edited ${i}`, { timeout: 20_000 })
            .then(() => true, () => false);
        }
        if (!updated) await fail('HMR update', new Error(`#title never showed 'edited ${i}'`));
        assert.equal(await page.evaluate(() => window.__sameDocument), true, 'HMR updated the page without reloading it');

        const after = await px.stats();
        if (route.protocol === 'h2') {
          assert.ok(
            after.websocketsExtendedConnectTotal > before.websocketsExtendedConnectTotal,
            `HMR WebSocket over RFC 8441 (extended CONNECT ${before.websocketsExtendedConnectTotal} -> ${after.websocketsExtendedConnectTotal}, upgrades ${after.websocketsUpgradeTotal})`,
          );
        } else {
          assert.ok(after.websocketsUpgradeTotal > before.websocketsUpgradeTotal, 'HMR WebSocket as an HTTP/1.1 Upgrade');
        }
      } finally {
        await context.close();
      }
    });
  }
});
