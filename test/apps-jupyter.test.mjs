// Jupyter Server (Debian `jupyter-server` with `python3-ipykernel`, token auth) used through the
// proxy by headless Chromium, once per route of browserRoutes(). The page is the server's own
// page (/, "Jupyter Server"); from it the browser starts a Python kernel (REST, token in the Authorization
// header), runs `1+1` over the kernel's WebSocket (/api/kernels/<id>/channels, Jupyter's messaging
// protocol) and gets `2`, restarts the kernel (REST), and runs it again on the same WebSocket: the
// execution count starts again at 1, so the kernel really restarted. Over TLS that WebSocket must
// come as RFC 8441 extended CONNECT.
//
// Jupyter refuses a Host it does not consider local (403) unless ServerApp.local_hostnames names
// it (exact names, no wildcards) or ServerApp.allow_remote_access is on; the server here names
// the Hosts the routes use. One server and one proxy serve all runs.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  HAVE_CHROMIUM,
  browserRoutes,
  closeAll,
  freePort,
  getStatus,
  launchChromium,
  makeCert,
  openPage,
  startDevServer,
  startProxyProcess,
} from './helpers/apps.mjs';

const JUPYTER = '/usr/bin/jupyter-server';
const TOKEN = 'cmux-proxy-test-token';
const missing = !HAVE_CHROMIUM
  ? '/usr/bin/chromium not found'
  : !existsSync(JUPYTER)
    ? `${JUPYTER} not found`
    : null;

/** In the page: start a kernel, run 1+1, restart, run 1+1 again; resolves what came back. */
async function useKernel({ token, wsOrigin }) {
  const auth = { authorization: `token ${token}` };
  const post = async (path) => {
    const res = await fetch(path, { method: 'POST', headers: auth });
    if (!res.ok) throw new Error(`POST ${path}: ${res.status} ${await res.text()}`);
    return res.json();
  };
  const kernel = await post('/api/kernels');
  const session = crypto.randomUUID();
  const ws = new WebSocket(`${wsOrigin}/api/kernels/${kernel.id}/channels?session_id=${session}&token=${token}`);
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error('kernel WebSocket did not open'));
  });
  const pending = new Map();
  let iopubSeen = false;
  const probes = new Set();
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.channel === 'iopub' && probes.has(msg.parent_header?.msg_id)) iopubSeen = true;
    const waiter = pending.get(msg.parent_header?.msg_id);
    if (waiter && msg.msg_type === 'execute_result') waiter.result = msg.content;
    if (waiter && msg.msg_type === 'error') waiter.error = `${msg.content.ename}: ${msg.content.evalue}`;
    if (waiter && msg.msg_type === 'execute_reply') waiter.status = msg.content.status;
    if (waiter && msg.msg_type === 'status' && msg.content.execution_state === 'idle') waiter.idle = true;
    // The shell reply and the iopub messages travel on different channels, in no set order: the
    // request is done when both its reply and its iopub `idle` have come (as Jupyter's clients do).
    if (waiter && waiter.status !== undefined && waiter.idle) {
      pending.delete(msg.parent_header.msg_id);
      waiter.done({ result: waiter.result, error: waiter.error, status: waiter.status });
    }
  };
  const send = (msgType, content) => {
    const msgId = crypto.randomUUID();
    ws.send(
      JSON.stringify({
        header: { msg_id: msgId, username: 'test', session, msg_type: msgType, version: '5.3', date: new Date().toISOString() },
        parent_header: {},
        metadata: {},
        content,
        channel: 'shell',
        buffers: [],
      }),
    );
    return msgId;
  };
  // As Jupyter's own clients do: ask for kernel_info until iopub messages caused by it flow, so an
  // execute_result cannot be published before the server's iopub subscription is up (the
  // server's own `restarting` status message does not count).
  const ready = async () => {
    iopubSeen = false;
    for (let i = 0; i < 90 && !iopubSeen; i++) {
      probes.add(send('kernel_info_request', {}));
      await new Promise((r) => setTimeout(r, 500));
    }
    if (!iopubSeen) throw new Error('no iopub message from the kernel');
  };
  const run = (code) =>
    new Promise((done, reject) => {
      const timer = setTimeout(() => reject(new Error(`no execute_reply for ${code}`)), 45_000);
      const msgId = send('execute_request', { code, silent: false, store_history: true, user_expressions: {}, allow_stdin: false, stop_on_error: true });
      pending.set(msgId, {
        done: (r) => {
          clearTimeout(timer);
          done(r);
        },
      });
    });
  await ready();
  const first = await run('1+1');
  await post(`/api/kernels/${kernel.id}/restart`);
  await ready();
  const second = await run('1+1');
  ws.close();
  await fetch(`/api/kernels/${kernel.id}`, { method: 'DELETE', headers: auth });
  return { first, second };
}

describe('Jupyter Server kernels through the proxy in Chromium', { timeout: 240_000 }, () => {
  let dir;
  let app;
  let appPort;
  let px;
  let browser;

  before(async () => {
    if (missing) return;
    dir = mkdtempSync(join(tmpdir(), 'cmux-apps-jupyter-'));
    appPort = await freePort();
    app = await startDevServer(
      JUPYTER,
      [
        '--no-browser',
        '--ServerApp.ip=127.0.0.1',
        `--ServerApp.port=${appPort}`,
        '--ServerApp.port_retries=0',
        `--ServerApp.token=${TOKEN}`,
        `--ServerApp.root_dir=${dir}`,
        '--allow-root',
        ...['localhost', `jupyter.${appPort}.localhost`, `${appPort}.cmux.local`].flatMap((h) => ['--ServerApp.local_hostnames', h]),
      ],
      { cwd: dir, env: { JUPYTER_CONFIG_DIR: join(dir, 'config'), JUPYTER_DATA_DIR: join(dir, 'data'), JUPYTER_RUNTIME_DIR: join(dir, 'runtime'), IPYTHONDIR: join(dir, 'ipython') }, readyUrl: `http://127.0.0.1:${appPort}/api` },
    );
    px = await startProxyProcess({ tls: makeCert(dir, [`*.${appPort}.localhost`, `${appPort}.cmux.local`]) });
    browser = await launchChromium();
  });

  after(async () => {
    await closeAll('apps-jupyter', [
      ['browser', () => browser?.close()],
      ['proxy', () => px?.stop()],
      ['jupyter', () => app?.stop()],
    ]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const [i, shape] of browserRoutes('jupyter', 0, 0).entries()) {
    it(`${shape.name}: runs 1+1 -> 2 on a kernel, restarts it, runs it again`, { timeout: 120_000 }, async (t) => {
      if (missing) {
        t.skip(`${missing}: run \`bash scripts/install-test-deps.sh\``);
        return;
      }
      const route = browserRoutes('jupyter', appPort, px.port)[i];
      const logs = [];
      const { context, page } = await openPage(browser, route, logs);
      try {
        const before = await px.stats();
        const response = await page.goto(`${route.origin}/?token=${TOKEN}`, { waitUntil: 'load' });
        assert.equal(response?.status(), 200, `GET ${route.origin}/`);
        assert.equal(await page.title(), 'Jupyter Server');
        const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol);
        assert.equal(protocol, route.protocol);
        const wsOrigin = route.origin.replace(/^http/, 'ws');
        const result = await page.evaluate(useKernel, { token: TOKEN, wsOrigin }).catch((err) => {
          assert.fail(`${route.name}: ${err.message}\n${logs.join('\n')}\njupyter:\n${app.output()}`);
        });
        assert.deepEqual(result.first, { result: { data: { 'text/plain': '2' }, metadata: {}, execution_count: 1 }, error: undefined, status: 'ok' });
        assert.deepEqual(result.second, result.first, 'after the restart the count starts again at 1');
        const after = await px.stats();
        if (route.protocol === 'h2') {
          assert.ok(after.websocketsExtendedConnectTotal > before.websocketsExtendedConnectTotal, 'kernel WebSocket over RFC 8441');
        } else {
          assert.ok(after.websocketsUpgradeTotal > before.websocketsUpgradeTotal, 'kernel WebSocket as an HTTP/1.1 Upgrade');
        }
      } finally {
        await context.close();
      }
    });
  }

  it('refuses a Host that local_hostnames does not name, through the proxy as direct', async (t) => {
    if (missing) {
      t.skip(`${missing}: run \`bash scripts/install-test-deps.sh\``);
      return;
    }
    const host = `port-${appPort}-abc.cmux.sh`;
    assert.equal(await getStatus(`http://127.0.0.1:${px.port}/api`, { host }), 403);
    assert.equal(await getStatus(`http://127.0.0.1:${appPort}/api`, { host }), 403);
    assert.equal(await getStatus(`http://127.0.0.1:${px.port}/api`, { host: `${appPort}.cmux.local` }), 200);
  });
});
