// Content-Length response bodies are read from the upstream into reused buffers whose slices
// go to the client writes (src/upstream/read-buffers.ts). A slice can still sit in a slow
// client's queue (an HTTP/1.1 socket's pending write, an HTTP/2 stream waiting for its window)
// when the upstream's next bytes arrive: they must never land in a buffer a queued slice still
// points into. Slow HTTP/1.1 and HTTP/2 clients download position-coded bodies concurrently from
// a fast upstream and check every byte; idle pooled sockets and WebSockets keep no buffer.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import http2 from 'node:http2';
import { once } from 'node:events';
import WebSocket, { WebSocketServer } from 'ws';
import { proxyFor, rawUpstream, sleep } from './helpers/servers.mjs';
import { FREE_MAX, readBufferCounts } from '../dist/upstream/read-buffers.js';
import { BodyCheck, assertNoBufferHeld, positionCoded } from './helpers/lent-buffers.mjs';
import { watchOnBody } from './helpers/llhttp-body.mjs';

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * Counts the body bytes llhttp hands to the proxy's upstream response parsers (whose `conn` is a
 * pooled upstream connection: it has `entry`), each a copy; not the test's own parsers.
 */
const upstreamBodyCopies = { bytes: 0 };
const installBodyCounter = () =>
  watchOnBody(
    (parser) => parser.conn !== undefined && parser.conn !== null && 'entry' in parser.conn,
    (chunk) => (upstreamBodyCopies.bytes += chunk.length),
  );

/**
 * An upstream writing as fast as its socket takes it: `/body/<seed>/<bytes>/<piece>` answers a
 * Content-Length body in writes of `piece` bytes (with a turn of the event loop between them,
 * so the proxy sees reads of about that size while it keeps up). WebSockets echo. Closed after test `t`.
 */
async function startBodyUpstream(t) {
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
  t.after(async () => {
    for (const ws of wss.clients) ws.terminate();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
  return { port: server.address().port };
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
    const up = await startBodyUpstream(t);
    const { proxy, port } = await proxyFor(t);
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
      downloads.push(done.then(() => check.assertWhole(`${via} ${size / MiB} MiB in ${piece / KiB} KiB writes`, 'upstream')));
    });
    await Promise.all(downloads);
    assert.ok(readBufferCounts().created > before, 'the bodies were not read into lent buffers');
    // The pooled upstream sockets are idle now: they read into the shared parking buffer only.
    await noBufferHeld('after the downloads');
    const stats = proxy.getStats();
    assert.equal(stats.responsesReset ?? 0, 0);
  });

  it('a WebSocket on a pooled socket that relayed a lent body holds no read buffer and relays byte for byte', async (t) => {
    const up = await startBodyUpstream(t);
    const { proxy, port } = await proxyFor(t);
    const check = new BodyCheck(7, 4 * MiB);
    await h1Download(port, up.port, `/body/7/${4 * MiB}/64000`, check);
    check.assertWhole('download before the WebSocket', 'upstream');
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

/**
 * A keep-alive upstream on raw sockets, one request at a time per connection: `/body/<seed>/<bytes>`
 * answers a Content-Length body in one write; `/split/<seed>/<bytes>` writes its head in pieces
 * (cut inside a header name and inside a value) with pauses between them, then its body;
 * `/upgrade/<seed>/<bytes>` answers 101 with the first tunnel bytes in the same write, then
 * the rest in 64 KiB writes. Closed after test `t`.
 */
function startRawUpstream(t) {
  return rawUpstream(t, (socket) => {
    let pending = Buffer.alloc(0);
    let busy = false;
    const serve = async () => {
      while (!busy) {
        const end = pending.indexOf('\r\n\r\n');
        if (end === -1) return;
        const head = pending.subarray(0, end).toString('latin1');
        pending = pending.subarray(end + 4);
        const [kind, seedText, sizeText] = head.split(' ')[1].split('/').slice(1);
        const seed = Number(seedText);
        const size = Number(sizeText);
        busy = true;
        if (kind === 'body') {
          socket.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${size}\r\n\r\n`), positionCoded(seed, 0, size)]));
        } else if (kind === 'split') {
          const text = `HTTP/1.1 200 OK\r\nx-long-header-name: ${'v'.repeat(3000)}-end\r\nx-seed: ${seed}\r\ncontent-length: ${size}\r\n\r\n`;
          for (const [from, to] of [[0, 25], [25, 1500], [1500, text.length - 30], [text.length - 30, text.length]]) {
            socket.write(text.slice(from, to), 'latin1');
            await sleep(30);
          }
          socket.write(positionCoded(seed, 0, size));
        } else {
          const first = 30 * 1024;
          socket.write(Buffer.concat([Buffer.from('HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n'), positionCoded(seed, 0, first)]));
          for (let at = first; at < size && !socket.destroyed; at += 64 * 1024) {
            if (!socket.write(positionCoded(seed, at, Math.min(64 * 1024, size - at)))) await once(socket, 'drain');
          }
          return;
        }
        busy = false;
      }
    };
    socket.on('data', (chunk) => {
      pending = Buffer.concat([pending, chunk]);
      serve();
    });
  });
}

/** A GET through the proxy on `port` to the upstream on `upstreamPort`: the response and its whole body. */
function getVia(port, upstreamPort, path) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, headers: { 'x-cmux-port-internal': String(upstreamPort) } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ res, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

describe('response heads on a socket that relayed a lent body', () => {
  it('long responses on the pooled socket: llhttp copies at most 16 KiB of each body (what shares its head\'s read), the rest is lent', async (t) => {
    const up = await startRawUpstream(t);
    t.after(installBodyCounter());
    const { proxy, port } = await proxyFor(t);
    const get = async (path) => (await getVia(port, up.port, path)).body;
    // The first response takes the socket's reads over; later heads are read into the parking buffer.
    assert.ok((await get(`/body/40/${MiB}`)).equals(positionCoded(40, 0, MiB)));
    await sleep(20);
    const reused = proxy.getStats().upstreamSocketsReused ?? 0;
    const counts = [];
    for (let i = 0; i < 5; i++) {
      const before = upstreamBodyCopies.bytes;
      // (The upstream writes the head and the whole body at once: the head's read is full.)
      assert.ok((await get(`/body/${41 + i}/${MiB}`)).equals(positionCoded(41 + i, 0, MiB)), `response ${i}: body differs`);
      counts.push(upstreamBodyCopies.bytes - before);
      await sleep(20);
    }
    assert.equal((proxy.getStats().upstreamSocketsReused ?? 0) - reused, 5, 'the responses did not come on the pooled socket');
    assert.ok(counts.every((n) => n <= 16 * KiB), `body bytes copied by llhttp per 1 MiB response: ${counts.join(', ')}`);
  });

  it('a head split across reads and a 101 with tunnel bytes in its read reach the client intact on the pooled socket', async (t) => {
    const up = await startRawUpstream(t);
    const { proxy, port } = await proxyFor(t);
    const get = (path) => getVia(port, up.port, path);
    const before = readBufferCounts().created;
    const first = await get(`/body/11/${2 * MiB}`);
    assert.ok(first.body.equals(positionCoded(11, 0, 2 * MiB)), 'the lent body differs');
    assert.ok(readBufferCounts().created > before || readBufferCounts().free > 0, 'the body was not read into lent buffers');
    await sleep(20);
    const reused = proxy.getStats().upstreamSocketsReused ?? 0;
    for (let i = 0; i < 3; i++) {
      const { res, body } = await get(`/split/${20 + i}/${300 * KiB}`);
      assert.equal(res.headers['x-long-header-name'], `${'v'.repeat(3000)}-end`);
      assert.equal(res.headers['x-seed'], String(20 + i));
      assert.ok(body.equals(positionCoded(20 + i, 0, 300 * KiB)), `split-head response ${i}: body differs`);
      await sleep(20);
    }
    // The client reads the tunnel slowly: the proxy's writes of it queue while the upstream goes on.
    const size = 4 * MiB;
    const socket = net.connect(port, '127.0.0.1');
    t.after(() => socket.destroy());
    await once(socket, 'connect');
    socket.write(`GET /upgrade/33/${size} HTTP/1.1\r\nhost: x\r\nx-cmux-port-internal: ${up.port}\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
    let got = Buffer.alloc(0);
    let headEnd = -1;
    await new Promise((resolve, reject) => {
      socket.on('error', reject);
      socket.on('data', (chunk) => {
        got = Buffer.concat([got, chunk]);
        if (headEnd === -1) {
          const at = got.indexOf('\r\n\r\n');
          if (at === -1) return;
          headEnd = at + 4;
          assert.match(got.subarray(0, headEnd).toString('latin1'), /^HTTP\/1\.1 101 /);
          socket.pause();
          setTimeout(() => socket.resume(), 300);
        }
        if (got.length - headEnd >= size) resolve();
      });
    });
    const tunnel = got.subarray(headEnd);
    assert.equal(tunnel.length, size);
    assert.ok(tunnel.equals(positionCoded(33, 0, size)), 'tunnel bytes differ');
    assert.equal((proxy.getStats().upstreamSocketsReused ?? 0) - reused, 4, 'the later exchanges did not take the pooled socket');
  });
});
