// h2c upstream sessions count against the descriptor budget like HTTP/1.1 upstream sockets: under
// `ulimit -n 160`, 200 h2c upstreams each holding a stream 1.5 s cannot take the descriptors
// the proxy keeps for clients. Before, sessions were uncounted: the table filled, libuv closed
// new clients without a word, and sessions kept after a long stream held their descriptors.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const CHILD = fileURLToPath(new URL('./helpers/proxy-child.mjs', import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function firstLine(port, upstreamPort) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    s.on('data', (d) => (out += d));
    s.on('error', () => {});
    s.on('close', () => resolve(out.split('\r\n')[0] || 'closed without an answer'));
    s.write(`GET / HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstreamPort}\r\nConnection: close\r\n\r\n`);
    setTimeout(() => s.destroy(), 4000);
  });
}

it('200 h2c upstreams under ulimit -n 160: 503 FD_LIMIT past the budget, new clients answered, descriptors back after', { timeout: 60_000 }, async () => {
  const servers = [];
  for (let i = 0; i < 200; i++) {
    const s = http2.createServer();
    s.on('stream', (st) => setTimeout(() => {
      try {
        st.respond({ ':status': 200 });
        st.end('ok');
      } catch {}
    }, 1500));
    s.on('session', (ss) => ss.on('error', () => {}));
    s.listen(0, '127.0.0.1');
    await once(s, 'listening');
    servers.push(s);
  }
  const opts = JSON.stringify({ upstreamProtocol: 'h2c', upstreamIdleTimeoutMs: 1000, logLevel: 'silent' });
  const child = spawn('bash', ['-c', 'ulimit -n 160 && exec "$0" "$1" "$2"', process.execPath, CHILD, opts], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const fds = () => readdirSync(`/proc/${child.pid}/fd`).length;
  const clients = [];
  try {
    const [ready] = await once(child, 'message');
    const port = ready.port;
    const baseline = fds();
    const statuses = {};
    const done = [];
    for (let c = 0; c < 2; c++) {
      const client = http2.connect(`http://127.0.0.1:${port}`);
      client.on('error', () => {});
      clients.push(client);
      for (let i = c * 100; i < c * 100 + 100; i++) {
        done.push(new Promise((resolve) => {
          const req = client.request({ ':path': '/', 'x-cmux-port-internal': String(servers[i].address().port) });
          req.on('response', (h) => (statuses[h[':status']] = (statuses[h[':status']] ?? 0) + 1));
          req.on('error', () => {});
          req.resume();
          req.on('close', resolve);
        }));
      }
    }
    await sleep(700);
    // While the upstream streams are held, fresh clients are still answered.
    const during = await Promise.all(Array.from({ length: 10 }, () => firstLine(port, servers[0].address().port)));
    for (const line of during) assert.match(line, /^HTTP\/1\.1 (200|503) /, `a client got: ${line}`);
    await Promise.race([Promise.all(done), sleep(10_000)]);
    assert.equal((statuses[200] ?? 0) + (statuses[503] ?? 0), 200, JSON.stringify(statuses));
    assert.ok((statuses[503] ?? 0) > 0, 'the budget was reached');
    for (const client of clients) client.close();
    // Idle sessions close after upstreamIdleTimeoutMs: descriptors come back.
    let now = fds();
    for (let i = 0; i < 40 && now > baseline + 2; i++) {
      await sleep(100);
      now = fds();
    }
    assert.ok(now <= baseline + 2, `fds ${baseline} -> ${now}`);
    const after = await Promise.all(Array.from({ length: 10 }, () => firstLine(port, servers[1].address().port)));
    for (const line of after) assert.match(line, /^HTTP\/1\.1 200 /);
  } finally {
    for (const client of clients) client.destroy();
    child.kill();
    for (const s of servers) s.close();
  }
});
