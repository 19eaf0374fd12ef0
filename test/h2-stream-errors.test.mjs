// A stream error must cost that stream only (RFC 9113 §5.4.2), whatever else arrives in the same
// read, on the client side and on h2c upstream sessions alike. Since Node 22 nghttp2 reports DATA
// beyond a stream's content-length through its invalid-frame callback and Node destroys the whole
// session inside nghttp2's read loop: every other request on the connection is lost
// (GOAWAY(INTERNAL_ERROR) toward a client), and on Node 22.23 DATA of a later frame in the same
// read, handed to a stream already torn down, aborts the process
// (`Assertion failed: onread->IsFunction()`). A plain node:http2 server or client does both. The
// proxy runs in a child process so an abort is reported, not fatal to the test runner.
// A real connection error from an h2c upstream must still end that session: on Node 20 nghttp2
// then just stops reading and tells Node nothing, so its requests used to wait forever.
import { after, before, it } from 'node:test';
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { startUpstream, request } from './helpers/servers.mjs';
import net from 'node:net';
import http2 from 'node:http2';
import { H2RawClient, FRAME, dataFrame, errorName, frame, headersFrame, requestHeaders, serveH2cFrames, ERROR } from './helpers/h2-raw.mjs';

const CHILD = fileURLToPath(new URL('./helpers/proxy-child.mjs', import.meta.url));

let up;
const bodies = new Map();

before(async () => {
  up = await startUpstream((req, res) => {
    let length = 0;
    req.on('data', (c) => (length += c.length));
    req.on('end', () => {
      bodies.set(req.url, length);
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`got ${length}`);
    });
    req.on('error', () => {});
  });
});

after(async () => {
  await up.close();
});

it('DATA beyond content-length, then a complete request on another stream, in one write: that request is answered, the session and the process live', async () => {
  const child = fork(CHILD, [JSON.stringify({})], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  const [ready] = await once(child, 'message');
  let c;
  try {
    c = await H2RawClient.connect(ready.port);
    const post = (path) => requestHeaders(up.port, { method: 'POST', path, extra: [['content-length', '5']] });
    c.send(
      Buffer.concat([
        headersFrame(1, post('/over')),
        dataFrame(1, 'hello world', { endStream: true }),
        headersFrame(3, post('/ok')),
        dataFrame(3, 'hello', { endStream: true }),
      ]),
    );
    const bad = await c.streamOutcome(1).catch((err) => ({ err }));
    const good = await c.streamOutcome(3).catch((err) => ({ err }));
    assert.equal(child.exitCode, null, `the proxy process died: ${stderr.slice(-400)}`);
    assert.equal(child.signalCode, null);
    assert.equal(bad.rstCode, ERROR.PROTOCOL_ERROR, `stream 1: rst ${errorName(bad.rstCode)} goaway ${bad.goaway?.errorCode}`);
    assert.equal(good.status, 200, `stream 3: status ${good.status} rst ${errorName(good.rstCode)} goaway ${good.goaway?.errorCode}`);
    assert.equal(good.body, 'got 5');
    assert.equal(good.goaway ?? null, null, 'no GOAWAY for a stream error');
    assert.equal(bodies.get('/over') ?? 0, 0, 'nothing of the oversized body reached the upstream as complete');
    // The same connection still serves.
    c.send(headersFrame(5, requestHeaders(up.port, { path: '/after' }), { endStream: true }));
    assert.equal((await c.streamOutcome(5)).status, 200);
    const res = await request(`http://127.0.0.1:${ready.port}/h1`, { headers: { 'x-cmux-port-internal': String(up.port) } });
    assert.equal(res.status, 200);
  } finally {
    c?.close();
    if (child.exitCode === null && child.signalCode === null) {
      child.send({ type: 'stop' });
      await once(child, 'exit');
    }
  }
});

/**
 * An h2c upstream written as raw frames. `answer(socket, streamIds, connection)` is called with
 * the ids of the request streams seen so far on that connection (1-based connection number).
 */
async function rawH2cUpstream(answer) {
  let connections = 0;
  const server = net.createServer((socket) => {
    const connection = ++connections;
    const ids = [];
    socket.on('error', () => {});
    serveH2cFrames(socket, ({ type, streamId }) => {
      if (type === FRAME.HEADERS) {
        ids.push(streamId);
        answer(socket, ids, connection);
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: server.address().port, connections: () => connections, close: () => new Promise((r) => server.close(r)) };
}

/** The proxy in a child process with `options`; `alive()` asserts it did not die. */
async function proxyChild(options) {
  const child = fork(CHILD, [JSON.stringify(options)], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  const [ready] = await once(child, 'message');
  return {
    port: ready.port,
    alive() {
      assert.equal(child.exitCode, null, `the proxy process died: ${stderr.slice(-400)}`);
      assert.equal(child.signalCode, null, `the proxy process died: ${stderr.slice(-400)}`);
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.send({ type: 'stop' });
        await once(child, 'exit');
      }
    },
  };
}

/** GET through an HTTP/2 client session: { status, body, rstCode, ms }. */
function h2get(session, path, upPort) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const req = session.request({ ':path': path, 'x-cmux-port-internal': String(upPort) });
    let status;
    let body = '';
    req.on('response', (h) => (status = h[':status']));
    req.on('data', (c) => (body += c));
    req.on('error', () => {});
    req.on('close', () => resolve({ status, body, rstCode: req.rstCode, ms: Date.now() - t0 }));
    req.setTimeout(10_000, () => req.close());
  });
}

it('h2c upstream: DATA beyond content-length on one response and a whole response on another, in one write: the other request gets its response on the same upstream session', async () => {
  const up = await rawH2cUpstream((socket, ids) => {
    if (ids.length !== 2) return;
    const [a, b] = ids;
    socket.write(
      Buffer.concat([
        headersFrame(a, [[':status', '200'], ['content-length', '5']]),
        dataFrame(a, 'hello world', { endStream: true }),
        headersFrame(b, [[':status', '200'], ['content-length', '5']]),
        dataFrame(b, 'hello', { endStream: true }),
      ]),
    );
  });
  const px = await proxyChild({ upstreamProtocol: 'h2c' });
  const session = http2.connect(`http://127.0.0.1:${px.port}`);
  session.on('error', () => {});
  try {
    const [bad, good] = await Promise.all([h2get(session, '/over', up.port), h2get(session, '/ok', up.port)]);
    px.alive();
    assert.equal(good.status, 200, `the other request: ${JSON.stringify(good)}`);
    assert.equal(good.body, 'hello');
    assert.notEqual(bad.body, 'hello world', 'the oversized body is not relayed');
    assert.ok(bad.rstCode !== 0 || bad.status === 502, `the bad response ends in a reset or 502: ${JSON.stringify(bad)}`);
    assert.equal(up.connections(), 1, 'one upstream session served both');
  } finally {
    session.destroy();
    await px.stop();
    await up.close();
  }
});

it('h2c upstream: a connection error mid-response (PING with a 3-byte payload) ends that session: the request in flight ends, the next one gets a new session', async () => {
  const up = await rawH2cUpstream((socket, ids, connection) => {
    const id = ids[ids.length - 1];
    if (connection === 1) socket.write(Buffer.concat([headersFrame(id, [[':status', '200']]), frame(FRAME.PING, 0, 0, Buffer.from('abc'))]));
    else socket.write(Buffer.concat([headersFrame(id, [[':status', '200'], ['content-length', '2']]), dataFrame(id, 'ok', { endStream: true })]));
  });
  const px = await proxyChild({ upstreamProtocol: 'h2c' });
  const session = http2.connect(`http://127.0.0.1:${px.port}`);
  session.on('error', () => {});
  try {
    const first = await h2get(session, '/first', up.port);
    assert.ok(first.ms < 5000, `the request in flight ended after ${first.ms} ms`);
    assert.ok(first.rstCode !== 0 || first.status === 502, `it ends in a reset or 502: ${JSON.stringify(first)}`);
    const second = await h2get(session, '/second', up.port);
    assert.equal(second.status, 200, `the next request: ${JSON.stringify(second)}`);
    assert.equal(second.body, 'ok');
    assert.equal(up.connections(), 2, 'a new upstream session');
    px.alive();
  } finally {
    session.destroy();
    await px.stop();
    await up.close();
  }
});
