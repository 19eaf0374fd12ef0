// Spliced tunnels (HTTP/1.1 Upgrade and CONNECT) hold backpressure both ways: a side that does
// not read stalls the side that writes, instead of the proxy buffering what it sends.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { startProxy, startRawServer, sleep } from './helpers/servers.mjs';

const CHUNK = Buffer.alloc(256 * 1024, 0x61);
const TOTAL = 96 * 1024 * 1024;
/** Kernel buffers on three loopback sockets plus the proxy's stream buffers stay well below this. */
const STALL_BOUND = 24 * 1024 * 1024;

/** Writes TOTAL bytes as fast as `socket` takes them; `state.flushed` counts bytes the kernel took. */
function flood(socket, state) {
  const pump = () => {
    while (state.queued < TOTAL) {
      state.queued += CHUNK.length;
      const ok = socket.write(CHUNK, () => (state.flushed += CHUNK.length));
      if (!ok) return;
    }
    socket.end();
  };
  socket.on('drain', pump);
  pump();
}

/** Opens the tunnel with `head` and returns the client socket once the proxy answered `status`. */
async function openTunnel(port, head, status) {
  const client = net.connect(port, '127.0.0.1');
  await once(client, 'connect');
  client.write(head);
  let answer = Buffer.alloc(0);
  while (!answer.includes('\r\n\r\n')) {
    const [chunk] = await once(client, 'data');
    answer = Buffer.concat([answer, chunk]);
  }
  client.pause();
  assert.match(answer.toString('latin1'), new RegExp(`^HTTP/1\\.1 ${status} `));
  const rest = answer.subarray(answer.indexOf('\r\n\r\n') + 4);
  return { client, already: rest.length };
}

/** Reads everything the client socket still gets; resolves with the byte count. */
function drainAll(client) {
  return new Promise((resolve, reject) => {
    let bytes = 0;
    client.on('data', (c) => (bytes += c.length));
    client.on('end', () => resolve(bytes));
    client.on('error', reject);
    client.resume();
  });
}

describe('tunnel backpressure', () => {
  for (const kind of ['upgrade', 'connect']) {
    it(`${kind}: an upstream flooding a client that does not read is stalled, then every byte arrives`, async (t) => {
      const state = { queued: 0, flushed: 0 };
      const up = await startRawServer((socket) => {
        if (kind === 'connect') flood(socket, state);
        else
          socket.once('data', () => {
            socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n');
            flood(socket, state);
          });
      });
      const { proxy, port } = await startProxy();
      t.after(async () => {
        await proxy.stop();
        await up.close();
      });
      const head =
        kind === 'connect'
          ? `CONNECT 127.0.0.1:${up.port} HTTP/1.1\r\nHost: 127.0.0.1:${up.port}\r\n\r\n`
          : `GET /ws HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`;
      const { client, already } = await openTunnel(port, head, kind === 'connect' ? 200 : 101);
      await sleep(1500);
      assert.ok(state.flushed < STALL_BOUND, `the upstream got rid of ${state.flushed} bytes while nobody read`);
      assert.ok(state.flushed > 0, 'nothing was sent at all');
      const received = already + (await drainAll(client));
      assert.equal(received, TOTAL);
    });
  }
});

// What a tunnel holds toward a side that does not read counts in the HTTP/2 session's held memory
// (src/h2/held-bodies.ts): an extended CONNECT stream's 1-byte DATA frames each became a write of
// their own on the upstream socket, ~100 bytes of memory each, uncounted below the socket's
// 16 KiB pause (100 WebSocket streams of one session held 214 MB).
describe('tunnel: held memory toward a side that does not read', () => {
  it('counts the bytes and the pieces queued on the other side, and those it read and the first has not taken (heldTowardPeer)', async () => {
    const { Tunnel, TUNNEL_CONNECT, heldTowardPeer } = await import('../dist/tunnel.js');
    const { StatsCounters } = await import('../dist/stats.js');
    const { HELD_PIECE_COST } = await import('../dist/held-memory.js');
    // a: the accepted end of a loopback connection; b: a socket to a server that never reads.
    const sink = net.createServer((s) => s.pause());
    await new Promise((r) => sink.listen(0, '127.0.0.1', r));
    const front = net.createServer();
    await new Promise((r) => front.listen(0, '127.0.0.1', r));
    const client = net.connect(front.address().port, '127.0.0.1');
    const [a] = await once(front, 'connection');
    const b = net.connect(sink.address().port, '127.0.0.1');
    await once(b, 'connect');
    try {
      const tunnel = new Tunnel(a, b, TUNNEL_CONNECT, new StatsCounters());
      assert.equal(heldTowardPeer(a), 0);
      assert.equal(heldTowardPeer(client), 0, 'not a tunnel end');
      // Fill the kernel's buffers toward the sink until b's stream queues, then add 1-byte pieces.
      const big = Buffer.alloc(256 * 1024);
      for (let i = 0; i < 400 && b.write(big); i++) await new Promise(setImmediate);
      const queuedBytes = b.writableLength;
      assert.ok(queuedBytes > 0, 'the sink stopped taking bytes');
      for (let i = 0; i < 1000; i++) b.write(Buffer.alloc(1));
      const held = heldTowardPeer(a);
      assert.ok(held >= b.writableLength + 1000 * HELD_PIECE_COST, `held ${held}, queued ${b.writableLength} bytes and 1000+ pieces`);
      assert.equal(heldTowardPeer(b), a.writableLength, 'nothing queued toward a');
      // The other way: pieces b read and a has not taken (b paused, its read buffer holds them).
      b.pause();
      const before = heldTowardPeer(a);
      for (let i = 0; i < 1000; i++) b.push(Buffer.alloc(1));
      const read = heldTowardPeer(a) - before;
      assert.ok(read >= 1000 * (1 + HELD_PIECE_COST), `counted ${read} for 1,000 1-byte pieces read and not taken`);
      tunnel.destroy();
    } finally {
      client.destroy();
      b.destroy();
      front.close();
      sink.close();
    }
  });
});
