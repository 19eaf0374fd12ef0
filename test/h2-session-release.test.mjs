// A closed HTTP/2 session is released at once (src/h2/session-timeout.ts): node:http2 leaves the
// idle timer of a destroyed session armed, and the timer held the session, its socket and all
// they reach until it fired (clientIdleTimeoutMs, 120 s by default).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import http from 'node:http';
import http2 from 'node:http2';
import { once } from 'node:events';
import { h2request } from './helpers/servers.mjs';

const ROOT = new URL('..', import.meta.url);

/** The proxy alone in a child process; 'heap' answers its heap in use after two full collections. */
const PROXY_CHILD = `
import { startProxy } from './test/helpers/servers.mjs';
const { proxy, port } = await startProxy();
process.on('message', async (m) => {
  if (m === 'stop') {
    await proxy.stop();
    process.exit(0);
  }
  globalThis.gc();
  await new Promise((resolve) => setTimeout(resolve, 50));
  globalThis.gc();
  process.send({ heap: process.memoryUsage().heapUsed, sessions: proxy.getStats().activeConnections });
});
process.send({ port });
`;

async function openAndClose(port, upstreamPort, count) {
  for (let i = 0; i < count; i += 20) {
    await Promise.all(
      Array.from({ length: 20 }, async () => {
        const session = http2.connect(`http://127.0.0.1:${port}`);
        const { status } = await h2request(session, { ':path': '/', 'x-cmux-port-internal': String(upstreamPort) });
        assert.equal(status, 200);
        session.close();
        await once(session, 'close');
      }),
    );
  }
}

describe('closed HTTP/2 sessions', () => {
  it('1,000 h2c sessions opened, used and closed leave (almost) nothing on the heap', async (t) => {
    const upstream = http.createServer((req, res) => res.end('ok'));
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    t.after(() => upstream.close());
    const upstreamPort = upstream.address().port;
    const child = spawn(process.execPath, ['--expose-gc', '--input-type=module', '-e', PROXY_CHILD], { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    t.after(() => child.kill());
    const [{ port }] = await once(child, 'message');
    const heap = async () => {
      child.send('heap');
      const [answer] = await once(child, 'message');
      return answer;
    };
    await openAndClose(port, upstreamPort, 100);
    const before = await heap();
    await openAndClose(port, upstreamPort, 1000);
    const after = await heap();
    child.send('stop');
    await once(child, 'exit');
    const perSession = (after.heap - before.heap) / 1000;
    console.log(`# heap per closed session: ${perSession.toFixed(0)} B`);
    assert.equal(after.sessions, 0);
    assert.ok(perSession < 1500, `${perSession.toFixed(0)} bytes of heap kept per closed session`);
  });
});
