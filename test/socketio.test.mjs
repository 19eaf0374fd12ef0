// Routing rule 6: the hand-off to the embedding app. Requests and upgrades that
// match no route go to the app's fallback (its port, or its (req, res) handler and upgrade
// handler), so one port serves the proxy and the app's own UI and Socket.IO. A real `socket.io`
// server and `socket.io-client`, with the polling and the WebSocket transports.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import { Server as SocketIOServer } from 'socket.io';
import { io as ioClient } from 'socket.io-client';
import { startProxy, request, waitFor, sleep } from './helpers/servers.mjs';

/** The embedding app: an http server with its own UI on / and Socket.IO attached. */
async function startApp({ listen = true } = {}) {
  const requests = [];
  const upgrades = [];
  const app = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`app ui ${req.url}`);
  });
  // Short heartbeats, so idle sessions exercise ping/pong (and long-polls) through the proxy.
  const sio = new SocketIOServer(app, { serveClient: false, pingInterval: 250, pingTimeout: 1000 });
  // After attaching: socket.io takes over the 'request' listeners it finds.
  app.prependListener('request', (req) => requests.push({ method: req.method, url: req.url, headers: req.headers }));
  app.prependListener('upgrade', (req) => upgrades.push({ url: req.url, headers: req.headers }));
  const serverSockets = [];
  sio.on('connection', (socket) => {
    serverSockets.push(socket);
    socket.emit('welcome', { id: socket.id });
    socket.on('hello', (payload, ack) => {
      ack({ got: payload, transport: socket.conn.transport.name });
    });
  });
  if (listen) {
    app.listen(0, '127.0.0.1');
    await once(app, 'listening');
  }
  return {
    app,
    sio,
    requests,
    upgrades,
    serverSockets,
    port: listen ? app.address().port : undefined,
    async close() {
      await new Promise((r) => sio.close(() => r()));
      if (listen) {
        app.closeAllConnections();
        if (app.listening) await new Promise((r) => app.close(() => r()));
      }
    },
  };
}

/** Connects a socket.io client; resolves with { socket, welcome } once connected and welcomed. */
function connectClient(url, transports) {
  return new Promise((resolve, reject) => {
    const socket = ioClient(url, { transports, reconnection: false, forceNew: true, timeout: 5000 });
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error('socket.io client did not connect'));
    }, 8000);
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      socket.close();
      reject(new Error(`connect_error: ${err.message} ${err.description?.message ?? err.description ?? ''}`));
    });
    socket.once('welcome', (welcome) => {
      clearTimeout(timer);
      resolve({ socket, welcome });
    });
  });
}

function hello(socket, payload) {
  return socket.timeout(5000).emitWithAck('hello', payload);
}

function modes() {
  return [
    {
      name: 'fallback: { port }',
      async setup() {
        const app = await startApp();
        const proxy = await startProxy({ fallback: { port: app.port } });
        return { app, proxy };
      },
    },
    {
      name: 'fallback: { handler, upgrade }',
      async setup() {
        const app = await startApp({ listen: false });
        const proxy = await startProxy({
          fallback: {
            handler: (req, res) => app.app.emit('request', req, res),
            upgrade: (req, socket, head) => app.app.emit('upgrade', req, socket, head),
          },
        });
        return { app, proxy };
      },
    },
  ];
}

for (const mode of modes()) {
  describe(`Socket.IO through the proxy to the embedding app (${mode.name})`, () => {
    let app;
    let proxy;
    before(async () => {
      ({ app, proxy } = await mode.setup());
    });
    after(async () => {
      await proxy?.proxy.stop();
      await app?.close();
    });

    it("an unrouted request reaches the app's own UI", async () => {
      const res = await request(`${proxy.url}/dashboard?x=1`);
      assert.equal(res.status, 200);
      assert.equal(res.body, 'app ui /dashboard?x=1');
      const seen = app.requests.find((r) => r.url === '/dashboard?x=1');
      assert.ok(seen, 'the app never saw the request');
      assert.equal(seen.headers.host, `127.0.0.1:${proxy.port}`);
    });

    it('socket.io-client with transports [polling]: connects, emits, gets the ack', async () => {
      const before = proxy.proxy.getStats();
      const { socket, welcome } = await connectClient(proxy.url, ['polling']);
      try {
        assert.equal(typeof welcome.id, 'string');
        assert.equal(socket.id, welcome.id);
        assert.equal(socket.io.engine.transport.name, 'polling');
        const ack = await hello(socket, { n: 1, text: 'über polling' });
        assert.deepEqual(ack, { got: { n: 1, text: 'über polling' }, transport: 'polling' });
        // A second round trip on the same session (long-polling keeps going through the proxy).
        const ack2 = await hello(socket, [1, 2, 3]);
        assert.deepEqual(ack2, { got: [1, 2, 3], transport: 'polling' });
        const s = proxy.proxy.getStats();
        assert.ok(s.http1Requests - before.http1Requests >= 3, `only ${s.http1Requests - before.http1Requests} requests went through the proxy`);
        assert.equal(s.websocketsUpgradeTotal, before.websocketsUpgradeTotal);
        assert.ok(app.requests.some((r) => r.url.startsWith('/socket.io/?EIO=4&transport=polling')));
      } finally {
        socket.close();
      }
    });

    it('socket.io-client with transports [websocket]: connects over the proxy upgrade, emits, gets the ack', async () => {
      const before = proxy.proxy.getStats();
      const { socket, welcome } = await connectClient(proxy.url, ['websocket']);
      try {
        assert.equal(socket.id, welcome.id);
        assert.equal(socket.io.engine.transport.name, 'websocket');
        const ack = await hello(socket, { n: 2, text: 'über websocket' });
        assert.deepEqual(ack, { got: { n: 2, text: 'über websocket' }, transport: 'websocket' });
        const s = proxy.proxy.getStats();
        assert.equal(s.websocketsUpgradeTotal - before.websocketsUpgradeTotal, 1);
        assert.equal(s.websocketConnections, 1);
        const up = app.upgrades.at(-1);
        assert.ok(up.url.startsWith('/socket.io/?EIO=4&transport=websocket'), up.url);
      } finally {
        socket.close();
      }
      assert.ok(await waitFor(() => proxy.proxy.getStats().websocketConnections === 0), `websocketConnections = ${proxy.proxy.getStats().websocketConnections}`);
    });

    it('socket.io-client with the default transports upgrades polling -> websocket through the proxy', async () => {
      const { socket } = await connectClient(proxy.url, ['polling', 'websocket']);
      try {
        const upgraded = await waitFor(() => socket.io.engine.transport.name === 'websocket', { timeoutMs: 5000 });
        assert.ok(upgraded, `still on ${socket.io.engine.transport.name}`);
        const ack = await hello(socket, 'after upgrade');
        assert.deepEqual(ack, { got: 'after upgrade', transport: 'websocket' });
        assert.equal(proxy.proxy.getStats().websocketConnections, 1);
      } finally {
        socket.close();
      }
      assert.ok(await waitFor(() => proxy.proxy.getStats().websocketConnections === 0));
    });

    for (const transports of [['polling'], ['websocket']]) {
      it(`an idle ${transports[0]} session survives several heartbeats through the proxy`, async () => {
        const { socket } = await connectClient(proxy.url, transports);
        let disconnected = null;
        socket.on('disconnect', (reason) => (disconnected = reason));
        try {
          await sleep(1500);
          assert.equal(disconnected, null, `disconnected: ${disconnected}`);
          assert.equal(socket.connected, true);
          const ack = await hello(socket, 'still alive');
          assert.deepEqual(ack, { got: 'still alive', transport: transports[0] });
        } finally {
          socket.close();
        }
      });
    }

    it('a routed request on the same port still goes to its route, not to the app', async () => {
      const other = http.createServer((req, res) => res.end(`routed ${req.url}`));
      other.listen(0, '127.0.0.1');
      await once(other, 'listening');
      try {
        const before = app.requests.length;
        const res = await request(`${proxy.url}/socket.io/?EIO=4&transport=polling`, { headers: { 'X-Cmux-Port-Internal': String(other.address().port) } });
        assert.equal(res.status, 200);
        assert.equal(res.body, 'routed /socket.io/?EIO=4&transport=polling');
        assert.equal(app.requests.length, before);
      } finally {
        other.closeAllConnections();
        await new Promise((r) => other.close(r));
      }
    });
  });
}
