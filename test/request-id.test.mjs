// X-Request-Id: a valid one from the client (1-200 visible ASCII characters) is kept, anything
// else is replaced by one the proxy makes; the upstream gets exactly one, and the access log the same.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startProxy, startUpstream, request, rawRequest, h2connect, h2request, waitFor } from './helpers/servers.mjs';
import { startWsEcho, openWs, closed } from './helpers/ws.mjs';

describe('X-Request-Id', () => {
  let up;
  let h2up;
  let wsUp;
  let px;
  const entries = [];
  before(async () => {
    up = await startUpstream();
    wsUp = await startWsEcho();
    px = await startProxy({ accessLog: (e) => entries.push(e) });
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
    await wsUp.close();
    void h2up;
  });

  const route = () => ({ 'x-cmux-port-internal': String(up.port) });
  const idsSeen = (res) => {
    const body = JSON.parse(res.body);
    const raw = body.rawHeaders;
    const out = [];
    for (let i = 0; i < raw.length; i += 2) if (raw[i].toLowerCase() === 'x-request-id') out.push(raw[i + 1]);
    return out;
  };

  it('keeps a valid client id and sends it upstream once; the access log has it', async () => {
    entries.length = 0;
    const id = 'abc-123_XYZ:~!';
    const res = await request(`${px.url}/`, { headers: { ...route(), 'X-Request-Id': id } });
    assert.deepEqual(idsSeen(res), [id]);
    const longest = 'a'.repeat(200);
    assert.deepEqual(idsSeen(await request(`${px.url}/`, { headers: { ...route(), 'x-request-id': longest } })), [longest]);
    assert.ok(await waitFor(() => entries.length === 2));
    assert.equal(entries[0].requestId, id);
    assert.equal(entries[1].requestId, longest);
  });

  it('makes one when the client sent none, one that is too long, has spaces or non-ASCII, or sent two', async () => {
    const cases = [
      [],
      ['X-Request-Id', 'a'.repeat(201)],
      ['X-Request-Id', 'has space'],
      ['X-Request-Id', 'caf\u00e9'],
      ['X-Request-Id', 'one', 'X-Request-Id', 'two'],
    ];
    const made = new Set();
    for (const extra of cases) {
      let head = `GET / HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\nConnection: close\r\n`;
      for (let i = 0; i < extra.length; i += 2) head += `${extra[i]}: ${extra[i + 1]}\r\n`;
      const out = await rawRequest(px.port, Buffer.from(`${head}\r\n`, 'latin1'));
      assert.match(out, /^HTTP\/1\.1 200/);
      const body = JSON.parse(out.slice(out.indexOf('\r\n\r\n') + 4));
      const ids = [];
      for (let i = 0; i < body.rawHeaders.length; i += 2) if (body.rawHeaders[i].toLowerCase() === 'x-request-id') ids.push(body.rawHeaders[i + 1]);
      assert.equal(ids.length, 1, JSON.stringify(extra));
      assert.match(ids[0], /^[0-9a-f]{12}-[0-9a-z]+$/);
      made.add(ids[0]);
    }
    assert.equal(made.size, cases.length, 'every made id is new');
  });

  it('HTTP/2 clients and WebSocket upgrades get one too', async () => {
    entries.length = 0;
    const session = h2connect(px.port);
    const r = await h2request(session, { ':path': '/', ...route(), 'x-request-id': 'h2-id' });
    session.close();
    assert.deepEqual(idsSeen(r), ['h2-id']);
    const ws = await openWs(`ws://127.0.0.1:${px.port}/`, undefined, { headers: { 'x-cmux-port-internal': String(wsUp.port), 'x-request-id': 'ws-id' } });
    ws.close();
    await closed(ws);
    assert.ok(await waitFor(() => wsUp.upgrades.length >= 1 && entries.length === 2));
    assert.equal(wsUp.upgrades.at(-1).headers['x-request-id'], 'ws-id');
    assert.deepEqual(entries.map((e) => e.requestId).sort(), ['h2-id', 'ws-id']);
  });
});

describe('X-Request-Id toward h2c upstreams', () => {
  it('buildUpstreamH2Headers sends exactly the chosen id', async () => {
    const { buildUpstreamH2Headers } = await import('../dist/headers.js');
    const headers = buildUpstreamH2Headers('GET', '/', ['x-request-id', 'bad id', 'accept', '*/*'], null, {
      host: 'h',
      forwardedHost: 'h',
      clientAddress: '127.0.0.1',
      proto: 'http',
      viaEntry: '2 test',
      upgrade: false,
      chunked: false,
      requestId: 'chosen',
    });
    assert.equal(headers['x-request-id'], 'chosen');
    assert.equal(headers['accept'], '*/*');
  });
});
