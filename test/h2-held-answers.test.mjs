// What an HTTP/2 client's answers make the proxy hold counts in its session's memory: an upstream
// writing its answer a byte at a time to a client that reads none queued one write per byte on
// each stream (up to 16 KiB of bytes, ~170 bytes of memory each), uncounted: 100 such streams
// grew the proxy by ~8 MiB a second, 184 MiB after 15 s and on toward ~300 MiB.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { once } from 'node:events';
import { startProxy, startRawServer, sleep } from './helpers/servers.mjs';

const ENHANCE_YOUR_CALM = http2.constants.NGHTTP2_ENHANCE_YOUR_CALM;

/**
 * Opens `count` streams to `upstreamPort` through the proxy on a session whose stream window is 0
 * (it reads nothing) and resolves with the session's GOAWAY code, 'closed' when it closes
 * without one, or null after 30 s.
 */
async function goawayOfStalledStreams(port, upstreamPort, count) {
  const client = http2.connect(`http://127.0.0.1:${port}`, { settings: { initialWindowSize: 0 } });
  client.on('error', () => {});
  let timer;
  const code = new Promise((resolve) => {
    client.once('goaway', (c) => resolve(c));
    client.once('close', () => resolve('closed'));
    timer = setTimeout(resolve, 30_000, null);
  });
  for (let i = 0; i < count; i++) {
    const stream = client.request({ ':path': `/s${i}`, 'x-cmux-port-internal': String(upstreamPort) });
    stream.on('error', () => {});
  }
  try {
    return await code;
  } finally {
    clearTimeout(timer);
    client.destroy();
  }
}

/** An RFC 8441 WebSocket request to `upstreamPort` on `client` (which has the proxy's SETTINGS). */
function requestWebSocket(client, upstreamPort) {
  return client.request(
    { ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': '/chat', 'sec-websocket-version': '13', 'x-cmux-port-internal': String(upstreamPort) },
    { endStream: false },
  );
}

describe('HTTP/2 answers waiting for the client count in the session memory', () => {
  it('counts each write a stream has not handed to its client yet (writesPendingCost)', async () => {
    const { requestMemoryHeld } = await import('../dist/h2/held-bodies.js');
    const { HELD_PIECE_COST } = await import('../dist/held-memory.js');
    const server = http2.createServer();
    const streams = [];
    server.on('stream', (stream) => streams.push(stream));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    // A stream window of 0: no DATA frame can go; every write waits in the server's stream.
    const client = http2.connect(`http://127.0.0.1:${server.address().port}`, { settings: { initialWindowSize: 0 } });
    try {
      const req = client.request({ ':path': '/' });
      req.on('error', () => {});
      while (streams.length === 0) await sleep(5);
      const stream = streams[0];
      stream.respond({ ':status': 200 });
      await sleep(50);
      const before = requestMemoryHeld(stream.session, () => undefined);
      const pieces = 1000;
      for (let i = 0; i < pieces; i++) stream.write(Buffer.from('x'));
      await sleep(50);
      const held = requestMemoryHeld(stream.session, () => undefined);
      assert.notEqual(held, null, 'this Node keeps its streams where the count looks');
      assert.ok(held - before >= pieces * HELD_PIECE_COST, `counted ${held - before} for ${pieces} 1-byte writes`);
      assert.ok(held - before <= (pieces + 4) * HELD_PIECE_COST, `counted ${held - before}: the bytes are not counted, only the pieces`);
    } finally {
      client.destroy();
      for (const s of streams) s.destroy();
      server.close();
    }
  });

  it('an upstream answering 100 streams a byte at a time to a client that reads none: the session gets GOAWAY(ENHANCE_YOUR_CALM)', { timeout: 40_000 }, async () => {
    const answering = new Set();
    const upstream = await startRawServer((socket) => {
      socket.setNoDelay(true);
      socket.once('data', () => {
        socket.write('HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n');
        answering.add(socket);
      });
      socket.on('close', () => answering.delete(socket));
    });
    let trickling = true;
    const one = Buffer.from('x');
    const trickle = () => {
      if (!trickling) return;
      // One byte per socket per turn: the proxy reads (and writes on) each byte by itself.
      for (const socket of answering) if (socket.writableLength < 4096) socket.write(one);
      setImmediate(trickle);
    };
    trickle();
    const { proxy, port } = await startProxy();
    try {
      const code = await goawayOfStalledStreams(port, upstream.port, 100);
      assert.equal(code, ENHANCE_YOUR_CALM, `no GOAWAY(ENHANCE_YOUR_CALM) within 30 s (${code})`);
    } finally {
      trickling = false;
      await upstream.close();
      await proxy.stop();
    }
  });

  it('an extended CONNECT the upstream refuses with an endless answer waits for the client: the upstream is paused, not read on into memory', { timeout: 20_000 }, async () => {
    let sent = 0;
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    const upstream = await startRawServer((socket) => {
      socket.once('data', () => {
        socket.write('HTTP/1.1 403 Forbidden\r\ncontent-length: 100000000000\r\n\r\n');
        const pump = () => {
          while (!socket.destroyed && socket.write(chunk)) sent += chunk.length;
        };
        socket.on('drain', pump);
        pump();
      });
    });
    const { proxy, port } = await startProxy();
    // A stream window of 0: the answer's DATA frames cannot go; the proxy must not read on for it.
    const client = http2.connect(`http://127.0.0.1:${port}`, { settings: { initialWindowSize: 0 } });
    client.on('error', () => {});
    try {
      await once(client, 'remoteSettings');
      const stream = requestWebSocket(client, upstream.port);
      stream.on('error', () => {});
      const [headers] = await once(stream, 'response');
      assert.equal(headers[':status'], 403);
      await sleep(2000);
      // Paused: what the kernel's socket buffers hold, a few MiB. Read on, it was ~200 MiB a second.
      assert.ok(sent < 48 * 1024 * 1024, `the upstream could send ${Math.round(sent / 1048576)} MiB toward a client that took none`);
    } finally {
      client.destroy();
      await upstream.close();
      await proxy.stop();
    }
  });

  it('a refused extended CONNECT\'s 8 MiB answer reaches a client that reads it, whole, through the pauses', { timeout: 20_000 }, async () => {
    const body = Buffer.alloc(8 * 1024 * 1024);
    for (let i = 0; i < body.length; i++) body[i] = i % 251;
    const upstream = await startRawServer((socket) => {
      socket.once('data', () => {
        socket.write(`HTTP/1.1 403 Forbidden\r\ncontent-length: ${body.length}\r\n\r\n`);
        socket.end(body);
      });
    });
    const { proxy, port } = await startProxy();
    const client = http2.connect(`http://127.0.0.1:${port}`);
    client.on('error', () => {});
    try {
      await once(client, 'remoteSettings');
      const stream = requestWebSocket(client, upstream.port);
      const [headers] = await once(stream, 'response');
      assert.equal(headers[':status'], 403);
      const chunks = [];
      // A slow reader first: the stream fills and the upstream is paused; then it reads on.
      stream.pause();
      await sleep(300);
      stream.on('data', (c) => chunks.push(c));
      stream.resume();
      await once(stream, 'end');
      const got = Buffer.concat(chunks);
      assert.equal(got.length, body.length);
      assert.ok(got.equals(body), 'the answer arrived changed');
    } finally {
      client.destroy();
      await upstream.close();
      await proxy.stop();
    }
  });

  it('an h2c upstream answering a byte per DATA frame to a client that reads none: the session gets GOAWAY(ENHANCE_YOUR_CALM)', { timeout: 40_000 }, async () => {
    const upstream = http2.createServer();
    const streams = new Set();
    upstream.on('stream', (stream) => {
      stream.on('error', () => {});
      stream.respond({ ':status': 200 });
      // Past the client stream's high-water mark at once: the proxy pauses this stream from here.
      stream.write(Buffer.alloc(80 * 1024, 0x61));
      streams.add(stream);
      stream.on('close', () => streams.delete(stream));
    });
    upstream.on('sessionError', () => {});
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    let trickling = true;
    const one = Buffer.from('x');
    const trickle = () => {
      if (!trickling) return;
      // One byte per stream per turn, each its own DATA frame, within the window the proxy grants.
      for (const stream of streams) if (!stream.destroyed && stream.writableLength < 4096) stream.write(one);
      setImmediate(trickle);
    };
    trickle();
    const { proxy, port } = await startProxy({ upstreamProtocol: 'h2c' });
    try {
      const code = await goawayOfStalledStreams(port, upstream.address().port, 16);
      assert.equal(code, ENHANCE_YOUR_CALM, `no GOAWAY(ENHANCE_YOUR_CALM) within 30 s (${code})`);
    } finally {
      trickling = false;
      for (const stream of streams) stream.destroy();
      upstream.close();
      await proxy.stop();
    }
  });
});
