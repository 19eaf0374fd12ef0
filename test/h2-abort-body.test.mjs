// Regression (soak): an HTTP/2 client that resets its stream — even with NO_ERROR — in the
// middle of a body without content-length must not make the upstream see a complete request.
// Node ends the stream's readable side on RST_STREAM, which looked like END_STREAM.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { startProxy, startUpstream, waitFor } from './helpers/servers.mjs';
import { H2RawClient, ERROR, headersFrame, dataFrame, rstStreamFrame, requestHeaders } from './helpers/h2-raw.mjs';

for (const [name, code] of [['NO_ERROR', ERROR.NO_ERROR], ['CANCEL', ERROR.CANCEL]]) {
  it(`RST_STREAM(${name}) mid-upload: the upstream sees an aborted request, never a complete one`, async () => {
    const outcomes = [];
    const up = await startUpstream((req, res) => {
      let n = 0;
      req.on('data', (c) => (n += c.length));
      req.on('end', () => {
        outcomes.push(`complete ${n}`);
        res.end();
      });
      req.on('aborted', () => outcomes.push(`aborted ${n}`));
      req.on('error', () => {});
    });
    const px = await startProxy();
    const c = await H2RawClient.connect(px.port);
    try {
      const headers = requestHeaders(up.port, { method: 'POST', path: '/upload' });
      c.send(headersFrame(1, headers));
      c.send(dataFrame(1, Buffer.alloc(1000, 97)));
      await waitFor(() => up.requests.length === 1);
      await new Promise((r) => setTimeout(r, 50));
      c.send(rstStreamFrame(1, code));
      assert.ok(await waitFor(() => outcomes.length > 0, { timeoutMs: 3000 }), 'the upstream learned the outcome');
      assert.deepEqual(outcomes.map((o) => o.split(' ')[0]), ['aborted']);
    } finally {
      c.close();
      await px.proxy.stop();
      await up.close();
    }
  });
}

// Regressions from the soak: Node emits no 'close' for these streams, so they used to hold their
// session (and an upstream socket) until timeouts.
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { once } from 'node:events';

it('a client resetting a download mid-body releases the stream, the session and the upstream socket', async () => {
  const body = Buffer.alloc(4 << 20, 120);
  const upSockets = new Set();
  const up = http.createServer((req, res) => {
    res.writeHead(200, { 'content-length': body.length });
    res.end(body);
  });
  up.on('connection', (s) => {
    upSockets.add(s);
    s.on('close', () => upSockets.delete(s));
  });
  up.listen(0, '127.0.0.1');
  await once(up, 'listening');
  const px = await startProxy();
  try {
    const session = http2.connect(`http://127.0.0.1:${px.port}`);
    session.on('error', () => {});
    await new Promise((resolve) => {
      const st = session.request({ ':path': '/', 'x-cmux-port-internal': String(up.address().port) });
      st.on('error', () => {});
      let got = 0;
      st.on('data', (c) => {
        got += c.length;
        if (got > 100_000 && !st.destroyed) {
          st.destroy(); // RST_STREAM(NO_ERROR)
          resolve();
        }
      });
    });
    session.close();
    assert.ok(
      await waitFor(() => {
        const s = px.proxy.getStats();
        return s.activeConnections === 0 && s.http2Connections === 0 && s.upstreamSocketsActive === 0 && upSockets.size === 0;
      }, { timeoutMs: 3000 }),
      JSON.stringify(px.proxy.getStats()),
    );
  } finally {
    await px.proxy.stop();
    up.closeAllConnections();
    up.close();
  }
});

it('a 502 that arrives while the HTTP/2 request body is still being sent does not leave the stream paused', async () => {
  const tmp = net.createServer();
  tmp.listen(0, '127.0.0.1');
  await once(tmp, 'listening');
  const dead = tmp.address().port;
  tmp.close();
  const px = await startProxy();
  try {
    const session = http2.connect(`http://127.0.0.1:${px.port}`);
    session.on('error', () => {});
    const status = await new Promise((resolve) => {
      const st = session.request({ ':method': 'POST', ':path': '/', 'x-cmux-port-internal': String(dead) });
      st.on('error', () => {});
      let s;
      st.on('response', (h) => (s = h[':status']));
      st.on('end', () => {
        st.destroy();
        resolve(s);
      });
      st.resume();
      const chunk = Buffer.alloc(65536);
      const pump = () => {
        while (!st.destroyed && st.write(chunk));
        if (!st.destroyed) st.once('drain', pump);
      };
      pump();
    });
    assert.equal(status, 502);
    session.close();
    assert.ok(await waitFor(() => px.proxy.getStats().activeConnections === 0 && px.proxy.getStats().http2Connections === 0, { timeoutMs: 3000 }), JSON.stringify(px.proxy.getStats()));
  } finally {
    await px.proxy.stop();
  }
});
