// RFC 8441: WebSockets over HTTP/2 extended CONNECT, bridged to an HTTP/1.1 Upgrade.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { once } from 'node:events';
import { WebSocketServer } from 'ws';
import { startProxy, startUpstream, waitFor } from './helpers/servers.mjs';
import { clientFrame, readFrames } from './helpers/ws-frames.mjs';

/** An h2c session that waited for the proxy's SETTINGS (extended CONNECT needs them). */
async function connect(port) {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on('error', () => {});
  await once(session, 'remoteSettings');
  return session;
}

function openWebSocket(session, headers) {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': '/chat', 'sec-websocket-version': '13', ...headers }, { endStream: false });
    stream.on('response', (h) => resolve({ stream, headers: h }));
    stream.on('error', reject);
  });
}

describe('RFC 8441 extended CONNECT', () => {
  let wss;
  let wsPort;
  let seen;
  let px;
  before(async () => {
    seen = [];
    wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false, handleProtocols: (protocols) => (protocols.has('chat') ? 'chat' : false) });
    await once(wss, 'listening');
    wsPort = wss.address().port;
    wss.on('connection', (ws, req) => {
      seen.push(req.headers);
      ws.on('message', (data, binary) => ws.send(data, { binary }));
    });
    px = await startProxy();
  });
  after(async () => {
    await px.proxy.stop();
    wss.close();
  });

  it('advertises SETTINGS_ENABLE_CONNECT_PROTOCOL', async () => {
    const session = await connect(px.port);
    assert.equal(session.remoteSettings.enableConnectProtocol, true);
    session.close();
  });

  it('bridges to an HTTP/1.1 Upgrade: 200, subprotocol, echo of text and binary, close', async () => {
    const session = await connect(px.port);
    const { stream, headers } = await openWebSocket(session, { 'x-cmux-port-internal': String(wsPort), 'sec-websocket-protocol': 'chat', ':authority': `app.${wsPort}.localhost` });
    assert.equal(headers[':status'], 200);
    assert.equal(headers['sec-websocket-protocol'], 'chat');
    assert.equal(headers['sec-websocket-accept'], undefined, 'no Accept toward the h2 client');
    const upstreamSaw = seen.at(-1);
    assert.equal(upstreamSaw.upgrade, 'websocket');
    assert.equal(upstreamSaw['sec-websocket-protocol'], 'chat');
    assert.equal(upstreamSaw.host, `app.${wsPort}.localhost`);
    assert.equal(px.proxy.getStats().websocketConnections, 1);
    const replies = readFrames(stream, 2);
    stream.write(clientFrame('hello over h2'));
    stream.write(clientFrame(Buffer.from([0, 1, 2, 255]), 2));
    const [text, binary] = await replies;
    assert.equal(text.opcode, 1);
    assert.equal(text.payload.toString(), 'hello over h2');
    assert.equal(binary.opcode, 2);
    assert.deepEqual([...binary.payload], [0, 1, 2, 255]);
    assert.equal(px.proxy.getStats().websocketsExtendedConnectTotal >= 1, true);
    stream.close();
    assert.ok(await waitFor(() => px.proxy.getStats().websocketConnections === 0));
    session.close();
  });

  it('multiplexes 100 WebSockets on one HTTP/2 session', async () => {
    const session = await connect(px.port);
    const sockets = await Promise.all(Array.from({ length: 100 }, () => openWebSocket(session, { 'x-cmux-port-internal': String(wsPort) })));
    assert.ok(sockets.every((s) => s.headers[':status'] === 200));
    assert.equal(px.proxy.getStats().websocketConnections, 100);
    const echoes = await Promise.all(
      sockets.map(async ({ stream }, i) => {
        const reply = readFrames(stream, 1);
        stream.write(clientFrame(`message ${i}`));
        return (await reply)[0].payload.toString();
      }),
    );
    assert.deepEqual(echoes, Array.from({ length: 100 }, (_, i) => `message ${i}`));
    session.destroy();
    assert.ok(await waitFor(() => px.proxy.getStats().websocketConnections === 0));
  });

  it('the upstream closing ends the stream', async () => {
    const session = await connect(px.port);
    const { stream } = await openWebSocket(session, { 'x-cmux-port-internal': String(wsPort) });
    const ended = new Promise((resolve) => stream.on('close', resolve));
    stream.on('data', () => {});
    for (const client of wss.clients) client.terminate();
    await ended;
    assert.ok(await waitFor(() => px.proxy.getStats().websocketConnections === 0));
    session.close();
  });

  it('relays a refusal (403) as a normal response, and 502 when the upstream is down', async () => {
    const refusing = await startUpstream((req, res) => {
      res.writeHead(403, { 'content-type': 'text/plain' });
      res.end('forbidden here');
    });
    const session = await connect(px.port);
    try {
      const { stream, headers } = await openWebSocket(session, { 'x-cmux-port-internal': String(refusing.port) });
      assert.equal(headers[':status'], 403);
      let body = '';
      stream.on('data', (c) => (body += c));
      await once(stream, 'end');
      assert.equal(body, 'forbidden here');
      const dead = net.createServer();
      dead.listen(0, '127.0.0.1');
      await once(dead, 'listening');
      const deadPort = dead.address().port;
      dead.close();
      const down = await openWebSocket(session, { 'x-cmux-port-internal': String(deadPort) });
      assert.equal(down.headers[':status'], 502);
      down.stream.resume();
    } finally {
      session.close();
      await refusing.close();
    }
  });

  it('answers 501 when WebSockets are disabled, and does not advertise the setting', async () => {
    const off = await startProxy({ enableWebsockets: false });
    const session = http2.connect(`http://127.0.0.1:${off.port}`);
    session.on('error', () => {});
    await once(session, 'remoteSettings');
    assert.notEqual(session.remoteSettings.enableConnectProtocol, true);
    session.close();
    await off.proxy.stop();
  });

  it('opens a plain CONNECT tunnel to the routed target', async () => {
    const echo = net.createServer((s) => s.pipe(s));
    echo.listen(0, '127.0.0.1');
    await once(echo, 'listening');
    const session = await connect(px.port);
    try {
      const stream = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${echo.address().port}` }, { endStream: false });
      const [headers] = await once(stream, 'response');
      assert.equal(headers[':status'], 200);
      stream.write('ping through tunnel');
      const [data] = await once(stream, 'data');
      assert.equal(data.toString(), 'ping through tunnel');
      stream.close();
    } finally {
      session.close();
      echo.close();
    }
  });
});
