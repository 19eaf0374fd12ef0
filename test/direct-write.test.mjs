// Writes straight to a TCP handle (src/direct-write.ts): heads and small bodies skip the Writable
// machinery. A write the kernel takes only in part goes on in libuv; these tests make that
// happen with real sockets (a peer that stops reading) and check order, backpressure and drain.
// Writes that wait for the end of the event-loop turn (writeInTurn) are checked for order against
// the socket's stream, end() and destroy().
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeCert } from './helpers/apps.mjs';
import { once } from 'node:events';
import { directWritable, flushTurnWrite, writeInTurn, writeLatin1 } from '../dist/direct-write.js';
import { proxyFor, sleep, startUpstream } from './helpers/servers.mjs';

/** A connected pair of TCP sockets for test `t`, both destroyed after it. */
async function socketPair(t) {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = net.connect(server.address().port, '127.0.0.1');
  const [accepted] = await once(server, 'connection');
  await once(client, 'connect');
  server.close();
  t.after(() => {
    accepted.destroy();
    client.destroy();
  });
  return { writer: accepted, reader: client };
}

describe('direct writes to a TCP handle', () => {
  it('a peer that stops reading: a write taken in part returns false, then drain; every byte arrives in order, mixed with socket.write', async (t) => {
    const { writer, reader } = await socketPair(t);
    assert.equal(directWritable(writer), true);
    reader.pause();
    const piece = (i) => `${String(i).padStart(8, '0')}:${'x'.repeat(16 * 1024 - 10)}\n`;
    let expected = '';
    let i = 0;
    let refused = 0;
    let drains = 0;
    writer.on('drain', () => drains++);
    // Fill the socket buffers until a direct write is taken in part (false), a few times over.
    while (refused < 3 && i < 10_000) {
      const data = piece(i++);
      expected += data;
      if (!writeLatin1(writer, data)) {
        refused++;
        // Behind a pending write: the next goes through the stream, then directly again.
        const tail = piece(i++);
        expected += tail;
        writer.write(tail, 'latin1');
        const more = piece(i++);
        expected += more;
        writeLatin1(writer, more);
        const received = [];
        reader.on('data', (c) => received.push(c));
        reader.resume();
        await once(writer, 'drain');
        reader.pause();
        reader.removeAllListeners('data');
        const got = Buffer.concat(received).toString('latin1');
        assert.equal(got, expected.slice(0, got.length));
        expected = expected.slice(got.length);
      }
    }
    assert.equal(refused, 3, 'no direct write was ever taken in part');
    assert.ok(drains >= 3);
    writer.end();
    const rest = [];
    reader.on('data', (c) => rest.push(c));
    reader.resume();
    await once(reader, 'end');
    assert.equal(Buffer.concat(rest).toString('latin1'), expected);
  });

  it('every byte in order across partial writes (whole stream checked)', async (t) => {
    const { writer, reader } = await socketPair(t);
    reader.pause();
    const chunks = [];
    reader.on('data', (c) => chunks.push(c));
    let expected = '';
    let refused = 0;
    for (let i = 0; i < 2000; i++) {
      const data = `${String(i).padStart(6, '0')}${'y'.repeat(8 * 1024 + (i % 97))}\n`;
      expected += data;
      const ok = i % 5 === 4 ? writer.write(data, 'latin1') : writeLatin1(writer, data);
      if (!ok) {
        refused++;
        reader.resume();
        await once(writer, 'drain');
        reader.pause();
      }
    }
    assert.ok(refused > 0, 'the peer never pushed back');
    writer.end();
    reader.resume();
    await once(reader, 'end');
    assert.equal(Buffer.concat(chunks).toString('latin1'), expected);
  });

  it('bytesWritten counts direct writes as it counts socket.write', async (t) => {
    const { writer, reader } = await socketPair(t);
    writeLatin1(writer, 'hello');
    writer.write('there', 'latin1');
    writeLatin1(writer, 'ab');
    await new Promise((r) => setImmediate(r));
    assert.equal(writer.bytesWritten, 12);
    const got = [];
    reader.on('data', (c) => got.push(c));
    writer.end();
    await once(reader, 'end');
    assert.equal(Buffer.concat(got).toString('latin1'), 'hellothereab');
  });

  it('a write on a destroyed socket does not throw and delivers nothing', async (t) => {
    const { writer, reader } = await socketPair(t);
    writer.destroy();
    await once(writer, 'close');
    writeLatin1(writer, 'late');
    reader.destroy();
  });
});

describe('proxied responses through direct writes', () => {
  it('a client that pipelines rounds of GETs for ~4 KiB answers and reads none of them for a while: the proxy stops once its writes are taken in part; every answer arrives, in order, intact', async (t) => {
    const up = await startUpstream((req, res) => {
      const body = `${req.url}:${'z'.repeat(4000)}`;
      res.writeHead(200, { 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
    t.after(() => up.close());
    const { port } = await proxyFor(t);
    const socket = net.connect(port, '127.0.0.1');
    t.after(() => socket.destroy());
    await once(socket, 'connect');
    socket.pause();
    // Rounds within the pipelining bound (32 queued), sent while nothing is read: answers pile
    // up (~4 MB in the sockets' buffers on loopback) until the proxy's writes to this client are
    // taken in part. Then it forwards no more (it waits for the client to read): the round it
    // stopped at waits, unread, in the kernel.
    const rounds = 64;
    const perRound = 30;
    let next = 0;
    let stalled = false;
    for (let r = 0; r < rounds && !stalled; r++) {
      let data = '';
      for (let i = 0; i < perRound; i++) data += `GET /r/${next++} HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`;
      socket.write(data);
      // The next round once the proxy has forwarded this one.
      const until = Date.now() + 1_000;
      while (up.requests.length < next && Date.now() < until) await sleep(2);
      stalled = up.requests.length < next;
    }
    assert.ok(stalled, `the proxy forwarded all ${next} requests (~${Math.round((next * 4.1) / 1024)} MB of answers) to a client that read none`);
    const n = next;
    let text = '';
    socket.on('data', (c) => {
      text += c.toString('latin1');
    });
    socket.resume();
    const deadline = Date.now() + 30_000;
    let bodies = [];
    while (Date.now() < deadline) {
      bodies = [...text.matchAll(/\r\n\r\n(\/r\/\d+):z{4000}(?=HTTP\/1\.1 |$)/g)].map((m) => m[1]);
      if (bodies.length === n) break;
      await sleep(20);
    }
    assert.equal(bodies.length, n);
    for (let i = 0; i < n; i++) assert.equal(bodies[i], `/r/${i}`);
    assert.equal((text.match(/HTTP\/1\.1 200 /g) ?? []).length, n);
  });
});

/** Reads everything `reader` receives until it closes: { text, error }. */
function collect(reader) {
  const chunks = [];
  reader.on('data', (c) => chunks.push(c));
  return new Promise((resolve) => {
    let error = null;
    reader.on('error', (e) => (error = e));
    reader.on('close', () => resolve({ text: Buffer.concat(chunks).toString('latin1'), error }));
  });
}

describe('writes that wait for the end of the event-loop turn (writeInTurn)', () => {
  it('wait, corked, until the turn\'s check phase, then leave in one write per socket', async (t) => {
    const a = await socketPair(t);
    const b = await socketPair(t);
    const wa = { socket: a.writer, turnSlot: -1 };
    const wb = { socket: b.writer, turnSlot: -1 };
    const gotA = collect(a.reader);
    const gotB = collect(b.reader);
    assert.equal(writeInTurn(wa, 'HTTP/1.1 200 OK\r\n'), true);
    assert.equal(writeInTurn(wb, 'one'), true);
    assert.equal(writeInTurn(wa, 'content-length: 0\r\n\r\n'), true);
    // Nothing reached the handle yet: both wait in the turn's batch, their sockets corked.
    assert.equal(a.writer.writableCorked, 1);
    assert.equal(b.writer.writableCorked, 1);
    assert.ok(wa.turnSlot >= 0 && wb.turnSlot >= 0 && wa.turnSlot !== wb.turnSlot);
    await new Promise((r) => setImmediate(r));
    assert.equal(wa.turnSlot, -1);
    assert.equal(wb.turnSlot, -1);
    assert.equal(a.writer.writableCorked, 0);
    assert.equal(b.writer.writableCorked, 0);
    a.writer.end();
    b.writer.end();
    assert.equal((await gotA).text, 'HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n');
    assert.equal((await gotB).text, 'one');
  });

  it('what goes through the stream meanwhile follows the waiting bytes; a small write after it follows it too', async (t) => {
    const { writer, reader } = await socketPair(t);
    const w = { socket: writer, turnSlot: -1 };
    const got = collect(reader);
    writeInTurn(w, '[head]');
    writeInTurn(w, '[joined]');
    writer.write('[body via the stream]');
    // The stream holds something now: this may not join the waiting bytes, which leave first.
    writeInTurn(w, '[last chunk]');
    writer.write(Buffer.from('[after]'));
    await new Promise((r) => setImmediate(r));
    writer.end();
    assert.equal((await got).text, '[head][joined][body via the stream][last chunk][after]');
  });

  it('flushTurnWrite before end() or destroy() writes the waiting bytes first; end() without it resets instead of reordering', async (t) => {
    {
      const { writer, reader } = await socketPair(t);
      const w = { socket: writer, turnSlot: -1 };
      const got = collect(reader);
      writeInTurn(w, 'answer;');
      writer.write('more;');
      flushTurnWrite(w);
      writer.end('bye');
      assert.equal((await got).text, 'answer;more;bye');
    }
    {
      const { writer, reader } = await socketPair(t);
      const w = { socket: writer, turnSlot: -1 };
      const got = collect(reader);
      writeInTurn(w, 'last answer');
      flushTurnWrite(w);
      writer.destroy();
      assert.equal((await got).text, 'last answer');
    }
    {
      const { writer, reader } = await socketPair(t);
      const w = { socket: writer, turnSlot: -1 };
      const got = collect(reader);
      writer.on('error', () => {});
      writeInTurn(w, 'first');
      writer.end('second');
      const { text } = await got;
      // Never "secondfirst": the waiting bytes are dropped with the connection.
      assert.ok(!text.includes('first'), `got ${JSON.stringify(text)}`);
      assert.equal(writer.destroyed, true);
    }
  });

  it('a destroyed socket\'s waiting bytes are dropped without a throw, and the other sockets of the turn still get theirs', async (t) => {
    const a = await socketPair(t);
    const b = await socketPair(t);
    const wa = { socket: a.writer, turnSlot: -1 };
    const wb = { socket: b.writer, turnSlot: -1 };
    const gotA = collect(a.reader);
    const gotB = collect(b.reader);
    writeInTurn(wa, 'lost');
    writeInTurn(wb, 'kept');
    a.writer.destroy();
    await new Promise((r) => setImmediate(r));
    b.writer.end();
    assert.equal((await gotA).text, '');
    assert.equal((await gotB).text, 'kept');
  });

  it('a socket whose peer reads slowly (libuv holds an earlier write) is written at once and says wait', async (t) => {
    const { writer, reader } = await socketPair(t);
    reader.pause();
    const piece = 'y'.repeat(64 * 1024);
    let sent = 0;
    while (writeLatin1(writer, piece)) sent += piece.length;
    sent += piece.length;
    const w = { socket: writer, turnSlot: -1 };
    assert.equal(writeInTurn(w, 'tail'), false);
    assert.equal(w.turnSlot, -1);
    assert.equal(writer.writableCorked, 0);
    let received = 0;
    let text = '';
    reader.on('data', (c) => {
      received += c.length;
      if (received > sent) text += c.toString('latin1');
    });
    reader.resume();
    await once(writer, 'drain');
    writer.end();
    await once(reader, 'end');
    assert.equal(received, sent + 4);
    assert.ok(text.endsWith('tail'));
  });

  it('a socket its owner corked is written through the stream at once, behind what it holds', async (t) => {
    const { writer, reader } = await socketPair(t);
    const w = { socket: writer, turnSlot: -1 };
    const got = collect(reader);
    writer.cork();
    writer.write('held;');
    // Corked by someone else: no waiting of its own, it queues behind what the stream holds.
    writeInTurn(w, 'then this');
    assert.equal(w.turnSlot, -1);
    writer.uncork();
    writer.end();
    assert.equal((await got).text, 'held;then this');
  });

  it('on a TLS socket the turn\'s writes wait in its corked stream and leave in order, also when it ends in the same turn', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'turn-tls-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const { certFile, keyFile } = makeCert(dir, []);
    const server = tls.createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    t.after(() => server.close());
    for (const ending of [false, true]) {
      const accepted = once(server, 'secureConnection');
      const reader = tls.connect({ port: server.address().port, host: '127.0.0.1', rejectUnauthorized: false });
      const [writer] = await accepted;
      const w = { socket: writer, turnSlot: -1 };
      const got = collect(reader);
      writeInTurn(w, '[head]');
      assert.equal(writer.writableCorked, 1);
      writer.write('[body]');
      writeInTurn(w, '[end]');
      if (ending) {
        writer.end('[bye]');
      } else {
        await new Promise((r) => setImmediate(r));
        assert.equal(writer.writableCorked, 0);
        assert.equal(w.turnSlot, -1);
        writer.end('[bye]');
      }
      assert.equal((await got).text, '[head][body][end][bye]');
    }
  });
});
