#!/usr/bin/env node
// Real apps through the proxy vs direct, in the same run, in headless Chromium (the apps and the
// browser of test/apps-*.test.mjs):
//
//   npm run build && node bench/apps/run.mjs [--rounds N] [vite] [next] [jupyter] [code-server]
//
// For each app and each way in — direct (http://127.0.0.1:<app port>, HTTP/1.1), through the
// proxy over cleartext HTTP/1.1 (Host route) and over TLS h2 (Host route) — N rounds (default 7)
// in rotation, each in a fresh browser context (cold browser cache, warm dev server; one
// discarded warm-up round per way first):
//   render   navigation start -> the app's first content on screen (ms)
//   requests, bytes   what the first load fetched until then, plus 1 s to settle (bytes: response
//                     headers + bodies as Chromium decoded them; same for every way)
//   hmr      (Vite, Next) write a module on disk -> the page shows the change (ms);
//            (Jupyter) an execute_request `1+1` -> its execute_result (ms), kernel round trip;
//            (code-server) `echo` typed in the integrated terminal -> its output file appears (ms)
// Prints a Markdown table of medians and the proxy/direct ratios. Not a test: timings on a busy
// machine move; compare the columns of one run.
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, closeAll, freePort, launchChromium, makeCert, sleep, startDevServer, startProxyProcess } from '../../test/helpers/apps.mjs';

const args = process.argv.slice(2);
const roundsAt = args.indexOf('--rounds');
const ROUNDS = roundsAt >= 0 ? Number(args.splice(roundsAt, 2)[1]) : 7;
const APPS = args.length > 0 ? args : ['vite', 'next', 'jupyter', 'code-server'];
const TOKEN = 'bench-token';

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Each app: start(dir, port) -> server; rendered(page); hmr(page, dir, n) -> ms (optional). */
const apps = {
  vite: {
    async start(dir, port) {
      cpSync(join(REPO, 'test/fixtures/vite-app'), join(dir, 'app'), { recursive: true });
      return startDevServer(
        process.execPath,
        [join(REPO, 'node_modules/vite/bin/vite.js'), join(dir, 'app'), '--config', join(dir, 'app/vite.config.mjs'), '--host', '127.0.0.1', '--port', String(port), '--strictPort'],
        { cwd: join(dir, 'app'), readyUrl: `http://127.0.0.1:${port}/` },
      );
    },
    path: '/',
    rendered: (page) => page.waitForFunction(() => document.querySelector('#app')?.textContent.startsWith('hello') || document.querySelector('#app')?.textContent.startsWith('v '), null, { polling: 10 }),
    async before(page, consoleLog) {
      for (let i = 0; i < 300 && !consoleLog.some((t) => t.includes('[vite] connected')); i++) await sleep(100);
    },
    async hmr(page, dir, n) {
      const text = `v ${n}`;
      const t0 = performance.now();
      writeFileSync(join(dir, 'app/message.ts'), `export const message = '${text}';\n`);
      await page.waitForFunction((x) => document.querySelector('#app')?.textContent === x, text, { polling: 10, timeout: 30_000 });
      return performance.now() - t0;
    },
  },
  next: {
    async start(dir, port) {
      cpSync(join(REPO, 'test/fixtures/next-app'), join(dir, 'app'), { recursive: true });
      symlinkSync(join(REPO, 'node_modules'), join(dir, 'app/node_modules'));
      const server = await startDevServer(process.execPath, [join(REPO, 'node_modules/next/dist/bin/next'), 'dev', '--port', String(port), '--hostname', '127.0.0.1'], {
        cwd: join(dir, 'app'),
        env: { NEXT_TELEMETRY_DISABLED: '1' },
        readyUrl: `http://127.0.0.1:${port}/_next/static/not-there`,
      });
      return server;
    },
    path: '/',
    rendered: (page) => page.waitForFunction(() => document.querySelector('#title') !== null, null, { polling: 10, timeout: 150_000 }),
    async before(page) {
      await page.waitForFunction(() => {
        const a = document.querySelector('#to-about');
        return a && Object.keys(a).some((k) => k.startsWith('__reactProps'));
      }, null, { timeout: 60_000 });
      await sleep(300);
    },
    async hmr(page, dir, n) {
      const text = `n ${n}`;
      const t0 = performance.now();
      writeFileSync(join(dir, 'app/message.js'), `export const message = '${text}';\n`);
      await page.waitForFunction((x) => document.querySelector('#title')?.textContent === x, text, { polling: 10, timeout: 30_000 });
      return performance.now() - t0;
    },
  },
  jupyter: {
    async start(dir, port) {
      return startDevServer(
        '/usr/bin/jupyter-server',
        [
          '--no-browser',
          '--allow-root',
          '--ServerApp.ip=127.0.0.1',
          `--ServerApp.port=${port}`,
          '--ServerApp.port_retries=0',
          `--ServerApp.token=${TOKEN}`,
          `--ServerApp.root_dir=${dir}`,
          ...['localhost', `jupyter.${port}.localhost`].flatMap((h) => ['--ServerApp.local_hostnames', h]),
        ],
        {
          cwd: dir,
          env: { JUPYTER_CONFIG_DIR: join(dir, 'config'), JUPYTER_DATA_DIR: join(dir, 'data'), JUPYTER_RUNTIME_DIR: join(dir, 'runtime'), IPYTHONDIR: join(dir, 'ipython') },
          readyUrl: `http://127.0.0.1:${port}/api`,
        },
      );
    },
    path: `/?token=${TOKEN}`,
    rendered: (page) => page.waitForFunction(() => document.title === 'Jupyter Server', null, { polling: 10 }),
    async hmr(page, dir, n, wsOrigin) {
      // One kernel per page: started, made ready, then one timed 1+1.
      return page.evaluate(
        async ({ token, wsOrigin }) => {
          const auth = { authorization: `token ${token}` };
          const kernel = await (await fetch('/api/kernels', { method: 'POST', headers: auth })).json();
          const session = crypto.randomUUID();
          const ws = new WebSocket(`${wsOrigin}/api/kernels/${kernel.id}/channels?session_id=${session}&token=${token}`);
          await new Promise((r, j) => {
            ws.onopen = r;
            ws.onerror = j;
          });
          const waiters = new Map();
          const probes = new Set();
          let ready = false;
          ws.onmessage = (e) => {
            const m = JSON.parse(e.data);
            if (m.channel === 'iopub' && probes.has(m.parent_header?.msg_id)) ready = true;
            if (m.msg_type === 'execute_result') waiters.get(m.parent_header.msg_id)?.(m.content.data['text/plain']);
          };
          const send = (type, content) => {
            const id = crypto.randomUUID();
            ws.send(JSON.stringify({ header: { msg_id: id, username: 'b', session, msg_type: type, version: '5.3', date: '' }, parent_header: {}, metadata: {}, content, channel: 'shell', buffers: [] }));
            return id;
          };
          for (let i = 0; i < 90 && !ready; i++) {
            probes.add(send('kernel_info_request', {}));
            await new Promise((r) => setTimeout(r, 300));
          }
          const t0 = performance.now();
          const result = await new Promise((r) => waiters.set(send('execute_request', { code: '1+1', silent: false, store_history: true, user_expressions: {}, allow_stdin: false }), r));
          const ms = performance.now() - t0;
          ws.close();
          await fetch(`/api/kernels/${kernel.id}`, { method: 'DELETE', headers: auth });
          if (result !== '2') throw new Error(`1+1 -> ${result}`);
          return ms;
        },
        { token: TOKEN, wsOrigin },
      );
    },
  },
  'code-server': {
    async start(dir, port) {
      const installDir = execFileSync('bash', [join(REPO, 'scripts/install-code-server.sh'), '--dir'], { encoding: 'utf8' }).trim();
      if (!existsSync(join(installDir, '.installed'))) throw new Error('code-server not installed: bash scripts/install-code-server.sh');
      mkdirSync(join(dir, 'workspace'));
      writeFileSync(join(dir, 'workspace/hello.txt'), 'hello\n');
      mkdirSync(join(dir, 'user-data/User'), { recursive: true });
      writeFileSync(
        join(dir, 'user-data/User/settings.json'),
        JSON.stringify({ 'security.workspace.trust.enabled': false, 'workbench.startupEditor': 'none', 'telemetry.telemetryLevel': 'off', 'terminal.integrated.gpuAcceleration': 'off' }),
      );
      writeFileSync(join(dir, 'config.yaml'), 'auth: none\n');
      return startDevServer(
        'bash',
        [
          join(REPO, 'scripts/with-node.sh'),
          '24',
          'node',
          join(installDir, 'node_modules/code-server/out/node/entry.js'),
          '--bind-addr',
          `127.0.0.1:${port}`,
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
          join(dir, 'workspace'),
        ],
        { cwd: dir, env: { XDG_DATA_HOME: join(dir, 'xdg-data'), XDG_CONFIG_HOME: join(dir, 'xdg-config'), SHELL: '/bin/bash' }, readyUrl: `http://127.0.0.1:${port}/healthz`, timeoutMs: 90_000 },
      );
    },
    path: '/',
    // The workbench is usable once the explorer lists the workspace (over its WebSocket).
    rendered: (page) => page.waitForSelector('.explorer-folders-view .monaco-list-row', { timeout: 90_000 }),
    async hmr(page, dir, n) {
      await page.keyboard.press('Control+Backquote');
      await page.waitForSelector('.terminal-wrapper .xterm', { timeout: 60_000 });
      // Wait for the shell: a first command's file.
      const warm = join(dir, 'workspace', `warm-${n}`);
      const out = join(dir, 'workspace', `out-${n}`);
      for (let i = 0; i < 3 && !existsSync(warm); i++) {
        await page.click('.terminal-wrapper .xterm');
        await page.keyboard.type(`touch ${warm}\n`);
        for (let k = 0; k < 100 && !existsSync(warm); k++) await sleep(100);
      }
      await page.keyboard.type(`echo ok > ${out}`);
      const t0 = performance.now();
      await page.keyboard.press('Enter');
      while (!(existsSync(out) && readFileSync(out, 'utf8') === 'ok\n')) await sleep(5);
      return performance.now() - t0;
    },
  },
};

async function measure(browser, app, way, dir, n) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.setDefaultTimeout(60_000);
  const consoleLog = [];
  page.on('console', (m) => consoleLog.push(m.text()));
  let requests = 0;
  let bytes = 0;
  let counting = true;
  page.on('requestfinished', async (req) => {
    if (!counting) return;
    requests++;
    const s = await req.sizes().catch(() => null);
    if (s) bytes += s.responseHeadersSize + s.responseBodySize;
  });
  try {
    const t0 = performance.now();
    await page.goto(`${way.origin}${app.path}`, { waitUntil: 'commit', timeout: 150_000 });
    await app.rendered(page);
    const render = performance.now() - t0;
    await sleep(1000);
    counting = false;
    const result = { render, requests, bytes };
    if (app.before) await app.before(page, consoleLog);
    if (app.hmr) result.hmr = await app.hmr(page, dir, `${way.key}-${n}`, way.origin.replace(/^http/, 'ws'));
    return result;
  } finally {
    await context.close();
  }
}

const browser = await launchChromium();
const table = [];
try {
  for (const name of APPS) {
    const app = apps[name];
    if (!app) throw new Error(`unknown app ${name} (one of ${Object.keys(apps).join(', ')})`);
    const dir = mkdtempSync(join(tmpdir(), `cmux-bench-${name}-`));
    const port = await freePort();
    let server;
    let px;
    try {
      server = await app.start(dir, port);
      px = await startProxyProcess({ tls: makeCert(dir, [`*.${port}.localhost`]) });
      const host = name === 'code-server' ? 'vscode' : name;
      const ways = [
        { key: 'direct', label: 'direct h1', origin: `http://127.0.0.1:${port}` },
        { key: 'h1', label: 'proxy h1', origin: `http://${host}.${port}.localhost:${px.port}` },
        { key: 'h2', label: 'proxy TLS h2', origin: `https://${host}.${port}.localhost:${px.port}` },
      ];
      const results = Object.fromEntries(ways.map((w) => [w.key, []]));
      for (let round = -1; round < ROUNDS; round++) {
        for (const way of ways) {
          // One retry: a renderer that goes away mid-round (it happens on a busy machine) is
          // reported and measured again, not counted.
          const r = await measure(browser, app, way, dir, round + 1).catch((err) => {
            process.stderr.write(`${name} ${way.label}: ${err.message.split('\n')[0]}; measuring again\n`);
            return measure(browser, app, way, dir, `${round + 1}b`);
          });
          if (round >= 0) results[way.key].push(r);
        }
        process.stderr.write(`${name}: round ${round + 1}/${ROUNDS}\n`);
      }
      for (const figure of ['render', 'requests', 'bytes', 'hmr']) {
        if (results.direct[0][figure] === undefined) continue;
        const m = Object.fromEntries(ways.map((w) => [w.key, median(results[w.key].map((r) => r[figure]))]));
        table.push({ app: name, figure, ...m });
      }
    } finally {
      await closeAll(`bench ${name}`, [
        ['proxy', () => px?.stop()],
        [name, () => server?.stop()],
      ]);
      rmSync(dir, { recursive: true, force: true });
    }
  }
} finally {
  await browser.close();
}

const units = { render: 'ms', hmr: 'ms', requests: '', bytes: 'B' };
const fmt = (v, figure) => (figure === 'bytes' || figure === 'requests' ? String(Math.round(v)) : v.toFixed(0)) + (units[figure] ? ` ${units[figure]}` : '');
const label = { render: 'first render', requests: 'requests, first load', bytes: 'bytes, first load', hmr: 'HMR edit -> DOM' };
console.log(`\n${ROUNDS} rounds each, medians (Node ${process.version})\n`);
console.log('| app | figure | direct (h1) | proxy h1 | proxy/direct | proxy TLS h2 | h2/direct |');
console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: |');
for (const row of table) {
  const name = row.figure === 'hmr' && row.app === 'jupyter' ? 'kernel 1+1 round trip' : row.figure === 'hmr' && row.app === 'code-server' ? 'terminal echo -> file' : label[row.figure];
  console.log(
    `| ${row.app} | ${name} | ${fmt(row.direct, row.figure)} | ${fmt(row.h1, row.figure)} | ${(row.h1 / row.direct).toFixed(2)}x | ${fmt(row.h2, row.figure)} | ${(row.h2 / row.direct).toFixed(2)}x |`,
  );
}
