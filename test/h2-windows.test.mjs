// HTTP/2 receive windows: the proxy gives clients and h2c upstreams a 1 MiB stream window and a
// 16 MiB connection window (RFC 9113 §6.9), bodies stay byte-exact both ways, and a stream whose
// destination does not read still stops its sender. With more than 16 streams open on a session
// the stream window narrows (16 MiB spread over the session's streams), so that what a peer's
// unread streams make the proxy hold stays ~32 MiB per session, not 1 MiB per stream; a peer
// that does not acknowledge the narrowing, sends past it, or fills its streams' old windows past
// 48 MiB while it holds the acknowledgement back, loses the session.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { digestBody, startProxy, startUpstream, h2connect, waitFor, sleep } from './helpers/servers.mjs';
import { ERROR, FLAG, FRAME, H2RawClient, SETTING, dataFrame, errorName, headersFrame, settingsFrame } from './helpers/h2-raw.mjs';

const MiB = 1024 * 1024;
const STREAM_WINDOW = MiB;
const CONNECTION_WINDOW = 16 * MiB;

const sha = (buf) => createHash('sha256').update(buf).digest('hex');

/** Bytes that differ along the body, so a reordered or repeated piece changes the hash. */
function pattern(size) {
  const buf = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) buf.writeUInt32LE(i, i);
  return buf;
}

/** An h2c upstream: POST echoes its body's sha256 and length, GET /big sends `big`. */
async function startH2Upstream(big, options = {}) {
  const sessions = [];
  const server = http2.createServer(options);
  server.on('session', (s) => sessions.push(s));
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    if (headers[':method'] === 'GET') {
      stream.respond({ ':status': 200, 'content-length': String(big.length) });
      stream.end(big);
      return;
    }
    digestBody(stream).then(({ length, sha }) => {
      stream.respond({ ':status': 200, 'content-type': 'application/json' });
      stream.end(JSON.stringify({ sha, length }));
    }, () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    sessions,
    port: server.address().port,
    close: () => new Promise((r) => {
      for (const s of sessions) s.destroy();
      server.close(r);
    }),
  };
}

/** Waits for a sender to stop: `count()` (bytes sent so far) the same, above 0, twice 300 ms apart. That count, or null after 20 s. */
async function whenStill(count) {
  let last = -1;
  const still = await waitFor(
    async () => {
      const now = count();
      if (now > 0 && now === last) return true;
      last = now;
      await sleep(300);
      return false;
    },
    { timeoutMs: 20_000, stepMs: 300 },
  );
  return still ? last : null;
}

/** Sends `body` on one stream and collects the response body. */
function h2exchange(session, headers, body) {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: body === undefined });
    const chunks = [];
    let status;
    stream.on('response', (h) => (status = h[':status']));
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', () => resolve({ status, body: Buffer.concat(chunks) }));
    stream.on('error', reject);
    if (body !== undefined) stream.end(body);
  });
}

describe('HTTP/2 receive windows', () => {
  it('advertises a 1 MiB stream window and opens a 16 MiB connection window to clients', async () => {
    const px = await startProxy();
    const client = h2connect(px.port);
    try {
      const [settings] = await once(client, 'remoteSettings');
      assert.equal(settings.initialWindowSize, STREAM_WINDOW);
      // The connection window grows by WINDOW_UPDATE on stream 0, right after SETTINGS.
      assert.ok(
        await waitFor(() => client.state.remoteWindowSize === CONNECTION_WINDOW, { timeoutMs: 10000 }),
        `client may send ${client.state.remoteWindowSize} bytes on the connection, expected ${CONNECTION_WINDOW}`,
      );
    } finally {
      client.destroy();
      await px.proxy.stop();
    }
  });

  it('gives h2c upstreams the same windows, and 8 MiB bodies pass byte-exact both ways', async () => {
    const big = pattern(8 * MiB);
    const up = await startH2Upstream(big);
    const px = await startProxy({ upstreamProtocol: 'h2c' });
    const client = h2connect(px.port);
    try {
      const route = { 'x-cmux-port-internal': String(up.port) };
      const upload = await h2exchange(client, { ':method': 'POST', ':path': '/up', ...route }, big);
      assert.equal(upload.status, 200);
      assert.deepEqual(JSON.parse(upload.body.toString()), { sha: sha(big), length: big.length });
      const download = await h2exchange(client, { ':method': 'GET', ':path': '/big', ...route });
      assert.equal(download.status, 200);
      assert.equal(download.body.length, big.length);
      assert.equal(sha(download.body), sha(big));

      assert.equal(up.sessions.length, 1);
      const fromProxy = up.sessions[0];
      assert.equal(fromProxy.remoteSettings.initialWindowSize, STREAM_WINDOW);
      // What the upstream may still send on the connection: the proxy's window, topped up as it reads.
      assert.ok(
        await waitFor(() => fromProxy.state.remoteWindowSize > 8 * MiB, { timeoutMs: 10000 }),
        `upstream may send ${fromProxy.state.remoteWindowSize} bytes on the connection`,
      );
    } finally {
      client.destroy();
      await px.proxy.stop();
      await up.close();
    }
  });

  it('stops an HTTP/2 upload whose HTTP/1.1 upstream does not read, and serves the connection after', async () => {
    let held = null;
    const server = http.createServer((req, res) => {
      if (req.url === '/hold') {
        held = { req, res };
        req.pause(); // never reads: the proxy's writes stall, the client's stream must stop
        return;
      }
      res.end('ok');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const px = await startProxy();
    const client = h2connect(px.port);
    try {
      const route = { 'x-cmux-port-internal': String(server.address().port) };
      const stream = client.request({ ':method': 'POST', ':path': '/hold', ...route });
      stream.on('error', () => {});
      const piece = Buffer.alloc(256 * 1024, 0x61);
      const total = 256 * MiB;
      let written = 0;
      // Writes until the stream's buffer backs up; flow control means the proxy stops taking bytes.
      const pump = () => {
        while (written < total) {
          written += piece.length;
          if (!stream.write(piece)) {
            stream.once('drain', pump);
            return;
          }
        }
      };
      pump();
      assert.ok(await waitFor(() => held !== null, { timeoutMs: 10000 }), 'upstream never got the request');
      const last = await whenStill(() => written - stream.writableLength);
      assert.ok(last !== null, 'the client kept sending');
      // Bounded by the stream window plus the kernel's socket buffers on the upstream path.
      assert.ok(last < 32 * MiB, `client sent ${last} bytes into a stream nobody reads`);
      // The same connection still serves other streams.
      const other = await h2exchange(client, { ':method': 'GET', ':path': '/other', ...route });
      assert.equal(other.status, 200);
      assert.equal(other.body.toString(), 'ok');
    } finally {
      client.destroy();
      held?.res.destroy();
      await px.proxy.stop();
      await new Promise((r) => {
        server.closeAllConnections();
        server.close(r);
      });
    }
  });
});

describe('HTTP/2 stream windows with many streams open', () => {
  const STREAMS = 100;
  /** Over the 1 MiB window, so that each of the 100 streams could fill it. */
  const BODY_BYTES = 1.25 * MiB;
  /**
   * ~32 MiB a session may hold (16 streams' 1 MiB windows filled before the narrowing, then 16 MiB
   * over the rest), plus the client's own windows and the sockets' buffers. Without the narrowing
   * the proxy took in ~100 MiB (1 MiB per stream).
   */
  const HELD_MAX = 48 * MiB;
  /** 16 MiB over the proxy's 100 streams, in whole KiB: the narrow window a client gets. */
  const NARROW_CLIENT_WINDOW = 166_912;

  /** A route resolver that answers `port` once `release()` is called (or after `ms`). */
  function heldResolver(port, ms) {
    const waiting = [];
    const release = () => {
      for (const done of waiting.splice(0)) done(port);
    };
    const resolver = () =>
      new Promise((resolve) => {
        waiting.push(resolve);
        setTimeout(release, ms).unref();
      });
    return { resolver, release };
  }

  it('100 uploads while their route resolves: the proxy takes in under 48 MiB, then each body arrives whole', async () => {
    const sink = await startUpstream((req, res) => {
      let n = 0;
      req.on('data', (c) => {
        n += c.length;
      });
      req.on('end', () => res.end(String(n)));
    });
    const held = heldResolver(sink.port, 30_000);
    const px = await startProxy({ containerPortResolver: held.resolver, portResolverCacheTtlMs: 0 });
    // The client holds what it has still to send; past its own session memory (10 MB by default)
    // Node 22 and 24 reset a stream whose answer then arrives (ENHANCE_YOUR_CALM).
    const client = http2.connect(`http://127.0.0.1:${px.port}`, { maxSessionMemory: 1000 });
    client.on('error', () => {});
    try {
      await once(client, 'remoteSettings');
      const body = Buffer.alloc(BODY_BYTES, 0x61);
      const answers = [];
      for (let i = 0; i < STREAMS; i++) {
        const stream = client.request({ ':method': 'POST', ':path': `/up${i}`, ':authority': 'app.3000.localhost' });
        stream.on('error', () => {});
        const answer = { status: 0, text: '', ended: false };
        stream.on('response', (h) => (answer.status = h[':status']));
        stream.setEncoding('latin1');
        stream.on('data', (c) => (answer.text += c));
        stream.on('end', () => (answer.ended = true));
        stream.end(body);
        answers.push(answer);
      }
      // What left the client by now is in the proxy (it reads its connection throughout) or in
      // the sockets' buffers; the client then waits for stream window.
      const sent = await whenStill(() => client.socket.bytesWritten);
      assert.ok(sent !== null, 'the client never stopped sending');
      assert.ok(sent < HELD_MAX, `the proxy took in ${(sent / MiB).toFixed(1)} MiB of bodies before they had a route`);
      assert.equal(client.remoteSettings.initialWindowSize, NARROW_CLIENT_WINDOW);
      held.release();
      assert.ok(await waitFor(() => answers.every((a) => a.ended), { timeoutMs: 30_000 }), `${answers.filter((a) => a.ended).length} of ${STREAMS} answers`);
      for (const a of answers) assert.deepEqual([a.status, a.text], [200, String(BODY_BYTES)]);
      // All streams closed: the window is wide again.
      assert.ok(await waitFor(() => client.remoteSettings.initialWindowSize === STREAM_WINDOW), `stream window ${client.remoteSettings.initialWindowSize}`);
    } finally {
      held.release();
      client.destroy();
      await px.proxy.stop();
      await sink.close();
    }
  });

  it('100 answers from an h2c upstream to a client not reading them: the proxy takes in under 48 MiB, then each arrives whole', async () => {
    const big = pattern(BODY_BYTES);
    // Node's default 10 MB session memory would refuse streams once ~8 answers wait to be sent.
    const up = await startH2Upstream(big, { maxSessionMemory: 1000 });
    const px = await startProxy({ upstreamProtocol: 'h2c' });
    const client = h2connect(px.port);
    try {
      const route = { 'x-cmux-port-internal': String(up.port) };
      const streams = [];
      for (let i = 0; i < STREAMS; i++) {
        const stream = client.request({ ':method': 'GET', ':path': `/big${i}`, ...route });
        stream.on('error', () => {});
        // Not read: Node stops returning this stream's window (64 KiB, the client's default).
        stream.pause();
        streams.push(stream);
      }
      assert.ok(await waitFor(() => up.sessions.length === 1, { timeoutMs: 10_000 }));
      const toProxy = up.sessions[0];
      const sent = await whenStill(() => toProxy.socket.bytesWritten);
      assert.ok(sent !== null, 'the upstream never stopped sending');
      assert.ok(sent < HELD_MAX, `the upstream sent ${(sent / MiB).toFixed(1)} MiB toward a client that reads nothing`);
      assert.ok(toProxy.remoteSettings.initialWindowSize < STREAM_WINDOW, `stream window ${toProxy.remoteSettings.initialWindowSize}`);
      const bodies = await Promise.all(
        streams.map(
          (stream) =>
            new Promise((resolve) => {
              const chunks = [];
              stream.on('data', (c) => chunks.push(c));
              stream.on('end', () => resolve(Buffer.concat(chunks)));
              stream.on('close', () => resolve(Buffer.concat(chunks)));
              stream.resume();
            }),
        ),
      );
      const want = sha(big);
      for (const b of bodies) assert.equal(sha(b), want);
      assert.ok(await waitFor(() => toProxy.remoteSettings.initialWindowSize === STREAM_WINDOW), `stream window ${toProxy.remoteSettings.initialWindowSize}`);
    } finally {
      client.destroy();
      await px.proxy.stop();
      await up.close();
    }
  });

  /**
   * Runs `check(client, px)` with a raw client of a fresh proxy that ACKs the proxy's first
   * SETTINGS only and has 17 POSTs open (their route held), once the narrowing SETTINGS came.
   */
  async function withClientPastWideStreams(check) {
    const held = heldResolver(1, 30_000);
    const px = await startProxy({ containerPortResolver: held.resolver, portResolverCacheTtlMs: 0 });
    let client;
    try {
      client = await H2RawClient.connect(px.port, { autoAck: false });
      const first = await client.waitForFrame((f) => f.type === FRAME.SETTINGS && !(f.flags & FLAG.ACK));
      assert.ok(first !== null, 'no SETTINGS from the proxy');
      client.send(settingsFrame({}, { ack: true }));
      for (let i = 0; i < 17; i++) {
        client.send(headersFrame(1 + 2 * i, [[':method', 'POST'], [':scheme', 'http'], [':authority', 'app.3000.localhost'], [':path', `/p${i}`]]));
      }
      const narrowing = await client.waitForFrame((f) => f.type === FRAME.SETTINGS && !(f.flags & FLAG.ACK), { from: client.frames.indexOf(first) + 1, timeoutMs: 5000 });
      assert.ok(narrowing !== null, 'the proxy sent no second SETTINGS with 17 streams open');
      assert.equal(narrowing.payload.length, 6);
      assert.deepEqual([narrowing.payload.readUInt16BE(0), narrowing.payload.readUInt32BE(2)], [SETTING.INITIAL_WINDOW_SIZE, NARROW_CLIENT_WINDOW]);
      await check(client, px);
    } finally {
      client?.close();
      held.release();
      await px.proxy.stop();
    }
  }

  it('a client that does not acknowledge the narrowing gets GOAWAY(SETTINGS_TIMEOUT) after 10 s, and the connection closes', async () => {
    await withClientPastWideStreams(async (client, px) => {
      const started = Date.now();
      const goaway = await client.waitForGoaway({ timeoutMs: 14_000 });
      assert.ok(goaway !== null, 'no GOAWAY');
      assert.equal(goaway.errorCode, ERROR.SETTINGS_TIMEOUT, errorName(goaway.errorCode));
      assert.ok(Date.now() - started > 9000, `GOAWAY after ${Date.now() - started} ms`);
      assert.ok(await client.waitForClose({ timeoutMs: 3000 }), 'the connection stayed open');
      assert.ok(await waitFor(() => px.proxy.getStats().activeConnections === 0), 'the connection still counts');
    });
  });

  it('a client that holds its acknowledgement back while filling every stream\'s old window loses the session past 48 MiB held, long before the 10 s timeout', async () => {
    await withClientPastWideStreams(async (client, px) => {
      const started = Date.now();
      // 83 more POSTs (100 open, all held): the narrowing is not acknowledged, so nghttp2 lets
      // each take its old 1 MiB window. Before, the proxy took in all 100 MiB and held it for the
      // 10 s the client may take to acknowledge.
      for (let i = 17; i < STREAMS; i++) {
        client.send(headersFrame(1 + 2 * i, [[':method', 'POST'], [':scheme', 'http'], [':authority', 'app.3000.localhost'], [':path', `/p${i}`]]));
      }
      // 1 MiB a stream, within the connection window the proxy gives back (16 MiB at first).
      const granted = () => 65_535 + client.frames.reduce((sum, f) => (f.type === FRAME.WINDOW_UPDATE && f.streamId === 0 ? sum + (f.payload.readUInt32BE(0) & 0x7fffffff) : sum), 0);
      const piece = Buffer.alloc(16 * 1024, 0x62);
      let sent = 0;
      for (let i = 0; i < STREAMS && !client.closed; i++) {
        if (!(await waitFor(() => client.closed || granted() - sent >= STREAM_WINDOW, { timeoutMs: 2000 }))) break;
        for (let k = 0; k < STREAM_WINDOW / piece.length; k++) client.send(dataFrame(1 + 2 * i, piece));
        sent += STREAM_WINDOW;
        await client.flushed();
      }
      const goaway = await client.waitForGoaway({ timeoutMs: 12_000 });
      assert.ok(goaway !== null, `no GOAWAY after ${sent / MiB} MiB sent`);
      if (sent > HELD_MAX) {
        // Node 20 and 22 give the connection window back as data arrives: the client got past
        // 48 MiB, and the session is closed for it at once, not at the 10 s timeout.
        assert.equal(goaway.errorCode, ERROR.ENHANCE_YOUR_CALM, `${errorName(goaway.errorCode)} after ${sent / MiB} MiB sent`);
        assert.ok(Date.now() - started < 8000, `GOAWAY after ${Date.now() - started} ms`);
        // Closed about when the client had sent what it may hold, not all 100 MiB.
        assert.ok(sent < 80 * MiB, `${sent / MiB} MiB sent before the GOAWAY`);
      } else {
        // Node 24 stopped giving the connection window back before the client got that far:
        // then the timeout ends the session.
        assert.equal(goaway.errorCode, ERROR.SETTINGS_TIMEOUT, `${errorName(goaway.errorCode)} after ${sent / MiB} MiB sent`);
      }
      assert.ok(await client.waitForClose({ timeoutMs: 3000 }), 'the connection stayed open');
      assert.ok(await waitFor(() => px.proxy.getStats().activeConnections === 0), 'the connection still counts');
    });
  });

  it('a client sending its request bodies as 1-byte DATA frames to stalled streams loses the session once they cost the proxy 48 MiB, not at 2 GiB', async () => {
    const held = heldResolver(1, 30_000);
    const px = await startProxy({ containerPortResolver: held.resolver, portResolverCacheTtlMs: 0 });
    const client = await H2RawClient.connect(px.port, { keepData: false });
    try {
      // 16 POSTs (their windows stay 1 MiB: no narrowing), their route held: Node keeps each
      // DATA frame's payload as a Buffer of its own, ~127 bytes a frame. Before, 16 such streams
      // held 408 MiB after 3 MiB of data, and their windows allowed 16 MiB of it.
      for (let i = 0; i < 16; i++) {
        client.send(headersFrame(1 + 2 * i, [[':method', 'POST'], [':scheme', 'http'], [':authority', 'app.3000.localhost'], [':path', `/t${i}`]]));
      }
      const frames = [];
      for (let k = 0; k < 1000; k++) for (let i = 0; i < 16; i++) frames.push(dataFrame(1 + 2 * i, Buffer.from('z')));
      const batch = Buffer.concat(frames);
      let sent = 0;
      // Up to 4.8 million frames: 300 KiB a stream, within every window.
      for (let round = 0; round < 300 && !client.closed; round++) {
        if (client.frames.some((f) => f.type === FRAME.GOAWAY)) break;
        client.send(batch);
        sent += frames.length;
        await client.flushed();
      }
      const goaway = await client.waitForGoaway({ timeoutMs: 5000 });
      assert.ok(goaway !== null, `no GOAWAY after ${sent} frames`);
      assert.equal(goaway.errorCode, ERROR.ENHANCE_YOUR_CALM, errorName(goaway.errorCode));
      // 48 MiB is ~390,000 such frames; the count runs every 250 ms.
      assert.ok(sent < 2_500_000, `${sent} frames taken before the GOAWAY`);
      assert.ok(await client.waitForClose({ timeoutMs: 3000 }), 'the connection stayed open');
      assert.ok(await waitFor(() => px.proxy.getStats().activeConnections === 0), 'the connection still counts');
    } finally {
      client.close();
      held.release();
      await px.proxy.stop();
    }
  });

  it('a client that acknowledges the narrowing and sends past it gets FLOW_CONTROL_ERROR', async () => {
    await withClientPastWideStreams(async (client) => {
      client.send(settingsFrame({}, { ack: true }));
      // The connection window (16 MiB) allows it; stream 1's narrowed window does not.
      const piece = Buffer.alloc(16 * 1024, 0x61);
      for (let i = 0; i < 16; i++) client.send(dataFrame(1, piece));
      const error = await client.waitForFrame((f) => (f.type === FRAME.RST_STREAM && f.streamId === 1) || f.type === FRAME.GOAWAY, { timeoutMs: 5000 });
      assert.ok(error !== null, 'the proxy took 256 KiB on a stream whose window is 163 KiB');
      assert.equal(error.errorCode, ERROR.FLOW_CONTROL_ERROR, errorName(error.errorCode));
    });
  });
});
