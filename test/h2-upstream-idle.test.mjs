// An h2c upstream session held through its idle timeout by one long stream (SSE, long poll)
// still closes once it has been idle that long after the stream: sessions are never pinned.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { once } from 'node:events';
import { startProxy, request, waitFor } from './helpers/servers.mjs';

it('an h2c upstream session whose only stream outlived upstreamIdleTimeoutMs closes after it, idle', async () => {
  const upstream = http2.createServer();
  let open = 0;
  upstream.on('session', (session) => {
    open++;
    session.on('close', () => open--);
  });
  upstream.on('stream', (stream) => setTimeout(() => {
    stream.respond({ ':status': 200 });
    stream.end('ok');
  }, 1500));
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  const { proxy, url } = await startProxy({ upstreamProtocol: 'h2c', upstreamIdleTimeoutMs: 500 });
  try {
    const res = await request(url, { headers: { 'x-cmux-port-internal': String(upstream.address().port) } });
    assert.equal(res.status, 200);
    assert.equal(open, 1);
    assert.ok(await waitFor(() => open === 0, { timeoutMs: 2500 }), 'the idle upstream session was closed');
    // The upstream may see the close before the proxy's own 'close' event has run.
    assert.ok(await waitFor(() => proxy.getStats().upstreamH2Sessions === 0, { timeoutMs: 1000 }), 'the proxy counts no h2 upstream session');
  } finally {
    await proxy.stop();
    upstream.close();
  }
});

it('one h2c upstream session serving 30 requests one after another keeps one idle-timeout listener (no MaxListenersExceededWarning)', async () => {
  // Re-arming the idle timer with setTimeout(ms, callback) each time the session went idle
  // added a 'timeout' listener per request: Node warned past 10 and the listeners piled up.
  const upstream = http2.createServer();
  let sessions = 0;
  upstream.on('session', () => sessions++);
  upstream.on('stream', (stream) => {
    stream.respond({ ':status': 200 });
    stream.end('ok');
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  const warnings = [];
  const onWarning = (w) => {
    if (w.name === 'MaxListenersExceededWarning') warnings.push(w.message);
  };
  process.on('warning', onWarning);
  const { proxy, url } = await startProxy({ upstreamProtocol: 'h2c' });
  try {
    for (let i = 0; i < 30; i++) {
      const res = await request(url, { headers: { 'x-cmux-port-internal': String(upstream.address().port) } });
      assert.equal(res.status, 200);
    }
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(sessions, 1);
    assert.deepEqual(warnings, []);
  } finally {
    process.off('warning', onWarning);
    await proxy.stop();
    upstream.close();
  }
});
