// Regression: an embedding app with an active AsyncLocalStorage (OpenTelemetry, playwright)
// crashed the proxy on the first connection (llhttp's async resource was a frozen object).
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { startProxy, startUpstream, request } from './helpers/servers.mjs';

it('serves requests while an AsyncLocalStorage is active in the process', async () => {
  const als = new AsyncLocalStorage();
  als.enterWith({ app: 'embedding' });
  const up = await startUpstream();
  const px = await startProxy();
  try {
    const res = await request(px.url, { method: 'POST', body: 'x', headers: { 'x-cmux-port-internal': String(up.port) } });
    assert.equal(res.status, 200);
    assert.equal(JSON.parse(res.body).body, 'x');
  } finally {
    await px.proxy.stop();
    await up.close();
  }
});
