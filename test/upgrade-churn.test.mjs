// Regression: parsers were freed (parser.close()) from inside llhttp callbacks — on every
// WebSocket upgrade through a consumed upstream socket — corrupting the native heap
// ("free(): invalid next size"). Many upgrades and handshake failures in a row make it show.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { WebSocketServer, WebSocket } from 'ws';
import { startProxy, waitFor } from './helpers/servers.mjs';

it('survives 600 WebSocket upgrades and refusals in a row, counts back to 0', async () => {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false });
  await once(wss, 'listening');
  wss.on('connection', (ws) => ws.on('message', (m) => ws.send(m)));
  const px = await startProxy();
  try {
    const port = wss.address().port;
    for (let round = 0; round < 30; round++) {
      await Promise.all(
        Array.from({ length: 20 }, async (_, i) => {
          const ws = new WebSocket(`ws://127.0.0.1:${px.port}/r${round}-${i}`, { headers: { 'x-cmux-port-internal': String(port) }, perMessageDeflate: false });
          await once(ws, 'open');
          ws.send(`m${i}`);
          const [data] = await once(ws, 'message');
          assert.equal(String(data), `m${i}`);
          ws.close();
          await once(ws, 'close');
        }),
      );
    }
    assert.ok(await waitFor(() => px.proxy.getStats().websocketConnections === 0));
    assert.equal(px.proxy.getStats().websocketsUpgradeTotal, 600);
  } finally {
    await px.proxy.stop();
    wss.close();
  }
});
