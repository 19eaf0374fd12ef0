// Shared parts of the real-app tests (test/apps-*.test.mjs) and their benchmark
// (bench/apps/run.mjs): the proxy in a child process, dev servers as child processes in their own
// process group, headless Chromium (Debian's, driven by playwright-core), and the ways a browser
// reaches an app through the proxy.
//
// The proxy runs in a child process for the reason given in test/browser.test.mjs
// (playwright-core's AsyncLocalStorage in this process).
import { execFileSync, fork, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const CHROMIUM = '/usr/bin/chromium';
export const HAVE_CHROMIUM = existsSync(CHROMIUM);
export const REPO = fileURLToPath(new URL('../..', import.meta.url));
const GEN = join(REPO, 'scripts/gen-dev-cert.sh');

// As in test/browser.test.mjs; the resolver rule sends the cmux Host shapes to loopback
// (Chromium resolves *.localhost to loopback by itself).
export const CHROMIUM_ARGS = [
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
  '--host-resolver-rules=MAP *.cmux.local 127.0.0.1, MAP *.cmux.sh 127.0.0.1',
];

/** Rejects after `ms` with `what` in the message; clears its timer either way. */
export async function bounded(promise, ms, what) {
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

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A TCP port free on 127.0.0.1 right now (for servers that cannot listen on port 0). */
export async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  await new Promise((r) => server.close(() => r()));
  return port;
}

/** A certificate for localhost, *.localhost and `names` (gen-dev-cert.sh); returns proxy `tls`. */
export function makeCert(dir, names) {
  execFileSync('bash', [GEN, '--out', join(dir, 'certs'), '--name', 'apps', ...names], { stdio: 'ignore', timeout: 30_000 });
  return { certFile: join(dir, 'certs', 'apps.pem'), keyFile: join(dir, 'certs', 'apps-key.pem') };
}

/**
 * Starts test/helpers/proxy-child.mjs with `options`; resolves { port, stats(), stop(), exited }.
 * stats() rejects if the child has died (with its exit code in the message).
 */
export async function startProxyProcess(options) {
  const child = fork(join(REPO, 'test/helpers/proxy-child.mjs'), [JSON.stringify(options)], {
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
    child.on('message', (msg) => msg?.type === 'ready' && resolve(msg));
    exited.then(() => reject(new Error(`proxy process exited before listening (${JSON.stringify(exit)})`)));
  });
  const msg = await bounded(ready, 15_000, 'proxy process start').catch((err) => {
    child.kill('SIGKILL');
    throw err;
  });
  return {
    port: msg.port,
    extra: msg.extra,
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

/**
 * Spawns a dev server in a process group of its own (so its workers go with it); resolves once
 * GET `readyUrl` answers (any status below 500), bounded by `timeoutMs`. Returns
 * { child, output(), stop() }; output() is its recent stdout+stderr, for failure messages.
 */
export async function startDevServer(command, args, { cwd, env, readyUrl, readyHeaders = {}, timeoutMs = 60_000 }) {
  const child = spawn(command, args, {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let out = '';
  const keep = (chunk) => {
    out = (out + chunk).slice(-8000);
  };
  child.stdout.setEncoding('utf8').on('data', keep);
  child.stderr.setEncoding('utf8').on('data', keep);
  let exit = null;
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve((exit = { code, signal }))));
  const server = {
    child,
    output: () => out,
    async stop() {
      if (exit) return;
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {
        return;
      }
      await bounded(exited, 10_000, `${command} stop`).catch(() => {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // gone already
        }
      });
    },
  };
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exit) throw new Error(`${command} exited (${JSON.stringify(exit)}) before answering ${readyUrl}:\n${out}`);
    const status = await getStatus(readyUrl, readyHeaders).catch(() => 0);
    if (status > 0 && status < 500) return server;
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error(`${command} did not answer ${readyUrl} within ${timeoutMs} ms:\n${out}`);
    }
    await sleep(200);
  }
}

/** GET url (http only) with `headers`; resolves the status code. */
export function getStatus(url, headers = {}, timeoutMs = 30_000) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers, agent: false, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/**
 * The ways a browser reaches app `name` on `appPort` through the proxy on `proxyPort`:
 * TLS with HTTP/2 and cleartext HTTP/1.1 on the Host route `<name>.<appPort>.localhost`, the
 * header route (`X-Cmux-Port-Internal`, set by the browser on every request, WebSocket handshakes
 * included), and the cmux Host shape `<appPort>.cmux.local` (optional: it needs the app's host
 * check to allow it).
 */
export function browserRoutes(name, appPort, proxyPort, { cmux = true } = {}) {
  const routes = [
    { name: `TLS h2, Host ${name}.<port>.localhost`, origin: `https://${name}.${appPort}.localhost:${proxyPort}`, protocol: 'h2', headers: {} },
    { name: `cleartext HTTP/1.1, Host ${name}.<port>.localhost`, origin: `http://${name}.${appPort}.localhost:${proxyPort}`, protocol: 'http/1.1', headers: {} },
    {
      name: 'cleartext HTTP/1.1, header route X-Cmux-Port-Internal',
      origin: `http://localhost:${proxyPort}`,
      protocol: 'http/1.1',
      headers: { 'X-Cmux-Port-Internal': String(appPort) },
    },
  ];
  if (cmux) {
    routes.push({ name: 'TLS h2, Host <port>.cmux.local', origin: `https://${appPort}.cmux.local:${proxyPort}`, protocol: 'h2', headers: {} });
  }
  return routes;
}

/** Launches Debian's Chromium through playwright-core (imported lazily: see the module comment). */
export async function launchChromium() {
  const { chromium } = await import('playwright-core');
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
}

/** A fresh context (own cookies and cache) for `route`, with its headers; logs page trouble. */
export async function openPage(browser, route, logs) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, extraHTTPHeaders: route.headers });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on('console', (m) => logs.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => logs.push(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400) logs.push(`response ${r.status()}: ${r.url()}`);
  });
  return { context, page };
}

/** Closes steps in order, each bounded and independent; logs what failed. */
export async function closeAll(tag, steps) {
  for (const [what, step] of steps) {
    try {
      await bounded(Promise.resolve().then(step), 15_000, `closing the ${what}`);
    } catch (err) {
      console.error(`${tag}: ${err.message}`);
    }
  }
}
