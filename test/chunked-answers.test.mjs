// Chunked answers of small chunks: those of one upstream read leave the proxy in one write. To an
// HTTP/1.1 client (each chunk keeps its own size line) an answer of 1-byte chunks cost three
// writes a byte (~7 µs of CPU a byte, ~0.13 MiB/s); to an HTTP/2 client, one stream write a byte.
// Byte-exact with small, large and mixed chunks, a trailer, and the next answer on the same
// connections, over TCP and TLS, h2c and TLS h2; a client reading nothing still stops the upstream.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { connectClient, startProxy, startRawServer, waitFor } from './helpers/servers.mjs';

const GEN = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));

/** Writes asked of a socket's stream (`write` calls), per local port; the last socket that wrote, per local port. */
const streamWrites = new Map();
const lastWriter = new Map();
/** Writes asked of the proxy's HTTP/2 streams, and the last such stream. */
const h2Writes = { count: 0, last: null };
const write = Duplex.prototype.write;
before(() => {
  Duplex.prototype.write = function countedWrite(...args) {
    if (this.constructor.name === 'ServerHttp2Stream') {
      h2Writes.count++;
      h2Writes.last = this;
    } else if (this instanceof net.Socket) {
      const port = this.localPort;
      if (port !== undefined) {
        streamWrites.set(port, (streamWrites.get(port) ?? 0) + 1);
        lastWriter.set(port, this);
      }
    }
    return write.apply(this, args);
  };
});
after(() => {
  Duplex.prototype.write = write;
});

/** `[size, byte]` chunks as a chunked body: each chunk's data is `size` bytes counting up from `byte`. */
function chunkedBody(chunks, trailer = '') {
  const parts = [];
  const data = [];
  for (const [size, first] of chunks) {
    const piece = Buffer.alloc(size);
    for (let i = 0; i < size; i++) piece[i] = (first + i) & 0xff;
    parts.push(Buffer.from(`${size.toString(16)}\r\n`), piece, Buffer.from('\r\n'));
    data.push(piece);
  }
  parts.push(Buffer.from(`0\r\n${trailer}\r\n`));
  return { wire: Buffer.concat(parts), data: Buffer.concat(data) };
}

/**
 * Decodes the complete answers in `bytes` (latin1 text of a keep-alive connection): each one's
 * status, chunked data, chunk count and trailer lines. An answer not yet whole is left out.
 */
function decodeAnswers(bytes) {
  const answers = [];
  let at = 0;
  for (;;) {
    const headEnd = bytes.indexOf('\r\n\r\n', at);
    if (headEnd < 0) return answers;
    const status = Number(bytes.slice(at, headEnd).split(' ')[1]);
    let p = headEnd + 4;
    const data = [];
    for (;;) {
      const lineEnd = bytes.indexOf('\r\n', p);
      if (lineEnd < 0) return answers;
      const size = parseInt(bytes.slice(p, lineEnd), 16);
      p = lineEnd + 2;
      if (size === 0) break;
      if (bytes.length < p + size + 2) return answers;
      data.push(bytes.slice(p, p + size));
      p += size + 2;
    }
    // Trailer lines, then the empty line.
    const trailers = [];
    for (;;) {
      const lineEnd = bytes.indexOf('\r\n', p);
      if (lineEnd < 0) return answers;
      const line = bytes.slice(p, lineEnd);
      p = lineEnd + 2;
      if (line === '') break;
      trailers.push(line);
    }
    answers.push({ status, data: Buffer.from(data.join(''), 'latin1'), chunks: data.length, trailers });
    at = p;
  }
}

/** Small, large and small chunks (604) with an `x-sum: 7` trailer: one read's batch is cut short by a large chunk. */
function mixedBody() {
  return chunkedBody(
    [
      ...Array.from({ length: 300 }, (_, i) => [1 + (i % 7), i]),
      [1025, 3],
      [5000, 9],
      ...Array.from({ length: 300 }, (_, i) => [1 + (i % 3), 200 + i]),
      [40_000, 77],
      [2, 5],
    ],
    'x-sum: 7\r\n',
  );
}

/**
 * An upstream answering with 1-byte chunks, 2,000 (12 KB) a write, one write a millisecond while
 * the last is taken: each of the proxy's reads stays under a batch's 16 KiB, so only the write at
 * the end of the read can tell the proxy to stop reading. `taken()`: bytes the proxy read.
 */
async function startPacedUpstream() {
  const piece = chunkedBody(Array.from({ length: 2000 }, (_, i) => [1, i])).wire.subarray(0, -5);
  let upstream = null;
  const server = await startRawServer((socket) => {
    upstream = socket;
    socket.once('data', () => {
      socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n');
      const timer = setInterval(() => {
        if (socket.destroyed) return clearInterval(timer);
        if (socket.writableLength === 0) socket.write(piece);
      }, 1);
      socket.on('close', () => clearInterval(timer));
    });
  });
  return {
    server,
    answering: () => upstream !== null,
    taken: () => (upstream === null ? 0 : upstream.bytesWritten - upstream.writableLength),
  };
}

describe('chunked answers of small chunks', () => {
  let certDir;
  let up;
  let px;
  /** What the upstream sends for each request path: writes 50 ms apart (each then a read of its own). */
  const answers = new Map();

  before(async () => {
    certDir = mkdtempSync(join(tmpdir(), 'cmux-chunked-answers-'));
    execFileSync('bash', [GEN, '--out', certDir, '--name', 'main', 'localhost'], { stdio: 'ignore' });
    up = await startRawServer((socket) => {
      let text = '';
      socket.on('data', (d) => {
        text += d.toString('latin1');
        for (let end = text.indexOf('\r\n\r\n'); end >= 0; end = text.indexOf('\r\n\r\n')) {
          const path = text.slice(0, end).split(' ')[1];
          text = text.slice(end + 4);
          answers.get(path).forEach((piece, i) => setTimeout(() => socket.write(piece), 50 * i));
        }
      });
    });
    px = await startProxy({ tls: { certFile: join(certDir, 'main.pem'), keyFile: join(certDir, 'main-key.pem') } });
  });
  after(async () => {
    await px?.proxy.stop();
    await up?.close();
    rmSync(certDir, { recursive: true, force: true });
  });

  /** Sends `paths` pipelined on one connection; resolves with the decoded answers and the proxy's stream writes to it. */
  async function fetchAll(secure, paths) {
    const socket = await connectClient(px.port, secure);
    let text = '';
    socket.on('data', (d) => (text += d.toString('latin1')));
    const writesBefore = new Map(streamWrites);
    socket.write(paths.map((p) => `GET ${p} HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`).join(''));
    assert.ok(await waitFor(() => decodeAnswers(text).length === paths.length, { timeoutMs: 10_000 }), `${decodeAnswers(text).length} of ${paths.length} answers`);
    socket.destroy();
    // The proxy's side of this connection: its local port is the proxy's, its writes counted there
    // (every client connection shares it: the connections of this file run one at a time).
    const writes = (streamWrites.get(px.port) ?? 0) - (writesBefore.get(px.port) ?? 0);
    return { answers: decodeAnswers(text), writes };
  }

  for (const secure of [false, true]) {
    const kind = secure ? 'TLS' : 'TCP';

    it(`${kind}: a client reading nothing stops an answer of small chunks coming in small reads (backpressure from each read's write)`, async () => {
      const paced = await startPacedUpstream();
      const socket = await connectClient(px.port, secure);
      try {
        socket.pause();
        socket.write(`GET /paced HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${paced.server.port}\r\n\r\n`);
        assert.ok(await waitFor(() => paced.answering(), { timeoutMs: 5000 }));
        await new Promise((r) => setTimeout(r, 2000));
        // What the proxy queued for the client beyond the sockets' buffers: a read's worth, not
        // every read's (without the end-of-read check, 3-4 MB here and growing while the upstream sends).
        const queued = lastWriter.get(px.port)?.writableLength ?? -1;
        assert.ok(queued >= 0 && queued < 256 * 1024, `the proxy queued ${queued} bytes for a client reading nothing (upstream handed ${paced.taken()})`);
      } finally {
        socket.destroy();
        await paced.server.close();
      }
    });

    it(`${kind}: 4,000 1-byte chunks in a read of their own arrive exact, in a few writes, not three a chunk`, async () => {
      const body = chunkedBody(Array.from({ length: 4000 }, (_, i) => [1, i]));
      // The head alone, then the chunks in one write: a read of body only.
      answers.set('/ones', [Buffer.from('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'), body.wire]);
      const { answers: got, writes } = await fetchAll(secure, ['/ones']);
      assert.equal(got[0].status, 200);
      assert.ok(got[0].data.equals(body.data), 'data differs');
      assert.equal(got[0].chunks, 4000);
      // One write per 16 KiB of batched chunks and per upstream read; the build before made three a chunk.
      assert.ok(writes <= 40, `${writes} writes to the client for one answer`);
    });

    it(`${kind}: small, large and small chunks with a trailer, then the next answer on the same connections: both exact, in order`, async () => {
      const mixed = mixedBody();
      const plain = chunkedBody([[3, 65]]);
      const head = 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n';
      // The head with the first chunks, then the rest through the trailer: one read each.
      const first = Buffer.concat([Buffer.from(head), mixed.wire]);
      answers.set('/mixed', [first.subarray(0, 700), first.subarray(700)]);
      answers.set('/after', [Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'), plain.wire])]);
      const { answers: got } = await fetchAll(secure, ['/mixed', '/after']);
      assert.equal(got.length, 2);
      assert.ok(got[0].data.equals(mixed.data), 'first answer differs');
      assert.equal(got[0].chunks, 604);
      assert.deepEqual(got[0].trailers, ['x-sum: 7']);
      assert.ok(got[1].data.equals(plain.data), 'second answer differs');
    });
  }

  /** One GET over HTTP/2; resolves with the answer's data, trailers and the proxy's stream writes for it. */
  async function fetchH2(secure, path) {
    const client = http2.connect(`${secure ? 'https' : 'http'}://localhost:${px.port}`, { rejectUnauthorized: false });
    client.on('error', () => {});
    try {
      const before = h2Writes.count;
      const req = client.request({ ':path': path, 'x-cmux-port-internal': String(up.port) });
      const data = [];
      let status = 0;
      let trailers = null;
      req.on('response', (h) => (status = h[':status']));
      req.on('trailers', (t) => (trailers = t));
      req.on('data', (d) => data.push(d));
      await new Promise((resolve, reject) => {
        req.on('end', resolve);
        req.on('error', reject);
      });
      return { status, data: Buffer.concat(data), trailers, writes: h2Writes.count - before };
    } finally {
      client.close();
    }
  }

  for (const secure of [false, true]) {
    const kind = secure ? 'TLS h2' : 'h2c';

    it(`${kind}: 4,000 1-byte chunks in a read of their own arrive exact, in a few stream writes, not one a chunk`, async () => {
      const body = chunkedBody(Array.from({ length: 4000 }, (_, i) => [1, i]));
      answers.set('/ones-h2', [Buffer.from('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'), body.wire]);
      const got = await fetchH2(secure, '/ones-h2');
      assert.equal(got.status, 200);
      assert.ok(got.data.equals(body.data), 'data differs');
      // One write per upstream read (and per 16 KiB batched); the build before made one a chunk.
      assert.ok(got.writes <= 10, `${got.writes} stream writes for one answer`);
    });

    it(`${kind}: small, large and small chunks with a trailer: exact, in order, the trailer relayed`, async () => {
      const mixed = mixedBody();
      const first = Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n'), mixed.wire]);
      answers.set('/mixed-h2', [first.subarray(0, 700), first.subarray(700)]);
      const got = await fetchH2(secure, '/mixed-h2');
      assert.equal(got.status, 200);
      assert.ok(got.data.equals(mixed.data), 'data differs');
      assert.equal(got.trailers?.['x-sum'], '7');
    });

    it(`${kind}: a stream reading nothing stops an answer of small chunks coming in small reads`, async () => {
      const paced = await startPacedUpstream();
      const client = http2.connect(`${secure ? 'https' : 'http'}://localhost:${px.port}`, { rejectUnauthorized: false });
      client.on('error', () => {});
      try {
        const req = client.request({ ':path': '/paced', 'x-cmux-port-internal': String(paced.server.port) });
        req.on('error', () => {});
        req.pause();
        assert.ok(await waitFor(() => paced.answering(), { timeoutMs: 5000 }));
        await new Promise((r) => setTimeout(r, 2000));
        // Past the client's 64 KiB window, what the proxy's stream holds: about a read's worth.
        const queued = h2Writes.last?.writableLength ?? -1;
        assert.ok(queued >= 0 && queued < 256 * 1024, `the proxy's stream queued ${queued} bytes for a client reading nothing (upstream handed ${paced.taken()})`);
      } finally {
        client.destroy();
        await paced.server.close();
      }
    });
  }
});
