// Two Socket.IO apps through one proxy port at once, in two tabs of headless Chromium: the
// embedding app, served by the proxy's `fallback: { handler, upgrade }` (unrouted Host
// `localhost`), and a workspace's own Socket.IO app on another port (Host route
// `sio.<port>.localhost`). Both pages load the Socket.IO client, connect (long-polling, then the
// WebSocket upgrade), and answer acknowledged events while the other tab stays connected; each
// tab talks to its own app. Over TLS h2 and cleartext HTTP/1.1; over TLS both WebSockets must
// come as RFC 8441 extended CONNECT.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HAVE_CHROMIUM, CHROMIUM, REPO, closeAll, launchChromium, makeCert, openPage, startProxyProcess } from './helpers/apps.mjs';
import { createSocketIoApp } from './helpers/socketio-app.mjs';

describe('Socket.IO in the fallback handler and in a workspace app, two tabs at once', { timeout: 120_000 }, () => {
  let dir;
  let workspace;
  let wsPort;
  let px;
  let browser;

  before(async () => {
    if (!HAVE_CHROMIUM) return;
    dir = mkdtempSync(join(tmpdir(), 'cmux-apps-sio-'));
    workspace = createSocketIoApp('workspace app');
    workspace.server.listen(0, '127.0.0.1');
    await once(workspace.server, 'listening');
    wsPort = workspace.server.address().port;
    px = await startProxyProcess({
      tls: makeCert(dir, [`*.${wsPort}.localhost`]),
      fallbackModule: join(REPO, 'test/helpers/socketio-app.mjs'),
    });
    browser = await launchChromium();
  });

  after(async () => {
    await closeAll('apps-socketio-fallback', [
      ['browser', () => browser?.close()],
      ['proxy', () => px?.stop()],
      [
        'workspace app',
        () =>
          workspace &&
          new Promise((r) => {
            workspace.io.close(() => r());
            workspace.server.closeAllConnections();
          }),
      ],
    ]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const scheme of ['https', 'http']) {
    const protocol = scheme === 'https' ? 'h2' : 'http/1.1';
    it(`${scheme === 'https' ? 'TLS h2' : 'cleartext HTTP/1.1'}: both apps connect over WebSocket and answer, each in its tab`, { timeout: 60_000 }, async (t) => {
      if (!HAVE_CHROMIUM) {
        t.skip(`${CHROMIUM} not found: run \`bash scripts/install-test-deps.sh\``);
        return;
      }
      const logs = [];
      const { context, page: embeddingTab } = await openPage(browser, { headers: {} }, logs);
      try {
        const before = await px.stats();
        const workspaceTab = await context.newPage();
        workspaceTab.on('console', (m) => logs.push(`workspace console.${m.type()}: ${m.text()}`));
        const tabs = [
          { page: embeddingTab, url: `${scheme}://localhost:${px.port}/`, name: 'embedding app' },
          { page: workspaceTab, url: `${scheme}://sio.${wsPort}.localhost:${px.port}/`, name: 'workspace app' },
        ];
        for (const tab of tabs) {
          const response = await tab.page.goto(tab.url, { waitUntil: 'load' });
          assert.equal(response?.status(), 200, `GET ${tab.url}`);
          assert.equal(await tab.page.textContent('#app'), tab.name);
        }
        for (const tab of tabs) {
          await tab.page
            .waitForFunction(() => window.__state.error !== null || (window.__state.welcome !== null && window.__state.transport === 'websocket'), null, {
              timeout: 30_000,
            })
            .catch((err) => assert.fail(`${tab.name}: ${err.message}\n${logs.join('\n')}`));
          const state = await tab.page.evaluate(() => window.__state);
          assert.equal(state.error, null, `${tab.name}: ${state.error}\n${logs.join('\n')}`);
          assert.deepEqual(state.welcome, { app: tab.name });
          assert.equal(await tab.page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol), protocol);
        }
        // Both tabs at once, several rounds: each answer comes from the tab's own app, over WebSocket.
        for (let round = 0; round < 3; round++) {
          const answers = await Promise.all(tabs.map((tab) => tab.page.evaluate((p) => window.__hello(p), `${tab.name} ${round}`)));
          for (const [k, tab] of tabs.entries()) {
            assert.deepEqual(answers[k], { app: tab.name, got: `${tab.name} ${round}`, transport: 'websocket' });
          }
        }
        const after = await px.stats();
        if (protocol === 'h2') {
          assert.ok(
            after.websocketsExtendedConnectTotal - before.websocketsExtendedConnectTotal >= 2,
            `both WebSockets over RFC 8441 (extended CONNECT ${before.websocketsExtendedConnectTotal} -> ${after.websocketsExtendedConnectTotal})`,
          );
        } else {
          assert.ok(after.websocketsUpgradeTotal - before.websocketsUpgradeTotal >= 2, 'both WebSockets as HTTP/1.1 Upgrades');
        }
      } finally {
        await context.close();
      }
    });
  }
});
