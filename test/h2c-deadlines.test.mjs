// Upstream deadlines on h2c upstreams, as on HTTP/1.1 ones: upstreamConnectTimeoutMs bounds the
// TCP connect plus the upstream's SETTINGS, upstreamResponseTimeoutMs each stream's response
// head (the stream is reset, the session serves on), upstreamIdleTimeoutMs a silence in the
// middle of a response (the upstream stream is reset, the client's response is cut or reset).
// Each from an HTTP/1.1 and an HTTP/2 client.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { once } from 'node:events';
import { startProxy, startRawServer, h2connect, waitFor } from './helpers/servers.mjs';

const CONNECT_MS = 1000;
const RESPONSE_MS = 1000;
const IDLE_MS = 1500;
const NGHTTP2_CANCEL = 8;
const NGHTTP2_INTERNAL_ERROR = 2;

function proxyOptions() {
  return {
    upstreamProtocol: 'h2c',
    upstreamConnectTimeoutMs: CONNECT_MS,
    upstreamResponseTimeoutMs: RESPONSE_MS,
    upstreamIdleTimeoutMs: IDLE_MS,
  };
}

/** A node:http2 upstream; `handler(stream, headers)` answers (or not). Records sessions and stream resets. */
async function h2cUpstream(handler) {
  const server = http2.createServer();
  const state = { server, sessions: 0, resets: [], port: 0 };
  server.on('session', (session) => {
    state.sessions++;
    session.on('error', () => {});
  });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    stream.on('close', () => {
      if (stream.rstCode !== 0) state.resets.push({ path: headers[':path'], code: stream.rstCode });
    });
    handler(stream, headers);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  state.port = server.address().port;
  return state;
}

/** One request from `client` ('h1' or 'h2'): { status, body } or { cut: true, ... } for a reset/cut response. */
async function get(client, proxyPort, upstreamPort, path) {
  const headers = { 'x-cmux-port-internal': String(upstreamPort) };
  if (client === 'h1') {
    // Raw bytes, so the chunked framing (or its missing end) is visible.
    const raw = await rawExchange(proxyPort, `GET ${path} HTTP/1.1\r\nHost: localhost\r\nx-cmux-port-internal: ${upstreamPort}\r\n\r\n`);
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(raw.text)?.[1]);
    const split = raw.text.indexOf('\r\n\r\n');
    const body = raw.text.slice(split + 4);
    const chunked = /\r\ntransfer-encoding: chunked\r\n/i.test(raw.text.slice(0, split + 2));
    const complete = chunked ? body.endsWith('0\r\n\r\n') : true;
    return { status, body: chunked ? dechunk(body) : body, complete, closed: raw.closed, text: raw.text };
  }
  const session = h2connect(proxyPort);
  try {
    return await new Promise((resolve) => {
      const stream = session.request({ ':path': path, ...headers });
      const chunks = [];
      let status;
      stream.on('response', (h) => (status = h[':status']));
      stream.on('data', (c) => chunks.push(c));
      stream.on('error', () => {});
      // 8 s: the client would hang; the stream is cancelled and the result shows it.
      const timer = setTimeout(() => stream.close(NGHTTP2_CANCEL), 8000);
      stream.on('close', () => {
        clearTimeout(timer);
        resolve({ status, body: Buffer.concat(chunks).toString('latin1'), complete: stream.rstCode === 0, rstCode: stream.rstCode });
      });
      stream.end();
    });
  } finally {
    session.close();
  }
}

/**
 * Sends `head`, reads until the response is complete or the proxy closes (closed: true), or 8 s
 * pass (closed: false, the client would hang).
 */
function rawExchange(port, head) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    const chunks = [];
    let done = false;
    const finish = (closed) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ text: Buffer.concat(chunks).toString('latin1'), closed });
    };
    const timer = setTimeout(finish, 8000, false);
    socket.on('connect', () => socket.write(head));
    socket.on('data', (c) => {
      chunks.push(c);
      const text = Buffer.concat(chunks).toString('latin1');
      const split = text.indexOf('\r\n\r\n');
      if (split === -1) return;
      const m = /\r\ncontent-length: (\d+)\r\n/i.exec(text.slice(0, split + 2));
      if (m !== null && text.length - split - 4 >= Number(m[1])) finish(false);
      else if (text.endsWith('\r\n0\r\n\r\n')) finish(false);
    });
    socket.on('close', () => finish(true));
    socket.on('error', () => {});
  });
}

function dechunk(body) {
  let out = '';
  let at = 0;
  for (;;) {
    const eol = body.indexOf('\r\n', at);
    if (eol === -1) return out;
    const size = parseInt(body.slice(at, eol), 16);
    if (!(size > 0)) return out;
    out += body.slice(eol + 2, eol + 2 + size);
    at = eol + 2 + size + 2;
  }
}

for (const client of ['h1', 'h2']) {
  describe(`h2c upstream deadlines, ${client === 'h1' ? 'HTTP/1.1' : 'HTTP/2'} client`, () => {
    it('an upstream that accepts TCP and never speaks HTTP/2: 504 after upstreamConnectTimeoutMs, its socket closed', async () => {
      let accepted = 0;
      // Reads (and drops) the preface, so it sees the proxy's FIN; never writes.
      const silent = await startRawServer((socket) => {
        accepted++;
        socket.resume();
      });
      const { proxy, port } = await startProxy(proxyOptions());
      try {
        const t0 = Date.now();
        const res = await get(client, port, silent.port, '/');
        assert.equal(res.status, 504, JSON.stringify(res));
        assert.equal(res.body, 'upstream timeout');
        assert.ok(Date.now() - t0 < 8000);
        const stats = proxy.getStats();
        assert.equal(stats.upstreamConnectTimeouts, 1);
        assert.equal(stats.upstreamErrors.CONNECT_TIMEOUT, 1);
        assert.equal(accepted, 1);
        // The silent session is gone, not left to the 120 s idle timeout.
        assert.ok(await waitFor(() => silent.sockets.size === 0, { timeoutMs: 3000 }), 'the upstream socket was not closed');
        assert.equal(proxy.getStats().upstreamH2Sessions, 0);
      } finally {
        await proxy.stop();
        await silent.close();
      }
    });

    it('an upstream that never answers a stream: 504 after upstreamResponseTimeoutMs, the stream reset, the session serves on', async () => {
      const up = await h2cUpstream((stream, headers) => {
        if (headers[':path'] === '/stall') return;
        stream.respond({ ':status': 200 });
        stream.end('ok');
      });
      const { proxy, port } = await startProxy(proxyOptions());
      try {
        assert.equal((await get(client, port, up.port, '/warm')).status, 200);
        const res = await get(client, port, up.port, '/stall');
        assert.equal(res.status, 504, JSON.stringify(res));
        assert.equal(res.body, 'upstream timeout');
        const stats = proxy.getStats();
        assert.equal(stats.upstreamResponseTimeouts, 1);
        assert.equal(stats.upstreamErrors.RESPONSE_TIMEOUT, 1);
        assert.ok(await waitFor(() => up.resets.length === 1, { timeoutMs: 3000 }), 'the upstream stream was not reset');
        assert.deepEqual(up.resets, [{ path: '/stall', code: NGHTTP2_CANCEL }]);
        const after = await get(client, port, up.port, '/after');
        assert.equal(after.status, 200);
        assert.equal(after.body, 'ok');
        assert.equal(up.sessions, 1, 'the timed-out stream cost the session');
      } finally {
        await proxy.stop();
        up.server.close();
      }
    });

    it('an upstream that goes silent mid-response: its stream reset after upstreamIdleTimeoutMs, the client response cut', async () => {
      const up = await h2cUpstream((stream) => {
        stream.respond({ ':status': 200, 'content-type': 'text/plain' });
        stream.write('partial');
      });
      const { proxy, port } = await startProxy(proxyOptions());
      try {
        const res = await get(client, port, up.port, '/silent');
        assert.equal(res.status, 200);
        assert.equal(res.body, 'partial');
        assert.equal(res.complete, false, `a cut response looked complete: ${JSON.stringify(res)}`);
        if (client === 'h1') assert.equal(res.closed, true, 'the HTTP/1.1 client connection was left open');
        else assert.equal(res.rstCode, NGHTTP2_INTERNAL_ERROR);
        assert.ok(await waitFor(() => up.resets.length === 1, { timeoutMs: 3000 }), 'the upstream stream was not reset');
        assert.equal(up.resets[0].code, NGHTTP2_CANCEL);
        const stats = proxy.getStats();
        assert.equal(stats.upstreamErrors.IDLE_TIMEOUT, 1);
        assert.equal(stats.responsesReset, 1);
      } finally {
        await proxy.stop();
        up.server.close();
      }
    });

    it('an upstream that drip-feeds a byte of DATA more often than upstreamIdleTimeoutMs is not timed out', async () => {
      const BYTES = 30;
      const up = await h2cUpstream((stream) => {
        stream.respond({ ':status': 200 });
        let sent = 0;
        const timer = setInterval(() => {
          if (stream.destroyed) return clearInterval(timer);
          sent++;
          if (sent === BYTES) {
            clearInterval(timer);
            stream.end('x');
          } else stream.write('x');
        }, 100);
      });
      const { proxy, port } = await startProxy(proxyOptions());
      try {
        const t0 = Date.now();
        const res = await get(client, port, up.port, '/drip');
        assert.ok(Date.now() - t0 > IDLE_MS + RESPONSE_MS, 'the drip did not outlast the timeouts');
        assert.equal(res.status, 200);
        assert.equal(res.complete, true, JSON.stringify(res));
        assert.equal(res.body, 'x'.repeat(BYTES));
        assert.deepEqual(up.resets, []);
        assert.equal(proxy.getStats().upstreamErrors.IDLE_TIMEOUT, undefined);
      } finally {
        await proxy.stop();
        up.server.close();
      }
    });
  });
}

