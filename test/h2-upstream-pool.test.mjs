// h2c upstreams through the hand-made HTTP/2 session pool, and `auto` protocol choice.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { once } from 'node:events';
import { startProxy, startUpstream, request, h2connect, h2request, waitFor } from './helpers/servers.mjs';

const { NGHTTP2_REFUSED_STREAM, NGHTTP2_NO_ERROR } = http2.constants;

/** An h2c upstream; `handler(stream, headers)` answers, default: JSON echo. Tracks sessions. */
async function startH2Upstream(handler, settings = {}) {
  const seen = [];
  const sessions = new Set();
  const server = http2.createServer({ settings });
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {}); // refused/reset streams report here
    seen.push(headers);
    if (handler) return handler(stream, headers);
    const chunks = [];
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', () => {
      const body = Buffer.concat(chunks);
      stream.respond({ ':status': 200, 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'] });
      stream.end(JSON.stringify({ headers, body: body.toString(), bodyLength: body.length }));
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    server,
    seen,
    sessions,
    port: server.address().port,
    close: () => new Promise((r) => {
      for (const s of sessions) s.destroy();
      server.close(r);
    }),
  };
}

describe('h2c upstreams', () => {
  it('proxies HTTP/1.1 and HTTP/2 clients to an h2c upstream, headers translated both ways', async () => {
    const up = await startH2Upstream();
    const px = await startProxy({ upstreamProtocol: 'h2c' });
    try {
      const res = await request(`${px.url}/h1?x=1`, { method: 'POST', body: 'from h1', headers: { host: 'app.example', 'x-cmux-port-internal': String(up.port), cookie: 'c=1', connection: 'keep-alive, x-drop', 'x-drop': 'no', te: 'trailers' } });
      assert.equal(res.status, 200);
      const seen = JSON.parse(res.body);
      assert.equal(seen.body, 'from h1');
      assert.equal(seen.headers[':authority'], 'app.example');
      assert.equal(seen.headers[':path'], '/h1?x=1');
      assert.equal(seen.headers[':method'], 'POST');
      assert.equal(seen.headers['x-drop'], undefined);
      assert.equal(seen.headers['x-cmux-port-internal'], undefined);
      assert.equal(seen.headers['te'], 'trailers');
      assert.match(seen.headers.via, /^1\.1 cmux-proxy-/);
      assert.deepEqual(res.headers['set-cookie'], ['a=1', 'b=2']);
      const session = h2connect(px.port);
      const h2res = await h2request(session, { ':method': 'POST', ':path': '/h2', 'x-cmux-port-internal': String(up.port) }, 'from h2');
      session.close();
      assert.equal(h2res.status, 200);
      assert.equal(JSON.parse(h2res.body).body, 'from h2');
      assert.equal(px.proxy.getStats().upstreamH2Sessions, 1, 'one pooled session served both');
    } finally {
      await px.proxy.stop();
      await up.close();
    }
  });

  it('runs 1,000 concurrent requests over a few sessions to an upstream with maxConcurrentStreams 10', async () => {
    let running = 0;
    let peak = 0;
    const up = await startH2Upstream((stream, headers) => {
      running++;
      peak = Math.max(peak, running);
      setTimeout(() => {
        running--;
        stream.respond({ ':status': 200 });
        stream.end(headers[':path']);
      }, 2);
    }, { maxConcurrentStreams: 10 });
    const px = await startProxy({ upstreamProtocol: 'h2c', maxSessionsPerUpstream: 4 });
    try {
      const session = h2connect(px.port);
      const results = await Promise.all(Array.from({ length: 1000 }, (_, i) => h2request(session, { ':path': `/r${i}`, 'x-cmux-port-internal': String(up.port) })));
      session.close();
      assert.ok(results.every((r, i) => r.status === 200 && r.body === `/r${i}`));
      assert.equal(up.seen.length, 1000);
      assert.ok(peak <= 40, `at most 4 sessions x 10 streams at once, saw ${peak}`);
      assert.ok(peak > 10, `more than one session was used (peak ${peak})`);
    } finally {
      await px.proxy.stop();
      await up.close();
    }
  });

  it('replays streams a GOAWAY left unprocessed on another session; nothing runs twice', async () => {
    const answered = [];
    let goneAway = false;
    const held = [];
    const up = await startH2Upstream((stream, headers) => {
      const path = headers[':path'];
      if (!goneAway) {
        held.push({ stream, path });
        if (held.length === 6) {
          goneAway = true;
          // Process the first two streams (ids 1 and 3); refuse the rest (RFC 9113 §6.8).
          const session = stream.session;
          session.goaway(NGHTTP2_NO_ERROR, 3);
          for (const h of held) {
            if (h.stream.id <= 3) {
              answered.push(h.path);
              h.stream.respond({ ':status': 200 });
              h.stream.end(`first session ${h.path}`);
            } else {
              h.stream.close(NGHTTP2_REFUSED_STREAM);
            }
          }
        }
        return;
      }
      answered.push(path);
      stream.respond({ ':status': 200 });
      stream.end(`second session ${path}`);
    });
    const px = await startProxy({ upstreamProtocol: 'h2c' });
    try {
      const session = h2connect(px.port);
      const results = await Promise.all(Array.from({ length: 6 }, (_, i) => h2request(session, { ':path': `/g${i}`, 'x-cmux-port-internal': String(up.port) })));
      session.close();
      assert.deepEqual(results.map((r) => r.status), [200, 200, 200, 200, 200, 200]);
      assert.equal(answered.length, 6);
      assert.equal(new Set(answered).size, 6, 'every request processed exactly once');
      assert.equal(results.filter((r) => r.body.startsWith('second session')).length, 4);
      assert.equal(px.proxy.getStats().upstreamRetries, 4);
    } finally {
      await px.proxy.stop();
      await up.close();
    }
  });

  it('answers 502 while the upstream is down and recovers when it is back; no dead session stays pooled', async () => {
    const up = await startH2Upstream();
    const port = up.port;
    const px = await startProxy({ upstreamProtocol: 'h2c' });
    try {
      assert.equal((await request(px.url, { headers: { 'x-cmux-port-internal': String(port) } })).status, 200);
      await up.close();
      assert.ok(await waitFor(() => px.proxy.getStats().upstreamH2Sessions === 0), 'the crashed session left the pool');
      const down = await request(px.url, { headers: { 'x-cmux-port-internal': String(port) } });
      assert.equal(down.status, 502);
      assert.match(down.body, /^upstream request error: /);
      const back = http2.createServer();
      back.on('stream', (stream) => {
        stream.respond({ ':status': 200 });
        stream.end('back');
      });
      back.listen(port, '127.0.0.1');
      await once(back, 'listening');
      const res = await request(px.url, { headers: { 'x-cmux-port-internal': String(port) } });
      assert.equal(res.status, 200);
      assert.equal(res.body, 'back');
      back.close();
    } finally {
      await px.proxy.stop();
    }
  });

  it('closes idle upstream sessions after upstreamIdleTimeoutMs', async () => {
    const up = await startH2Upstream();
    const px = await startProxy({ upstreamProtocol: 'h2c', upstreamIdleTimeoutMs: 300 });
    try {
      await request(px.url, { headers: { 'x-cmux-port-internal': String(up.port) } });
      assert.equal(px.proxy.getStats().upstreamH2Sessions, 1);
      assert.ok(await waitFor(() => px.proxy.getStats().upstreamH2Sessions === 0 && up.sessions.size === 0, { timeoutMs: 3000 }));
    } finally {
      await px.proxy.stop();
      await up.close();
    }
  });

  it('auto: probes each upstream once and remembers h2c or http1', async () => {
    const h2up = await startH2Upstream();
    const h1up = await startUpstream();
    const px = await startProxy({ upstreamProtocol: 'auto' });
    try {
      for (let i = 0; i < 3; i++) {
        const a = await request(px.url, { headers: { 'x-cmux-port-internal': String(h2up.port) } });
        assert.equal(a.status, 200);
        assert.equal(JSON.parse(a.body).headers[':method'], 'GET', 'reached over HTTP/2');
        const b = await request(px.url, { headers: { 'x-cmux-port-internal': String(h1up.port) } });
        assert.equal(b.status, 200);
        assert.equal(JSON.parse(b.body).httpVersion, '1.1', 'reached over HTTP/1.1');
      }
      assert.equal(h1up.requests.length, 3, 'the probe never reached the HTTP/1.1 app as a request');
    } finally {
      await px.proxy.stop();
      await h2up.close();
      await h1up.close();
    }
  });
});

