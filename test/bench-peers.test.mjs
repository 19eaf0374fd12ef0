// The load benchmark's Node peers, started as bench/load/servers.mjs starts them (pinned, own
// process): fastify + @fastify/http-proxy (HTTP/1.1 + WebSocket, and h2c on a second listener)
// and http-proxy-3 (HTTP/1.1 + WebSocket). Each must route by X-Cmux-Port-Internal, carry a
// request body, echo a WebSocket message, and answer 400 without the header: a peer that broke
// (an upgrade, an API change) fails here instead of as an empty row in the benchmark. The
// `node-splice` reference (no HTTP, one upstream connection per client connection) must carry
// keep-alive requests both ways, close its upstream side when the client goes, and outlive a
// client's reset.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket, WebSocketServer } from 'ws';
import { stopAll } from '../bench/load/processes.mjs';
import { startSystem } from '../bench/load/servers.mjs';

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
}

/** One HTTP/1.1 request (a new connection unless `agent` keeps one); resolves { status, body }. */
function request(port, { method = 'GET', path = '/', headers = {}, body, agent = false } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, headers, agent, timeout: 15_000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

/** One h2c (prior knowledge) request; resolves { status, body }. */
function requestH2c(port, headers) {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', reject);
    const stream = session.request({ ':path': '/h2?x=1', ...headers });
    stream.setTimeout(15_000, () => stream.close(http2.constants.NGHTTP2_CANCEL));
    let status = 0;
    const chunks = [];
    stream.on('response', (h) => (status = h[':status']));
    stream.on('data', (c) => chunks.push(c));
    stream.on('close', () => {
      session.close();
      if (status) resolve({ status, body: Buffer.concat(chunks).toString() });
      else reject(new Error(`h2c stream closed without a response (code ${stream.rstCode})`));
    });
    stream.end();
  });
}

/** Opens a WebSocket through the proxy, sends one message, resolves the echo. */
function wsEcho(port, targetPort, message) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { 'X-Cmux-Port-Internal': String(targetPort) }, handshakeTimeout: 15_000 });
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error('no echo within 15 s'));
    }, 15_000);
    ws.on('open', () => ws.send(message));
    ws.on('message', (data) => {
      clearTimeout(timer);
      ws.close();
      resolve(data.toString());
    });
    ws.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

describe('benchmark peers', () => {
  let workDir;
  let upstream;
  let upstreamPort;
  let echo;
  let echoPort;
  const systems = {};

  before(async () => {
    workDir = mkdtempSync(join(tmpdir(), 'bench-peers-'));
    // answers with what it received, so routing, path and body are all visible to the test
    upstream = http.createServer((req, res) => {
      let bytes = 0;
      req.on('data', (c) => (bytes += c.length));
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(`upstream ${req.method} ${req.url} ${bytes}`);
      });
    });
    upstreamPort = await listen(upstream);
    echo = http.createServer((_req, res) => res.writeHead(426).end());
    const wss = new WebSocketServer({ server: echo, perMessageDeflate: false });
    wss.on('connection', (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })));
    echoPort = await listen(echo);
  });

  after(async () => {
    await Promise.all(Object.values(systems).map((s) => s.stop()));
    await stopAll(); // a peer that never listened (startSystem threw) is still a live child
    upstream?.closeAllConnections();
    echo?.closeAllConnections();
    await Promise.all([upstream, echo].map((s) => s && new Promise((r) => s.close(r))));
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  });

  describe('node-splice', () => {
    before(async () => {
      systems['node-splice'] = await startSystem('node-splice', { workDir, nginxRoutes: {}, backends: { upstream: { port: upstreamPort } } });
    });

    it('carries keep-alive requests to its one upstream and closes that connection with the client', { timeout: 60_000 }, async () => {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      const get = (path) => request(systems['node-splice'].port, { path, agent });
      const idleClientSockets = () => Object.values(agent.freeSockets).flat();
      // the other peers' suites use the same upstream: count only this test's requests
      const seen = new Set();
      const onRequest = (req) => {
        if (req.url.startsWith('/splice-')) seen.add(req.socket);
      };
      upstream.on('request', onRequest);
      try {
        assert.deepEqual(await get('/splice-a'), { status: 200, body: 'upstream GET /splice-a 0' });
        assert.deepEqual(await get('/splice-b'), { status: 200, body: 'upstream GET /splice-b 0' });
        assert.equal(idleClientSockets().length, 1, 'both requests on one client connection');
        assert.equal(seen.size, 1, 'one upstream connection for it');
        const [upstreamSide] = seen;
        const closed = new Promise((resolve) => upstreamSide.once('close', resolve));
        agent.destroy();
        await closed;
        // A client that resets: its upstream connection goes too, and the splice serves on.
        seen.clear();
        assert.deepEqual(await get('/splice-c'), { status: 200, body: 'upstream GET /splice-c 0' });
        const [second] = seen;
        const secondClosed = new Promise((resolve) => second.once('close', resolve));
        const [clientSocket] = idleClientSockets();
        clientSocket.resetAndDestroy();
        await secondClosed;
        assert.deepEqual(await get('/splice-d'), { status: 200, body: 'upstream GET /splice-d 0' });
      } finally {
        upstream.off('request', onRequest);
        agent.destroy();
      }
    });
  });

  for (const name of ['fastify', 'http-proxy-3']) {
    // each peer in its own suite: one that does not start leaves the other's tests running
    describe(name, () => {
      before(async () => {
        systems[name] = await startSystem(name, { workDir, nginxRoutes: {}, backends: {} });
      });

      it('HTTP/1.1 GET and POST reach the upstream named by X-Cmux-Port-Internal', { timeout: 60_000 }, async () => {
        const { port } = systems[name];
        const get = await request(port, { path: '/small?q=1', headers: { 'X-Cmux-Port-Internal': String(upstreamPort) } });
        assert.deepEqual(get, { status: 200, body: 'upstream GET /small?q=1 0' });
        const body = Buffer.alloc(300_000, 0x61);
        const post = await request(port, {
          method: 'POST',
          path: '/upload',
          headers: { 'X-Cmux-Port-Internal': String(upstreamPort), 'content-type': 'application/octet-stream', 'content-length': body.length },
          body,
        });
        assert.deepEqual(post, { status: 200, body: `upstream POST /upload ${body.length}` });
      });

      it('a WebSocket message is echoed through it', { timeout: 60_000 }, async () => {
        assert.equal(await wsEcho(systems[name].port, echoPort, `hello through ${name}`), `hello through ${name}`);
      });

      it('400 without X-Cmux-Port-Internal', { timeout: 60_000 }, async () => {
        const res = await request(systems[name].port, { path: '/small' });
        assert.equal(res.status, 400);
        assert.match(res.body, /X-Cmux-Port-Internal/);
      });

      if (name === 'fastify') {
        it('h2c on its second listener forwards to the HTTP/1.1 upstream', { timeout: 60_000 }, async () => {
          const { port, h2cPort } = systems.fastify;
          assert.notEqual(h2cPort, port);
          assert.deepEqual(await requestH2c(h2cPort, { 'x-cmux-port-internal': String(upstreamPort) }), { status: 200, body: 'upstream GET /h2?x=1 0' });
          assert.equal((await requestH2c(h2cPort, {})).status, 400);
        });
      }
    });
  }
});
