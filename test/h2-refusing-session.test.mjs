// An HTTP/2 client connection whose session can no longer take streams is closed with GOAWAY.
// Node refuses a new stream with RST_STREAM(ENHANCE_YOUR_CALM) when the session has no room for
// it (its memory over maxSessionMemory, or its stream count at the limit) and tells JavaScript
// nothing; a client that keeps sending requests on such a connection would see every one refused
// for as long as the streams holding that room stay open. Here the room is held by a client that
// opened no flow-control window (its responses wait in the session) under a 1 MiB session budget.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import http2 from 'node:http2';
import { resolveOptions } from '../dist/options.js';
import { proxyFor, startUpstream, sleep } from './helpers/servers.mjs';
import { ERROR, FLAG, FRAME, H2RawClient, frame, SETTING, errorName, headersFrame, pingFrame, requestHeaders, rstStreamFrame, settingsFrame, windowUpdateFrame } from './helpers/h2-raw.mjs';

const KIB = 1024;

/** A PRIORITY frame: `id` depends on `dependsOn` with `weight` (RFC 7540 §6.3). */
function priority(id, dependsOn, weight) {
  const payload = Buffer.alloc(5);
  payload.writeUInt32BE(dependsOn);
  payload[4] = weight;
  return frame(FRAME.PRIORITY, 0, id, payload);
}

/**
 * Counts the 'priority' events emitted in this process (the proxy's sessions and streams: Node
 * emits one per PRIORITY frame it hands to JavaScript), a nested emit of the same event once.
 */
function countPriorityEvents() {
  const emit = EventEmitter.prototype.emit;
  const counter = { calls: 0, stop: () => (EventEmitter.prototype.emit = emit) };
  let depth = 0;
  EventEmitter.prototype.emit = function countPriority(name, ...args) {
    if (name !== 'priority') return emit.call(this, name, ...args);
    if (depth++ === 0) counter.calls++;
    try {
      return emit.call(this, name, ...args);
    } finally {
      depth--;
    }
  };
  return counter;
}

/**
 * Sends requests to `/big` under a 1 MiB session budget with no flow-control window (so Node
 * refuses new streams once the unread responses fill it), one every 20 ms from stream `firstId`
 * on, until GOAWAY or `lastId`. Returns the GOAWAY (null if none came within 5 s) and the number
 * of refused streams.
 */
async function requestUntilRefusalsClose(c, port, firstId, lastId) {
  for (let id = firstId; id <= lastId; id += 2) {
    if (c.frames.some((f) => f.type === FRAME.GOAWAY) || c.closed) break;
    c.send(headersFrame(id, requestHeaders(port, { path: '/big' }), { endStream: true }));
    await sleep(20);
  }
  const goaway = await c.waitForGoaway({ timeoutMs: 5000 });
  const refused = c.frames.filter((f) => f.type === FRAME.RST_STREAM && f.errorCode === ERROR.ENHANCE_YOUR_CALM).length;
  return { goaway, refused };
}
const MIB = 1024 * KIB;
const BIG = 512 * KIB;

describe('HTTP/2: a session that refuses new streams is closed with GOAWAY', { timeout: 120_000 }, () => {
  let up;
  const big = Buffer.alloc(BIG, 0x62);
  before(async () => {
    up = await startUpstream((req, res) => {
      if (req.url === '/big') return res.end(big);
      if (req.url === '/slow') return setTimeout(() => res.end('slow'), 1500);
      let n = 0;
      req.on('data', (c) => (n += c.length));
      req.on('end', () => res.end(req.url === '/get' ? big : String(n)));
    });
  });
  after(async () => {
    await up.close();
  });

  it('http2MaxSessionMemoryMb: 64 by default, 1-4096', () => {
    assert.equal(resolveOptions({ listenPort: 0 }).http2MaxSessionMemoryMb, 64);
    assert.equal(resolveOptions({ listenPort: 0, http2MaxSessionMemoryMb: 1 }).http2MaxSessionMemoryMb, 1);
    assert.throws(() => resolveOptions({ listenPort: 0, http2MaxSessionMemoryMb: 0 }), /http2MaxSessionMemoryMb/);
  });

  it('session memory held by unread responses: refusals, then GOAWAY(NO_ERROR) naming the last stream served, running streams finish, the socket closes, a new connection is served', async (t) => {
    const px = await proxyFor(t, { http2MaxSessionMemoryMb: 1 });
    const c = await H2RawClient.connect(px.port, { keepData: false, settings: { [SETTING.INITIAL_WINDOW_SIZE]: 0 } });
    try {
      // One request every 20 ms, as a page would keep sending them, until the proxy says GOAWAY;
      // 60 at most, below the 100 refusals in a row after which Node destroys the session itself.
      let id = 1;
      let firstRefusal = 0;
      for (; id < 120; id += 2) {
        if (c.frames.some((f) => f.type === FRAME.GOAWAY) || c.closed) break;
        if (firstRefusal === 0 && c.frames.some((f) => f.type === FRAME.RST_STREAM && f.errorCode === ERROR.ENHANCE_YOUR_CALM)) firstRefusal = Date.now();
        c.send(headersFrame(id, requestHeaders(up.port, { path: '/big' }), { endStream: true }));
        await sleep(20);
      }
      const goaway = await c.waitForGoaway({ timeoutMs: 10_000 });
      assert.ok(firstRefusal > 0 || c.frames.some((f) => f.type === FRAME.RST_STREAM && f.errorCode === ERROR.ENHANCE_YOUR_CALM), 'Node refused streams (RST_STREAM(ENHANCE_YOUR_CALM))');
      assert.ok(goaway, `GOAWAY after the refusals (${id >> 1} streams sent, ${c.frames.filter((f) => f.type === FRAME.RST_STREAM).length} refused)`);
      assert.equal(errorName(goaway.errorCode), 'NO_ERROR');
      const served = [...new Set(c.frames.filter((f) => f.type === FRAME.HEADERS).map((f) => f.streamId))].sort((a, b) => a - b);
      assert.ok(served.length > 0, 'some streams were served before the session ran out of room');
      assert.equal(goaway.lastStreamId, served.at(-1), 'last-stream-id names the last stream the proxy served');
      const refused = c.frames.filter((f) => f.type === FRAME.RST_STREAM).map((f) => f.streamId);
      assert.ok(refused.every((s) => s > goaway.lastStreamId), `only streams above last-stream-id were refused (${refused})`);
      assert.ok(refused.length <= 40, `closed after a few refusals, not after Node's own limit of 100 (${refused.length})`);

      // The client now reads: the running streams finish, then the connection closes.
      c.send(settingsFrame({ [SETTING.INITIAL_WINDOW_SIZE]: 16 * MIB }), windowUpdateFrame(0, 256 * MIB));
      assert.equal(await c.waitForClose({ timeoutMs: 15_000 }), true, 'the proxy closed the connection');
      for (const s of served) {
        const data = c.frames.filter((f) => f.streamId === s && f.type === FRAME.DATA);
        const bytes = data.reduce((n, f) => n + f.length, 0);
        assert.ok(bytes === BIG && data.some((f) => f.flags & FLAG.END_STREAM), `stream ${s} finished: ${bytes} of ${BIG} bytes`);
      }
      assert.equal(px.proxy.getStats().http2RefusingSessionsClosed, 1);

      const again = await H2RawClient.connect(px.port);
      try {
        again.send(headersFrame(1, requestHeaders(up.port, { path: '/small', method: 'GET' }), { endStream: true }));
        const out = await again.streamOutcome(1, { timeoutMs: 5000 });
        assert.equal(out.status, 200, 'a new connection is served');
      } finally {
        again.close();
      }
    } finally {
      c.close();
    }
  });

  it('streams the client resets in the same write as their HEADERS are not refusals: no GOAWAY, the next request is served', async (t) => {
    const px = await proxyFor(t);
    const c = await H2RawClient.connect(px.port, { keepData: false });
    try {
      // One running stream, so the session is looked at while it has streams open.
      c.send(headersFrame(1, requestHeaders(up.port, { path: '/slow' }), { endStream: true }));
      const pairs = [];
      for (let id = 3; id <= 41; id += 2) pairs.push(headersFrame(id, requestHeaders(up.port, { path: '/gone' }), { endStream: true }), rstStreamFrame(id, ERROR.CANCEL));
      c.send(Buffer.concat(pairs));
      await sleep(700); // a few looks of the proxy's session probe
      c.send(headersFrame(43, requestHeaders(up.port, { path: '/small' }), { endStream: true }));
      const next = await c.streamOutcome(43, { timeoutMs: 5000 });
      assert.equal(next.goaway, null, `no GOAWAY (got ${next.goaway && errorName(next.goaway.errorCode)})`);
      assert.equal(next.status, 200);
      const slow = await c.streamOutcome(1, { timeoutMs: 5000 });
      assert.equal(slow.status, 200);
      assert.equal(px.proxy.getStats().http2RefusingSessionsClosed, 0);
    } finally {
      c.close();
    }
  });

  it('idle streams opened by PRIORITY frames (an RFC 7540 dependency tree, as nghttp sends) are not refusals: no GOAWAY, every request is served', async (t) => {
    const px = await proxyFor(t);
    const c = await H2RawClient.connect(px.port, { keepData: false });
    try {
      // nghttp's anchors: PRIORITY on idle streams 3, 5, 7, 9 and 11, then requests from 13 on
      c.send(Buffer.concat([priority(3, 0, 200), priority(5, 0, 100), priority(7, 0, 0), priority(9, 7, 0), priority(11, 3, 0)]));
      for (let id = 13; id <= 21; id += 2) {
        c.send(headersFrame(id, requestHeaders(up.port, { path: '/small' }), { endStream: true }));
        const out = await c.streamOutcome(id, { timeoutMs: 5000 });
        assert.equal(out.goaway, null, `stream ${id}: no GOAWAY (got ${out.goaway && errorName(out.goaway.errorCode)})`);
        assert.equal(out.status, 200, `stream ${id}`);
        await sleep(300); // the proxy's session probe looks at least once in between
      }
      assert.equal(px.proxy.getStats().http2RefusingSessionsClosed, 0);
    } finally {
      c.close();
    }
  });

  it('a PRIORITY frame for a far idle stream (id 2^31-1) does not hide the refusals that follow: GOAWAY as without it', async (t) => {
    const px = await proxyFor(t, { http2MaxSessionMemoryMb: 1 });
    const c = await H2RawClient.connect(px.port, { keepData: false, settings: { [SETTING.INITIAL_WINDOW_SIZE]: 0 } });
    try {
      c.send(priority(0x7fffffff, 0, 16));
      // (61 requests at most: below the 100 refusals after which Node destroys the session itself.)
      const { goaway, refused } = await requestUntilRefusalsClose(c, up.port, 1, 121);
      assert.ok(refused > 0, 'Node refused streams (RST_STREAM(ENHANCE_YOUR_CALM))');
      assert.ok(goaway, `GOAWAY after ${refused} refusals`);
      assert.equal(errorName(goaway.errorCode), 'NO_ERROR');
      assert.equal(px.proxy.getStats().http2RefusingSessionsClosed, 1);
    } finally {
      c.close();
    }
  });

  it('PRIORITY frames (1,000 before and 1,000 after the first request, for idle, open, far and even ids) never call into JavaScript, and are no refusals', async (t) => {
    const px = await proxyFor(t);
    const c = await H2RawClient.connect(px.port, { keepData: false });
    // Node 20 calls into JavaScript for each PRIORITY frame while a 'priority' listener exists
    // (on the session or a stream), at ~5x the cost of nghttp2's own work for the frame. (1,000
    // frames at a time: Node 22 and 24 close a connection sending many more at once.)
    const counter = countPriorityEvents();
    const pinged = async (label) => {
      c.send(pingFrame(Buffer.from(label)));
      return c.waitForFrame((f) => f.type === FRAME.PING && (f.flags & FLAG.ACK) !== 0 && f.payload.toString() === label, { timeoutMs: 10_000 });
    };
    try {
      const before = [];
      for (let i = 0; i < 1000; i++) before.push(priority(i % 10 === 0 ? 0x7fffffff - 2 * i : 3 + 2 * (i % 500), i % 7 === 0 ? 1 : 0, i & 255));
      c.send(Buffer.concat(before));
      assert.ok(await pinged('before!!'), 'PING answered');
      // The first request on stream 1, below every id the frames named (it leaves them idle).
      c.send(headersFrame(1, requestHeaders(up.port, { path: '/slow' }), { endStream: true }));
      const after = [];
      for (let i = 0; i < 1000; i++) after.push(priority(i % 3 === 0 ? 1 : i % 3 === 1 ? 3 + 2 * (i % 500) : 2 + 2 * (i % 500), 0, i & 255));
      c.send(Buffer.concat(after));
      assert.ok(await pinged('after!!!'), 'PING answered');
      assert.equal(counter.calls, 0, `${counter.calls} JavaScript calls for 2,000 PRIORITY frames`);
      // The slow request runs past a few looks of the session probe: no refusals counted.
      const slow = await c.streamOutcome(1, { timeoutMs: 5000 });
      assert.equal(slow.status, 200, 'the request is served');
      assert.equal(slow.goaway, null, `no GOAWAY (got ${slow.goaway && errorName(slow.goaway.errorCode)})`);
      assert.equal(px.proxy.getStats().http2RefusingSessionsClosed, 0);
    } finally {
      counter.stop();
      c.close();
    }
  });

  it('a busy healthy connection is not closed: 32 concurrent 2 MiB uploads and 32 concurrent 512 KiB downloads, 2 rounds', async (t) => {
    const px = await proxyFor(t);
    // maxSessionMemory: the Node client's own limit would make it refuse answers itself.
    const session = http2.connect(px.url, { maxSessionMemory: 256 });
    session.on('error', () => {});
    let goaway = null;
    session.on('goaway', (code, last) => (goaway = { code, last }));
    const request = (headers, body) =>
      new Promise((resolve) => {
        const s = session.request({ 'x-cmux-port-internal': String(up.port), ...headers });
        let status;
        let bytes = 0;
        s.on('response', (h) => (status = h[':status']));
        s.on('data', (chunk) => (bytes += chunk.length));
        s.on('error', () => {});
        s.on('close', () => resolve({ status, bytes, rstCode: s.rstCode }));
        s.end(body);
      });
    try {
      const upload = Buffer.alloc(2 * MIB, 0x75);
      for (let round = 0; round < 2; round++) {
        const results = await Promise.all([
          ...Array.from({ length: 32 }, () => request({ ':method': 'POST', ':path': '/up', 'content-length': String(upload.length) }, upload)),
          ...Array.from({ length: 32 }, () => request({ ':path': '/get' })),
        ]);
        const bad = results.filter((r, i) => r.status !== 200 || r.bytes !== (i < 32 ? String(2 * MIB).length : BIG));
        assert.deepEqual(bad, [], `round ${round}: ${bad.length} of 64 failed`);
      }
      await sleep(600); // a probe or two of the proxy's sessions
      assert.equal(goaway, null, 'no GOAWAY');
      assert.equal(session.destroyed || session.closed, false);
      assert.equal(px.proxy.getStats().http2RefusingSessionsClosed, 0);
    } finally {
      session.destroy();
    }
  });
});
