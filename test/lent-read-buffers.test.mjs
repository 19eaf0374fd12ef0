// Content-Length response bodies are read from the upstream into reused buffers whose slices
// go to the client writes (src/upstream/read-buffers.ts). A slice can still sit in a slow
// client's queue (an HTTP/1.1 socket's pending write, an HTTP/2 stream waiting for its window)
// when the upstream's next bytes arrive: they must never land in a buffer a queued slice still
// points into. Slow HTTP/1.1 and HTTP/2 clients download position-coded bodies concurrently from
// a fast upstream and check every byte; idle pooled sockets and WebSockets keep no buffer.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import WebSocket, { WebSocketServer } from 'ws';
import { startProxy, sleep } from './helpers/servers.mjs';
import { FREE_MAX, readBufferCounts } from '../dist/upstream/read-buffers.js';
import { assertNoBufferHeld, positionCoded } from './helpers/lent-buffers.mjs';

const KiB = 1024;
const MiB = 1024 * KiB;


/**
 * An upstream writing as fast as its socket takes it: `/body/<seed>/<bytes>/<piece>` answers a
 * Content-Length body in writes of `piece` bytes (with a turn of the event loop between them,
 * so the proxy sees reads of about that size while it keeps up). WebSockets echo.
 */
async function startBodyUpstream() {
  const server = http.createServer(async (req, res) => {
    const [, , seedText, sizeText, pieceText] = req.url.split('/');
    const seed = Number(seedText);
    const size = Number(sizeText);
    const piece = Number(pieceText);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
    for (let at = 0; at < size && !res.destroyed; ) {
      const n = Math.min(piece, size - at);
      const ok = res.write(positionCoded(seed, at, n));
      at += n;
      if (!ok) await once(res, 'drain');
      else await new Promise((r) => setImmediate(r));
    }
    res.end();
  });
  // Pooled sockets stay open through the test: their close would free what they hold anyway.
  server.keepAliveTimeout = 60_000;
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => {
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: server.address().port,
    async close() {
      for (const ws of wss.clients) ws.terminate();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

/** Checks a download as it arrives: every byte against its position, and the whole by sha256. */
class BodyCheck {
  constructor(seed, size) {
    this.seed = seed;
    this.size = size;
    this.bytes = 0;
    this.firstBad = -1;
    this.hash = createHash('sha256');
  }
  add(chunk) {
    if (this.firstBad === -1 && this.bytes + chunk.length <= this.size) {
      const want = positionCoded(this.seed, this.bytes, chunk.length);
      if (!want.equals(chunk)) {
        let i = 0;
        while (want[i] === chunk[i]) i++;
        this.firstBad = this.bytes + i;
      }
    }
    this.hash.update(chunk);
    this.bytes += chunk.length;
  }
  assertWhole(label) {
    assert.equal(this.firstBad, -1, `${label}: byte ${this.firstBad} of ${this.size} is not the upstream's`);
    assert.equal(this.bytes, this.size, `${label}: ${this.bytes} of ${this.size} bytes`);
    assert.equal(this.hash.digest('hex'), createHash('sha256').update(positionCoded(this.seed, 0, this.size)).digest('hex'), `${label}: sha256`);
  }
}

/** A slow reader: after every `burst` bytes it stops reading for `stallMs`. */
function readSlowly(stream, check, burst, stallMs) {
  let sinceStall = 0;
  stream.on('data', (chunk) => {
    check.add(chunk);
    sinceStall += chunk.length;
    if (sinceStall >= burst) {
      sinceStall = 0;
      stream.pause();
      setTimeout(() => stream.resume(), stallMs);
    }
  });
}

function h1Download(port, upstreamPort, path, check) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, headers: { 'x-cmux-port-internal': String(upstreamPort) } }, (res) => {
      if (res.statusCode !== 200) reject(new Error(`HTTP/1.1 status ${res.statusCode}`));
      readSlowly(res, check, 2 * MiB, 250);
      res.on('end', resolve);
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(120_000, () => req.destroy(new Error('client timeout')));
  });
}

function h2Download(session, upstreamPort, path, check) {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':method': 'GET', ':path': path, 'x-cmux-port-internal': String(upstreamPort) });
    stream.on('response', (headers) => {
      if (headers[':status'] !== 200) reject(new Error(`HTTP/2 status ${headers[':status']}`));
    });
    readSlowly(stream, check, 256 * KiB, 100);
    stream.on('end', resolve);
    stream.on('error', reject);
    stream.on('close', () => {
      if (stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) reject(new Error(`RST_STREAM ${stream.rstCode}`));
    });
    stream.setTimeout(120_000, () => stream.close(http2.constants.NGHTTP2_CANCEL));
  });
}

/** Every read buffer made is back in the free list or let go (past its cap): no socket keeps one. */
const noBufferHeld = (label) => assertNoBufferHeld(label, 3000, FREE_MAX);

describe('bodies read into reused buffers reach slow clients byte for byte', () => {
  it('slow HTTP/1.1 and HTTP/2 clients download 8-24 MiB bodies concurrently from a fast upstream; idle sockets keep no buffer', async (t) => {
    const up = await startBodyUpstream();
    t.after(() => up.close());
    const { proxy, port } = await startProxy();
    t.after(() => proxy.stop());
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', () => {});
    t.after(() => session.close());
    const before = readBufferCounts().created;

    // Write sizes around the clients' 16 KiB high-water mark (a write below it leaves the
    // upstream flowing while the slice is still queued) and well past it.
    const downloads = [];
    const plan = [
      { via: 'h1', size: 24 * MiB, piece: 12 * KiB },
      { via: 'h1', size: 16 * MiB, piece: 9 * KiB },
      { via: 'h1', size: 8 * MiB, piece: 256 * KiB },
      { via: 'h2', size: 16 * MiB, piece: 12 * KiB },
      { via: 'h2', size: 8 * MiB, piece: 10 * KiB },
      { via: 'h2', size: 8 * MiB, piece: 256 * KiB },
    ];
    plan.forEach(({ via, size, piece }, i) => {
      const seed = 0x5eed0000 + i;
      const check = new BodyCheck(seed, size);
      const path = `/body/${seed}/${size}/${piece}`;
      const done = via === 'h1' ? h1Download(port, up.port, path, check) : h2Download(session, up.port, path, check);
      downloads.push(done.then(() => check.assertWhole(`${via} ${size / MiB} MiB in ${piece / KiB} KiB writes`)));
    });
    await Promise.all(downloads);
    assert.ok(readBufferCounts().created > before, 'the bodies were not read into lent buffers');
    // The pooled upstream sockets are idle now: they read into the shared parking buffer only.
    await noBufferHeld('after the downloads');
    const stats = proxy.getStats();
    assert.equal(stats.responsesReset ?? 0, 0);
  });

  it('a WebSocket on a pooled socket that relayed a lent body holds no read buffer and relays byte for byte', async (t) => {
    const up = await startBodyUpstream();
    t.after(() => up.close());
    const { proxy, port } = await startProxy();
    t.after(() => proxy.stop());
    const check = new BodyCheck(7, 4 * MiB);
    await h1Download(port, up.port, `/body/7/${4 * MiB}/64000`, check);
    check.assertWhole('download before the WebSocket');
    await sleep(50);
    const reused = proxy.getStats().upstreamSocketsReused ?? 0;
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { 'x-cmux-port-internal': String(up.port) } });
    t.after(() => ws.terminate());
    await once(ws, 'open');
    assert.equal((proxy.getStats().upstreamSocketsReused ?? 0) - reused, 1, 'the WebSocket did not take the pooled socket');
    for (let i = 0; i < 8; i++) {
      const msg = positionCoded(100 + i, 0, 200 * KiB + i);
      ws.send(msg);
      const [data] = await once(ws, 'message');
      assert.ok(Buffer.from(data).equals(msg), `echo ${i} differs`);
    }
    await noBufferHeld('with the WebSocket open');
  });
});
