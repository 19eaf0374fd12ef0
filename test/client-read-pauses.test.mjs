// When the proxy stops reading a client connection, it stops: what the client sends meanwhile
// stays in the kernel (TCP backpressure on the client) until the proxy reads on. Cleartext and
// TLS, each from the connection's first read (the bytes that chose its protocol):
// - pipelined requests waiting: nothing more is read until they are answered, and those that
//   came meanwhile are read and parsed together (counted as the heads the proxy parsed,
//   `totalRequests`, while the upstream still holds its answers);
// - a request body sent while its route resolves (or its upstream connects): held in the
//   kernel, not queued in the proxy's memory, then forwarded whole;
// - a client pipelining requests without reading the answers: once the answers wait for it to
//   read, no further request is started (nor read) until it does.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connectClient, jsonAnswers, sleep, startProxy, startUpstream, statusCodes, waitFor } from './helpers/servers.mjs';

const GEN = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));
/** How long the upstream holds each answer: far longer than the checks made while it does. */
const HOLD_MS = 300;

/** One certificate for every proxy of this file (each also takes cleartext on its port). */
let certDir;
before(() => {
  certDir = mkdtempSync(join(tmpdir(), 'cmux-read-pauses-'));
  execFileSync('bash', [GEN, '--out', certDir, '--name', 'main', 'localhost'], { stdio: 'ignore' });
});
after(() => rmSync(certDir, { recursive: true, force: true }));
const tlsOption = () => ({ certFile: join(certDir, 'main.pem'), keyFile: join(certDir, 'main-key.pem') });

/** What `socket` reads from now on, as latin1 text, and whether it ended. */
function readText(socket) {
  const read = { text: '', ended: false };
  socket.on('data', (c) => {
    read.text += c.toString('latin1');
  });
  socket.on('end', () => {
    read.ended = true;
  });
  return read;
}

describe('reading a client connection with pipelined requests waiting', () => {
  let slow;
  let px;

  before(async () => {
    slow = await startUpstream((req, res) => {
      setTimeout(() => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ url: req.url }));
      }, HOLD_MS);
    });
    px = await startProxy({ tls: tlsOption() });
  });
  after(async () => {
    await px?.proxy.stop();
    await slow?.close();
  });

  const get = (path, extra = '') => `GET ${path} HTTP/1.1\r\nHost: a.test\r\nX-Cmux-Port-Internal: ${slow.port}\r\n${extra}\r\n`;

  for (const secure of [false, true]) {
    const kind = secure ? 'TLS' : 'cleartext';

    it(`${kind}: requests sent while three are queued are not read until the queue is answered, then all are, in order`, async () => {
      const socket = await connectClient(px.port, secure);
      const client = readText(socket);
      const before = px.proxy.getStats().totalRequests;
      socket.write(get('/a1') + get('/a2') + get('/a3'));
      assert.ok(await waitFor(() => px.proxy.getStats().totalRequests - before === 3, { timeoutMs: 2000 }), 'the first three were read');
      // The upstream holds /a1 for HOLD_MS: the proxy has two requests queued behind it.
      socket.write(get('/b1') + get('/b2') + get('/b3', 'Connection: close\r\n'));
      await sleep(HOLD_MS / 3);
      assert.equal(px.proxy.getStats().totalRequests - before, 3, 'nothing more was read while requests were queued');
      assert.ok(await waitFor(() => client.ended, { timeoutMs: 10 * HOLD_MS }), 'the connection closed after the last answer');
      assert.deepEqual(
        jsonAnswers(client.text).map((a) => [a.status, a.body.url]),
        ['/a1', '/a2', '/a3', '/b1', '/b2', '/b3'].map((u) => [200, u]),
      );
    });

    it(`${kind}: while the last queued request is answered, what the client sends waits until it is`, async () => {
      const socket = await connectClient(px.port, secure);
      const client = readText(socket);
      const before = px.proxy.getStats().totalRequests;
      socket.write(get('/c1') + get('/c2'));
      // /c1's answer: /c2, already whole, is being answered and nothing is queued behind it.
      assert.ok(await waitFor(() => client.text.includes('"/c1"'), { timeoutMs: 4 * HOLD_MS }));
      socket.write(get('/d1', 'Connection: close\r\n'));
      await sleep(HOLD_MS / 3);
      assert.equal(px.proxy.getStats().totalRequests - before, 2, '/d1 was not read while /c2 was answered');
      assert.ok(await waitFor(() => client.ended, { timeoutMs: 10 * HOLD_MS }));
      assert.deepEqual(
        jsonAnswers(client.text).map((a) => [a.status, a.body.url]),
        ['/c1', '/c2', '/d1'].map((u) => [200, u]),
      );
    });
  }
});

describe('a request body sent while its route resolves', () => {
  const BODY_BYTES = 48 * 1024 * 1024;
  /** The resolver's delay; the bytes the proxy took in are read before it ends. */
  const RESOLVE_MS = 1500;
  /** Above what loopback's socket buffers hold (a few MiB each way), far below what a reading proxy takes in. */
  const HELD_MAX = 32 * 1024 * 1024;
  let sink;
  let px;

  before(async () => {
    sink = await startUpstream((req, res) => {
      let n = 0;
      req.on('data', (c) => {
        n += c.length;
      });
      req.on('end', () => res.end(String(n)));
    });
    px = await startProxy({
      tls: tlsOption(),
      containerPortResolver: () => new Promise((resolve) => setTimeout(() => resolve(sink.port), RESOLVE_MS)),
      portResolverCacheTtlMs: 0,
    });
  });
  after(async () => {
    await px?.proxy.stop();
    await sink?.close();
  });

  for (const secure of [false, true]) {
    for (const framing of ['chunked', 'content-length']) {
      it(`${secure ? 'TLS' : 'cleartext'}, ${framing}: the body waits in the kernel, then reaches the upstream whole`, async () => {
        const socket = await connectClient(px.port, secure);
        const read = readText(socket);
        const piece = Buffer.alloc(64 * 1024, 0x61);
        const frame = framing === 'chunked' ? Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')]) : piece;
        const fields = framing === 'chunked' ? 'Transfer-Encoding: chunked' : `Content-Length: ${BODY_BYTES}`;
        // The head and the body's first piece in one write: the connection's first read.
        socket.write(Buffer.concat([Buffer.from(`POST /up HTTP/1.1\r\nHost: app.3000.localhost\r\n${fields}\r\n\r\n`), frame]));
        let sent = piece.length;
        const pump = () => {
          while (sent < BODY_BYTES) {
            sent += piece.length;
            if (!socket.write(frame)) return void socket.once('drain', pump);
          }
          if (framing === 'chunked') socket.write('0\r\n\r\n');
        };
        pump();
        await sleep(RESOLVE_MS - 400);
        // What left the client: in the kernel's buffers, or read by the proxy.
        const taken = socket.bytesWritten - socket.writableLength;
        assert.ok(taken < HELD_MAX, `the proxy took in ${(taken / 2 ** 20).toFixed(1)} MiB before it had an upstream`);
        assert.ok(await waitFor(() => read.text.includes('\r\n\r\n') && read.text.endsWith(String(BODY_BYTES)), { timeoutMs: 30_000 }), read.text.slice(0, 200));
        assert.match(read.text, /^HTTP\/1\.1 200 /);
        socket.destroy();
      });
    }
  }
});

describe('a client that pipelines requests and does not read the answers', () => {
  // Answers that each arrive from the upstream in one read and leave in one write: no body
  // backpressure ever pauses the upstream, only the client's unread answers can.
  const ANSWER_BYTES = 60 * 1024;
  const REQUESTS = 800;
  let up;
  let px;

  before(async () => {
    const body = Buffer.alloc(ANSWER_BYTES, 0x62);
    up = await startUpstream((req, res) => {
      res.setHeader('content-length', req.url.startsWith('/slow') ? 7 : body.length);
      if (req.url.startsWith('/slow')) setTimeout(() => res.end(body.subarray(0, 7)), 300);
      else res.end(body);
    });
    px = await startProxy({ tls: tlsOption() });
  });
  after(async () => {
    await px?.proxy.stop();
    await up?.close();
  });

  /** `n` requests with no route, each refused by the proxy itself. */
  const refusals = (n) => Array.from({ length: n }, (_, i) => `GET /none${i} HTTP/1.1\r\nHost: a.test\r\n\r\n`).join('');

  /** The status and body length of each response in a raw HTTP/1.1 stream (Content-Length framed). */
  function answers(raw) {
    const out = [];
    let at = 0;
    for (;;) {
      const headEnd = raw.indexOf('\r\n\r\n', at);
      if (headEnd === -1) break;
      const head = raw.subarray(at, headEnd).toString('latin1');
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1]);
      out.push([Number(head.split(' ')[1]), Math.min(length, raw.length - headEnd - 4)]);
      at = headEnd + 4 + length;
    }
    return out;
  }

  it('TLS: answers the proxy makes itself pile up past the write buffer within one read: the request read behind them waits for the drain, then the connection serves on', async () => {
    // A TLS write completes later, so 70 refusals (no route) written in one read are ~20 KiB
    // held by the socket's stream: the answers wait for 'drain'. The GET parsed after them in
    // the same read must wait too (it once started at once, took the 'drain' meant for the
    // connection, and left it paused for good: the next request got a 408 after the head timeout).
    const socket = await connectClient(px.port, true);
    const read = readText(socket);
    const routed = (path) => `GET ${path} HTTP/1.1\r\nHost: a.test\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`;
    // A short answer, after the 'drain' for the refusals has come.
    socket.write(refusals(70) + routed('/slow-after-refusals'));
    assert.ok(await waitFor(() => read.text.split('\r\n\r\n').length > 71 && read.text.endsWith('\r\n\r\nbbbbbbb'), { timeoutMs: 5000 }), 'the 71 answers');
    const before = read.text.length;
    socket.write(routed('/next'));
    assert.ok(await waitFor(() => read.text.length - before > ANSWER_BYTES, { timeoutMs: 3000 }), `the next request got no answer: ${JSON.stringify(read.text.slice(before, before + 80))}`);
    assert.match(read.text.slice(before), /^HTTP\/1\.1 200 /);
    const statuses = statusCodes(read.text);
    assert.deepEqual(statuses, [...Array(70).fill(statuses[0]), '200', '200']);
    assert.match(statuses[0], /^4\d\d$/);
    socket.destroy();
  });

  it('TLS: a WebSocket upgrade read behind refusals the client has still to read: the refusals are answered first, no tunnel opens, the connection closes', async () => {
    const socket = await connectClient(px.port, true);
    const read = readText(socket);
    const closed = once(socket, 'close');
    const upgrade =
      `GET /ws HTTP/1.1\r\nHost: a.test\r\nX-Cmux-Port-Internal: ${up.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
    socket.write(refusals(70) + upgrade);
    // Whether the refusals are still unread when the upgrade head is parsed depends on when
    // Node completes the TLS writes (it differs between versions): either way no tunnel opens
    // behind them, they come first, and the connection ends (this upstream takes no upgrades).
    await Promise.race([closed, sleep(5000)]);
    assert.ok(socket.destroyed || socket.readableEnded, 'the connection closed');
    const statuses = statusCodes(read.text);
    assert.ok(statuses.length >= 70, `answers: ${statuses.length}`);
    assert.deepEqual(statuses.slice(0, 70), Array(70).fill(statuses[0]));
    assert.ok(!statuses.includes('101'), statuses.slice(70).join());
  });

  for (const secure of [false, true]) {
    it(`${secure ? 'TLS' : 'cleartext'}: 800 paced GETs for 60 KiB answers, unread: no more are fetched than the sockets' buffers hold; what was fetched arrives whole`, async () => {
      const socket = await connectClient(px.port, secure);
      socket.pause();
      let ended = false;
      socket.on('end', () => {
        ended = true;
      });
      up.requests.length = 0;
      const get = `GET /answer HTTP/1.1\r\nHost: a.test\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`;
      // 8 requests every 10 ms: no read of the proxy's carries more than the pipelining bound.
      for (let i = 0; i < REQUESTS; i += 8) {
        socket.write(get.repeat(8));
        await sleep(10);
      }
      await sleep(500);
      const fetched = up.requests.length;
      // The sockets' buffers on loopback hold ~10 MiB of answers (~170): the client's
      // requests wait behind them in the kernel, unread.
      assert.ok(fetched <= REQUESTS / 2, `${fetched} of ${REQUESTS} answers (${((fetched * ANSWER_BYTES) / 2 ** 20).toFixed(0)} MiB) were fetched for a client that read none`);
      const chunks = [];
      socket.on('data', (c) => chunks.push(c));
      socket.resume();
      // Read on, the proxy answers what it fetched, then what it reads after the pause up to
      // the pipelining bound (a read of more than 32 requests: those it had not read while
      // paused came in one), and closes; the client would retry the rest.
      assert.ok(await waitFor(() => ended, { timeoutMs: 20_000 }), 'the connection ends');
      const got = answers(Buffer.concat(chunks));
      assert.equal(got.length, up.requests.length, 'every request fetched was answered');
      assert.ok(got.length >= fetched && got.length < REQUESTS, `${got.length} answers, ${fetched} fetched before the client read`);
      assert.deepEqual(got, Array.from({ length: got.length }, () => [200, ANSWER_BYTES]));
      socket.destroy();
    });
  }
});
