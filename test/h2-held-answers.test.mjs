// What an HTTP/2 client's answers make the proxy hold counts in its session's memory: an upstream
// writing its answer a byte at a time to a client that reads none queued one write per byte on
// each stream (up to 16 KiB of bytes, ~170 bytes of memory each), uncounted: 100 such streams
// grew the proxy by ~8 MiB a second, 184 MiB after 15 s and on toward ~300 MiB.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { once } from 'node:events';
import { startProxy, sleep } from './helpers/servers.mjs';

const ENHANCE_YOUR_CALM = http2.constants.NGHTTP2_ENHANCE_YOUR_CALM;

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
    const sockets = new Set();
    const upstream = net.createServer((socket) => {
      socket.setNoDelay(true);
      socket.on('error', () => {});
      socket.once('data', () => {
        socket.write('HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n');
        sockets.add(socket);
      });
      socket.on('close', () => sockets.delete(socket));
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    let trickling = true;
    const one = Buffer.from('x');
    const trickle = () => {
      if (!trickling) return;
      // One byte per socket per turn: the proxy reads (and writes on) each byte by itself.
      for (const socket of sockets) if (socket.writableLength < 4096) socket.write(one);
      setImmediate(trickle);
    };
    trickle();
    const { proxy, port } = await startProxy();
    const client = http2.connect(`http://127.0.0.1:${port}`, { settings: { initialWindowSize: 0 } });
    client.on('error', () => {});
    try {
      let timer;
      const goaway = new Promise((resolve) => {
        client.once('goaway', (code) => resolve(code));
        timer = setTimeout(resolve, 30_000, null);
      });
      for (let i = 0; i < 100; i++) {
        const stream = client.request({ ':path': `/s${i}`, 'x-cmux-port-internal': String(upstream.address().port) });
        stream.on('error', () => {});
      }
      const code = await goaway;
      clearTimeout(timer);
      assert.equal(code, ENHANCE_YOUR_CALM, 'no GOAWAY(ENHANCE_YOUR_CALM) within 30 s');
    } finally {
      trickling = false;
      client.destroy();
      for (const socket of sockets) socket.destroy();
      upstream.close();
      await proxy.stop();
    }
  });
});
