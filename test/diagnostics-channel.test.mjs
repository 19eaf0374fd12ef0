// diagnostics_channel: the `cmux-proxy:*` events a subscriber in the embedding process sees, in
// order, for HTTP/1.1, HTTP/2, routing and upstream errors and WebSockets on both paths.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import dc from 'node:diagnostics_channel';
import http2 from 'node:http2';
import net from 'node:net';
import { once } from 'node:events';
import { startProxy, startUpstream, request, h2connect, h2request, waitFor } from './helpers/servers.mjs';
import { startWsEcho, openWs, closed } from './helpers/ws.mjs';
import { clientFrame, readFrames } from './helpers/ws-frames.mjs';

const NAMES = [
  'cmux-proxy:request:start',
  'cmux-proxy:request:route',
  'cmux-proxy:upstream:connect',
  'cmux-proxy:response:headers',
  'cmux-proxy:websocket:open',
  'cmux-proxy:websocket:close',
  'cmux-proxy:request:error',
  'cmux-proxy:request:end',
];

/** Every event of every channel, in publish order. */
const events = [];
const handlers = NAMES.map((name) => [name, (message) => events.push({ name: name.slice('cmux-proxy:'.length), message })]);

/** The events of the request with this X-Request-Id; all carry the same `request` object. */
function eventsOf(id) {
  const list = events.filter((e) => e.message.request.id === id);
  for (const e of list) assert.equal(e.message.request, list[0].message.request, `${e.name} carries the same request object`);
  return list;
}

function namesOf(id) {
  return eventsOf(id).map((e) => e.name);
}

function find(id, name) {
  return eventsOf(id).find((e) => e.name === name)?.message;
}

function refusedPort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

describe('diagnostics_channel events', () => {
  let up;
  let wsEcho;
  let px;
  before(async () => {
    for (const [name, fn] of handlers) dc.subscribe(name, fn);
    up = await startUpstream();
    wsEcho = await startWsEcho();
    px = await startProxy();
  });
  after(async () => {
    for (const [name, fn] of handlers) dc.unsubscribe(name, fn);
    await px.proxy.stop();
    await up.close();
    await wsEcho.close();
  });

  it('HTTP/1.1: start, route, upstream:connect, response:headers, end', async () => {
    const id = 'diag-h1-1';
    const res = await request(`${px.url}/items?q=1`, { headers: { 'x-cmux-port-internal': String(up.port), 'x-request-id': id } });
    assert.equal(res.status, 200);
    assert.ok(await waitFor(() => namesOf(id).includes('request:end')));
    assert.deepEqual(namesOf(id), ['request:start', 'request:route', 'upstream:connect', 'response:headers', 'request:end']);
    const start = find(id, 'request:start');
    assert.deepEqual(start.request, { id, method: 'GET', host: `127.0.0.1:${px.port}`, path: '/items?q=1', protocol: 'HTTP/1.1', tls: false, client: '127.0.0.1' });
    assert.deepEqual(find(id, 'request:route'), { request: start.request, target: `127.0.0.1:${up.port}`, route: 'header' });
    const connect = find(id, 'upstream:connect');
    assert.equal(connect.target, `127.0.0.1:${up.port}`);
    assert.equal(connect.protocol, 'http1');
    assert.equal(typeof connect.reused, 'boolean');
    const headers = find(id, 'response:headers');
    assert.equal(headers.status, 200);
    assert.ok(Array.isArray(headers.headers) && headers.headers.map((h) => h.toLowerCase()).includes('content-type'), 'raw header list');
    const end = find(id, 'request:end');
    assert.deepEqual({ ...end, request: undefined }, { request: undefined, status: 200, bytesIn: 0, bytesOut: Buffer.byteLength(res.body), error: null });
  });

  it('HTTP/2: the same sequence, protocol HTTP/2', async () => {
    const id = 'diag-h2-1';
    const session = h2connect(px.port);
    const res = await h2request(session, { ':path': '/h2', ':authority': `app.${up.port}.localhost`, 'x-request-id': id });
    session.close();
    assert.equal(res.status, 200);
    assert.ok(await waitFor(() => namesOf(id).includes('request:end')));
    assert.deepEqual(namesOf(id), ['request:start', 'request:route', 'upstream:connect', 'response:headers', 'request:end']);
    const start = find(id, 'request:start');
    assert.equal(start.request.protocol, 'HTTP/2');
    assert.equal(start.request.host, `app.${up.port}.localhost`);
    assert.equal(find(id, 'request:route').route, 'host');
    assert.equal(find(id, 'response:headers').status, 200);
    assert.equal(find(id, 'request:end').status, 200);
    assert.equal(find(id, 'request:end').error, null);
  });

  it('no route: start, error (CMUX_NO_ROUTE, 400), end', async () => {
    const id = 'diag-noroute-1';
    const res = await request(`${px.url}/`, { headers: { host: 'nowhere.example', 'x-request-id': id } });
    assert.equal(res.status, 400);
    assert.ok(await waitFor(() => namesOf(id).includes('request:end')));
    assert.deepEqual(namesOf(id), ['request:start', 'request:error', 'request:end']);
    assert.equal(find(id, 'request:error').code, 'CMUX_NO_ROUTE');
    assert.equal(find(id, 'request:error').status, 400);
    assert.equal(find(id, 'request:end').error, 'CMUX_NO_ROUTE');
    assert.equal(find(id, 'request:end').status, 400);
  });

  it('upstream refused: start, route, error (ECONNREFUSED, 502), end; on HTTP/2 too', async () => {
    const port = await refusedPort();
    const id = 'diag-refused-1';
    const res = await request(`${px.url}/`, { headers: { 'x-cmux-port-internal': String(port), 'x-request-id': id } });
    assert.equal(res.status, 502);
    assert.ok(await waitFor(() => namesOf(id).includes('request:end')));
    assert.deepEqual(namesOf(id), ['request:start', 'request:route', 'request:error', 'request:end']);
    assert.deepEqual({ ...find(id, 'request:error'), request: undefined }, { request: undefined, code: 'ECONNREFUSED', status: 502 });
    const id2 = 'diag-refused-2';
    const session = h2connect(px.port);
    const res2 = await h2request(session, { ':path': '/', 'x-cmux-port-internal': String(port), 'x-request-id': id2 });
    session.close();
    assert.equal(res2.status, 502);
    assert.ok(await waitFor(() => namesOf(id2).includes('request:end')));
    assert.deepEqual(namesOf(id2), ['request:start', 'request:route', 'request:error', 'request:end']);
    assert.equal(find(id2, 'request:error').code, 'ECONNREFUSED');
  });

  it('WebSocket over HTTP/1.1: ... response:headers (101), websocket:open, websocket:close, end', async () => {
    const id = 'diag-ws-h1';
    const ws = await openWs(`ws://127.0.0.1:${px.port}/chat`, undefined, { headers: { 'x-cmux-port-internal': String(wsEcho.port), 'x-request-id': id } });
    ws.send('hello');
    await once(ws, 'message');
    assert.deepEqual(namesOf(id), ['request:start', 'request:route', 'upstream:connect', 'response:headers', 'websocket:open']);
    ws.close(1000);
    await closed(ws);
    assert.ok(await waitFor(() => namesOf(id).includes('request:end')), 'request:end after the close');
    assert.deepEqual(namesOf(id), ['request:start', 'request:route', 'upstream:connect', 'response:headers', 'websocket:open', 'websocket:close', 'request:end']);
    assert.equal(find(id, 'response:headers').status, 101);
    assert.equal(find(id, 'websocket:open').target, `127.0.0.1:${wsEcho.port}`);
    const close = find(id, 'websocket:close');
    assert.ok(close.bytesIn > 0 && close.bytesOut > 0, `bytes both ways: ${close.bytesIn}/${close.bytesOut}`);
    assert.equal(find(id, 'request:end').status, 101);
    assert.equal(find(id, 'request:end').error, null);
  });

  it('WebSocket over HTTP/2 (RFC 8441): the same sequence, end status 200', async () => {
    const id = 'diag-ws-h2';
    const session = http2.connect(`http://127.0.0.1:${px.port}`);
    session.on('error', () => {});
    await once(session, 'remoteSettings');
    const stream = session.request(
      { ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': '/chat', 'sec-websocket-version': '13', 'x-cmux-port-internal': String(wsEcho.port), 'x-request-id': id },
      { endStream: false },
    );
    const [headers] = await once(stream, 'response');
    assert.equal(headers[':status'], 200);
    const frames = readFrames(stream, 1);
    stream.write(clientFrame('hello over h2'));
    assert.equal((await frames)[0].payload.toString(), 'hello over h2');
    assert.deepEqual(namesOf(id), ['request:start', 'request:route', 'upstream:connect', 'response:headers', 'websocket:open']);
    assert.equal(find(id, 'request:start').request.protocol, 'HTTP/2');
    stream.close();
    session.close();
    assert.ok(await waitFor(() => namesOf(id).includes('request:end')), 'request:end after the close');
    assert.deepEqual(namesOf(id), ['request:start', 'request:route', 'upstream:connect', 'response:headers', 'websocket:open', 'websocket:close', 'request:end']);
    assert.equal(find(id, 'request:end').status, 200);
  });

  it('publishes nothing once unsubscribed', async () => {
    for (const [name, fn] of handlers) dc.unsubscribe(name, fn);
    try {
      const before = events.length;
      const res = await request(`${px.url}/`, { headers: { 'x-cmux-port-internal': String(up.port) } });
      assert.equal(res.status, 200);
      assert.equal(events.length, before);
    } finally {
      for (const [name, fn] of handlers) dc.subscribe(name, fn);
    }
  });
});
