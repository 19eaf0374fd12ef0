// A client GOAWAY(NO_ERROR), then a new stream, then a connection error (a PING with a 3-byte
// payload), all in one write: Node answers the GOAWAY by calling close() inside nghttp2's frame
// callback, and nghttp2 then aborted the whole process (Node 20: assertion
// `iframe->state == NGHTTP2_IB_IGN_ALL`). ~250 bytes killed every client's proxy.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { request } from './helpers/servers.mjs';

const CHILD = fileURLToPath(new URL('./helpers/proxy-child.mjs', import.meta.url));

function hpackLiteral(name, value) {
  // Literal header field without indexing, new name (RFC 7541 §6.2.2), short strings only.
  return Buffer.concat([Buffer.from([0x00, name.length]), Buffer.from(name), Buffer.from([value.length]), Buffer.from(value)]);
}

function frame(type, flags, streamId, payload) {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}

it('GOAWAY(NO_ERROR) + a new stream + a 3-byte PING in one write: the proxy process survives and serves', async () => {
  const child = fork(CHILD, [JSON.stringify({})], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  try {
    const [ready] = await once(child, 'message');
    const block = Buffer.concat([
      Buffer.from([0x83, 0x86]), // :method POST, :scheme http
      hpackLiteral(':path', '/x'),
      hpackLiteral(':authority', 'a.test'),
      hpackLiteral('x-cmux-port-internal', '1'),
    ]);
    const attack = Buffer.concat([
      Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'),
      frame(0x4, 0, 0, Buffer.alloc(0)), // SETTINGS
      frame(0x7, 0, 0, Buffer.alloc(8)), // GOAWAY last-stream 0, NO_ERROR
      frame(0x1, 0x4, 3, block), // HEADERS stream 3, END_HEADERS
      frame(0x0, 0x0, 3, Buffer.from('body')), // DATA
      frame(0x6, 0, 0, Buffer.from('abc')), // PING with a 3-byte payload: connection error
    ]);
    const socket = net.connect(ready.port, '127.0.0.1');
    socket.on('error', () => {});
    socket.on('data', () => {});
    await once(socket, 'connect');
    socket.write(attack);
    await Promise.race([once(socket, 'close'), new Promise((r) => setTimeout(r, 1500))]);
    socket.destroy();
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(child.exitCode, null, `the proxy process died: ${stderr.slice(-300)}`);
    assert.equal(child.signalCode, null);
    const res = await request(`http://127.0.0.1:${ready.port}/`, { headers: { 'x-cmux-port-internal': '1' } });
    assert.equal(res.status, 502, 'still answering');
  } finally {
    child.kill();
  }
});
