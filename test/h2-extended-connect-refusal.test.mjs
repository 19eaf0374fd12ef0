// RFC 8441 §5: a 2xx to extended CONNECT means the WebSocket is open. An upstream that answers
// the bridged HTTP/1.1 upgrade with `200` and a body did not upgrade: the client must not get
// `:status 200` with that body arriving as WebSocket data.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { once } from 'node:events';
import { startProxy, startRawServer } from './helpers/servers.mjs';

it('an upstream answering the WebSocket upgrade with 200 + body -> 502 BAD_HANDSHAKE, not an open tunnel; a 403 is relayed', async () => {
  let answer = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno';
  const upstream = await startRawServer((socket) => {
    let seen = '';
    socket.on('data', (c) => {
      seen += c.toString('latin1');
      if (seen.includes('\r\n\r\n')) socket.write(answer);
    });
  });
  const { proxy, port } = await startProxy();
  const client = http2.connect(`http://127.0.0.1:${port}`);
  client.on('error', () => {});
  try {
    await once(client, 'remoteSettings');
    const open = async () => {
      const stream = client.request(
        { ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': '/ws', ':authority': 'x', 'x-cmux-port-internal': String(upstream.port), 'sec-websocket-version': '13' },
        { endStream: false },
      );
      stream.on('error', () => {});
      const [headers] = await once(stream, 'response');
      let body = '';
      stream.on('data', (c) => (body += c));
      await Promise.race([once(stream, 'close'), new Promise((r) => setTimeout(r, 1000))]);
      stream.destroy();
      return { status: headers[':status'], body };
    };
    const refused = await open();
    assert.equal(refused.status, 502);
    assert.equal(refused.body, 'upstream request error: BAD_HANDSHAKE');
    answer = 'HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno';
    const forbidden = await open();
    assert.equal(forbidden.status, 403);
    assert.equal(forbidden.body, 'no');
  } finally {
    client.close();
    await proxy.stop();
    await upstream.close();
  }
});
