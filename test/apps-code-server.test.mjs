// VS Code in the browser (npm `code-server`, installed by scripts/install-code-server.sh with
// Node 24: see that script for why it is not a devDependency) used through the proxy by headless
// Chromium over TLS h2 (Host route), cleartext HTTP/1.1 (Host route) and the header route. Each
// run: the workbench loads, a file of the workspace opens in the editor (from the explorer), and the
// integrated terminal runs `echo ok` (its output goes to a file the test reads). The workbench's
// connections to its server (management, extension host; the terminal rides on them) are
// WebSockets: over TLS they must come as RFC 8441 extended CONNECT. One code-server and one proxy
// serve all runs.
//
// code-server checks that a WebSocket's Origin matches its Host; the proxy keeps Host, so every
// route passes with no setting (the cmux Host shapes included).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  HAVE_CHROMIUM,
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

const INSTALL = join(REPO, 'scripts/install-code-server.sh');
const DIR = execFileSync('bash', [INSTALL, '--dir'], { encoding: 'utf8' }).trim();
const ENTRY = join(DIR, 'node_modules/code-server/out/node/entry.js');
const missing = !HAVE_CHROMIUM
  ? '/usr/bin/chromium not found: run `bash scripts/install-test-deps.sh`'
  : !existsSync(join(DIR, '.installed'))
    ? `code-server is not installed in ${DIR}: run \`bash scripts/install-code-server.sh\` (install-test-deps.sh runs it)`
    : null;

// TLS h2 and cleartext HTTP/1.1 on the Host route, and the header route.
const ROUTES = [0, 1, 2];

describe('code-server (VS Code in the browser) through the proxy in Chromium', { timeout: 300_000 }, () => {
  let dir;
  let ws;
  let app;
  let appPort;
  let px;
  let browser;

  before(async () => {
    if (missing) return;
    dir = mkdtempSync(join(tmpdir(), 'cmux-apps-code-server-'));
    ws = join(dir, 'workspace');
    mkdirSync(ws);
    writeFileSync(join(ws, 'hello.txt'), 'hello from the workspace\n');
    mkdirSync(join(dir, 'user-data/User'), { recursive: true });
    writeFileSync(
      join(dir, 'user-data/User/settings.json'),
      JSON.stringify({
        'security.workspace.trust.enabled': false,
        'workbench.startupEditor': 'none',
        'telemetry.telemetryLevel': 'off',
        'terminal.integrated.defaultProfile.linux': 'bash',
        'terminal.integrated.gpuAcceleration': 'off',
        'extensions.autoCheckUpdates': false,
      }),
    );
    writeFileSync(join(dir, 'config.yaml'), 'auth: none\n');
    appPort = await freePort();
    app = await startDevServer(
      'bash',
      [
        join(REPO, 'scripts/with-node.sh'),
        '24',
        'node',
        ENTRY,
        '--bind-addr',
        `127.0.0.1:${appPort}`,
        '--auth',
        'none',
        '--config',
        join(dir, 'config.yaml'),
        '--disable-telemetry',
        '--disable-update-check',
        '--disable-workspace-trust',
        '--user-data-dir',
        join(dir, 'user-data'),
        '--extensions-dir',
        join(dir, 'extensions'),
        ws,
      ],
      { cwd: dir, env: { XDG_DATA_HOME: join(dir, 'xdg-data'), XDG_CONFIG_HOME: join(dir, 'xdg-config'), SHELL: '/bin/bash' }, readyUrl: `http://127.0.0.1:${appPort}/healthz`, timeoutMs: 90_000 },
    );
    px = await startProxyProcess({ tls: makeCert(dir, [`*.${appPort}.localhost`, `${appPort}.cmux.local`]) });
    browser = await launchChromium();
  });

  after(async () => {
    await closeAll('apps-code-server', [
      ['browser', () => browser?.close()],
      ['proxy', () => px?.stop()],
      ['code-server', () => app?.stop()],
    ]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const i of ROUTES) {
    const shape = browserRoutes('vscode', 0, 0)[i]; // names only
    it(`${shape.name}: workbench loads, a file opens, the terminal runs echo ok`, { timeout: 150_000 }, async (t) => {
      if (missing) {
        t.skip(missing);
        return;
      }
      const route = browserRoutes('vscode', appPort, px.port)[i];
      const logs = [];
      const { context, page } = await openPage(browser, route, logs);
      const fail = async (what, err) =>
        assert.fail(`${route.name}: ${what}: ${err.message}\n${logs.filter((l) => !l.startsWith('console.log')).slice(-40).join('\n')}\nstats ${JSON.stringify(await px.stats().catch((e) => e.message))}\ncode-server:\n${app.output()}`);
      try {
        const before = await px.stats();
        const response = await page.goto(`${route.origin}/?folder=${encodeURIComponent(ws)}`, { waitUntil: 'load', timeout: 60_000 });
        assert.equal(response?.status(), 200, `GET ${route.origin}/`);
        assert.equal(await page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol), route.protocol);
        await page.waitForSelector('.monaco-workbench .part.editor', { timeout: 90_000 }).catch((e) => fail('workbench', e));
        // The explorer lists the workspace once the remote (WebSocket) connection is up.
        await page.waitForSelector('.explorer-folders-view .monaco-list-row[aria-label^="hello.txt"]', { timeout: 90_000 }).catch((e) => fail('explorer', e));

        // A click on the file in the explorer opens it in the editor.
        await page.click('.explorer-folders-view .monaco-list-row[aria-label^="hello.txt"]');
        await page
          .waitForFunction(() => [...document.querySelectorAll('.monaco-editor .view-lines')].some((e) => e.textContent.replace(/\u00a0/g, ' ').includes('hello from the workspace')), null, { timeout: 60_000 })
          .catch((e) => fail('file in the editor', e));

        // The integrated terminal: Ctrl+` opens it; the command's output lands in a file.
        const out = join(ws, `out-${i}.txt`);
        await page.keyboard.press('Control+Backquote');
        await page.waitForSelector('.terminal-wrapper .xterm', { timeout: 60_000 }).catch((e) => fail('terminal', e));
        await sleep(500);
        let done = false;
        for (let attempt = 0; attempt < 3 && !done; attempt++) {
          await page.click('.terminal-wrapper .xterm');
          await page.keyboard.type(`echo ok > ${out}\n`, { delay: 10 });
          const until = Date.now() + 20_000;
          while (!done && Date.now() < until) {
            done = existsSync(out) && readFileSync(out, 'utf8') === 'ok\n';
            if (!done) await sleep(200);
          }
        }
        if (!done) await fail('echo ok in the terminal', new Error(`${out} never held "ok"`));

        const after = await px.stats();
        if (route.protocol === 'h2') {
          assert.ok(
            after.websocketsExtendedConnectTotal - before.websocketsExtendedConnectTotal >= 2,
            `workbench WebSockets over RFC 8441 (extended CONNECT ${before.websocketsExtendedConnectTotal} -> ${after.websocketsExtendedConnectTotal}, upgrades ${after.websocketsUpgradeTotal})`,
          );
        } else {
          assert.ok(after.websocketsUpgradeTotal - before.websocketsUpgradeTotal >= 2, 'workbench WebSockets as HTTP/1.1 Upgrades');
        }
      } finally {
        await context.close();
      }
    });
  }
});
