// Run by route-hostile.test.mjs with `--max-old-space-size=40 --expose-gc`: the proxy and its
// clients in one small heap. argv[2] is the phase:
//   targets: routes 120,000 distinct (workspace, port) targets (most through the routing
//            function the proxy uses, 200 through the proxy itself);
//   names:   sends 4,096 requests with distinct 15 KB workspace names through the proxy;
// then measures the heap kept and checks the proxy still serves. Reports over IPC:
// { growth, statuses, requests, finalStatus }.
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { route } from '../../dist/route/router.js';
import { startProxy, startUpstream } from './servers.mjs';

/** A port nothing listens on (bound then closed; a 0.0.0.0 listener would have made the bind fail). */
async function deadPort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

function keptHeap() {
  for (let i = 0; i < 4; i++) globalThis.gc();
  return process.memoryUsage().heapUsed;
}

function get(agent, port, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/', agent, headers }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.setTimeout(10_000, () => req.destroy(new Error('client timeout')));
    req.on('error', reject);
    req.end();
  });
}

function count(statuses) {
  const out = {};
  for (const s of statuses) out[s] = (out[s] ?? 0) + 1;
  return out;
}

/** Runs `task(i)` for i in [0, n) with `width` in flight. */
async function inParallel(n, width, task) {
  const results = new Array(n);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < n) {
        const i = next++;
        results[i] = await task(i);
      }
    }),
  );
  return results;
}

const upstream = await startUpstream((req, res) => res.end('ok'));
const { proxy, port } = await startProxy();
const dead = await deadPort();
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
const config = { headerRoutingEnabled: true, workspaceIsolation: true };

const phase = process.argv[2];
const base = keptHeap();
let statuses;
if (phase === 'targets') {
  // 1,000 workspaces x 120 ports: 120,000 distinct targets.
  const TARGETS = 120_000;
  const THROUGH_PROXY = 200;
  for (let i = 0; i < TARGETS - THROUGH_PROXY; i++) {
    const input = { portHeader: String(20_000 + Math.floor(i / 1000)), workspaceHeader: `ws-${i % 1000}`, host: undefined, repeated: 0 };
    const r = route(config, input, false);
    if (r === null || typeof r.key !== 'string') throw new Error(`no target for ${i}`);
  }
  statuses = await inParallel(THROUGH_PROXY, 8, (i) => get(agent, port, { 'x-cmux-port-internal': String(dead), 'x-cmux-workspace-internal': `ws-${5000 + i}` }));
} else {
  const LONG = 'x'.repeat(15_000);
  statuses = await inParallel(4096, 8, (i) => get(agent, port, { 'x-cmux-port-internal': String(dead), 'x-cmux-workspace-internal': `${i}-${LONG}` }));
}
const growth = keptHeap() - base;
const finalStatus = await get(agent, port, { 'x-cmux-port-internal': String(upstream.port) });
agent.destroy();
process.send({ growth, statuses: count(statuses), requests: statuses.length, finalStatus }, async () => {
  await proxy.stop();
  await upstream.close();
  process.exit(0);
});
