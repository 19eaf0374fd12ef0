// The connection sniffer (first bytes: TLS, the HTTP/2 preface or HTTP/1.1) has a fixed deadline
// of requestHeadersTimeoutMs from the accept. It used socket.setTimeout, which restarts on every
// byte: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` trickled one byte per 1.8 s lived 43.6 s with a 2 s
// budget (~11.5 min with the 30 s default).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startProxy, sleep } from './helpers/servers.mjs';
import { PREFACE } from './helpers/h2-raw.mjs';

describe('HTTP/2 preface sniffing: fixed deadline', () => {
  let px;
  before(async () => {
    px = await startProxy({ requestHeadersTimeoutMs: 1000 });
  });
  after(async () => {
    await px.proxy.stop();
  });

  it('the preface trickled one byte per 300 ms is cut off at requestHeadersTimeoutMs (1 s), not per byte', async () => {
    const socket = net.connect({ port: px.port, host: '127.0.0.1' });
    socket.on('error', () => {});
    await new Promise((resolve) => socket.once('connect', resolve));
    const start = Date.now();
    let closedAt = null;
    socket.on('close', () => (closedAt = Date.now()));
    const before = px.proxy.getStats().requestHeadersTimeouts;
    // 23 of the 24 preface bytes, so the sniffer is never done deciding.
    for (let i = 0; i < PREFACE.length - 1 && closedAt === null; i++) {
      if (!socket.destroyed) socket.write(PREFACE.subarray(i, i + 1));
      await sleep(300);
    }
    socket.destroy();
    assert.notEqual(closedAt, null, `still open after ${Date.now() - start} ms of trickling`);
    const lived = closedAt - start;
    assert.ok(lived >= 900 && lived < 2000, `closed after ${lived} ms (deadline 1000 ms)`);
    assert.equal(px.proxy.getStats().requestHeadersTimeouts, before + 1, 'counted as a request-headers timeout');
    assert.equal(px.proxy.getStats().activeConnections, 0, 'slot released');
  });

  it('a client that sends the whole preface in time is not cut off by the sniff deadline', async () => {
    const socket = net.connect({ port: px.port, host: '127.0.0.1' });
    socket.on('error', () => {});
    await new Promise((resolve) => socket.once('connect', resolve));
    let closed = false;
    socket.on('close', () => (closed = true));
    // Preface in two halves, then an empty SETTINGS; stays connected past the sniff deadline.
    socket.write(PREFACE.subarray(0, 10));
    await sleep(200);
    socket.write(Buffer.concat([PREFACE.subarray(10), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
    await sleep(1500);
    assert.equal(closed, false, 'the HTTP/2 session outlives the sniff deadline');
    socket.destroy();
  });
});
