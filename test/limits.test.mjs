// Resource bounds against fan-out: one HTTP/2 connection may hold at most
// `http2MaxConcurrentStreams` streams (each may hold an upstream socket), every tunnel
// (HTTP/1.1 CONNECT and WebSocket, HTTP/2 CONNECT and RFC 8441 extended CONNECT) counts against
// `maxSocketsPerUpstream`, and running out of file descriptors (ulimit -n 1024, in a child
// process) never crashes the proxy or drops a client without an answer.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { resolveOptions } from '../dist/options.js';
import { runCli } from './helpers/cli.mjs';
import { startProxy, startRawServer, rawRequest, sleep, waitFor } from './helpers/servers.mjs';
import { ERROR, FRAME, FLAG, H2RawClient, SETTING, headersFrame, requestHeaders } from './helpers/h2-raw.mjs';

/** An HTTP/1.1 upstream that holds every request until `releaseAll()`. */
async function startHoldingUpstream() {
  const held = [];
  const server = http.createServer((req, res) => {
    held.push(res);
    if (release) res.end('late');
  });
  let release = false;
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const sockets = new Set();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  return {
    held,
    sockets,
    port: server.address().port,
    releaseAll() {
      release = true;
      for (const res of held.splice(0)) res.end('ok');
    },
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

/** The value of `id` in the server's first (non-ACK) SETTINGS frame. */
function settingValue(client, id) {
  const settings = client.frames.find((f) => f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) === 0);
  if (settings === undefined) return undefined;
  for (let at = 0; at + 6 <= settings.payload.length; at += 6) {
    if (settings.payload.readUInt16BE(at) === id) return settings.payload.readUInt32BE(at + 2);
  }
  return undefined;
}

/** `count` GET HEADERS frames (END_STREAM) on streams 1, 3, 5, ... routed to `port`, in one buffer. */
function manyRequests(port, count, firstStream = 1) {
  const frames = [];
  for (let i = 0; i < count; i++) frames.push(headersFrame(firstStream + 2 * i, requestHeaders(port, { path: `/s${i}` }), { endStream: true }));
  return Buffer.concat(frames);
}

describe('http2MaxConcurrentStreams', () => {
  it('is an option (default 100) with a CLI flag and an environment variable', async () => {
    assert.equal(resolveOptions({ listenPort: 0 }).http2MaxConcurrentStreams, 100);
    assert.equal(resolveOptions({ listenPort: 0, http2MaxConcurrentStreams: 7 }).http2MaxConcurrentStreams, 7);
    assert.throws(() => resolveOptions({ listenPort: 0, http2MaxConcurrentStreams: 0 }), /http2MaxConcurrentStreams/);
    assert.throws(() => resolveOptions({ listenPort: 0, http2MaxConcurrentStreams: 1.5 }), /http2MaxConcurrentStreams/);
    // The CLI hands the value to the option validation (a bad one names the option).
    const flag = await runCli(['--port', '0', '--http2-max-concurrent-streams', '0']);
    assert.equal(flag.code, 1);
    assert.match(flag.stderr, /http2MaxConcurrentStreams: 0/);
    const env = await runCli(['--port', '0'], { env: { CMUX_PROXY_HTTP2_MAX_CONCURRENT_STREAMS: '100001' } });
    assert.equal(env.code, 1);
    assert.match(env.stderr, /http2MaxConcurrentStreams: 100001/);
    assert.match((await runCli(['--help'])).stdout, /--http2-max-concurrent-streams <n>/);
  });

  describe('one connection opening 150 streams to a slow upstream', () => {
    let upstream;
    let proxy;
    let port;
    before(async () => {
      upstream = await startHoldingUpstream();
      ({ proxy, port } = await startProxy({}));
    });
    after(async () => {
      await proxy.stop();
      await upstream.close();
    });

    it('advertises SETTINGS_MAX_CONCURRENT_STREAMS 100; streams past it are refused and never reach the upstream', async () => {
      const client = await H2RawClient.connect(port, { keepData: false });
      // The attack: 150 HEADERS in one write, right behind the preface (before the server's
      // SETTINGS could be acknowledged), each a GET the upstream will hold.
      client.send(manyRequests(upstream.port, 150));
      await waitFor(() => upstream.held.length >= 100, { timeoutMs: 5000 });
      await sleep(300);
      assert.equal(settingValue(client, SETTING.MAX_CONCURRENT_STREAMS), 100);
      assert.equal(upstream.held.length, 100, 'upstream requests in flight for one client connection');
      assert.ok(upstream.sockets.size <= 100, `upstream sockets: ${upstream.sockets.size}`);
      const refused = client.frames.filter((f) => f.type === FRAME.RST_STREAM);
      assert.equal(refused.length, 50);
      assert.ok(refused.every((f) => f.errorCode === ERROR.REFUSED_STREAM && f.streamId > 199));
      // The first 100 are answered once the upstream answers.
      upstream.releaseAll();
      const outcome = await client.streamOutcome(199, { timeoutMs: 5000 });
      assert.equal(outcome.status, 200);
      client.close();
    });

    it('a client that ignores the acknowledged limit loses its connection, not the proxy its descriptors', async () => {
      const before = upstream.held.length;
      const client = await H2RawClient.connect(port, { keepData: false });
      await client.waitForFrame((f) => f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) !== 0);
      await sleep(50); // our ACK of the server's SETTINGS is on its way
      client.send(manyRequests(upstream.port, 150));
      assert.equal(await client.waitForClose({ timeoutMs: 5000 }), true);
      await sleep(200);
      assert.ok(upstream.held.length - before <= 100, `reached the upstream: ${upstream.held.length - before}`);
      // Others are still served.
      const res = await rawRequest(port, `GET /after HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nConnection: close\r\n\r\n`, { timeoutMs: 3000 });
      assert.match(res, /^HTTP\/1\.1 200 /);
    });
  });
});
