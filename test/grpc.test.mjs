// A real gRPC client and server (@grpc/grpc-js) through the proxy: HTTP/2 client, h2c upstream.
// gRPC puts its status in trailers (or in a trailers-only HEADERS frame), so this is the proof
// that trailers and stream ends travel both ways: unary, server streaming, an expiring deadline
// (the proxy keeps no stream or socket behind) and error statuses. An HTTP/1.1 upstream cannot
// speak gRPC: the client gets a clear error, never a hang.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import grpc from '@grpc/grpc-js';
import { startProxy, waitFor } from './helpers/servers.mjs';

const json = (value) => Buffer.from(JSON.stringify(value));
const unjson = (buf) => JSON.parse(buf.toString('utf8'));
const method = (name, responseStream) => ({
  path: `/cmux.test.Echo/${name}`,
  requestStream: false,
  responseStream,
  requestSerialize: json,
  requestDeserialize: unjson,
  responseSerialize: json,
  responseDeserialize: unjson,
});

/** The service, with JSON messages (no .proto file needed). */
const ECHO = {
  unary: method('Unary', false),
  count: method('Count', true),
  hang: method('Hang', false),
  missing: method('Missing', false),
  countThenFail: method('CountThenFail', true),
};
const EchoClient = grpc.makeGenericClientConstructor(ECHO, 'Echo');

async function startGrpcServer() {
  const server = new grpc.Server();
  const hanging = [];
  server.addService(ECHO, {
    unary(call, callback) {
      const trailer = new grpc.Metadata();
      trailer.set('x-trailer-meta', 'unary-done');
      callback(null, { echo: call.request.text, via: call.metadata.get('via')[0] ?? null }, trailer);
    },
    count(call) {
      for (let i = 0; i < call.request.n; i++) call.write({ i });
      call.end();
    },
    hang(call, callback) {
      // Never answers; the client's deadline ends it.
      const entry = { cancelled: false, callback };
      hanging.push(entry);
      call.on('cancelled', () => (entry.cancelled = true));
    },
    missing(call, callback) {
      callback({ code: grpc.status.NOT_FOUND, details: `no such thing: ${call.request.name}` });
    },
    countThenFail(call) {
      call.write({ i: 0 });
      call.write({ i: 1 });
      call.emit('error', { code: grpc.status.NOT_FOUND, details: 'gone after two' });
    },
  });
  const port = await new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return { server, port, hanging, close: () => new Promise((r) => server.tryShutdown(() => r())) };
}

function routeTo(port) {
  const md = new grpc.Metadata();
  md.set('x-cmux-port-internal', String(port));
  return md;
}

/** A unary call; resolves `{ err, value, status }` (status: code, details, metadata from trailers). */
function unary(client, name, request, metadata, options = {}) {
  return new Promise((resolve) => {
    let result = null;
    const call = client[name](request, metadata, options, (err, value) => {
      result = { err, value };
    });
    call.on('status', (status) => setImmediate(() => resolve({ ...result, status })));
  });
}

/** A server-streaming call; resolves `{ messages, status, error }`. */
function serverStream(client, name, request, metadata, options = {}) {
  return new Promise((resolve) => {
    const messages = [];
    let error = null;
    const call = client[name](request, metadata, options);
    call.on('data', (m) => messages.push(m));
    call.on('error', (e) => (error = e));
    call.on('status', (status) => setImmediate(() => resolve({ messages, status, error })));
  });
}

describe('gRPC through the proxy (grpc-js client and server, h2c upstream)', () => {
  let up;
  let px;
  let client;
  before(async () => {
    up = await startGrpcServer();
    px = await startProxy({ upstreamProtocol: 'h2c' });
    client = new EchoClient(`127.0.0.1:${px.port}`, grpc.credentials.createInsecure());
  });
  after(async () => {
    client?.close();
    await px?.proxy.stop();
    await up?.close();
  });

  it('unary: the answer, status OK and trailing metadata from the trailers', async () => {
    const res = await unary(client, 'unary', { text: 'hi' }, routeTo(up.port));
    assert.equal(res.err, null);
    assert.equal(res.value.echo, 'hi');
    assert.match(res.value.via, /^2 cmux-proxy-/, 'the request went through the proxy');
    assert.equal(res.status.code, grpc.status.OK);
    assert.deepEqual(res.status.metadata.get('x-trailer-meta'), ['unary-done']);
  });

  it('server streaming: every message in order, then status OK', async () => {
    const res = await serverStream(client, 'count', { n: 50 }, routeTo(up.port));
    assert.equal(res.error, null);
    assert.equal(res.status.code, grpc.status.OK);
    assert.deepEqual(res.messages.map((m) => m.i), Array.from({ length: 50 }, (_, i) => i));
  });

  it('an error status with a message (a trailers-only answer) reaches the client', async () => {
    const res = await unary(client, 'missing', { name: 'widget' }, routeTo(up.port));
    assert.equal(res.err?.code, grpc.status.NOT_FOUND);
    assert.equal(res.status.code, grpc.status.NOT_FOUND);
    assert.equal(res.status.details, 'no such thing: widget');
  });

  it('an error status after messages arrives in the trailers', async () => {
    const res = await serverStream(client, 'countThenFail', {}, routeTo(up.port));
    assert.deepEqual(res.messages.map((m) => m.i), [0, 1]);
    assert.equal(res.status.code, grpc.status.NOT_FOUND);
    assert.equal(res.status.details, 'gone after two');
  });

  it('an expiring deadline: DEADLINE_EXCEEDED, the upstream call is cancelled, no stream left in the proxy', async () => {
    const res = await unary(client, 'hang', {}, routeTo(up.port), { deadline: Date.now() + 300 });
    assert.equal(res.status.code, grpc.status.DEADLINE_EXCEEDED);
    assert.equal(up.hanging.length, 1);
    assert.ok(await waitFor(() => up.hanging[0].cancelled, { timeoutMs: 10000 }), 'the upstream saw the call cancelled');
    assert.ok(await waitFor(() => px.proxy.getStats().upstreamH2Streams === 0, { timeoutMs: 10000 }), JSON.stringify(px.proxy.getStats()));
    // The same connection and upstream session serve the next call.
    const next = await unary(client, 'unary', { text: 'after' }, routeTo(up.port));
    assert.equal(next.value?.echo, 'after');
    assert.equal(px.proxy.getStats().upstreamH2Sessions, 1);
  });

  it('many calls at once on one connection, mixed outcomes', async () => {
    const calls = [];
    for (let i = 0; i < 40; i++) {
      if (i % 4 === 0) calls.push(unary(client, 'missing', { name: `n${i}` }, routeTo(up.port)).then((r) => r.status.details === `no such thing: n${i}`));
      else if (i % 4 === 1) calls.push(serverStream(client, 'count', { n: 5 }, routeTo(up.port)).then((r) => r.messages.length === 5 && r.status.code === 0));
      else calls.push(unary(client, 'unary', { text: `m${i}` }, routeTo(up.port)).then((r) => r.value?.echo === `m${i}`));
    }
    assert.deepEqual(await Promise.all(calls), calls.map(() => true));
    assert.ok(await waitFor(() => px.proxy.getStats().upstreamH2Streams === 0, { timeoutMs: 10000 }));
  });

  it('the client closing leaves no connection in the proxy', async () => {
    // Its own connection (grpc-js shares one per target between clients otherwise).
    const before = px.proxy.getStats().activeConnections;
    const other = new EchoClient(`127.0.0.1:${px.port}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
    const res = await unary(other, 'unary', { text: 'x' }, routeTo(up.port));
    assert.equal(res.value?.echo, 'x');
    const open = px.proxy.getStats().activeConnections;
    assert.equal(open, before + 1);
    other.close();
    assert.ok(await waitFor(() => px.proxy.getStats().activeConnections === open - 1, { timeoutMs: 10000 }), JSON.stringify(px.proxy.getStats()));
  });
});

describe('gRPC to an HTTP/1.1 upstream (upstreamProtocol http1)', () => {
  it('cannot work: the client gets UNAVAILABLE from the proxy 502 at once, not a hang', async () => {
    const up = await startGrpcServer();
    const px = await startProxy();
    const client = new EchoClient(`127.0.0.1:${px.port}`, grpc.credentials.createInsecure());
    try {
      const started = Date.now();
      const res = await unary(client, 'unary', { text: 'hi' }, routeTo(up.port), { deadline: Date.now() + 20000 });
      assert.equal(res.status.code, grpc.status.UNAVAILABLE, JSON.stringify(res.status));
      assert.match(res.status.details, /502/);
      assert.ok(Date.now() - started < 15000, 'answered well before the deadline');
    } finally {
      client.close();
      await px.proxy.stop();
      await up.close();
    }
  });
});
