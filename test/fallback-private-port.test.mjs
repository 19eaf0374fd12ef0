// A `fallback.handler` is served on a private loopback port and trusts the forwarding headers it
// gets (the proxy sets X-Forwarded-*). Nothing but the fallback rule may reach that port: a
// CONNECT tunnel to it would let a client write its own X-Forwarded-For past every request
// check, and a port or Host route would reach it past the fallback rule.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startProxy, rawRequest, request } from './helpers/servers.mjs';
import { H2RawClient, headersFrame } from './helpers/h2-raw.mjs';

const REFUSED = "invalid port: reserved for the proxy's fallback handler";

describe('the fallback handler private port', () => {
  let proxy;
  let port;
  let url;
  let privatePort;
  const seen = [];

  before(async () => {
    ({ proxy, port, url } = await startProxy({
      fallback: {
        handler(req, res) {
          seen.push({ url: req.url, xff: req.headers['x-forwarded-for'], proto: req.headers['x-forwarded-proto'], host: req.headers['x-forwarded-host'] });
          const body = JSON.stringify({ localPort: req.socket.localPort, xff: req.headers['x-forwarded-for'] });
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
          res.end(body);
        },
      },
    }));
    const res = await request(`${url}/whoami`);
    assert.equal(res.status, 200);
    privatePort = JSON.parse(res.body).localPort;
    assert.ok(privatePort > 0 && privatePort !== port);
  });
  after(() => proxy.stop());

  const spoofed = () => seen.filter((r) => r.xff?.includes('6.6.6.6') || r.proto === 'gopher' || r.host === 'evil.example');

  for (const authority of ['127.0.0.1', 'localhost']) {
    it(`CONNECT ${authority}:<private port> followed by a request with forged X-Forwarded-* -> 400, the handler never sees it`, async () => {
      const attack =
        `CONNECT ${authority}:${privatePort} HTTP/1.1\r\nHost: ${authority}:${privatePort}\r\n\r\n` +
        'GET /admin HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: gopher\r\nX-Forwarded-Host: evil.example\r\n\r\n';
      const out = await rawRequest(port, attack, { timeoutMs: 1500, until: (s) => s.includes(REFUSED) });
      assert.match(out, /^HTTP\/1\.1 400 Bad Request\r\n/, out);
      assert.ok(out.includes(`\r\n\r\n${REFUSED}`), out);
      assert.doesNotMatch(out, /200 Connection Established/);
      assert.deepEqual(spoofed(), []);
    });
  }

  it('HTTP/2 CONNECT to the private port -> 400, no tunnel', async () => {
    const c = await H2RawClient.connect(port);
    try {
      c.send(headersFrame(1, [[':method', 'CONNECT'], [':authority', `127.0.0.1:${privatePort}`]]));
      const out = await c.streamOutcome(1);
      assert.equal(out.status, 400);
      assert.equal(out.body, REFUSED);
    } finally {
      c.close();
    }
  });

  it('X-Cmux-Port-Internal: <private port> -> 400', async () => {
    const before = seen.length;
    const out = await rawRequest(
      port,
      `GET /admin HTTP/1.1\r\nHost: app\r\nX-Cmux-Port-Internal: ${privatePort}\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n`,
      { timeoutMs: 1500, until: (s) => s.includes(REFUSED) },
    );
    assert.match(out, /^HTTP\/1\.1 400 Bad Request\r\n/, out);
    assert.equal(seen.length, before);
  });

  it('Host: <private port>.cmux.local and port-<private port>-x.cmux.sh -> 400', async () => {
    const before = seen.length;
    for (const host of [`${privatePort}.cmux.local`, `port-${privatePort}-x.cmux.sh`]) {
      const out = await rawRequest(port, `GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`, { timeoutMs: 1500, until: (s) => s.includes(REFUSED) });
      assert.match(out, /^HTTP\/1\.1 400 Bad Request\r\n/, `${host}: ${out}`);
    }
    assert.equal(seen.length, before);
  });

  it('the fallback itself still works, with X-Forwarded-For naming the real client', async () => {
    const res = await request(`${url}/plain`, { headers: { 'x-forwarded-proto': 'gopher' } });
    assert.equal(res.status, 200);
    assert.equal(seen.at(-1).proto, 'http');
    assert.equal(seen.at(-1).xff, '127.0.0.1');
  });
});
