// The ws-20k benchmark's helpers (bench/load/ws-fleet.mjs) at a small scale: echo upstreams and
// WebSocket clients in several processes, clients bound to 127.0.0.x source addresses, every
// connection echoed and held, the figures merged, and every process stopped afterwards.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { openFleet, percentile, sourceAddresses, split, startEchoServers } from '../bench/load/ws-fleet.mjs';
import { stopProcess } from '../bench/load/processes.mjs';
import { startProxy, waitFor } from './helpers/servers.mjs';

const isAlive = (pid) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('ws-20k helpers', () => {
  let echoes = [];
  let proxy;
  let port;
  before(async () => {
    echoes = await startEchoServers(2);
    ({ proxy, port } = await startProxy());
  });
  after(async () => {
    await Promise.all(echoes.map((e) => stopProcess(e.handle, 2000)));
    await proxy?.stop();
  });

  it('splits, percentiles and source addresses', () => {
    assert.deepEqual(split(20000, 4), [5000, 5000, 5000, 5000]);
    assert.deepEqual(split(7, 3), [3, 2, 2]);
    assert.equal(percentile([1, 2, 3, 4], 50), 2);
    assert.equal(percentile([1, 2, 3, 4], 99), 4);
    assert.equal(percentile([], 50), null);
    assert.deepEqual(sourceAddresses(0), ['127.0.0.2', '127.0.0.3']);
    assert.deepEqual(sourceAddresses(1), ['127.0.0.4', '127.0.0.5']);
  });

  it('200 WebSockets from 2 client processes over 2 echo processes: all echo, all held, all stopped', { timeout: 60_000 }, async () => {
    const fleet = await openFleet({ proxyPort: port, targetPorts: echoes.map((e) => e.port), total: 200, perProcess: 100, timeoutMs: 30_000 });
    assert.equal(fleet.processes, 2);
    assert.equal(fleet.echoed, 200, `first error: ${fleet.firstError}`);
    assert.equal(fleet.failed, 0);
    assert.equal(fleet.firstError, null);
    assert.ok(fleet.p50Ms > 0 && fleet.p99Ms >= fleet.p50Ms && fleet.maxMs >= fleet.p99Ms);
    assert.ok(fleet.openPerSecond > 0);
    assert.equal(proxy.getStats().websocketConnections, 200, 'held open together');
    const pids = echoes.map((e) => e.handle.pid);
    assert.equal(fleet.pids.length, 2);
    assert.equal(await fleet.release(), 200);
    assert.ok(fleet.pids.every((pid) => !isAlive(pid)), 'the client processes are stopped');
    assert.ok(await waitFor(() => proxy.getStats().websocketConnections === 0, { timeoutMs: 10_000 }), 'closed once released');
    assert.ok(pids.every(isAlive), 'the echo servers outlive one fleet');
  });
});
