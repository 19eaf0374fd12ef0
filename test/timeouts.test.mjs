// Idle timeouts (idleTimeoutMs, and pooled sockets closed before the upstream's own
// Keep-Alive timeout), and TCP keep-alive on client sockets.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http from 'node:http';
import { once } from 'node:events';
import { execFileSync } from 'node:child_process';
import { startProxy, startUpstream, request, waitFor, sleep } from './helpers/servers.mjs';

function hasSs() {
  try {
    execFileSync('ss', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('idle timeouts', () => {
  it('closes an idle client keep-alive connection after clientIdleTimeoutMs', async () => {
    const up = await startUpstream();
    const px = await startProxy({ clientIdleTimeoutMs: 300 });
    try {
      const socket = net.connect(px.port, '127.0.0.1');
      await once(socket, 'connect');
      socket.write(`GET / HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`);
      await once(socket, 'data');
      const t0 = Date.now();
      socket.resume();
      await once(socket, 'close');
      const idle = Date.now() - t0;
      assert.ok(idle >= 250 && idle < 2000, `closed after ${idle} ms`);
      assert.equal(px.proxy.getStats().clientIdleTimeouts, 1);
    } finally {
      await px.proxy.stop();
      await up.close();
    }
  });

  it('does not close a client connection while its exchange waits on a slow upstream', async () => {
    const up = await startUpstream((req, res) => setTimeout(() => res.end('late'), 700));
    const px = await startProxy({ clientIdleTimeoutMs: 300 });
    try {
      const res = await request(px.url, { headers: { 'x-cmux-port-internal': String(up.port) } });
      assert.equal(res.body, 'late');
    } finally {
      await px.proxy.stop();
      await up.close();
    }
  });

  it('closes idle pooled upstream sockets after upstreamIdleTimeoutMs', async () => {
    const up = await startUpstream();
    up.server.keepAliveTimeout = 60_000;
    const px = await startProxy({ upstreamIdleTimeoutMs: 400 });
    try {
      await request(px.url, { headers: { 'x-cmux-port-internal': String(up.port) } });
      assert.equal(px.proxy.getStats().upstreamSocketsIdle, 1);
      assert.equal(up.sockets.size, 1);
      assert.ok(await waitFor(() => up.sockets.size === 0, { timeoutMs: 3000 }), 'the upstream saw its socket closed');
      assert.equal(px.proxy.getStats().upstreamSocketsIdle, 0);
    } finally {
      await px.proxy.stop();
      await up.close();
    }
  });

  it("closes a pooled socket before the upstream's own Keep-Alive timeout, so reuse never races it", async () => {
    const up = await startUpstream();
    up.server.keepAliveTimeout = 2000; // answers carry "Keep-Alive: timeout=2"
    const px = await startProxy();
    try {
      const first = await request(px.url, { headers: { 'x-cmux-port-internal': String(up.port) } });
      assert.equal(first.status, 200);
      assert.equal(first.headers['keep-alive'], undefined, 'Keep-Alive is hop-by-hop');
      const t0 = Date.now();
      assert.ok(await waitFor(() => px.proxy.getStats().upstreamSocketsIdle === 0, { timeoutMs: 3000 }));
      const closedAfter = Date.now() - t0;
      assert.ok(closedAfter < 1900, `pooled socket closed after ${closedAfter} ms, before the upstream's 2000 ms`);
      assert.equal(px.proxy.getStats().upstreamErrors.ECONNRESET, undefined);
    } finally {
      await px.proxy.stop();
      await up.close();
    }
  });

  it('turns TCP keep-alive on for client and upstream sockets (keepaliveMs)', { skip: !hasSs() && 'ss (iproute2) not installed' }, async () => {
    const up = await startUpstream();
    up.server.keepAliveTimeout = 60_000;
    const px = await startProxy({ keepaliveMs: 7000 });
    try {
      const socket = net.connect(px.port, '127.0.0.1');
      await once(socket, 'connect');
      socket.write(`GET / HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`);
      await once(socket, 'data');
      // ss shows the kernel's keep-alive timer on sockets that have SO_KEEPALIVE set.
      const client = execFileSync('ss', ['-tnoH', 'state', 'established', `( sport = :${px.port} )`], { encoding: 'utf8' });
      assert.match(client, /timer:\(keepalive,/, client);
      const upstream = execFileSync('ss', ['-tnoH', 'state', 'established', `( dport = :${up.port} )`], { encoding: 'utf8' });
      assert.match(upstream, /timer:\(keepalive,/, upstream);
      socket.destroy();
    } finally {
      await px.proxy.stop();
      await up.close();
    }
  });
});
