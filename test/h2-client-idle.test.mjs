// clientIdleTimeoutMs on HTTP/2 sessions: a session with a stream in flight is not idle while it
// waits for its upstream (the upstream's own deadlines apply), a session left without streams
// still gets GOAWAY, and a client that stopped reading is still closed (test/h2-hostile).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { startProxy, startUpstream, sleep, waitFor } from './helpers/servers.mjs';

describe('HTTP/2 client idle timeout', () => {
  let up;
  let px;
  before(async () => {
    // Answers after the delay in the query (ms), streaming a byte every 300 ms when asked.
    up = await startUpstream((req, res) => {
      const url = new URL(req.url, 'http://x');
      const delay = Number(url.searchParams.get('delay') ?? 0);
      const drip = Number(url.searchParams.get('drip') ?? 0);
      setTimeout(() => {
        if (drip === 0) return res.end('late answer');
        res.writeHead(200, { 'content-type': 'text/plain' });
        let sent = 0;
        const timer = setInterval(() => {
          res.write('.');
          if (++sent === drip) {
            clearInterval(timer);
            res.end();
          }
        }, 300);
      }, delay);
    });
    px = await startProxy({ clientIdleTimeoutMs: 1000, keepaliveMs: 30_000 });
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
  });

  function get(session, path) {
    return new Promise((resolve) => {
      const stream = session.request({ ':path': path, 'x-cmux-port-internal': String(up.port) });
      let status = 0;
      let body = '';
      stream.on('response', (h) => (status = h[':status']));
      stream.setEncoding('utf8');
      stream.on('data', (c) => (body += c));
      stream.on('error', (err) => resolve({ status, body, error: err.code }));
      stream.on('end', () => resolve({ status, body }));
    });
  }

  it('a stream waiting 3.5 s for its upstream gets its whole answer; the session gets no GOAWAY meanwhile', async () => {
    const session = http2.connect(px.url);
    session.on('error', () => {});
    let goawayAt = 0;
    const started = Date.now();
    session.on('goaway', () => (goawayAt ||= Date.now() - started));
    try {
      const r = await get(session, '/?delay=3500');
      assert.deepEqual(r, { status: 200, body: 'late answer' });
      assert.equal(goawayAt, 0, `GOAWAY ${goawayAt} ms after the request, while it waited`);
      // Without streams the session is idle again: GOAWAY within two idle periods.
      assert.ok(await waitFor(() => goawayAt > 0, { timeoutMs: 4000 }), 'idle session after the answer gets GOAWAY');
    } finally {
      session.destroy();
    }
  });

  it('a slow trickle of 10 bytes, 300 ms apart after a 1.5 s wait, arrives whole', async () => {
    const session = http2.connect(px.url);
    session.on('error', () => {});
    try {
      const r = await get(session, '/?delay=1500&drip=10');
      assert.deepEqual(r, { status: 200, body: '..........' });
    } finally {
      session.destroy();
    }
  });

  it('a session that never opens a stream gets GOAWAY after the idle timeout, counted in clientIdleTimeouts', async () => {
    const idleBefore = px.proxy.getStats().clientIdleTimeouts;
    const session = http2.connect(px.url);
    session.on('error', () => {});
    const started = Date.now();
    try {
      const at = await new Promise((resolve) => session.once('goaway', () => resolve(Date.now() - started)));
      assert.ok(at >= 800 && at < 4000, `GOAWAY after ${at} ms`);
      assert.ok(px.proxy.getStats().clientIdleTimeouts > idleBefore, 'the idle close is counted');
    } finally {
      session.destroy();
    }
    await sleep(10);
  });
});
