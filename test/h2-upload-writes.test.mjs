// An HTTP/2 client's request body reaches an HTTP/1.1 upstream in few, large writes: the DATA
// frames (16 KiB each) read in one event-loop turn are written together (src/h2/request-body.ts),
// not one write(2) per frame. Counted at the proxy's TCP handle toward the upstream, for a body
// with a Content-Length and for one the proxy sends chunked; both arrive byte-exact.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { digestBody, startProxy, startUpstream } from './helpers/servers.mjs';
import { H2RawClient, dataFrame, headersFrame, requestHeaders } from './helpers/h2-raw.mjs';

const MIB = 1024 * 1024;
const SIZE = 4 * MIB;
const FRAME = 16 * 1024;
/** At most this many writes for SIZE bytes: one per DATA frame would be SIZE / FRAME = 256. */
const MAX_WRITES = 96;
const WRITE_METHODS = ['writev', 'writeBuffer', 'writeLatin1String', 'writeUtf8String', 'writeAsciiString'];

/** Counts the writes every TCP handle makes to a peer on `port` (the proxy's upstream sockets). */
async function countWritesTo(port) {
  const server = net.createServer((s) => s.destroy()).listen(0, '127.0.0.1');
  await once(server, 'listening');
  const probe = net.connect(server.address().port, '127.0.0.1');
  await once(probe, 'connect');
  let proto = Object.getPrototypeOf(probe._handle);
  while (proto !== null && !Object.hasOwn(proto, 'writev')) proto = Object.getPrototypeOf(proto);
  probe.destroy();
  server.close();
  assert.ok(proto, 'a TCP handle has writev');
  const peerPorts = new WeakMap();
  const counter = { writes: 0, bytes: 0 };
  const originals = WRITE_METHODS.filter((m) => typeof proto[m] === 'function').map((m) => [m, proto[m]]);
  for (const [name, original] of originals) {
    proto[name] = function counted(...args) {
      let peer = peerPorts.get(this);
      if (peer === undefined) {
        const out = {};
        this.getpeername?.(out);
        peer = out.port ?? 0;
        peerPorts.set(this, peer);
      }
      if (peer === port) counter.writes++;
      return original.apply(this, args);
    };
  }
  counter.restore = () => {
    for (const [name, original] of originals) proto[name] = original;
  };
  return counter;
}

function body() {
  const buf = Buffer.allocUnsafe(SIZE);
  for (let i = 0; i < SIZE; i += 4) buf.writeUInt32LE((i * 2654435761) >>> 0, i);
  return buf;
}

describe('HTTP/2 request bodies toward an HTTP/1.1 upstream', () => {
  let upstream;
  let proxy;
  let payload;
  let sha;
  before(async () => {
    payload = body();
    sha = createHash('sha256').update(payload).digest('hex');
    upstream = await startUpstream((req, res) => {
      digestBody(req).then((d) => res.end(JSON.stringify({ ...d, te: req.headers['transfer-encoding'] ?? null })), () => {});
    });
    proxy = await startProxy();
  });
  after(async () => {
    await proxy?.proxy.stop();
    await upstream?.close();
  });

  async function upload(withLength) {
    const session = http2.connect(proxy.url);
    try {
      const headers = { ':method': 'POST', ':path': '/up', 'x-cmux-port-internal': String(upstream.port) };
      if (withLength) headers['content-length'] = String(SIZE);
      const counter = await countWritesTo(upstream.port);
      let answer;
      try {
        const req = session.request(headers);
        // Written in 256 KiB pieces, as an application would.
        for (let i = 0; i < SIZE; i += 256 * 1024) if (!req.write(payload.subarray(i, i + 256 * 1024))) await once(req, 'drain');
        req.end();
        const [head] = await once(req, 'response');
        let text = '';
        req.setEncoding('utf8');
        for await (const c of req) text += c;
        answer = { status: head[':status'], ...JSON.parse(text) };
      } finally {
        counter.restore();
      }
      return { answer, writes: counter.writes };
    } finally {
      session.close();
    }
  }

  it('a body with a Content-Length: byte-exact, in at most MAX_WRITES writes', async (t) => {
    const { answer, writes } = await upload(true);
    t.diagnostic(`${writes} writes`);
    assert.deepEqual(answer, { status: 200, length: SIZE, sha, te: null });
    assert.ok(writes <= MAX_WRITES, `${writes} writes to the upstream for ${SIZE / FRAME} DATA frames`);
  });

  it('a body without one (sent chunked, one chunk per gathered batch): byte-exact, in at most MAX_WRITES writes', async (t) => {
    const { answer, writes } = await upload(false);
    t.diagnostic(`${writes} writes`);
    assert.deepEqual(answer, { status: 200, length: SIZE, sha, te: 'chunked' });
    assert.ok(writes <= MAX_WRITES, `${writes} writes to the upstream for ${SIZE / FRAME} DATA frames`);
  });
  it('20,000 DATA frames of 1-3 bytes (raw frames, sent chunked): the body arrives byte-exact, in far fewer writes than frames', async (t) => {
    const frames = 20_000;
    const pieces = Array.from({ length: frames }, (_, i) => payload.subarray(i * 3, i * 3 + 1 + (i % 3)));
    const whole = Buffer.concat(pieces);
    const client = await H2RawClient.connect(proxy.port);
    const counter = await countWritesTo(upstream.port);
    let out;
    try {
      client.send(headersFrame(1, requestHeaders(upstream.port, { method: 'POST', path: '/tiny' })));
      // Four writes of 5,000 frames each, the last frame ending the stream.
      for (let i = 0; i < frames; i += 5000) {
        client.send(...pieces.slice(i, i + 5000).map((p, j) => dataFrame(1, p, { endStream: i + j === frames - 1 })));
        await client.flushed();
      }
      out = await client.streamOutcome(1);
    } finally {
      counter.restore();
      client.close();
    }
    t.diagnostic(`${counter.writes} writes for ${frames} DATA frames`);
    assert.equal(out.status, 200);
    const answer = JSON.parse(out.body.toString());
    assert.deepEqual(answer, { length: whole.length, sha: createHash('sha256').update(whole).digest('hex'), te: 'chunked' });
    assert.ok(counter.writes <= 200, `${counter.writes} writes to the upstream for ${frames} DATA frames`);
  });
});
