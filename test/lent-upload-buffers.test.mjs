// Content-Length request bodies (uploads) from plain-TCP HTTP/1.1 clients are read into reused
// buffers whose slices go to the upstream writes (src/upstream/read-buffers.ts). A slice can still
// sit in a slowly reading upstream's queue (an HTTP/1.1 socket's pending write, an h2c stream
// waiting for its window) when the client's next bytes arrive: they must never land in a buffer
// a queued slice still points into. Slow and fast clients upload position-coded bodies at once
// to slow and fast upstreams, which check every byte; a request pipelined right behind a body
// goes to the parser as before; a client that stops short of its body leaves the upstream a cut.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { once } from 'node:events';
import { proxyFor, readResponses, sleep, waitFor } from './helpers/servers.mjs';
import { FREE_MAX, ReadRing, readBufferCounts } from '../dist/upstream/read-buffers.js';
import { BodyCheck, assertNoBufferHeld, assertWhole, positionCoded } from './helpers/lent-buffers.mjs';

const KiB = 1024;
const MiB = 1024 * KiB;


/** Reads `stream` (a request or an h2 stream); a slow reader stops for `stallMs` after every `burst` bytes. */
function readBody(stream, check, slow) {
  let sinceStall = 0;
  stream.on('data', (chunk) => {
    check.add(chunk);
    if (!slow) return;
    sinceStall += chunk.length;
    if (sinceStall >= 256 * KiB) {
      sinceStall = 0;
      stream.pause();
      setTimeout(() => stream.resume(), 50);
    }
  });
}

/**
 * Upstreams checking uploads to `/up/<seed>/<size>/<fast|slow>`: an HTTP/1.1 one and an h2c one.
 * Each upload is recorded (`ended`: the body came whole; `closed`: the request is over) and
 * answered with what arrived; any other path answers `got <method> <path>`.
 */
async function startUploadUpstreams() {
  const seen = new Map();
  const record = (url) => {
    const [, , seedText, sizeText, mode] = url.split('/');
    const rec = { check: new BodyCheck(Number(seedText), Number(sizeText)), slow: mode === 'slow', ended: false, closed: false };
    seen.set(url, rec);
    return rec;
  };
  const h1 = http.createServer((req, res) => {
    if (!req.url.startsWith('/up/')) {
      res.end(`got ${req.method} ${req.url}`);
      return;
    }
    const rec = record(req.url);
    readBody(req, rec.check, rec.slow);
    req.on('end', () => {
      rec.ended = true;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(rec.check.summary()));
    });
    req.on('close', () => (rec.closed = true));
  });
  h1.keepAliveTimeout = 60_000;
  const h2 = http2.createServer();
  const h2Sessions = new Set();
  h2.on('session', (s) => {
    h2Sessions.add(s);
    s.on('close', () => h2Sessions.delete(s));
  });
  h2.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    const rec = record(headers[':path']);
    readBody(stream, rec.check, rec.slow);
    stream.on('end', () => {
      rec.ended = true;
      stream.respond({ ':status': 200, 'content-type': 'application/json' });
      stream.end(JSON.stringify(rec.check.summary()));
    });
    stream.on('close', () => (rec.closed = true));
  });
  for (const s of [h1, h2]) {
    s.listen(0, '127.0.0.1');
    await once(s, 'listening');
  }
  return {
    seen,
    h1Port: h1.address().port,
    h2Port: h2.address().port,
    async close() {
      h1.closeAllConnections();
      for (const s of h2Sessions) s.destroy();
      await Promise.all([new Promise((r) => h1.close(r)), new Promise((r) => h2.close(r))]);
    },
  };
}

/** startUploadUpstreams for test `t`, closed after it. */
async function uploadUpstreamsFor(t) {
  const up = await startUploadUpstreams();
  t.after(() => up.close());
  return up;
}

/**
 * A slow client's piece: the proxy then reads about this much at a time, lent (>= 8 KiB) and under
 * the upstream socket's 16 KiB high-water mark, so its write returns true while a slowly reading
 * upstream leaves it queued, and the next read must go to another buffer.
 */
const SLOW_PIECE = 12 * KiB;

/**
 * Writes body bytes [from, to) of `seed`: a fast writer in 1 MiB pieces as the stream takes them;
 * a slow one in SLOW_PIECE pieces with a turn of the event loop between them and a 15 ms stall
 * after every 512 KiB.
 */
async function writeBody(stream, seed, from, to, slow) {
  const piece = slow ? SLOW_PIECE : MiB;
  let sinceStall = 0;
  for (let at = from; at < to && !stream.destroyed; at += piece) {
    const n = Math.min(piece, to - at);
    const ok = stream.write(positionCoded(seed, at, n));
    if (!ok) await once(stream, 'drain');
    if (!slow) continue;
    sinceStall += n;
    if (sinceStall >= 512 * KiB) {
      sinceStall = 0;
      await sleep(15);
    } else await new Promise((r) => setImmediate(r));
  }
}

/** Uploads with node:http, written fast or slowly (see writeBody). */
function upload(port, upstreamPort, seed, size, { slowClient, slowUpstream }) {
  const path = `/up/${seed}/${size}/${slowUpstream ? 'slow' : 'fast'}`;
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path, method: 'POST', agent: false, headers: { 'content-length': size, 'x-cmux-port-internal': String(upstreamPort) } },
      (res) => {
        let body = '';
        res.setEncoding('latin1');
        res.on('data', (c) => (body += c));
        res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(body)) : reject(new Error(`status ${res.statusCode}: ${body}`))));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.setTimeout(180_000, () => req.destroy(new Error('client timeout')));
    writeBody(req, seed, 0, size, slowClient)
      .then(() => req.end())
      .catch(reject);
  });
}

/**
 * Chunk sizes of a chunked upload, cycled: pieces of their own where they lie in a read buffer
 * (16 KiB and more) between short ones moved down next to them, 1-byte ones among them, and
 * chunks longer than a read.
 */
const CHUNK_SIZES = [65536, 1, 300, 16384, 16383, 7, 100000, 4096, 16385, 1, 1, 40000, 300000, 33, 20000, 5000, 1000];

/** The chunked framing of body `seed` [0, size): CHUNK_SIZES cycled, an extension on every fifth chunk. */
function chunkedFraming(seed, size) {
  const parts = [];
  for (let at = 0, i = 0; at < size; i++) {
    const n = Math.min(CHUNK_SIZES[i % CHUNK_SIZES.length], size - at);
    parts.push(Buffer.from(`${n.toString(16)}${i % 5 === 4 ? ';x=y' : ''}\r\n`, 'latin1'), positionCoded(seed, at, n), Buffer.from('\r\n'));
    at += n;
  }
  parts.push(Buffer.from('0\r\n\r\n'));
  return Buffer.concat(parts);
}

/** Writes `bytes` as writeBody paces a body (fast: 1 MiB pieces; slow: SLOW_PIECE ones with stalls). */
async function writeBytes(stream, bytes, slow) {
  const piece = slow ? SLOW_PIECE : MiB;
  let sinceStall = 0;
  for (let at = 0; at < bytes.length && !stream.destroyed; at += piece) {
    const chunk = bytes.subarray(at, Math.min(at + piece, bytes.length));
    if (!stream.write(chunk)) await once(stream, 'drain');
    if (!slow) continue;
    sinceStall += chunk.length;
    if (sinceStall >= 512 * KiB) {
      sinceStall = 0;
      await sleep(15);
    } else await new Promise((r) => setImmediate(r));
  }
}

/** A chunked upload (see chunkedFraming) on a raw socket, written fast or slowly: the upstream's summary. */
async function uploadChunked(port, upstreamPort, seed, size, { slowClient, slowUpstream }) {
  const socket = net.connect(port, '127.0.0.1');
  try {
    await once(socket, 'connect');
    const parts = [];
    socket.on('data', (c) => parts.push(c));
    const closed = once(socket, 'close');
    socket.write(`POST /up/${seed}/${size}/${slowUpstream ? 'slow' : 'fast'} HTTP/1.1\r\nhost: app.test\r\nx-cmux-port-internal: ${upstreamPort}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n`);
    await writeBytes(socket, chunkedFraming(seed, size), slowClient);
    await closed;
    // The answer (the connection's last): a Content-Length body, or a chunked one in one chunk or more.
    const text = Buffer.concat(parts).toString('latin1');
    const end = text.indexOf('\r\n\r\n');
    assert.match(text, /^HTTP\/1\.1 200 /, text.slice(0, 200));
    let body = text.slice(end + 4);
    if (/\r\ntransfer-encoding: *chunked/i.test(text.slice(0, end))) {
      let data = '';
      for (let at = 0; ; ) {
        const eol = body.indexOf('\r\n', at);
        const n = parseInt(body.slice(at, eol), 16);
        if (!(n > 0)) break;
        data += body.slice(eol + 2, eol + 2 + n);
        at = eol + 4 + n;
      }
      body = data;
    }
    return JSON.parse(body);
  } finally {
    socket.destroy();
  }
}

/** Every read buffer made is back in the free list or let go (past its cap): no socket keeps one. */
const noBufferHeld = (label) => assertNoBufferHeld(label, 5000, FREE_MAX);

/** The upload came whole: every byte the client's, in place (see assertWhole). */
const assertUploaded = (got, seed, size, label) => assertWhole(got, seed, size, label, 'client');

describe('uploads read into reused buffers reach the upstream byte for byte', () => {
  it('slow and fast clients upload 8-64 MiB at once to slow and fast HTTP/1.1 and h2c upstreams', async (t) => {
    const up = await uploadUpstreamsFor(t);
    const h1 = await proxyFor(t);
    const h2c = await proxyFor(t, { upstreamProtocol: 'h2c' });
    const before = readBufferCounts().created;
    const plan = [
      { via: 'h1', size: 64 * MiB, slowClient: false, slowUpstream: false },
      { via: 'h1', size: 32 * MiB, slowClient: false, slowUpstream: true },
      { via: 'h1', size: 16 * MiB, slowClient: true, slowUpstream: true },
      { via: 'h1', size: 8 * MiB, slowClient: true, slowUpstream: false },
      { via: 'h2c', size: 24 * MiB, slowClient: false, slowUpstream: true },
      { via: 'h2c', size: 16 * MiB, slowClient: false, slowUpstream: false },
      { via: 'h2c', size: 8 * MiB, slowClient: true, slowUpstream: true },
    ];
    const results = await Promise.allSettled(
      plan.map(async (p, i) => {
        const seed = 0x0a5e0000 + i;
        const got = p.via === 'h1' ? await upload(h1.port, up.h1Port, seed, p.size, p) : await upload(h2c.port, up.h2Port, seed, p.size, p);
        assertUploaded(got, seed, p.size, `${p.via} ${p.size / MiB} MiB (${p.slowClient ? 'slow' : 'fast'} client, ${p.slowUpstream ? 'slow' : 'fast'} upstream)`);
      }),
    );
    const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason.message);
    assert.deepEqual(failed, [], failed.join('\n'));
    assert.ok(readBufferCounts().created > before, 'the bodies were not read into lent buffers');
    await noBufferHeld('after the uploads');
    assert.equal(h1.proxy.getStats().clientAborts ?? 0, 0);
  });

  it('chunked uploads (chunks of 1 byte to 300 KiB) from slow and fast clients reach slow and fast HTTP/1.1 and h2c upstreams byte for byte', async (t) => {
    const up = await uploadUpstreamsFor(t);
    const h1 = await proxyFor(t);
    const h2c = await proxyFor(t, { upstreamProtocol: 'h2c' });
    const before = readBufferCounts().created;
    const plan = [
      { via: 'h1', size: 32 * MiB, slowClient: false, slowUpstream: false },
      { via: 'h1', size: 24 * MiB, slowClient: false, slowUpstream: true },
      { via: 'h1', size: 8 * MiB, slowClient: true, slowUpstream: true },
      { via: 'h1', size: 8 * MiB, slowClient: true, slowUpstream: false },
      { via: 'h2c', size: 16 * MiB, slowClient: false, slowUpstream: true },
      { via: 'h2c', size: 16 * MiB, slowClient: false, slowUpstream: false },
      { via: 'h2c', size: 8 * MiB, slowClient: true, slowUpstream: true },
    ];
    const results = await Promise.allSettled(
      plan.map(async (p, i) => {
        const seed = 0x0e5e0000 + i;
        const proxy = p.via === 'h1' ? h1 : h2c;
        const got = await uploadChunked(proxy.port, p.via === 'h1' ? up.h1Port : up.h2Port, seed, p.size, p);
        assertUploaded(got, seed, p.size, `chunked ${p.via} ${p.size / MiB} MiB (${p.slowClient ? 'slow' : 'fast'} client, ${p.slowUpstream ? 'slow' : 'fast'} upstream)`);
      }),
    );
    const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason.message);
    assert.deepEqual(failed, [], failed.join('\n'));
    assert.ok(readBufferCounts().created > before, 'the bodies were not read into lent buffers');
    await noBufferHeld('after the chunked uploads');
  });

  it('a buffer lent in several slices of one read is never read into again once its holder was destroyed with one still out', async (t) => {
    // (A chunked body's read lends a slice per long chunk: one write may call back before the
    // upstream is destroyed, another after, with bytes of the buffer maybe still in its queue.)
    const server = net.createServer((s) => s.on('error', () => {}));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    t.after(() => server.close());
    const socket = net.connect(server.address().port, '127.0.0.1');
    socket.on('error', () => {});
    await once(socket, 'connect');
    const ring = new ReadRing();
    const b = ring.first();
    const first = b.lend();
    first.holder = socket;
    const second = b.lend();
    second.holder = socket;
    const dropped = readBufferCounts().dropped;
    first.release();
    socket.destroy();
    second.release();
    assert.equal(readBufferCounts().dropped, dropped + 1, 'the buffer is let go');
    assert.notEqual(ring.next(), b.buf, 'the next read goes to another buffer');
    ring.retire();
  });

  it('a GET pipelined in the same write as the body\'s last bytes is answered after the upload', async (t) => {
    const up = await uploadUpstreamsFor(t);
    const { port } = await proxyFor(t);
    const seed = 0x0b5e0001;
    const size = 8 * MiB;
    const tail = 1000;
    const path = `/up/${seed}/${size}/slow`;
    const socket = net.connect(port, '127.0.0.1');
    t.after(() => socket.destroy());
    await once(socket, 'connect');
    const answers = readResponses(socket, 3);
    const headers = `host: app.test\r\nx-cmux-port-internal: ${up.h1Port}\r\n`;
    socket.write(`POST ${path} HTTP/1.1\r\n${headers}content-length: ${size}\r\n\r\n`);
    await writeBody(socket, seed, 0, size - tail, true);
    // The proxy has read up to the tail (the upstream, reading slowly, got most of it).
    assert.ok(await waitFor(() => (up.seen.get(path)?.check.bytes ?? 0) >= size - 4 * MiB, { timeoutMs: 60_000 }), 'the body did not flow');
    await sleep(100);
    socket.write(Buffer.concat([positionCoded(seed, size - tail, tail), Buffer.from(`GET /after HTTP/1.1\r\n${headers}\r\nGET /last HTTP/1.1\r\n${headers}\r\n`)]));
    const [first, second, third] = await answers;
    assert.equal(first.status, 200);
    assertUploaded(JSON.parse(first.body), seed, size, 'the upload');
    assert.deepEqual([second.status, second.body], [200, 'got GET /after']);
    assert.deepEqual([third.status, third.body], [200, 'got GET /last']);
    // The connection serves on: another upload on it, this time to a fast reader.
    const seed2 = seed + 1;
    const path2 = `/up/${seed2}/${size}/fast`;
    const next = readResponses(socket, 1);
    socket.write(`POST ${path2} HTTP/1.1\r\n${headers}content-length: ${size}\r\n\r\n`);
    await writeBody(socket, seed2, 0, size, false);
    const [fourth] = await next;
    assertUploaded(JSON.parse(fourth.body), seed2, size, 'the second upload');
    socket.end();
    await noBufferHeld('after the pipelined requests');
  });

  it('a connection whose first read held a small body (paused before its reads were taken over) serves on after an upload', async (t) => {
    const up = await uploadUpstreamsFor(t);
    const { port } = await proxyFor(t);
    const socket = net.connect(port, '127.0.0.1');
    t.after(() => socket.destroy());
    await once(socket, 'connect');
    const headers = `host: app.test\r\nx-cmux-port-internal: ${up.h1Port}\r\n`;
    const seed = 0x0d5e0001;
    // Head and body in one write: the body waits for the upstream socket, the client is paused.
    const first = readResponses(socket, 1);
    socket.write(Buffer.concat([Buffer.from(`POST /up/${seed}/100/fast HTTP/1.1\r\n${headers}content-length: 100\r\n\r\n`), positionCoded(seed, 0, 100)]));
    assertUploaded(JSON.parse((await first)[0].body), seed, 100, 'the small body');
    const size = 2 * MiB;
    const second = readResponses(socket, 1);
    socket.write(`POST /up/${seed + 1}/${size}/fast HTTP/1.1\r\n${headers}content-length: ${size}\r\n\r\n`);
    await writeBody(socket, seed + 1, 0, size, false);
    assertUploaded(JSON.parse((await second)[0].body), seed + 1, size, 'the upload');
    const third = readResponses(socket, 1);
    socket.write(`GET /after HTTP/1.1\r\n${headers}\r\n`);
    const [answer] = await Promise.race([third, sleep(10_000).then(() => [{ status: 0, body: 'no answer in 10 s' }])]);
    assert.deepEqual([answer.status, answer.body], [200, 'got GET /after']);
    socket.end();
    await noBufferHeld('after the requests');
  });

  for (const how of ['FIN', 'RST']) {
    it(`a client that stops mid-body (${how}) leaves the upstream a cut request, its bytes exact up to the cut`, async (t) => {
      const up = await uploadUpstreamsFor(t);
      const { port } = await proxyFor(t);
      const seed = how === 'FIN' ? 0x0c5e0001 : 0x0c5e0002;
      const size = 32 * MiB;
      const sent = 12 * MiB + 12345;
      const path = `/up/${seed}/${size}/slow`;
      const socket = net.connect(port, '127.0.0.1');
      socket.on('error', () => {});
      await once(socket, 'connect');
      socket.write(`POST ${path} HTTP/1.1\r\nhost: app.test\r\nx-cmux-port-internal: ${up.h1Port}\r\ncontent-length: ${size}\r\n\r\n`);
      await writeBody(socket, seed, 0, sent, true);
      assert.ok(await waitFor(() => (up.seen.get(path)?.check.bytes ?? 0) >= 4 * MiB, { timeoutMs: 60_000 }), 'the body did not flow');
      if (how === 'FIN') socket.end();
      else socket.resetAndDestroy();
      const rec = up.seen.get(path);
      assert.ok(await waitFor(() => rec.closed, { timeoutMs: 60_000 }), 'the upstream request never ended');
      await sleep(100);
      assert.equal(rec.ended, false, 'the upstream got a complete request');
      assert.ok(rec.check.bytes <= sent, `the upstream got ${rec.check.bytes} bytes, the client sent ${sent}`);
      assert.equal(rec.check.firstBad, -1, `byte ${rec.check.firstBad} is not the client's`);
      socket.destroy();
      await noBufferHeld(`after the ${how}`);
    });
  }
});
