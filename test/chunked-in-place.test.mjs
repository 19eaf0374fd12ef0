// Chunked request bodies read into reused buffers are scanned in place (src/h1/chunked.ts): short
// chunks are moved down over the framing before them and the data goes upstream as slices of the
// read. Every read here is long enough to be lent (8 KiB and more) and they end at every kind of
// place: inside size lines and their CRLF, inside extensions, inside 1-byte chunks moved down,
// inside 300 KiB chunks, in the trailers, with a pipelined request right after the last chunk.
// A recording upstream checks every byte it gets (the proxy's framing, the data, the trailers)
// and that the request after the body starts with its own bytes; an h2c upstream checks the data
// and trailers. A client resetting mid-body and an h2c upstream resetting the stream while slices
// of a read are still queued never leave a buffer that is read into while a write holds it.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { once } from 'node:events';
import { readResponses, startProxy, startRawServer, sleep, writePieces } from './helpers/servers.mjs';
import { assertNoBufferHeld, positionCoded } from './helpers/lent-buffers.mjs';
import { FREE_MAX, readBufferCounts } from '../dist/upstream/read-buffers.js';
import { rng as seededRng } from './helpers/fuzz-core.mjs';

const KiB = 1024;

/** The suite's seeded generator (mulberry32), as a bare function. */
const rng = (seed) => seededRng(seed).next;

/**
 * A chunked body of `count` chunks mixing 1-byte chunks (some with extensions), short ones, ones
 * of exactly 16 KiB +-1 (the in-place piece bound) and 300 KiB ones, the data position-coded by
 * `seed`; then `0`, a trailer and the final CRLF. Returns the framing bytes, the data, and the
 * offsets of the places reads should end at (inside size lines, CRLFs, extensions, data).
 */
function mixedBody(seed, count) {
  const random = rng(seed);
  const sizes = [];
  for (let i = 0; i < count; i++) {
    const r = random();
    sizes.push(r < 0.55 ? 1 : r < 0.75 ? 1 + Math.floor(random() * 40) : r < 0.85 ? 16 * KiB - 1 + Math.floor(random() * 3) : r < 0.93 ? 300 * KiB : 1 + Math.floor(random() * 20000));
  }
  const total = sizes.reduce((a, b) => a + b, 0);
  const data = positionCoded(seed, 0, total);
  const parts = [];
  const marks = [];
  let at = 0;
  let length = 0;
  const push = (buf) => {
    parts.push(buf);
    length += buf.length;
  };
  for (let i = 0; i < sizes.length; i++) {
    const size = sizes[i];
    const ext = i % 5 === 2 ? ';a=b' : i % 7 === 3 ? ';q="x \\" y"' : '';
    const line = Buffer.from(`${i % 3 === 0 ? '0' : ''}${size.toString(16)}${ext}\r\n`, 'latin1');
    marks.push(length + 1, length + line.length - 1, length + line.length);
    if (ext !== '') marks.push(length + line.length - 3);
    push(line);
    marks.push(length + (size >> 1), length + size - 1, length + size, length + size + 1);
    push(data.subarray(at, at + size));
    push(Buffer.from('\r\n', 'latin1'));
    at += size;
  }
  const last = Buffer.from('0;end=1\r\nX-Trail: yes\r\nX-Two: 2\r\n\r\n', 'latin1');
  marks.push(length + 1, length + 3, length + 12, length + last.length - 1);
  push(last);
  return { framing: Buffer.concat(parts), data, marks };
}

/**
 * Cuts `bytes` into pieces written one at a time: each at least `min` bytes (so the proxy's read
 * of it is lent), most ending at one of `marks`.
 */
function cutAtMarks(bytes, marks, random, min) {
  const sorted = [...new Set(marks)].filter((m) => m > 0 && m < bytes.length).sort((a, b) => a - b);
  const pieces = [];
  let from = 0;
  let k = 0;
  while (from < bytes.length) {
    const want = from + min + Math.floor(random() * 64 * KiB);
    while (k < sorted.length && sorted[k] < want) k++;
    const to = k < sorted.length && random() < 0.8 ? sorted[k] : Math.min(bytes.length, want);
    pieces.push(bytes.subarray(from, to));
    from = to;
  }
  return pieces;
}

/** Parses a chunked body exactly (strict framing, lower-case hex, no extensions): data, trailers, what follows. */
function parseStrictChunked(buf) {
  const data = [];
  let at = 0;
  for (;;) {
    const eol = buf.indexOf('\r\n', at, 'latin1');
    if (eol === -1) return null;
    const line = buf.toString('latin1', at, eol);
    assert.match(line, /^[0-9a-f]+$/, `the proxy's own size line, got ${JSON.stringify(line)}`);
    const size = parseInt(line, 16);
    at = eol + 2;
    if (size === 0) break;
    if (buf.length < at + size + 2) return null;
    data.push(buf.subarray(at, at + size));
    assert.equal(buf.toString('latin1', at + size, at + size + 2), '\r\n', 'CRLF after chunk data');
    at += size + 2;
  }
  const end = buf.indexOf('\r\n\r\n', at - 2, 'latin1');
  if (end === -1) return null;
  const trailers = buf.toString('latin1', at, end + 2).split('\r\n').filter((l) => l !== '');
  return { data: Buffer.concat(data), trailers, rest: buf.subarray(end + 4) };
}

/** An HTTP/1.1 upstream recording each request's exact bytes (one request per connection). */
async function startRecordingUpstream() {
  const requests = [];
  const raw = await startRawServer((socket) => {
    const rec = { bytes: [], length: 0, head: '', body: null, closed: false };
    requests.push(rec);
    socket.on('close', () => (rec.closed = true));
    socket.on('data', (chunk) => {
      rec.bytes.push(chunk);
      rec.length += chunk.length;
      if (rec.body !== null) return;
      // (Parsed once a read ends like a head or a chunked body: not for every read of a long body.)
      if (rec.head !== '' && !chunk.toString('latin1', chunk.length - 4).endsWith('\r\n\r\n')) return;
      const all = Buffer.concat(rec.bytes);
      const headEnd = all.indexOf('\r\n\r\n', 0, 'latin1');
      if (headEnd === -1) return;
      rec.head = all.toString('latin1', 0, headEnd);
      if (!/\r\ntransfer-encoding: chunked/i.test(rec.head)) {
        rec.body = { data: Buffer.alloc(0), trailers: [], rest: all.subarray(headEnd + 4) };
        socket.end(`HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok`);
        return;
      }
      const parsed = parseStrictChunked(all.subarray(headEnd + 4));
      if (parsed === null) return;
      rec.body = parsed;
      const answer = String(parsed.data.length);
      socket.end(`HTTP/1.1 200 OK\r\ncontent-length: ${answer.length}\r\nconnection: close\r\n\r\n${answer}`);
    });
  });
  return { ...raw, requests };
}

/** The responses on `socket` until `count` came or it closed. */
const responses = (socket, count) => readResponses(socket, count, { partial: true });

function firstDifference(got, want) {
  const n = Math.min(got.length, want.length);
  for (let i = 0; i < n; i++) if (got[i] !== want[i]) return i;
  return got.length === want.length ? -1 : n;
}

describe('chunked uploads scanned in place (reads of 8 KiB and more ending anywhere in the framing)', { timeout: 180_000 }, () => {
  let rec;
  let h2up;
  const h2seen = [];
  let px;
  let h2px;
  before(async () => {
    rec = await startRecordingUpstream();
    h2up = http2.createServer();
    h2up.on('stream', (stream, headers) => {
      const got = { path: headers[':path'], chunks: [], trailers: null, ended: false, closed: false };
      h2seen.push(got);
      stream.on('error', () => {});
      stream.on('trailers', (t) => (got.trailers = t));
      stream.on('data', (c) => got.chunks.push(c));
      stream.on('close', () => (got.closed = true));
      stream.on('end', () => {
        got.ended = true;
        if (stream.destroyed) return;
        const answer = String(got.chunks.reduce((n, c) => n + c.length, 0));
        stream.respond({ ':status': 200, 'content-length': answer.length });
        stream.end(answer);
      });
    });
    h2up.listen(0, '127.0.0.1');
    await once(h2up, 'listening');
    px = await startProxy();
    h2px = await startProxy({ upstreamProtocol: 'h2c' });
  });
  after(async () => {
    await px.proxy.stop();
    await h2px.proxy.stop();
    await rec.close();
    await new Promise((r) => h2up.close(r));
  });

  for (const seed of [11, 12, 13]) {
    it(`HTTP/1.1 upstream, seed ${seed}: every byte upstream is the proxy's framing or the client's data; the trailers, then the pipelined request's own bytes`, async () => {
      const { framing, data, marks } = mixedBody(seed, 400);
      const headers = `Host: app.test\r\nX-Cmux-Port-Internal: ${rec.port}\r\n`;
      const head = Buffer.from(`POST /in-place/${seed} HTTP/1.1\r\n${headers}Transfer-Encoding: chunked\r\n\r\n`, 'latin1');
      const after = Buffer.from(`GET /after/${seed} HTTP/1.1\r\n${headers}\r\nPOST /tail/${seed} HTTP/1.1\r\n${headers}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n1\r\nT\r\n0\r\n\r\n`, 'latin1');
      // The pipelined requests go in the same write as the body's last bytes.
      const bytes = Buffer.concat([framing, after]);
      const pieces = cutAtMarks(bytes, marks, rng(seed * 31), 8 * KiB);
      const seen = rec.requests.length;
      const socket = net.connect(px.port, '127.0.0.1');
      await once(socket, 'connect');
      const answers = responses(socket, 3);
      socket.write(head);
      await sleep(5);
      await writePieces(socket, pieces);
      const got = await answers;
      assert.deepEqual(got.map((a) => a.status), [200, 200, 200]);
      assert.deepEqual(got.map((a) => a.body), [String(data.length), 'ok', '1']);
      const [upload, get, tail] = rec.requests.slice(seen);
      assert.equal(firstDifference(upload.body.data, data), -1, `the data (${upload.body.data.length} of ${data.length} bytes)`);
      assert.deepEqual(upload.body.trailers, ['X-Trail: yes', 'X-Two: 2']);
      assert.equal(upload.body.rest.length, 0, 'nothing after the body on its connection');
      assert.match(get.head, new RegExp(`^GET /after/${seed} HTTP/1.1\r\n`), 'the next request starts with its own bytes');
      assert.equal(get.body.rest.length, 0);
      assert.match(tail.head, new RegExp(`^POST /tail/${seed} HTTP/1.1\r\n`));
      assert.equal(tail.body.data.toString('latin1'), 'T');
      socket.destroy();
    });
  }

  for (const seed of [21, 22]) {
    it(`h2c upstream, seed ${seed}: the exact data and the trailers; the pipelined request after it is served`, async () => {
      const { framing, data, marks } = mixedBody(seed, 400);
      const headers = `Host: app.test\r\nX-Cmux-Port-Internal: ${h2up.address().port}\r\n`;
      const head = Buffer.from(`POST /in-place/${seed} HTTP/1.1\r\n${headers}Transfer-Encoding: chunked\r\n\r\n`, 'latin1');
      const after = Buffer.from(`POST /next/${seed} HTTP/1.1\r\n${headers}Content-Length: 5\r\n\r\nhello`, 'latin1');
      const pieces = cutAtMarks(Buffer.concat([framing, after]), marks, rng(seed * 31), 8 * KiB);
      const socket = net.connect(h2px.port, '127.0.0.1');
      await once(socket, 'connect');
      const answers = responses(socket, 2);
      socket.write(head);
      await sleep(5);
      await writePieces(socket, pieces);
      const got = await answers;
      assert.deepEqual(got.map((a) => [a.status, a.body]), [
        [200, String(data.length)],
        [200, '5'],
      ]);
      const upload = h2seen.find((s) => s.path === `/in-place/${seed}`);
      const body = Buffer.concat(upload.chunks);
      assert.equal(firstDifference(body, data), -1, `the data (${body.length} of ${data.length} bytes)`);
      assert.equal(upload.trailers?.['x-trail'], 'yes');
      assert.equal(upload.trailers?.['x-two'], '2');
      const next = h2seen.find((s) => s.path === `/next/${seed}`);
      assert.equal(Buffer.concat(next.chunks).toString('latin1'), 'hello');
      socket.destroy();
    });
  }

  it('a client reset mid-body with slices queued on a slow HTTP/1.1 upstream, and an h2c upstream resetting the stream with slices queued: uploads after them are exact, every buffer comes back', async (t) => {
    // A slow upstream: reads nothing for 300 ms, then everything.
    const slow = await startRawServer((socket) => {
      socket.pause();
      setTimeout(() => socket.resume(), 300);
      socket.on('data', () => {});
    });
    t.after(() => slow.close());
    // An h2c upstream resetting each stream once 200 KiB arrived (the proxy's later slices still queued).
    const resetting = http2.createServer();
    resetting.on('stream', (stream) => {
      let n = 0;
      stream.on('error', () => {});
      stream.on('data', (c) => {
        n += c.length;
        if (n >= 200 * KiB && !stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      });
    });
    resetting.listen(0, '127.0.0.1');
    await once(resetting, 'listening');
    t.after(() => resetting.close());
    for (const [proxy, port, how] of [
      [px, slow.port, 'client RST'],
      [h2px, resetting.address().port, 'upstream RST_STREAM'],
      [px, slow.port, 'client RST'],
      [h2px, resetting.address().port, 'upstream RST_STREAM'],
    ]) {
      const { framing, marks } = mixedBody(40 + port % 7, 300);
      const socket = net.connect(proxy.port, '127.0.0.1');
      socket.on('error', () => {});
      await once(socket, 'connect');
      socket.write(`POST /cut HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${port}\r\nTransfer-Encoding: chunked\r\n\r\n`);
      const pieces = cutAtMarks(framing, marks, rng(port), 8 * KiB);
      const writing = writePieces(socket, pieces.slice(0, Math.floor(pieces.length / 2)));
      if (how === 'client RST') {
        await sleep(100);
        socket.resetAndDestroy();
      }
      await writing;
      // Right behind it, on the same proxy, an upload checked byte for byte.
      const seed = 50 + readBufferCounts().created;
      const { framing: f2, data: d2, marks: m2 } = mixedBody(seed, 200);
      const useH2 = proxy === h2px;
      const target = useH2 ? h2up.address().port : rec.port;
      const c2 = net.connect(proxy.port, '127.0.0.1');
      await once(c2, 'connect');
      const answer = responses(c2, 1);
      c2.write(`POST /after-cut/${seed} HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${target}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`);
      await writePieces(c2, cutAtMarks(f2, m2, rng(seed), 8 * KiB));
      const [res] = await answer;
      assert.deepEqual([res?.status, res?.body], [200, String(d2.length)], `after the ${how}`);
      const body = useH2 ? Buffer.concat(h2seen.find((s) => s.path === `/after-cut/${seed}`).chunks) : rec.requests.find((r) => r.head.startsWith(`POST /after-cut/${seed} `)).body.data;
      assert.equal(firstDifference(body, d2), -1, `after the ${how}: the data (${body.length} of ${d2.length} bytes)`);
      socket.destroy();
      c2.destroy();
    }
    await assertNoBufferHeld('after the cut uploads', 15_000, FREE_MAX);
  });
});
