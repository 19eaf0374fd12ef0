// WebSockets at scale: a bounded test opens 2,000 WebSockets at once through the proxy, echoes on
// each, closes half from each side abruptly, and checks that no socket is left open. The proxy
// runs as a child process (the real CLI), so its stats are out of reach: its open file
// descriptors (/proc/<pid>/fd) are the check, before and after, within +10.
// CMUX_TEST_WS_COUNT changes the count (default 2000).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import { once } from 'node:events';
import WebSocket, { WebSocketServer } from 'ws';
import { startCli, stopCli } from './helpers/cli.mjs';
import { waitFor, sleep } from './helpers/servers.mjs';

const COUNT = Number(process.env.CMUX_TEST_WS_COUNT ?? 2000);
const FD_SLACK = 10;

function fdCount(pid) {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

/** The fd count once it has stopped moving (two equal readings 100 ms apart). */
async function settledFdCount(pid) {
  let last = fdCount(pid);
  for (let i = 0; i < 20; i++) {
    await sleep(100);
    const now = fdCount(pid);
    if (now === last) return now;
    last = now;
  }
  return last;
}

/** Runs `fn(i)` for i in [0, n) with at most `limit` in flight; resolves with the results. */
async function pool(n, limit, fn) {
  const results = new Array(n);
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      results[i] = await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, worker));
  return results;
}

describe(`${COUNT} WebSockets through the CLI proxy (child process)`, { skip: process.platform !== 'linux' && 'needs /proc' }, () => {
  let cli;
  let server;
  let wss;
  const serverSide = new Map(); // path -> server-side ws
  const clients = [];

  before(async () => {
    assert.ok(Number.isInteger(COUNT) && COUNT >= 2 && COUNT % 2 === 0, `CMUX_TEST_WS_COUNT must be an even integer >= 2, got ${COUNT}`);
    server = http.createServer((_req, res) => res.end('upgrade required'));
    wss = new WebSocketServer({ server, perMessageDeflate: false });
    wss.on('connection', (ws, req) => {
      ws.on('error', () => {});
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
      serverSide.set(req.url, ws);
    });
    server.listen({ port: 0, host: '127.0.0.1', backlog: 8192 });
    await once(server, 'listening');
    // WebSockets hold a maxSocketsPerUpstream slot each and all go to one upstream: raising
    // --max-connections alone must be enough (the slots follow it past their 1024 default).
    cli = await startCli(['--port', '0', '--max-connections', '5000', '--log-level', 'warn']);
  });

  after(async () => {
    for (const ws of clients) ws.terminate();
    for (const ws of wss?.clients ?? []) ws.terminate();
    if (cli && cli.child.exitCode === null) await stopCli(cli.child, 'SIGKILL');
    await new Promise((r) => wss.close(() => r()));
    server.closeAllConnections();
    await new Promise((r) => server.close(() => r()));
  });

  it('opens, echoes, closes half from each side abruptly, and leaves no fd behind', { timeout: 60_000 }, async (t) => {
    const t0 = Date.now();
    const pid = cli.child.pid;
    const upstreamPort = server.address().port;
    const baseline = await settledFdCount(pid);

    // Open all of them at once (CMUX_TEST_WS_PARALLEL caps how many connect at once).
    const opened = await pool(COUNT, Number(process.env.CMUX_TEST_WS_PARALLEL ?? COUNT), (i) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${cli.port}/ws-${i}`, {
          headers: { 'X-Cmux-Port-Internal': String(upstreamPort) },
          perMessageDeflate: false,
          handshakeTimeout: 15_000,
        });
        clients.push(ws);
        ws.once('open', () => {
          ws.on('error', () => {});
          resolve(ws);
        });
        ws.once('error', (err) => reject(new Error(`ws ${i}: ${err.message}`)));
        ws.once('unexpected-response', (_req, res) => reject(new Error(`ws ${i}: unexpected response ${res.statusCode}`)));
      }),
    );
    assert.equal(opened.length, COUNT);
    assert.ok(await waitFor(() => serverSide.size === COUNT, { timeoutMs: 5000 }), `upstream saw ${serverSide.size} of ${COUNT}`);
    const tOpen = Date.now() - t0;

    // All open at once: the proxy holds a client and an upstream socket for each.
    const open = fdCount(pid);
    assert.ok(open >= baseline + 2 * COUNT, `proxy fds while open: ${open}, baseline ${baseline}`);

    // One echo on each.
    const echoes = await Promise.all(
      opened.map(
        (ws, i) =>
          new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`no echo on ws ${i}`)), 15_000);
            ws.once('message', (data) => {
              clearTimeout(timer);
              resolve(data.toString());
            });
            ws.send(`echo-${i}`);
          }),
      ),
    );
    for (let i = 0; i < COUNT; i++) assert.equal(echoes[i], `echo-${i}`);
    const tEcho = Date.now() - t0;

    // Close abruptly: even ones from the client side, odd ones from the upstream side.
    const allClosed = opened.map((ws) => (ws.readyState === WebSocket.CLOSED ? Promise.resolve() : new Promise((r) => ws.once('close', r))));
    for (let i = 0; i < COUNT; i++) {
      if (i % 2 === 0) opened[i].terminate();
      else serverSide.get(`/ws-${i}`).terminate();
    }
    let closeTimer;
    try {
      await Promise.race([
        Promise.all(allClosed),
        new Promise((_, reject) => {
          closeTimer = setTimeout(() => reject(new Error(`client sockets not all closed after 15 s: ${opened.filter((ws) => ws.readyState !== WebSocket.CLOSED).length} open`)), 15_000);
        }),
      ]);
    } finally {
      clearTimeout(closeTimer);
    }
    assert.ok(await waitFor(() => wss.clients.size === 0, { timeoutMs: 10_000 }), `upstream still has ${wss.clients.size} open`);

    // The proxy gives every socket back (no half-open tunnel left).
    let after = fdCount(pid);
    await waitFor(() => (after = fdCount(pid)) <= baseline + FD_SLACK, { timeoutMs: 10_000, stepMs: 100 });
    assert.ok(after <= baseline + FD_SLACK, `proxy fds: baseline ${baseline}, while open ${open}, after close ${after}`);
    assert.equal(cli.child.exitCode, null, 'the proxy exited');
    const total = Date.now() - t0;
    t.diagnostic(`fds: baseline ${baseline}, open ${open}, after ${after}; open ${tOpen} ms, echo ${tEcho} ms, total ${total} ms`);
    assert.ok(total < 30_000, `took ${total} ms (open ${tOpen} ms, echo ${tEcho} ms)`);
  });
});
