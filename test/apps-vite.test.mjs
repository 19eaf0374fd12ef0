// Vite's dev server (npm `vite`, a vanilla app from test/fixtures/vite-app copied to a temp dir)
// used through the proxy by headless Chromium, once per route of browserRoutes(): TLS h2 and
// cleartext HTTP/1.1 on the Host route, the header route, and the `<port>.cmux.local` shape
// (allowed by the fixture's server.allowedHosts). Each run: the page renders; an edit of a TypeScript module
// on disk reaches the page over Vite's HMR WebSocket without a reload; a syntax error shows Vite's
// error overlay; the fix clears it. Over TLS the HMR WebSocket must come as RFC 8441 extended
// CONNECT (the proxy's websocketsExtendedConnectTotal grows). One Vite and one proxy serve all
// runs; each run has its own browser context.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  HAVE_CHROMIUM,
  CHROMIUM,
  REPO,
  browserRoutes,
  closeAll,
  freePort,
  getStatus,
  launchChromium,
  makeCert,
  openPage,
  sleep,
  startDevServer,
  startProxyProcess,
} from './helpers/apps.mjs';

const VITE = join(REPO, 'node_modules/vite/bin/vite.js');

describe('Vite dev server through the proxy in Chromium', { timeout: 180_000 }, () => {
  let dir;
  let app;
  let appPort;
  let px;
  let browser;

  before(async () => {
    if (!HAVE_CHROMIUM) return;
    dir = mkdtempSync(join(tmpdir(), 'cmux-apps-vite-'));
    cpSync(join(REPO, 'test/fixtures/vite-app'), join(dir, 'app'), { recursive: true });
    appPort = await freePort();
    app = await startDevServer(
      process.execPath,
      [VITE, join(dir, 'app'), '--config', join(dir, 'app/vite.config.mjs'), '--host', '127.0.0.1', '--port', String(appPort), '--strictPort'],
      { cwd: join(dir, 'app'), readyUrl: `http://127.0.0.1:${appPort}/` },
    );
    px = await startProxyProcess({ tls: makeCert(dir, [`*.${appPort}.localhost`, `${appPort}.cmux.local`]) });
    browser = await launchChromium();
  });

  after(async () => {
    await closeAll('apps-vite', [
      ['browser', () => browser?.close()],
      ['proxy', () => px?.stop()],
      ['vite', () => app?.stop()],
    ]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const write = (source) => writeFileSync(join(dir, 'app/message.ts'), source);
  // Writes `source`, then waits for `reached()`; writes it again if the file watcher let the change
  // pass unseen (it happens now and then with a write right after a previous update), at most 4
  // times. What the page must show is asserted every time; only the watcher gets a second chance.
  async function edit(source, reached) {
    let last;
    for (let attempt = 0; attempt < 4; attempt++) {
      await sleep(150);
      write(source);
      try {
        return await reached(10_000);
      } catch (err) {
        last = err;
      }
    }
    throw last;
  }
  // Puts the first text back and waits until Vite serves it (asked directly, not through the
  // proxy): a change its watcher let pass unseen would leave the previous run's text in its
  // module cache and the first render would show that.
  async function reset() {
    for (let attempt = 0; attempt < 20; attempt++) {
      write(`export const message = 'hello from vite';\n`);
      for (let i = 0; i < 10; i++) {
        await sleep(100);
        const res = await fetch(`http://127.0.0.1:${appPort}/message.ts`).catch(() => null);
        if (res !== null && (await res.text()).includes('hello from vite')) return;
      }
    }
    throw new Error('Vite never served the reset message.ts');
  }
  const routes = browserRoutes('vite', 0, 0); // names only
  for (const [i, shape] of routes.entries()) {
    it(`${shape.name}: renders, HMR without reload, error overlay, fix clears it`, { timeout: 90_000 }, async (t) => {
      if (!HAVE_CHROMIUM) {
        t.skip(`${CHROMIUM} not found: run \`bash scripts/install-test-deps.sh\``);
        return;
      }
      const route = browserRoutes('vite', appPort, px.port)[i];
      await reset();
      const logs = [];
      const { context, page } = await openPage(browser, route, logs);
      const fail = async (what, err) =>
        assert.fail(`${route.name}: ${what}: ${err.message}\n${logs.join('\n')}\nstats ${JSON.stringify(await px.stats().catch((e) => e.message))}\nvite:\n${app.output()}`);
      try {
        const before = await px.stats();
        const connected = page.waitForEvent('console', { predicate: (m) => m.text().includes('[vite] connected'), timeout: 30_000 });
        const response = await page.goto(`${route.origin}/`, { waitUntil: 'load' });
        assert.equal(response?.status(), 200, `GET ${route.origin}/`);
        await page.waitForFunction(() => document.querySelector('#app')?.textContent === 'hello from vite').catch((e) => fail('first render', e));
        await connected.catch((e) => fail('HMR WebSocket', e));
        const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol);
        assert.equal(protocol, route.protocol);

        // An edit arrives as an HMR update: the text changes and the page is the same document.
        await page.evaluate(() => {
          window.__sameDocument = true;
        });
        await edit(`export const message = 'edited ${i}';\n`, (timeout) =>
          page.waitForFunction((text) => document.querySelector('#app')?.textContent === text, `edited ${i}`, { timeout }),
        ).catch((e) => fail('HMR update', e));
        assert.equal(await page.evaluate(() => window.__sameDocument), true, 'HMR updated the page without reloading it');

        // A syntax error: Vite's overlay; the fix: overlay gone, new text, still no reload.
        await edit(`export const message: string = ;\n`, (timeout) =>
          page.waitForSelector('vite-error-overlay', { state: 'attached', timeout }),
        ).catch((e) => fail('error overlay', e));
        // Done when the overlay is gone and the fixed text shows: Vite clears the overlay on any
        // update, also one that still served the broken module (its watcher then saw a write of
        // the broken file again), so the overlay alone does not prove the fix arrived.
        await edit(`export const message = 'fixed ${i}';\n`, (timeout) =>
          page.waitForFunction(
            (text) => document.querySelector('vite-error-overlay') === null && document.querySelector('#app')?.textContent === text,
            `fixed ${i}`,
            { timeout },
          ),
        ).catch((e) => fail('overlay cleared and the fix shown', e));
        assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the fix did not reload the page');

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

  it('answers the cmux Host shapes through the proxy because allowedHosts names them', async (t) => {
    if (!HAVE_CHROMIUM) {
      t.skip(`${CHROMIUM} not found: run \`bash scripts/install-test-deps.sh\``);
      return;
    }
    for (const host of [`${appPort}.cmux.local`, `port-${appPort}-abc.cmux.sh`]) {
      assert.equal(await getStatus(`http://127.0.0.1:${px.port}/`, { host }), 200, host);
    }
    // A shape allowedHosts does not name: Vite's own 403 comes through unchanged.
    assert.equal(await getStatus(`http://127.0.0.1:${px.port}/`, { host: `${appPort}.cmux.dev` }), 403);
  });
});
