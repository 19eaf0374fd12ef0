// A stream error must cost that stream only (RFC 9113 §5.4.2), whatever else arrives in the same
// read. Here one write carries stream 1 with DATA beyond its content-length and then a complete,
// valid POST on stream 3. Since Node 22 nghttp2 reports the content-length violation through the
// invalid-frame callback and Node destroys the session inside nghttp2's read loop: stream 3 is
// lost to GOAWAY(INTERNAL_ERROR), and on Node 22.23 the DATA of stream 3, handed to a stream
// already torn down, aborts the process (`Assertion failed: onread->IsFunction()`). A plain
// node:http2 server does both. The proxy runs in a child process so an abort is reported, not
// fatal to the test runner.
import { after, before, it } from 'node:test';
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { startUpstream, request } from './helpers/servers.mjs';
import { H2RawClient, dataFrame, errorName, headersFrame, requestHeaders, ERROR } from './helpers/h2-raw.mjs';

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
