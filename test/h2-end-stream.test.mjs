// An HTTP/2 response relayed from an HTTP/1.1 upstream ends with its last DATA frame: a
// Content-Length body's last bytes carry END_STREAM, with no empty DATA frame after them (which
// cost the proxy a second write cycle per response). llhttp hands the body and the message's end
// to the proxy in separate callbacks, and Node runs its ticks between them, so the stream has to
// be ended with the last body bytes.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { onRequestHeads, sleep, startProxy, startRawServer, waitFor } from './helpers/servers.mjs';
import { ERROR, FRAME, FLAG, H2RawClient, headersFrame, requestHeaders, rstStreamFrame, windowUpdateFrame } from './helpers/h2-raw.mjs';

const BODY = 'x'.repeat(99) + '\n';

/** Answers each request on a kept-alive connection by its path (see the cases below). */
function answer(socket, path) {
  switch (path) {
    case '/whole':
      // head and body in one write: one read for llhttp
      socket.write(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY}`);
      return;
    case '/split':
      // the body's rest comes in later reads, relayed outside llhttp
      socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY.slice(0, 10)}`);
      setTimeout(() => socket.write(BODY.slice(10, 60)), 30);
      setTimeout(() => socket.write(BODY.slice(60)), 60);
      return;
    case '/chunked':
      socket.write(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${BODY.length.toString(16)}\r\n${BODY}\r\n0\r\n\r\n`);
      return;
    case '/empty':
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n');
      return;
    default:
      socket.write('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
  }
}

describe('HTTP/2 responses end with their last DATA frame', () => {
  let up;
  let px;
  let upstreamConnections = 0;
  before(async () => {
    up = await startRawServer((socket) => {
      upstreamConnections++;
      onRequestHeads(socket, (s, head) => answer(s, head.split(' ')[1]));
    });
    px = await startProxy();
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
  });

  async function get(client, streamId, path) {
    client.send(headersFrame(streamId, requestHeaders(up.port, { path }), { endStream: true }));
    const out = await client.streamOutcome(streamId);
    const data = client.frames.filter((f) => f.streamId === streamId && f.type === FRAME.DATA);
    return { out, data };
  }

  for (const path of ['/whole', '/split']) {
    it(`${path}: a Content-Length body's last DATA frame carries END_STREAM, no empty DATA frame follows`, async () => {
      const client = await H2RawClient.connect(px.port);
      try {
        // several on one connection and one kept-alive upstream socket: every one ends the same way
        for (let id = 1; id <= 7; id += 2) {
          const { out, data } = await get(client, id, path);
          assert.equal(out.status, 200);
          assert.equal(out.body, BODY);
          assert.ok(out.ended, `stream ${id} did not end`);
          assert.deepEqual(
            data.map((f) => [f.length > 0, (f.flags & FLAG.END_STREAM) !== 0]),
            [...data.slice(0, -1).map(() => [true, false]), [true, true]],
            `stream ${id}: DATA frames ${JSON.stringify(data.map((f) => ({ length: f.length, flags: f.flags })))}`,
          );
        }
        await sleep(50);
        assert.equal(client.frames.filter((f) => f.type === FRAME.RST_STREAM).length, 0);
        assert.equal(client.frames.filter((f) => f.type === FRAME.GOAWAY).length, 0);
      } finally {
        client.close();
      }
    });
  }

  it('chunked and empty bodies still end, and the upstream socket is reused after each', async () => {
    const client = await H2RawClient.connect(px.port);
    const connectionsBefore = upstreamConnections;
    try {
      let id = 1;
      for (const path of ['/chunked', '/empty', '/whole', '/chunked', '/split', '/empty']) {
        const { out } = await get(client, id, path);
        assert.equal(out.status, 200, path);
        assert.equal(out.body, path === '/empty' ? '' : BODY, path);
        assert.ok(out.ended, `${path} did not end`);
        id += 2;
      }
      assert.ok(upstreamConnections - connectionsBefore <= 1, 'one upstream connection served every request in turn');
    } finally {
      client.close();
    }
  });
});

describe('HTTP/2 responses ending with their last Content-Length bytes: hostile upstreams and clients', { timeout: 60_000 }, () => {
  const MiB = 1024 * 1024;
  const big = Buffer.alloc(MiB, 0x61);
  /** The last-byte gates of /gate/<n> responses, opened by the test. */
  const gates = new Map();
  let up;
  let px;
  before(async () => {
    up = await startRawServer((socket) =>
      onRequestHeads(socket, (_, head) => {
        const [method, path] = head.split(' ');
        if (path === '/short') {
          socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY.slice(0, 60)}`);
          setTimeout(() => socket.destroy(), 30);
        } else if (path === '/short-big') {
          socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${MiB}\r\n\r\n`);
          socket.write(big.subarray(0, MiB - 1));
          setTimeout(() => socket.destroy(), 100);
        } else if (path === '/long') {
          socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY}${'y'.repeat(50)}`);
        } else if (path === '/long-split') {
          socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY.slice(0, 10)}`);
          setTimeout(() => socket.write(`${BODY.slice(10)}HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil`), 30);
        } else if (path === '/long-big') {
          socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${MiB}\r\n\r\n`);
          socket.write(Buffer.concat([big, Buffer.from('zzzz')]));
        } else if (path === '/204') {
          socket.write('HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n');
        } else if (path === '/304') {
          socket.write(`HTTP/1.1 304 Not Modified\r\nContent-Length: ${BODY.length}\r\nETag: "e"\r\n\r\n`);
        } else if (path === '/head' && method === 'HEAD') {
          socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${BODY.length}\r\n\r\n`);
        } else if (path.startsWith('/gate/')) {
          // All but the last byte now; the last when the test opens the gate.
          socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${MiB}\r\n\r\n`);
          socket.write(big.subarray(0, MiB - 1));
          gates.set(path, () => socket.write(big.subarray(MiB - 1)));
        } else {
          socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY}`);
        }
      }),
    );
    px = await startProxy();
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
  });

  const frameList = (client, id) => client.frames.filter((f) => f.streamId === id && f.type !== FRAME.WINDOW_UPDATE).map((f) => [f.type, f.length, f.flags & FLAG.END_STREAM]);

  async function request(client, id, path, method = 'GET') {
    client.send(headersFrame(id, requestHeaders(up.port, { path, method }), { endStream: true }));
    return client.streamOutcome(id, { timeoutMs: 5000 });
  }

  it('a body shorter than its Content-Length (the upstream closes): RST_STREAM, never END_STREAM; the session serves on', async () => {
    const client = await H2RawClient.connect(px.port, { settings: { 4: 16 * MiB } });
    try {
      client.send(windowUpdateFrame(0, 16 * MiB));
      let id = 1;
      for (const [path, most] of [['/short', 60], ['/short-big', MiB - 1]]) {
        const out = await request(client, id, path);
        assert.equal(out.ended, false, `${path}: ended cleanly with ${out.dataBytes} bytes: ${JSON.stringify(frameList(client, id).slice(-3))}`);
        assert.equal(typeof out.rstCode, 'number', `${path}: reset`);
        assert.ok(out.dataBytes <= most, `${path}: ${out.dataBytes} bytes`);
        id += 2;
        const next = await request(client, id, '/ok');
        assert.deepEqual([next.status, next.body, next.ended], [200, BODY, true]);
        id += 2;
      }
    } finally {
      client.close();
    }
  });

  it('a body longer than its Content-Length: exactly Content-Length bytes, END_STREAM on the last; the rest never reaches a client', async () => {
    const client = await H2RawClient.connect(px.port, { settings: { 4: 16 * MiB } });
    try {
      client.send(windowUpdateFrame(0, 16 * MiB));
      let id = 1;
      for (const [path, length] of [['/long', BODY.length], ['/long-split', BODY.length], ['/long-big', MiB], ['/long-split', BODY.length]]) {
        const out = await request(client, id, path);
        assert.equal(out.status, 200, path);
        assert.equal(out.dataBytes, length, path);
        assert.ok(out.ended, path);
        if (length === BODY.length) assert.equal(out.body, BODY, path);
        else assert.ok(!out.body.includes('z'), `${path}: bytes past the Content-Length`);
        const data = client.frames.filter((f) => f.streamId === id && f.type === FRAME.DATA);
        assert.equal(data.at(-1).flags & FLAG.END_STREAM, FLAG.END_STREAM, `${path}: the last DATA frame ends the stream`);
        assert.ok(data.slice(0, -1).every((f) => (f.flags & FLAG.END_STREAM) === 0 && f.length > 0), `${path}: ${JSON.stringify(frameList(client, id).slice(-3))}`);
        id += 2;
        const next = await request(client, id, '/ok');
        assert.deepEqual([next.status, next.body, next.ended], [200, BODY, true], `after ${path}`);
        id += 2;
      }
      await sleep(50);
      assert.equal(client.frames.filter((f) => f.type === FRAME.RST_STREAM).length, 0);
    } finally {
      client.close();
    }
  });

  it('HEAD, 204 and 304 with a Content-Length: HEADERS with END_STREAM, no DATA; the upstream socket serves the next request', async () => {
    const client = await H2RawClient.connect(px.port);
    try {
      let id = 1;
      for (const [path, method, status] of [['/head', 'HEAD', 200], ['/204', 'GET', 204], ['/304', 'GET', 304], ['/head', 'HEAD', 200]]) {
        const out = await request(client, id, path, method);
        assert.equal(out.status, status, path);
        assert.ok(out.ended, path);
        assert.deepEqual(frameList(client, id), [[FRAME.HEADERS, frameList(client, id)[0][1], FLAG.END_STREAM]], `${path}: one HEADERS frame ending the stream`);
        id += 2;
        const next = await request(client, id, '/ok');
        assert.deepEqual([next.status, next.body, next.ended], [200, BODY, true], `after ${path}`);
        id += 2;
      }
      await sleep(50);
      assert.equal(client.frames.filter((f) => f.type === FRAME.RST_STREAM).length, 0);
    } finally {
      client.close();
    }
  });

  it('the client resets its stream just before, with or just after the last bytes arrive: the session serves on, no read buffer stays held', async () => {
    const { readBufferCounts } = await import('../dist/upstream/read-buffers.js');
    const client = await H2RawClient.connect(px.port, { keepData: false, settings: { 4: 16 * MiB } });
    try {
      client.send(windowUpdateFrame(0, 256 * MiB));
      let id = 1;
      for (let round = 0; round < 24; round++) {
        const path = `/gate/${round}`;
        client.send(headersFrame(id, requestHeaders(up.port, { path }), { endStream: true }));
        // Most of the body through to the client, the last byte still at the upstream.
        assert.ok(await waitFor(() => gates.has(path) && client.frames.filter((f) => f.streamId === id && f.type === FRAME.DATA).reduce((n, f) => n + f.length, 0) >= MiB - 64 * 1024, { timeoutMs: 5000 }), `round ${round}: the body flows`);
        const open = gates.get(path);
        const order = round % 3;
        if (order === 0) client.send(rstStreamFrame(id, ERROR.CANCEL));
        if (order !== 0) open();
        if (order === 1) client.send(rstStreamFrame(id, ERROR.CANCEL));
        if (order === 0) open();
        if (order === 2) {
          await sleep(round % 4);
          client.send(rstStreamFrame(id, ERROR.CANCEL));
        }
        await sleep(5);
        id += 2;
        const next = await request(client, id, '/ok');
        assert.equal(next.status, 200, `round ${round}: the next request`);
        assert.ok(next.ended, `round ${round}`);
        id += 2;
      }
      assert.equal(client.frames.filter((f) => f.type === FRAME.GOAWAY).length, 0, 'no GOAWAY');
      assert.ok(await waitFor(() => {
        const c = readBufferCounts();
        return c.free + c.dropped === c.created;
      }, { timeoutMs: 5000 }), `read buffers still held: ${JSON.stringify(readBufferCounts())}`);
    } finally {
      client.close();
    }
  });
});
