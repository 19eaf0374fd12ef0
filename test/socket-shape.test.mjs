// Sockets share one hidden class (src/socket-shape.ts). net.Socket's constructor copies its options
// with a spread and adds keys to the copy; on Node 20's V8 that gave each accepted and each upstream
// socket maps of its own, which died with the socket (with their descriptor arrays and the
// inline-cache handlers made for them): ~1.5 KB of garbage per socket. The proxy runs alone in a
// child process with V8's object statistics on; every connection through it is new on both sides
// (the client does not keep it alive, the upstream answers `Connection: close`), and the maps the
// mark-compacts found dead are counted: 7.6 per connection on Node 20 before, 0.6-0.9 now (and on
// Node 22 and 24, before and after).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import http from 'node:http';
import { once } from 'node:events';

const ROOT = new URL('..', import.meta.url);

const PROXY_CHILD = `
import { startProxy } from './test/helpers/servers.mjs';
const { proxy, port } = await startProxy();
process.on('message', async (m) => {
  if (m === 'stop') {
    await proxy.stop();
    process.exit(0);
  }
  globalThis.gc();
  globalThis.gc();
  process.send({ collected: true });
});
process.send({ port });
`;

const MAP_TYPES = new Set(['MAP_TYPE', 'MAP_STABLE_TYPE', 'MAP_DEPRECATED_TYPE']);

/** Dead maps, descriptor arrays and load handlers in V8's object statistics (one JSON object per line). */
function deadCounts(text) {
  const counts = { maps: 0, descriptorArrays: 0, loadHandlers: 0 };
  for (const line of text.split('\n')) {
    if (!line.startsWith('{') || !line.includes('"dead"') || !line.includes('instance_type_data')) continue;
    const entry = JSON.parse(line);
    if (MAP_TYPES.has(entry.instance_type_name)) counts.maps += entry.count;
    else if (entry.instance_type_name === 'DESCRIPTOR_ARRAY_TYPE') counts.descriptorArrays += entry.count;
    else if (entry.instance_type_name === 'LOAD_HANDLER_TYPE') counts.loadHandlers += entry.count;
  }
  return counts;
}

function get(port, upstreamPort) {
  return new Promise((resolve, reject) => {
    const req = http.get({ port, host: '127.0.0.1', path: '/', agent: false, headers: { 'x-cmux-port-internal': String(upstreamPort) } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
  });
}

describe('socket shapes', () => {
  it('2,000 new client and upstream connections leave no per-socket maps behind', async (t) => {
    const upstream = http.createServer((req, res) => {
      res.setHeader('connection', 'close');
      res.end('ok');
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    t.after(() => upstream.close());
    const upstreamPort = upstream.address().port;
    const child = spawn(process.execPath, ['--expose-gc', '--track-gc-object-stats', '--trace-gc-object-stats', '--input-type=module', '-e', PROXY_CHILD], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
    });
    t.after(() => child.kill());
    let stats = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => (stats += chunk));
    const [{ port }] = await once(child, 'message');
    const connections = 2000;
    for (let i = 0; i < connections; i += 20) {
      const statuses = await Promise.all(Array.from({ length: 20 }, () => get(port, upstreamPort)));
      assert.deepEqual(new Set(statuses), new Set([200]));
    }
    child.send('collect');
    await once(child, 'message');
    child.send('stop');
    await once(child, 'exit');
    const dead = deadCounts(stats);
    console.log(`# dead per connection: ${(dead.maps / connections).toFixed(2)} maps, ${(dead.descriptorArrays / connections).toFixed(2)} descriptor arrays, ${(dead.loadHandlers / connections).toFixed(2)} load handlers`);
    assert.ok(stats.includes('"dead"'), 'V8 printed its object statistics');
    // Before: 7.6 maps, 7.2 descriptor arrays and 42 load handlers per connection on Node 20;
    // ~0.6-0.9 maps per connection die on every version (the proxy's other work).
    assert.ok(dead.maps < 2 * connections, `${dead.maps} dead maps for ${connections} connections`);
    assert.ok(dead.loadHandlers < 2 * connections, `${dead.loadHandlers} dead load handlers for ${connections} connections`);
  });
});
