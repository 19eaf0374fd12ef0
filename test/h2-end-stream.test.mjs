// An HTTP/2 response relayed from an HTTP/1.1 upstream ends with its last DATA frame: a
// Content-Length body's last bytes carry END_STREAM, with no empty DATA frame after them (which
// cost the proxy a second write cycle per response). llhttp hands the body and the message's end
// to the proxy in separate callbacks, and Node runs its ticks between them, so the stream has to
// be ended with the last body bytes.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { sleep, startProxy, startRawServer } from './helpers/servers.mjs';
import { FRAME, FLAG, H2RawClient, headersFrame, requestHeaders } from './helpers/h2-raw.mjs';

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
      let buffered = '';
      socket.on('data', (chunk) => {
        buffered += chunk.toString('latin1');
        let end;
        while ((end = buffered.indexOf('\r\n\r\n')) !== -1) {
          const head = buffered.slice(0, end);
          buffered = buffered.slice(end + 4);
          answer(socket, head.split(' ')[1]);
        }
      });
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
