// Hash tables chained through the old generation (src/churn-set.ts, src/h2/stream-tables.ts).
// V8 leaves a replaced Set/Map table pointing at its successor; once a replaced table is in the
// old generation (a mark-compact promotes every live young object), every later table of that
// collection, and all its members reach, survives the scavenges and is promoted, so mark-compacts
// follow one another. These tests force one mark-compact in the middle of churn and measure the
// bytes the scavenges promote afterwards.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import http from 'node:http';
import http2 from 'node:http2';
import { once } from 'node:events';
import { h2request } from './helpers/servers.mjs';

const ROOT = new URL('..', import.meta.url);
/** As the CLI runs: its young-generation cap (src/gc-tuning.ts) applied from the start. */
const GC_FLAGS = ['--expose-gc'];
const REQUESTS = 30000;

/**
 * Bytes the scavenges move into the old generation between start() and promoted() (v8.GCProfiler
 * reports each collection's space sizes before and after it).
 */
const MEASURE_PROMOTION = `
import v8 from 'node:v8';
import { tuneHeapForConnections } from './dist/gc-tuning.js';
tuneHeapForConnections();
const settle = () => new Promise((resolve) => setTimeout(resolve, 50));
const oldSpace = (at) => at.heapSpaceStatistics.find((s) => s.spaceName === 'old_space').spaceUsedSize;
let profiler = null;
const start = () => {
  profiler = new v8.GCProfiler();
  profiler.start();
};
const promoted = () => {
  let bytes = 0;
  for (const s of profiler.stop().statistics) if (s.gcType === 'Scavenge') bytes += oldSpace(s.afterGC) - oldSpace(s.beforeGC);
  return bytes;
};
`;

const churn = (kind) => `
${MEASURE_PROMOTION}
import { ChurnSet } from './dist/churn-set.js';
const set = ${kind === 'churn' ? 'new ChurnSet()' : 'new Set()'};
const turn = () => {
  for (let i = 0; i < 2000; i++) {
    const member = { payload: new Array(40).fill(i), more: { i } };
    set.add(member);
    if (set.size > 10) set.delete(set[Symbol.iterator]().next().value);
  }
};
for (let i = 0; i < 50; i++) turn();
globalThis.gc();
await settle();
start();
for (let i = 0; i < 400; i++) {
  turn();
  if (i % 10 === 0) await new Promise((resolve) => setImmediate(resolve));
}
process.stdout.write(JSON.stringify({ promoted: promoted(), members: 400 * 2000, size: set.size }));
`;

function runChild(code) {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [...GC_FLAGS, '--input-type=module', '-e', code], { cwd: ROOT }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${err.message}\n${stderr}`));
      else resolve(JSON.parse(stdout));
    });
  });
}

/**
 * The proxy alone in a child process, over IPC: 'gc' forces a mark-compact and starts measuring,
 * 'promoted' answers the bytes promoted since, 'stop' stops it.
 */
const PROXY_CHILD = `
${MEASURE_PROMOTION}
import { startProxy } from './test/helpers/servers.mjs';
const { proxy, port } = await startProxy();
process.on('message', async (m) => {
  if (m === 'gc') {
    globalThis.gc();
    await settle();
    start();
    process.send({});
  } else if (m === 'promoted') process.send({ promoted: promoted() });
  else if (m === 'stop') {
    await proxy.stop();
    process.exit(0);
  }
});
process.send({ port });
`;

function ask(child, message) {
  child.send(message);
  return once(child, 'message').then(([m]) => m);
}

async function requests(session, upstreamPort, count, concurrency) {
  let next = 0;
  const headers = { ':path': '/small', 'x-cmux-port-internal': String(upstreamPort) };
  const worker = async () => {
    while (next++ < count) assert.equal((await h2request(session, headers)).status, 200);
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

describe('hash tables chained through the old generation', () => {
  it('a Set whose members come and go: after one forced collection a plain one has the scavenges promote its members, a ChurnSet does not', async () => {
    const [plain, churned] = await Promise.all([runChild(churn('plain')), runChild(churn('churn'))]);
    assert.equal(churned.size, 10);
    const plainPer = plain.promoted / plain.members;
    const churnedPer = churned.promoted / churned.members;
    console.log(`# promoted per member: plain Set ${plainPer.toFixed(0)} B, ChurnSet ${churnedPer.toFixed(0)} B`);
    assert.ok(plainPer > 100, `plain Set: ${plainPer.toFixed(0)} bytes promoted per member (the chain this test is about did not form)`);
    assert.ok(churnedPer < 20, `ChurnSet: ${churnedPer.toFixed(0)} bytes promoted per member`);
  });

  it('HTTP/2 streams through the proxy after a forced collection are not promoted (node:http2 stream tables renewed)', async (t) => {
    const upstream = http.createServer({ keepAlive: true }, (req, res) => res.end('hello world, small body'));
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    t.after(() => upstream.close());
    const upstreamPort = upstream.address().port;
    const child = spawn(process.execPath, [...GC_FLAGS, '--input-type=module', '-e', PROXY_CHILD], { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    t.after(() => child.kill());
    const [{ port }] = await once(child, 'message');
    const session = http2.connect(`http://127.0.0.1:${port}`);
    t.after(() => session.destroy());
    await requests(session, upstreamPort, 3000, 10);
    await ask(child, 'gc');
    await requests(session, upstreamPort, REQUESTS, 10);
    const { promoted } = await ask(child, 'promoted');
    session.close();
    child.send('stop');
    await once(child, 'exit');
    const perRequest = promoted / REQUESTS;
    console.log(`# promoted per request: ${perRequest.toFixed(0)} B`);
    assert.ok(perRequest < 1000, `${perRequest.toFixed(0)} bytes promoted per request over ${REQUESTS} requests after one forced collection`);
  });
});
