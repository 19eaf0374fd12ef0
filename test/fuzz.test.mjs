// A bounded, seeded fuzz run (test/helpers/fuzz-core.mjs): mutated HTTP/1.1 requests (both
// framings, header and chunk mutations, pipelining, writes split at random bytes, upgrades,
// CONNECT) and random HTTP/2 frame sequences against the proxy in a child process, with
// byte-logging upstreams that parse strictly. It asserts that the proxy stays up, that no request
// reaches an upstream that a client did not send as one whole request, that no answer goes to a
// client other than the one whose request produced it, and that the proxy's file descriptors and
// RSS come back to their baseline. `npm run fuzz -- --seconds N` runs it longer with random seeds;
// CMUX_FUZZ_SEED=<n> reruns this test with another seed.
//
// Also here: two limits no other test pins exactly — the request-head size edge and the upstream
// connect timeout.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { formatViolations, runFuzz } from './helpers/fuzz-core.mjs';
import { rawRequest, startProxy, startUpstream } from './helpers/servers.mjs';

const SEED = Number(process.env.CMUX_FUZZ_SEED ?? 20261204);
/** Fixed size of the run, and a time cap so a slow machine cannot stretch it past ~15 s. */
const CASES = 400;
const SECONDS = 6;

describe('fuzz: mutated HTTP/1.1 requests and random HTTP/2 frames', () => {
  it(`seed ${SEED}: ${CASES} cases, no violation, proxy up, fds and RSS back to baseline`, { timeout: 60_000 }, async () => {
    const result = await runFuzz({ seed: SEED, cases: CASES, seconds: SECONDS, concurrency: 8 });
    const e = result.end;
    const summary = `${result.ran} cases${e.timeCapped ? ' (time cap reached)' : ''}; fds ${e.fdBaseline} -> ${e.fdAfter}; RSS ${e.rssBaselineKiB} -> ${e.rssAfterKiB} KiB`;
    assert.ok(result.ran > 0, 'no case ran');
    assert.equal(result.violations.length, 0, `${summary}\n${formatViolations(result, { max: 15 })}`);
    assert.ok(e.served, 'a normal request is served after the run');
  });
});

describe('pinned limits', () => {
  let upstream;
  before(async () => {
    upstream = await startUpstream();
  });
  after(async () => {
    await upstream?.close();
  });

  // maxHeaderSize limits the whole head as sent: request line, fields, line ends and the blank
  // line. These tests pin that edge to the byte, in one write and split at the edge.
  const MAX = 1024;
  /** A head of exactly `size` bytes on the wire. */
  function headOfSize(port, size) {
    const base = `GET /edge HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${port}\r\nX-Pad: \r\n\r\n`;
    return base.replace('X-Pad: ', `X-Pad: ${'p'.repeat(size - base.length)}`);
  }

  async function send(port, data) {
    const before = upstream.requests.length;
    const text = await rawRequest(port, data, { timeoutMs: 2000, until: (s) => /\r\n\r\n[\s\S]*\}$|^HTTP\/1\.1 4\d\d[\s\S]*\r\n\r\n[a-z ]+$/.test(s) });
    return { status: Number(text.slice(9, 12)), text, reached: upstream.requests.length - before };
  }

  it(`maxHeaderSize ${MAX}: a head of exactly ${MAX} bytes on the wire is forwarded`, async () => {
    const { proxy, port } = await startProxy({ maxHeaderSize: MAX });
    try {
      const base = `GET /edge HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nX-Pad: \r\n\r\n`;
      const head = base.replace('X-Pad: ', `X-Pad: ${'p'.repeat(MAX - base.length)}`);
      assert.equal(head.length, MAX);
      const r = await send(port, head);
      assert.equal(r.status, 200, r.text.slice(0, 200));
      assert.equal(r.reached, 1);
    } finally {
      await proxy.stop();
    }
  });

  async function edge(split) {
    const { proxy, port } = await startProxy({ maxHeaderSize: MAX });
    try {
      const ok = headOfSize(upstream.port, MAX);
      const over = headOfSize(upstream.port, MAX + 1);
      assert.equal(over.length, ok.length + 1);
      // Split: the second write carries only the last byte of the last field value and the
      // blank line, so the limit is crossed in a read that holds no line end.
      const cut = over.indexOf('\r\n\r\n') - 1;
      const a = await send(port, split ? [ok.slice(0, cut), ok.slice(cut)] : ok);
      assert.equal(a.status, 200, a.text.slice(0, 200));
      assert.equal(a.reached, 1);
      const b = await send(port, split ? [over.slice(0, cut), over.slice(cut)] : over);
      assert.equal(b.status, 431, b.text.slice(0, 200));
      assert.match(b.text, /\r\nconnection: close\r\n/);
      assert.match(b.text, /\r\n\r\nrequest headers too large$/);
      assert.equal(b.reached, 0, 'nothing reaches the upstream');
      assert.equal(proxy.getStats().responses4xx, 1);
    } finally {
      await proxy.stop();
    }
  }

  it(`maxHeaderSize ${MAX}: a ${MAX}-byte head is forwarded, ${MAX + 1} bytes get 431 and a close`, () => edge(false));

  it(`maxHeaderSize ${MAX}: the same edge when the head arrives in two reads split at the last value byte`, () => edge(true));

  it('connect timeout: an upstream whose TCP handshake never completes -> 504 upstream timeout, counted', { timeout: 20_000 }, async () => {
    // A listener in another process with a backlog of 1 whose event loop is blocked: once its
    // accept queue is full, the kernel drops further SYNs, so a connect neither completes nor fails.
    const blocker = spawn(
      process.execPath,
      [
        '-e',
        `const s = require('node:net').createServer();
         s.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
           process.stdout.write(s.address().port + '\\n');
           setTimeout(() => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0), 50);
         });`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const fillers = [];
    let proxy;
    try {
      const blackhole = await new Promise((resolve, reject) => {
        blocker.stdout.once('data', (d) => resolve(Number(String(d).trim())));
        blocker.once('exit', (code) => reject(new Error(`blocker exited ${code}`)));
      });
      await new Promise((r) => setTimeout(r, 200));
      let full = false;
      for (let i = 0; i < 64 && !full; i++) {
        const s = net.connect(blackhole, '127.0.0.1');
        s.on('error', () => {});
        fillers.push(s);
        full = !(await new Promise((r) => {
          s.once('connect', () => r(true));
          setTimeout(() => r(false), 300);
        }));
      }
      assert.ok(full, 'the accept queue of the blocked listener filled up');
      ({ proxy } = await startProxy({ upstreamConnectTimeoutMs: 500 }));
      const t0 = Date.now();
      const text = await rawRequest(proxy.address().port, `GET /x HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${blackhole}\r\n\r\n`, {
        timeoutMs: 5000,
        until: (s) => s.includes('upstream timeout'),
      });
      const elapsed = Date.now() - t0;
      assert.match(text, /^HTTP\/1\.1 504 Gateway Timeout\r\n/, text.slice(0, 200));
      assert.match(text, /\r\n\r\nupstream timeout$/);
      assert.ok(elapsed >= 450 && elapsed < 3000, `answered after ${elapsed} ms (timeout 500 ms)`);
      const stats = proxy.getStats();
      assert.equal(stats.upstreamConnectTimeouts, 1);
      assert.equal(stats.upstreamErrors.CONNECT_TIMEOUT, 1);
      assert.equal(stats.responses5xx, 1);
    } finally {
      await proxy?.stop();
      for (const s of fillers) s.destroy();
      blocker.kill('SIGKILL');
    }
  });
});
