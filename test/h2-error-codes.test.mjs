// Proxy-made answers never echo client input and never show Node-internal codes. The 501 for an
// unknown extended-CONNECT :protocol repeated the client's value; with h2c upstreams the 502
// bodies said `upstream request error: H2_RST_1` (an upstream RST_STREAM before the response)
// and `upstream request error: ERR_HTTP2_ERROR` (an upstream that does not speak HTTP/2).
// Now: `unsupported :protocol`, UPSTREAM_RESET and BAD_RESPONSE, the documented codes.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { once } from 'node:events';
import { startProxy, startRawServer, rawRequest } from './helpers/servers.mjs';
import { H2RawClient, headersFrame } from './helpers/h2-raw.mjs';

/** An h2c upstream whose streams get `handler(stream)`. */
async function startH2Upstream(handler) {
  const server = http2.createServer();
  const sessions = new Set();
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  server.on('stream', (stream) => {
    stream.on('error', () => {});
    handler(stream);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: server.address().port,
    close: () => new Promise((r) => {
      for (const s of sessions) s.destroy();
      server.close(r);
    }),
  };
}

const NODE_INTERNAL = /ERR_|H2_RST|NGHTTP2/;

describe('proxy-made answers: no echo, no Node-internal codes', () => {
  let px;
  before(async () => {
    px = await startProxy({ upstreamProtocol: 'h2c' });
  });
  after(async () => {
    await px.proxy.stop();
  });

  it('extended CONNECT with an unknown :protocol -> 501 "unsupported :protocol", the value not echoed', async () => {
    const c = await H2RawClient.connect(px.port);
    try {
      // Wait for the proxy's SETTINGS (ENABLE_CONNECT_PROTOCOL) before using :protocol.
      await c.waitForFrame((f) => f.type === 4 && !(f.flags & 1));
      const marker = '<script>alert(1)</script>';
      c.send(
        headersFrame(1, [[':method', 'CONNECT'], [':protocol', marker], [':scheme', 'http'], [':authority', 'localhost'], [':path', '/chat'], ['x-cmux-port-internal', '1']], { endStream: true }),
      );
      const out = await c.streamOutcome(1);
      assert.equal(out.status, 501);
      assert.equal(out.body, 'unsupported :protocol');
      assert.ok(!out.body.includes('script'), 'client input echoed');
    } finally {
      c.close();
    }
  });

  it('h2c upstream resets the stream with PROTOCOL_ERROR before answering -> 502 "upstream request error: UPSTREAM_RESET"', async () => {
    const up = await startH2Upstream((stream) => stream.close(http2.constants.NGHTTP2_PROTOCOL_ERROR));
    try {
      const before = px.proxy.getStats().upstreamErrors ?? {};
      const res = await rawRequest(px.port, `GET /rst HTTP/1.1\r\nhost: localhost\r\nx-cmux-port-internal: ${up.port}\r\nconnection: close\r\n\r\n`);
      assert.match(res, /^HTTP\/1\.1 502 /);
      assert.ok(res.endsWith('\r\n\r\nupstream request error: UPSTREAM_RESET'), `body: ${JSON.stringify(res.slice(-60))}`);
      assert.doesNotMatch(res, NODE_INTERNAL);
      const errors = px.proxy.getStats().upstreamErrors;
      assert.equal(Object.keys(errors).some((k) => NODE_INTERNAL.test(k)), false, `stats keys: ${Object.keys(errors)}`);
      assert.equal((errors.UPSTREAM_RESET ?? 0) - (before.UPSTREAM_RESET ?? 0), 1);
    } finally {
      await up.close();
    }
  });

  it('an "h2c" upstream that answers the preface with HTTP/1.1 -> 502 "upstream request error: BAD_RESPONSE"', async () => {
    const up = await startRawServer((socket) => {
      socket.once('data', () => socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n'));
    });
    try {
      const res = await rawRequest(px.port, `GET /not-h2 HTTP/1.1\r\nhost: localhost\r\nx-cmux-port-internal: ${up.port}\r\nconnection: close\r\n\r\n`);
      assert.match(res, /^HTTP\/1\.1 502 /);
      assert.doesNotMatch(res, NODE_INTERNAL);
      assert.ok(res.endsWith('\r\n\r\nupstream request error: BAD_RESPONSE'), `body: ${JSON.stringify(res.slice(-60))}`);
      const errors = px.proxy.getStats().upstreamErrors;
      assert.equal(Object.keys(errors).some((k) => NODE_INTERNAL.test(k)), false, `stats keys: ${Object.keys(errors)}`);
    } finally {
      await up.close();
    }
  });

  it('h2c upstream refused (nothing listening) keeps its errno code: 502 "upstream request error: ECONNREFUSED"', async () => {
    const up = await startRawServer(() => {});
    const port = up.port;
    await up.close();
    const res = await rawRequest(px.port, `GET /refused HTTP/1.1\r\nhost: localhost\r\nx-cmux-port-internal: ${port}\r\nconnection: close\r\n\r\n`);
    assert.match(res, /^HTTP\/1\.1 502 /);
    assert.ok(res.endsWith('upstream request error: ECONNREFUSED'), `body: ${JSON.stringify(res.slice(-60))}`);
  });
});
