// stop() closes WebSockets with 1001 (Going Away): a close frame both ways at a frame boundary,
// masked toward the upstream, then the TCP connections once the peers answered. Real `ws`
// clients and servers on 127.0.0.1 port 0; HTTP/2 extended CONNECT with node:http2 and frames
// built by hand. `ws` fails a connection with 1002 on a broken frame and reports 1006 when the
// TCP connection ends without a close frame, so the codes say what reached each peer.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import { once } from 'node:events';
import WebSocket from 'ws';
import { startProxy, startRawServer, waitFor } from './helpers/servers.mjs';
import { startWsEcho, openWs, closed, nextMessage } from './helpers/ws.mjs';
import { clientFrame, parseServerFrames } from './helpers/ws-frames.mjs';
import { startCli, stopCli } from './helpers/cli.mjs';

const MiB = 1024 * 1024;
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const REASON = 'proxy shutting down';

function routeTo(port) {
  return { headers: { 'X-Cmux-Port-Internal': String(port) }, perMessageDeflate: false };
}

const sha = (buf) => crypto.createHash('sha256').update(buf).digest('hex');

/** Resolves once `socket` has read at least `bytes` bytes. */
function receivedAtLeast(socket, bytes) {
  return new Promise((resolve) => {
    let got = 0;
    const onData = (c) => {
      got += c.length;
      if (got >= bytes) {
        socket.removeListener('data', onData);
        resolve();
      }
    };
    socket.on('data', onData);
  });
}

/** Every 'error' a ws end emits (a protocol error would be one). */
function errorsOf(ws) {
  const errors = [];
  ws.removeAllListeners('error');
  ws.on('error', (err) => errors.push(err.message));
  return errors;
}

/** An upstream that accepts any WebSocket handshake with a 101, then hands the socket to `upgraded`. */
function startRaw101(upgraded) {
  return startRawServer((socket) => {
    let head = '';
    const onData = (c) => {
      head += c.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      socket.removeListener('data', onData);
      const key = /sec-websocket-key: *(\S+)/i.exec(head)[1];
      const accept = crypto.createHash('sha1').update(key + WS_GUID).digest('base64');
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`);
      upgraded(socket);
    };
    socket.on('data', onData);
  });
}

/** Unmasks the client frames in `buf` (complete ones only): [{ opcode, payload }]. */
function clientFrames(buf) {
  const frames = [];
  let at = 0;
  while (buf.length - at >= 6) {
    let len = buf[at + 1] & 0x7f;
    let off = at + 2;
    if (len === 126) {
      len = buf.readUInt16BE(off);
      off += 2;
    } else if (len === 127) {
      len = Number(buf.readBigUInt64BE(off));
      off += 8;
    }
    const key = buf.subarray(off, off + 4);
    off += 4;
    if (buf.length < off + len) break;
    const payload = Buffer.alloc(len);
    for (let i = 0; i < len; i++) payload[i] = buf[off + i] ^ key[i & 3];
    frames.push({ opcode: buf[at] & 0x0f, masked: (buf[at + 1] & 0x80) !== 0, payload });
    at = off + len;
  }
  return frames;
}

describe('stop(): WebSockets get a close frame 1001 (HTTP/1.1 Upgrade)', () => {
  it('an idle WebSocket (permessage-deflate): the client and the upstream both see close 1001 "proxy shutting down"', { timeout: 30_000 }, async () => {
    const echo = await startWsEcho({ perMessageDeflate: { threshold: 0 } });
    const { proxy, port } = await startProxy();
    try {
      const ws = await openWs(`ws://127.0.0.1:${port}/idle`, undefined, { ...routeTo(echo.port), perMessageDeflate: { threshold: 0 } });
      const srv = await echo.connectionFor('/idle');
      assert.match(ws.extensions, /permessage-deflate/);
      // Compressed frames (RSV1 set) both ways before the stop.
      ws.send('hello hello hello hello');
      assert.equal(String((await nextMessage(ws)).data), 'hello hello hello hello');
      const clientClosed = closed(ws);
      const upstreamClosed = closed(srv);
      await proxy.stop();
      assert.deepEqual(await clientClosed, { code: 1001, reason: REASON });
      assert.deepEqual(await upstreamClosed, { code: 1001, reason: REASON });
      assert.equal(proxy.getStats().websocketConnections, 0);
    } finally {
      if (proxy.isRunning()) await proxy.stop();
      await echo.close();
    }
  });

  it('a 4 MiB message in flight both ways at the deadline: each arrives whole, then 1001, no protocol error', { timeout: 30_000 }, async () => {
    const echo = await startWsEcho({}, { echo: false });
    const { proxy, port } = await startProxy();
    try {
      const ws = await openWs(`ws://127.0.0.1:${port}/inflight`, undefined, routeTo(echo.port));
      const srv = await echo.connectionFor('/inflight');
      const clientErrors = errorsOf(ws);
      const upstreamErrors = errorsOf(srv);
      const up = crypto.randomBytes(4 * MiB);
      const down = crypto.randomBytes(4 * MiB);
      const clientGot = [];
      ws.on('message', (data) => clientGot.push(data));
      const clientClosed = closed(ws);
      const upstreamClosed = closed(srv);
      // Stop once a part of each message went through: both directions are inside a frame.
      const started = Promise.all([receivedAtLeast(srv._socket, 256 * 1024), receivedAtLeast(ws._socket, 256 * 1024)]);
      ws.send(up);
      srv.send(down);
      await started;
      await proxy.stop();
      assert.deepEqual(await clientClosed, { code: 1001, reason: REASON });
      assert.deepEqual(await upstreamClosed, { code: 1001, reason: REASON });
      assert.deepEqual(clientErrors, []);
      assert.deepEqual(upstreamErrors, []);
      assert.equal(clientGot.length, 1);
      assert.equal(sha(clientGot[0]), sha(down));
      assert.equal(srv.messages.length, 1);
      assert.equal(sha(srv.messages[0].data), sha(up));
    } finally {
      if (proxy.isRunning()) await proxy.stop();
      await echo.close();
    }
  });

  it('fragmented messages streaming both ways: the close comes between fragments, no protocol error', { timeout: 30_000 }, async () => {
    const echo = await startWsEcho({}, { echo: false });
    const { proxy, port } = await startProxy();
    try {
      const ws = await openWs(`ws://127.0.0.1:${port}/fragments`, undefined, routeTo(echo.port));
      const srv = await echo.connectionFor('/fragments');
      const clientErrors = errorsOf(ws);
      const upstreamErrors = errorsOf(srv);
      const clientClosed = closed(ws);
      const upstreamClosed = closed(srv);
      // One message each way, sent as fragments of 1..40 KiB (never finished) until closed.
      const pump = (end) => {
        const timer = setInterval(() => {
          if (end.readyState !== WebSocket.OPEN) return clearInterval(timer);
          end.send(crypto.randomBytes(1 + crypto.randomInt(40 * 1024)), { fin: false, binary: true }, () => {});
        }, 2);
        return timer;
      };
      const timers = [pump(ws), pump(srv)];
      await Promise.all([receivedAtLeast(srv._socket, 200 * 1024), receivedAtLeast(ws._socket, 200 * 1024)]);
      await proxy.stop();
      timers.forEach(clearInterval);
      assert.deepEqual(await clientClosed, { code: 1001, reason: REASON });
      assert.deepEqual(await upstreamClosed, { code: 1001, reason: REASON });
      assert.deepEqual(clientErrors, []);
      assert.deepEqual(upstreamErrors, []);
    } finally {
      if (proxy.isRunning()) await proxy.stop();
      await echo.close();
    }
  });

  it('garbage after the upgrade: that tunnel is closed plainly (no close frame), a real WebSocket beside it gets 1001', { timeout: 30_000 }, async () => {
    const garbageDown = Buffer.from([0xff, 0x13, 0x37, 0x00, 0x42, 0xfe, 0xed]);
    const garbageUp = Buffer.from([0x8f, 0x80, 1, 2, 3, 4, 0xaa, 0xbb]);
    const upstreamGot = [];
    const raw = await startRaw101((socket) => {
      socket.write(garbageDown);
      socket.on('data', (d) => upstreamGot.push(d));
    });
    const echo = await startWsEcho();
    const { proxy, port } = await startProxy();
    try {
      const ws = await openWs(`ws://127.0.0.1:${port}/beside`, undefined, routeTo(echo.port));
      const srv = await echo.connectionFor('/beside');
      const client = net.connect(port, '127.0.0.1');
      await once(client, 'connect');
      const key = crypto.randomBytes(16).toString('base64');
      client.write(
        `GET /garbage HTTP/1.1\r\nhost: x\r\nx-cmux-port-internal: ${raw.port}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n` +
          `sec-websocket-key: ${key}\r\nsec-websocket-version: 13\r\n\r\n`,
      );
      let got = Buffer.alloc(0);
      client.on('data', (c) => (got = Buffer.concat([got, c])));
      const clientEnded = new Promise((resolve) => client.on('close', resolve));
      client.on('error', () => {});
      assert.ok(await waitFor(() => got.includes(garbageDown)), 'the garbage reached the client');
      client.write(garbageUp);
      assert.ok(await waitFor(() => Buffer.concat(upstreamGot).equals(garbageUp)), 'the garbage reached the upstream');
      const clientClosed = closed(ws);
      const upstreamClosed = closed(srv);
      await proxy.stop();
      await clientEnded;
      // Nothing after the garbage toward either side: no close frame was made up.
      const head = got.indexOf('\r\n\r\n') + 4;
      assert.deepEqual(got.subarray(head), garbageDown);
      assert.ok(await waitFor(() => raw.sockets.size === 0));
      assert.deepEqual(Buffer.concat(upstreamGot), garbageUp);
      assert.equal((await clientClosed).code, 1001);
      assert.equal((await upstreamClosed).code, 1001);
    } finally {
      if (proxy.isRunning()) await proxy.stop();
      await echo.close();
      await raw.close();
    }
  });

  it('a frame that stalls mid-way toward the client: the upstream still gets a masked 1001, the client is cut after the grace', { timeout: 30_000 }, async () => {
    const upstreamGot = [];
    const raw = await startRaw101((socket) => {
      // A binary frame announcing 1 MiB, of which 10 bytes ever come.
      const head = Buffer.from([0x82, 127, 0, 0, 0, 0, 0, 0x10, 0, 0]);
      socket.write(Buffer.concat([head, Buffer.alloc(10, 7)]));
      socket.on('data', (d) => upstreamGot.push(d));
    });
    const echo = await startWsEcho();
    const { proxy, port } = await startProxy();
    try {
      const beside = await openWs(`ws://127.0.0.1:${port}/beside2`, undefined, routeTo(echo.port));
      const stalled = await openWs(`ws://127.0.0.1:${port}/stalled`, undefined, routeTo(raw.port));
      const stalledErrors = errorsOf(stalled);
      assert.ok(await waitFor(() => stalled._socket.bytesRead > 0 && raw.sockets.size === 1));
      const besideClosed = closed(beside);
      const stalledClosed = closed(stalled);
      await proxy.stop();
      assert.equal((await besideClosed).code, 1001);
      // No close frame could go after the unfinished frame: the TCP connection was closed.
      assert.equal((await stalledClosed).code, 1006);
      assert.deepEqual(stalledErrors, []);
      const frames = clientFrames(Buffer.concat(upstreamGot));
      assert.equal(frames.length, 1, `frames toward the upstream: ${JSON.stringify(frames)}`);
      assert.equal(frames[0].opcode, 8);
      assert.equal(frames[0].masked, true);
      assert.equal(frames[0].payload.readUInt16BE(0), 1001);
      assert.equal(frames[0].payload.subarray(2).toString(), REASON);
      assert.ok(await waitFor(() => raw.sockets.size === 0));
    } finally {
      if (proxy.isRunning()) await proxy.stop();
      await echo.close();
      await raw.close();
    }
  });

  it('a WebSocket already closing (the client sent its close, the upstream has not answered) gets no 1001 of its own', { timeout: 30_000 }, async () => {
    const upstreamGot = [];
    const raw = await startRaw101((socket) => socket.on('data', (d) => upstreamGot.push(d)));
    const echo = await startWsEcho();
    const { proxy, port } = await startProxy();
    try {
      const beside = await openWs(`ws://127.0.0.1:${port}/beside3`, undefined, routeTo(echo.port));
      const closing = await openWs(`ws://127.0.0.1:${port}/closing`, undefined, routeTo(raw.port));
      const closingClosed = closed(closing);
      closing.close(1000, 'bye');
      assert.ok(await waitFor(() => clientFrames(Buffer.concat(upstreamGot)).length === 1));
      const besideClosed = closed(beside);
      await proxy.stop();
      assert.equal((await besideClosed).code, 1001);
      // Its only close frame is its own: the proxy added none either way.
      assert.equal((await closingClosed).code, 1006);
      const frames = clientFrames(Buffer.concat(upstreamGot));
      assert.deepEqual(
        frames.map((f) => [f.opcode, f.payload.readUInt16BE(0), f.payload.subarray(2).toString()]),
        [[8, 1000, 'bye']],
      );
    } finally {
      if (proxy.isRunning()) await proxy.stop();
      await echo.close();
      await raw.close();
    }
  });
});

/** An h2c session that waited for the proxy's SETTINGS (extended CONNECT needs them). */
async function h2session(port) {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on('error', () => {});
  await once(session, 'remoteSettings');
  return session;
}

function openH2WebSocket(session, path, upstreamPort) {
  return new Promise((resolve, reject) => {
    const stream = session.request(
      { ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': path, ':authority': 'x', 'sec-websocket-version': '13', 'x-cmux-port-internal': String(upstreamPort) },
      { endStream: false },
    );
    stream.on('response', (h) => (h[':status'] === 200 ? resolve(stream) : reject(new Error(`status ${h[':status']}`))));
    stream.on('error', reject);
  });
}

/** Collects the server frames on an RFC 8441 stream; answers a close frame with a masked one. */
/** Bytes the frame starting `buf` needs, as far as its header tells (server frames: unmasked). */
function nextFrameBytes(buf) {
  if (buf.length < 2) return 2;
  const len7 = buf[1] & 0x7f;
  const head = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (buf[1] & 0x80 ? 4 : 0);
  if (buf.length < head) return head;
  const length = len7 === 126 ? buf.readUInt16BE(2) : len7 === 127 ? Number(buf.readBigUInt64BE(2)) : len7;
  return head + length;
}

function followServerFrames(stream) {
  const state = { frames: [], bytes: 0, malformed: false };
  // Pieces are joined only once the next frame is whole: joining on every read is quadratic in a
  // 4 MiB frame, and this client shares its process (and CPU) with the proxy under test.
  let pieces = [];
  let have = 0;
  let need = 2;
  stream.on('data', (chunk) => {
    state.bytes += chunk.length;
    pieces.push(chunk);
    have += chunk.length;
    if (have < need) return;
    const { frames, rest } = parseServerFrames(pieces.length === 1 ? pieces[0] : Buffer.concat(pieces));
    pieces = rest.length === 0 ? [] : [Buffer.from(rest)];
    have = rest.length;
    need = nextFrameBytes(rest);
    for (const f of frames) {
      if (f.opcode === 8) {
        if (!stream.destroyed && stream.writable) stream.end(clientFrame(f.payload.subarray(0, 2), 8));
      } else if (![0, 1, 2, 9, 10].includes(f.opcode)) state.malformed = true;
      state.frames.push({ opcode: f.opcode, fin: f.fin, length: f.payload.length, payload: f.opcode === 8 ? Buffer.from(f.payload) : null, sha: f.opcode === 2 ? sha(f.payload) : null });
    }
  });
  return state;
}

describe('stop(): WebSockets get a close frame 1001 (HTTP/2 extended CONNECT)', () => {
  it('an idle RFC 8441 WebSocket: the client reads close 1001, the upstream sees 1001', { timeout: 30_000 }, async () => {
    const echo = await startWsEcho();
    const { proxy, port } = await startProxy({ drainTimeoutMs: 300 });
    try {
      const session = await h2session(port);
      const stream = await openH2WebSocket(session, '/h2idle', echo.port);
      const srv = await echo.connectionFor('/h2idle');
      const seen = followServerFrames(stream);
      const upstreamClosed = closed(srv);
      stream.write(clientFrame('ping'));
      assert.ok(await waitFor(() => seen.frames.length === 1));
      await proxy.stop();
      await waitFor(() => seen.frames.some((f) => f.opcode === 8), { timeoutMs: 5000 });
      const close = seen.frames.find((f) => f.opcode === 8);
      assert.ok(close, `no close frame among ${JSON.stringify(seen.frames.map((f) => f.opcode))}`);
      assert.equal(close.payload.readUInt16BE(0), 1001);
      assert.equal(close.payload.subarray(2).toString(), REASON);
      assert.deepEqual(await upstreamClosed, { code: 1001, reason: REASON });
      session.destroy();
    } finally {
      if (proxy.isRunning()) await proxy.stop();
      await echo.close();
    }
  });

  it('a 4 MiB frame in flight both ways: both arrive whole, then the close frame; the upstream sees 1001 without error', { timeout: 30_000 }, async () => {
    const echo = await startWsEcho({}, { echo: false });
    const { proxy, port } = await startProxy({ drainTimeoutMs: 100 });
    try {
      const session = await h2session(port);
      const stream = await openH2WebSocket(session, '/h2big', echo.port);
      const srv = await echo.connectionFor('/h2big');
      const upstreamErrors = errorsOf(srv);
      const seen = followServerFrames(stream);
      const upstreamClosed = closed(srv);
      const up = crypto.randomBytes(4 * MiB);
      const down = crypto.randomBytes(4 * MiB);
      const started = Promise.all([receivedAtLeast(srv._socket, 256 * 1024), waitFor(() => seen.bytes >= 256 * 1024, { timeoutMs: 20_000 })]);
      stream.write(clientFrame(up, 2));
      srv.send(down);
      await started;
      await proxy.stop();
      assert.deepEqual(await upstreamClosed, { code: 1001, reason: REASON });
      assert.deepEqual(upstreamErrors, []);
      assert.equal(srv.messages.length, 1);
      assert.equal(sha(srv.messages[0].data), sha(up));
      // The client's last DATA frames may still be in its socket when stop() resolves.
      await waitFor(() => seen.frames.some((f) => f.opcode === 8), { timeoutMs: 5000 });
      assert.deepEqual(
        seen.frames.map((f) => [f.opcode, f.length]),
        [
          [2, down.length],
          [8, 2 + REASON.length],
        ],
      );
      assert.equal(seen.frames[0].sha, sha(down));
      assert.equal(seen.malformed, false);
      session.destroy();
    } finally {
      if (proxy.isRunning()) await proxy.stop();
      await echo.close();
    }
  });
});

describe('rolling restart (--workers 2, SIGHUP): WebSockets on the old workers get 1001', () => {
  it('each old worker closes its WebSockets with 1001; a new WebSocket opens on the new workers', { timeout: 60_000 }, async () => {
    const echo = await startWsEcho();
    const c = await startCli(['--port', '0', '--workers', '2', '--drain-timeout-ms', '2000'], { timeoutMs: 20_000 });
    try {
      assert.ok(await waitFor(() => /cluster: \d+ worker/.test(c.stderr()), { timeoutMs: 15_000 }), c.stderr());
      // Round-robin or kernel-spread: four connections land on both workers either way (or on one, which is fine too).
      const sockets = [];
      for (let i = 0; i < 4; i++) sockets.push(await openWs(`ws://127.0.0.1:${c.port}/rr${i}`, undefined, routeTo(echo.port)));
      for (const ws of sockets) {
        ws.send('before');
        assert.equal(String((await nextMessage(ws)).data), 'before');
      }
      const closes = sockets.map((ws) => closed(ws, 30_000));
      process.kill(c.child.pid, 'SIGHUP');
      for (const result of await Promise.all(closes)) assert.deepEqual(result, { code: 1001, reason: REASON });
      assert.ok(await waitFor(() => /cluster: 2 worker\(s\) replaced/.test(c.stderr()), { timeoutMs: 30_000 }), c.stderr());
      const fresh = await openWs(`ws://127.0.0.1:${c.port}/fresh`, undefined, routeTo(echo.port));
      fresh.send('after');
      assert.equal(String((await nextMessage(fresh)).data), 'after');
      fresh.close();
      await closed(fresh);
    } finally {
      if (c.child.exitCode === null) await stopCli(c.child, 'SIGKILL');
      await echo.close();
    }
  });
});
