// An HTTP/2 client's DATA frames read in one turn reach an HTTP/1.1 upstream gathered
// (src/h2/request-body.ts). What else arrives in the same read — a reset, trailers, frames of
// other streams, a Content-Length violation — must neither reorder, lose nor complete the body.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { digestBody, startProxy, startRawServer, startUpstream, waitFor, sleep } from './helpers/servers.mjs';
import { H2RawClient, ERROR, FRAME, frame, headersFrame, dataFrame, rstStreamFrame, requestHeaders, encodeHeaders, FLAG } from './helpers/h2-raw.mjs';

/** A raw upstream that records, per connection, every byte it gets and whether it closed; `onBytes(rec)` after each read. */
async function recordingUpstream(onBytes) {
  const conns = [];
  const up = await startRawServer((socket) => {
    const rec = { socket, bytes: Buffer.alloc(0), closed: false, index: conns.length };
    conns.push(rec);
    socket.on('data', (c) => {
      rec.bytes = Buffer.concat([rec.bytes, c]);
      onBytes?.(rec);
    });
    socket.on('close', () => (rec.closed = true));
  });
  return { up, conns };
}

function split(raw) {
  const text = raw.toString('latin1');
  const at = text.indexOf('\r\n\r\n');
  return at === -1 ? { head: text, body: '' } : { head: text.slice(0, at), body: text.slice(at + 4) };
}

async function setup(t, onBytes) {
  const { up, conns } = await recordingUpstream(onBytes);
  const px = await startProxy();
  const c = await H2RawClient.connect(px.port);
  t.after(async () => {
    c.close();
    await px.proxy.stop();
    await up.close();
  });
  return { up, conns, px, c };
}

/** Opens stream `id` and waits until the upstream has its head (so its DATA is gathered). */
async function open(c, up, conns, id, { length, extra = [] } = {}) {
  const ex = length === undefined ? extra : [['content-length', String(length)], ...extra];
  const n = conns.length;
  c.send(headersFrame(id, requestHeaders(up.port, { method: 'POST', path: `/s${id}`, extra: ex })));
  assert.ok(await waitFor(() => conns.length > n && conns.at(-1).bytes.includes('\r\n\r\n')), 'the head reached the upstream');
  return conns.at(-1);
}

for (const code of [ERROR.NO_ERROR, ERROR.CANCEL]) {
  it(`chunked body: DATA frames and RST_STREAM(${code}) in one write never reach the upstream as a complete body`, async (t) => {
    const { up, conns, c } = await setup(t);
    const rec = await open(c, up, conns, 1);
    c.send(dataFrame(1, Buffer.from('aaaa')), dataFrame(1, Buffer.from('bbbb')), dataFrame(1, Buffer.from('cccc')), rstStreamFrame(1, code));
    assert.ok(await waitFor(() => rec.closed), 'the upstream connection is closed');
    const { head, body } = split(rec.bytes);
    assert.match(head, /transfer-encoding: chunked/i);
    assert.ok(!body.includes('0\r\n\r\n'), `no last-chunk: ${JSON.stringify(body)}`);
  });
}

it('Content-Length body: DATA frames and RST_STREAM in one write: the upstream gets fewer bytes than declared, then a close', async (t) => {
  const { up, conns, c } = await setup(t);
  const rec = await open(c, up, conns, 1, { length: 12 });
  c.send(dataFrame(1, Buffer.from('aaaa')), dataFrame(1, Buffer.from('bbbb')), dataFrame(1, Buffer.from('cccc')), rstStreamFrame(1, ERROR.NO_ERROR));
  assert.ok(await waitFor(() => rec.closed), 'the upstream connection is closed');
  assert.ok(split(rec.bytes).body.length < 12, `body ${JSON.stringify(split(rec.bytes).body)}`);
});

it('fewer DATA bytes than Content-Length, END_STREAM, in one write: never a complete body upstream; the upstream socket closes; the stream is reset', async (t) => {
  const { up, conns, c } = await setup(t);
  const rec = await open(c, up, conns, 1, { length: 10 });
  c.send(dataFrame(1, Buffer.from('abc')), dataFrame(1, Buffer.from('de'), { endStream: true }));
  const out = await c.streamOutcome(1);
  assert.equal(out.rstCode, ERROR.PROTOCOL_ERROR);
  assert.ok(await waitFor(() => rec.closed), 'the upstream connection is closed');
  assert.ok(split(rec.bytes).body.length < 10);
});

it('more DATA bytes than Content-Length in one write (the first frame completes it): nothing past the declared bytes reaches the upstream; its socket closes', async (t) => {
  const { up, conns, c } = await setup(t);
  const rec = await open(c, up, conns, 1, { length: 10 });
  c.send(dataFrame(1, Buffer.from('0123456789')), dataFrame(1, Buffer.from('XYZ'), { endStream: true }));
  const out = await c.streamOutcome(1);
  assert.equal(out.rstCode, ERROR.PROTOCOL_ERROR);
  assert.ok(await waitFor(() => rec.closed), 'the upstream connection is closed');
  const { body } = split(rec.bytes);
  assert.ok(!body.includes('XYZ'), 'no byte past the Content-Length');
  // Both frames in one read: the reset drops the gathered 10 bytes before they are written (the
  // usual case here). Split over two reads, the first frame's bytes may go on; never more.
  assert.ok(body.length <= 10, 'nothing past the declared body');
  t.diagnostic(`upstream body before the close: ${JSON.stringify(body)}`);
});

it('DATA frames, zero-length DATA frames and trailers with END_STREAM in one write: body then trailers, in order, once', async (t) => {
  const { up, conns, c } = await setup(t);
  const rec = await open(c, up, conns, 1, { extra: [['te', 'trailers']] });
  const trailers = frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, 1, encodeHeaders([['x-sum', '42']]));
  c.send(dataFrame(1, Buffer.alloc(0)), dataFrame(1, Buffer.from('hello ')), dataFrame(1, Buffer.alloc(0)), dataFrame(1, Buffer.from('world')), dataFrame(1, Buffer.alloc(0)), trailers);
  assert.ok(await waitFor(() => split(rec.bytes).body.endsWith('\r\n\r\n')), 'the body ended');
  await sleep(30);
  const { body } = split(rec.bytes);
  assert.equal(body, 'b\r\nhello world\r\n0\r\nx-sum: 42\r\n\r\n');
});

it('only zero-length DATA frames in one read, then more data later: no premature last-chunk', async (t) => {
  const { up, conns, c } = await setup(t);
  const rec = await open(c, up, conns, 1);
  c.send(dataFrame(1, Buffer.alloc(0)), dataFrame(1, Buffer.alloc(0)), dataFrame(1, Buffer.alloc(0)));
  await sleep(50);
  assert.equal(split(rec.bytes).body, '');
  c.send(dataFrame(1, Buffer.from('xy')), dataFrame(1, Buffer.from('z'), { endStream: true }));
  assert.ok(await waitFor(() => split(rec.bytes).body.endsWith('0\r\n\r\n')));
  assert.equal(split(rec.bytes).body, '3\r\nxyz\r\n0\r\n\r\n');
});

it('many streams on one connection, frames interleaved in one write, some reset, some ending: each upstream gets its own bytes in order', async (t) => {
  const { up, conns, c } = await setup(t);
  const N = 24;
  const recs = new Map();
  for (let i = 0; i < N; i++) {
    const id = 1 + 2 * i;
    recs.set(id, await open(c, up, conns, id, i % 2 === 0 ? { length: 5 * 20 } : {}));
  }
  const frames = [];
  for (let round = 0; round < 20; round++) {
    for (let i = 0; i < N; i++) {
      const id = 1 + 2 * i;
      if (i % 3 === 2 && round === 10) {
        frames.push(rstStreamFrame(id, ERROR.CANCEL));
        continue;
      }
      if (i % 3 === 2 && round > 10) continue;
      frames.push(dataFrame(id, Buffer.from(`${String(id).padStart(2, '0')}:${String.fromCharCode(65 + round)}`.padEnd(5, '.')), { endStream: round === 19 }));
    }
  }
  c.send(...frames);
  for (let i = 0; i < N; i++) {
    const id = 1 + 2 * i;
    const rec = recs.get(id);
    const expected = Array.from({ length: 20 }, (_, r) => `${String(id).padStart(2, '0')}:${String.fromCharCode(65 + r)}`.padEnd(5, '.')).join('');
    if (i % 3 === 2) {
      assert.ok(await waitFor(() => rec.closed), `stream ${id}: upstream closed`);
      const { body } = split(rec.bytes);
      assert.ok(!body.includes('0\r\n\r\n') && !body.includes(expected), `stream ${id}: ${JSON.stringify(body)}`);
      continue;
    }
    if (i % 2 === 0) {
      assert.ok(await waitFor(() => split(rec.bytes).body.length >= 100), `stream ${id} body`);
      assert.equal(split(rec.bytes).body, expected, `stream ${id}`);
    } else {
      assert.ok(await waitFor(() => split(rec.bytes).body.endsWith('0\r\n\r\n')), `stream ${id} body`);
      const raw = split(rec.bytes).body;
      const plain = raw.replace(/([0-9a-f]+)\r\n([\s\S]*?)\r\n/g, (_m, len, data) => (assert.equal(parseInt(len, 16), data.length), data));
      assert.equal(plain, expected, `stream ${id}: ${JSON.stringify(raw)}`);
    }
  }
});

it('client connection ends (FIN) in the same write as DATA: upstream closed, body incomplete, proxy releases everything', async (t) => {
  const { up, conns } = await recordingUpstream();
  const px = await startProxy();
  t.after(async () => {
    await px.proxy.stop();
    await up.close();
  });
  for (const length of [undefined, 100]) {
    const c = await H2RawClient.connect(px.port);
    const rec = await open(c, up, conns, 1, { length });
    c.socket.end(Buffer.concat([dataFrame(1, Buffer.from('aaaa')), dataFrame(1, Buffer.from('bbbb')), dataFrame(1, Buffer.from('cccc'))]));
    assert.ok(await waitFor(() => rec.closed), 'upstream closed');
    const { body } = split(rec.bytes);
    if (length === undefined) assert.ok(!body.includes('0\r\n\r\n'), `no last-chunk: ${JSON.stringify(body)}`);
    else assert.ok(body.length < length, `fewer bytes than declared: ${JSON.stringify(body)}`);
    c.close();
  }
  assert.ok(await waitFor(() => px.proxy.getStats().activeConnections === 0 && px.proxy.getStats().upstreamSocketsActive === 0), JSON.stringify(px.proxy.getStats()));
});

it('upstream closes when the first body bytes arrive while DATA keeps coming: 502 or reset, then the session serves on', async (t) => {
  const { up, conns, c } = await setup(t, (rec) => {
    const text = rec.bytes.toString('latin1');
    const headEnd = text.indexOf('\r\n\r\n');
    if (rec.index === 0) {
      // The first connection goes away as soon as body bytes follow its head.
      if (headEnd !== -1 && text.length > headEnd + 4) rec.socket.destroy();
    } else if (!rec.answered && headEnd !== -1) {
      rec.answered = true;
      rec.socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    }
  });
  await open(c, up, conns, 1, { length: 40 * 1000 });
  for (let i = 0; i < 40; i += 4) {
    c.send(...Array.from({ length: 4 }, (_, j) => dataFrame(1, Buffer.alloc(1000, 97 + j), { endStream: i + j === 39 })));
    await c.flushed();
    await sleep(2);
  }
  const out = await c.streamOutcome(1);
  assert.ok(out.status === 502 || out.rstCode !== undefined, JSON.stringify(out));
  c.send(headersFrame(3, requestHeaders(up.port, { method: 'GET', path: '/b' }), { endStream: true }));
  const out3 = await c.streamOutcome(3);
  assert.equal(out3.status, 200);
  assert.equal(out3.body, 'ok');
});

it('upstream answers (keep-alive) before the body ends; the rest of the body comes in later reads: no leftover body bytes ever precede another request on that upstream connection', async (t) => {
  const { up, conns, c } = await setup(t, (rec) => {
    const text = rec.bytes.toString('latin1');
    rec.answeredN ??= 0;
    // Every request head is answered at once, whatever its body.
    while (rec.answeredN < (text.match(/(POST|GET) \/\S* HTTP\/1\.1/g) ?? []).length) {
      rec.answeredN++;
      rec.socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    }
  });
  const chunks = Array.from({ length: 12 }, (_, i) => Buffer.alloc(500, 65 + i));
  c.send(headersFrame(1, requestHeaders(up.port, { method: 'POST', path: '/a', extra: [['content-length', '6000']] })));
  for (let i = 0; i < 12; i += 3) {
    c.send(...chunks.slice(i, i + 3).map((p, j) => dataFrame(1, p, { endStream: i + j === 11 })));
    await c.flushed();
    await sleep(5);
  }
  const out = await c.streamOutcome(1);
  assert.equal(out.status, 200);
  for (let id = 3; id < 11; id += 2) {
    c.send(headersFrame(id, requestHeaders(up.port, { method: 'GET', path: `/g${id}` }), { endStream: true }));
    assert.equal((await c.streamOutcome(id)).status, 200);
  }
  for (const rec of conns) {
    const text = rec.bytes.toString('latin1');
    const first = text.indexOf('\r\n\r\n');
    const second = text.search(/GET \/g/);
    if (second === -1) continue;
    if (text.startsWith('POST')) assert.equal(second - first - 4, 6000, `conn ${rec.index}: the POST body is complete before the next request`);
    t.diagnostic(`upstream connection ${rec.index} served a GET after ${text.startsWith('POST') ? 'the POST' : 'a GET'}`);
  }
});

it('an upstream that stops reading for a while: 4 concurrent 6 MiB uploads on one connection arrive byte-exact', async (t) => {
  // Nothing reads a request for its first 400 ms.
  const up = await startUpstream((req, res) => {
    sleep(400)
      .then(() => digestBody(req))
      .then((d) => res.end(JSON.stringify(d)), () => {});
  });
  const px = await startProxy();
  t.after(async () => {
    await px.proxy.stop();
    await up.close();
  });
  const session = http2.connect(px.url);
  t.after(() => session.close());
  const size = 6 * 1024 * 1024;
  const runs = [0, 1, 2, 3].map(async (k) => {
    const payload = Buffer.alloc(size);
    for (let i = 0; i < size; i += 4) payload.writeUInt32LE(((i + k) * 2654435761) >>> 0, i);
    const headers = { ':method': 'POST', ':path': '/p', 'x-cmux-port-internal': String(up.port) };
    if (k % 2) headers['content-length'] = String(size);
    const req = session.request(headers);
    for (let i = 0; i < size; i += 100_000) if (!req.write(payload.subarray(i, i + 100_000))) await once(req, 'drain');
    req.end();
    let text = '';
    req.setEncoding('utf8');
    for await (const c of req) text += c;
    assert.deepEqual(JSON.parse(text), { length: size, sha: createHash('sha256').update(payload).digest('hex') });
  });
  await Promise.all(runs);
});
