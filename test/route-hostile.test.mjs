// Hostile routing input: routing headers given twice, ports that are not plain decimal digits,
// non-ASCII workspace names, over-long workspace names, and more distinct targets than memory
// allows. Every attack is written as the bytes a client sends (raw TCP for HTTP/1.1, raw frames
// for HTTP/2).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { startProxy, rawRequest, startRawServer } from './helpers/servers.mjs';
import { H2RawClient, headersFrame, encodeHeaders } from './helpers/h2-raw.mjs';
import { internedTargetCount, pinnedTcpTarget, tcpTarget } from '../dist/route/target.js';

/** An upstream that says which address it was reached on and what Host it got. */
async function namedUpstream(name, host, port = 0) {
  const seen = [];
  const server = http.createServer((req, res) => {
    seen.push({ url: req.url, host: req.headers.host });
    res.setHeader('x-upstream', name);
    res.end(name);
  });
  server.listen(port, host);
  await once(server, 'listening');
  return { name, seen, port: server.address().port, close: () => new Promise((r) => (server.closeAllConnections(), server.close(r))) };
}

/** True once `text` holds a whole response head and, when it has a Content-Length, its body. */
function responseComplete(text) {
  const end = text.indexOf('\r\n\r\n');
  if (end === -1) return false;
  const m = /\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end));
  return m === null || text.length >= end + 4 + Number(m[1]);
}

/** Sends raw HTTP/1.1 bytes (a latin1 string or a Buffer); resolves { status, body, text }. */
async function rawH1(port, bytes) {
  const text = await rawRequest(port, typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes, { until: responseComplete, timeoutMs: 5000 });
  const end = text.indexOf('\r\n\r\n');
  return { status: Number(text.slice(9, 12)), body: end === -1 ? '' : text.slice(end + 4), text };
}

/** A literal header field (no indexing, new name) whose value is the given bytes, as HPACK writes it. */
function literalField(name, valueBytes) {
  assert.ok(name.length < 127 && valueBytes.length < 127);
  return Buffer.concat([Buffer.from([0, name.length]), Buffer.from(name, 'latin1'), Buffer.from([valueBytes.length]), valueBytes]);
}

/** One HTTP/2 request from a raw header block; resolves the stream outcome. */
async function rawH2(port, block, streamId = 1) {
  const c = await H2RawClient.connect(port);
  try {
    c.send(headersFrame(streamId, block, { endStream: true }));
    return await c.streamOutcome(streamId, { timeoutMs: 5000 });
  } finally {
    c.close();
  }
}

const utf8Latin1 = (text) => Buffer.from(text, 'utf8').toString('latin1');

describe('interned routing targets are bounded', () => {
  it('120,000 distinct addresses leave at most 8,192 interned; pinned and hot targets keep their identity', () => {
    const pinned = pinnedTcpTarget('127.0.0.1', 1);
    const hot = tcpTarget('127.18.9.9', 9999);
    for (let i = 0; i < 120_000; i++) {
      tcpTarget(`127.18.${(i >> 8) & 255}.${i & 255}`, 20_000 + (i >> 16));
      if (i % 1000 === 0) assert.equal(tcpTarget('127.18.9.9', 9999), hot, 'a target in use every generation is the same object');
    }
    assert.ok(internedTargetCount() <= 8192, `${internedTargetCount()} targets interned`);
    assert.equal(tcpTarget('127.0.0.1', 1), pinned, 'the pinned (fallback) target is still the object routing returns');
    const again = tcpTarget('127.18.0.0', 20_000);
    assert.equal(again.key, '127.18.0.0:20000', 'an evicted address gets an equal target (same pool key)');
    assert.equal(tcpTarget('::1', 80).key, '[::1]:80');
  });
});

/** Runs route-memory-child.mjs with a 40 MiB heap; resolves its report (asserts it exited cleanly). */
async function memoryChild(phase) {
  const child = fork(fileURLToPath(new URL('./helpers/route-memory-child.mjs', import.meta.url)), [phase], {
    execArgv: ['--max-old-space-size=40', '--expose-gc'],
    stdio: ['ignore', 'inherit', 'pipe', 'ipc'],
  });
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  let report = null;
  child.on('message', (m) => (report = m));
  const [code, signal] = await once(child, 'exit');
  assert.ok(report !== null, `the child died without a report (exit ${code}, ${signal}): ${stderr.slice(-2000)}`);
  assert.equal(code, 0, stderr.slice(-2000));
  return report;
}

const MiB = 1024 * 1024;

describe('memory stays bounded under hostile routing (child process, 40 MiB heap)', () => {
  it('120,000 distinct (workspace, port) targets: the interned targets stay bounded, proxy serving', { timeout: 60_000 }, async () => {
    const report = await memoryChild('targets');
    assert.ok(report.growth < 6 * MiB, `120,000 targets kept ${(report.growth / MiB).toFixed(1)} MiB of heap`);
    assert.deepEqual(report.statuses, { 502: report.requests }, 'each new target through the proxy: 502 ECONNREFUSED');
    assert.equal(report.finalStatus, 200, 'the proxy still serves');
  });
});
