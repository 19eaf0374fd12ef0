// Hostile HTTP/1.1 input, each case with the exact bytes of the attack: framing the proxy must
// own, per-message parser state, pipelining and chunking costs, upgrades with bodies and early
// data, header-size edges.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { rawRequest, startProxy, startRawServer, startUpstream, waitFor } from './helpers/servers.mjs';

describe('HTTP/1.1 framing and parser state under attack', () => {
  let proxy;
  let pport;
  let upstream;

  before(async () => {
    ({ proxy, port: pport } = await startProxy());
    upstream = await startUpstream();
  });

  after(async () => {
    await proxy?.stop();
    await upstream?.close();
  });

  it('Connection: Content-Length cannot strip the framing: the body stays a body, never a second request', async () => {
    const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Smuggled: 1\r\nContent-Length: 10\r\n\r\n';
    const body = smuggled.padEnd(84, 'A');
    assert.equal(body.length, 84);
    const attack =
      `POST /p HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nConnection: Content-Length\r\n` +
      `Content-Length: 84\r\n\r\n${body}`;
    upstream.requests.length = 0;
    const text = await rawRequest(pport, attack, { until: (t) => t.includes('"bodyLength"') && t.endsWith('}') });
    assert.match(text, /^HTTP\/1\.1 200 /);
    const seen = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
    assert.equal(seen.url, '/p');
    assert.equal(seen.headers['content-length'], '84');
    assert.equal(seen.bodyLength, 84);
    assert.equal(seen.body, body);
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(upstream.requests.map((r) => r.url), ['/p'], 'the upstream saw exactly the one request the client sent');
  });

  it('Connection: Host cannot strip Host', async () => {
    const attack = `GET /h HTTP/1.1\r\nHost: victim.example\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nConnection: host, close\r\n\r\n`;
    const text = await rawRequest(pport, attack);
    const seen = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
    assert.equal(seen.headers.host, 'victim.example');
  });
});
