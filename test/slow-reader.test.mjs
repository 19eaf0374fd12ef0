// Hostile peers: a slow reader on either side never makes the proxy's memory grow without bound.
// The proxy runs as a child process; its RSS comes from /proc/<pid>/status.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { startCli, stopCli } from './helpers/cli.mjs';

const MIB = 1024 * 1024;
const rss = (pid) => Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe('slow readers', () => {
  let upstream;
  let cli;
  let sinkReceived = 0;
  before(async () => {
    const chunk = Buffer.alloc(64 * 1024, 120);
    upstream = http.createServer((req, res) => {
      if (req.method === 'POST') {
        // A slow sink: reads 64 KiB every 20 ms.
        req.pause();
        const timer = setInterval(() => {
          const c = req.read(64 * 1024);
          if (c) sinkReceived += c.length;
        }, 20);
        req.on('end', () => {
          clearInterval(timer);
          res.end('ok');
        });
        req.on('close', () => clearInterval(timer));
        return;
      }
      // A fast source: 256 MiB as fast as the proxy takes it.
      res.writeHead(200, { 'content-length': 256 * MIB });
      let sent = 0;
      const pump = () => {
        while (sent < 256 * MIB) {
          sent += chunk.length;
          if (!res.write(chunk)) return res.once('drain', pump);
        }
        res.end();
      };
      pump();
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    cli = await startCli(['--port', '0', '--log-level', 'warn']);
  });
  after(async () => {
    await stopCli(cli.child);
    upstream.closeAllConnections();
    upstream.close();
  });

  it('a client that reads a fast 256 MiB download slowly: proxy memory stays flat (backpressure reaches the upstream)', async () => {
    const idle = rss(cli.child.pid);
    const socket = net.connect(cli.port, '127.0.0.1');
    await once(socket, 'connect');
    socket.write(`GET /big HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.address().port}\r\n\r\n`);
    socket.pause();
    let received = 0;
    let peak = idle;
    for (let i = 0; i < 40; i++) {
      // Read a little now and then: about 3 MiB/s while the upstream could send GB/s.
      await sleep(50);
      let c;
      while ((c = socket.read()) !== null && received < (i + 1) * 160 * 1024) received += c.length;
      peak = Math.max(peak, rss(cli.child.pid));
    }
    socket.destroy();
    const grew = (peak - idle) / MIB;
    assert.ok(received > 0);
    assert.ok(grew < 32, `proxy RSS grew ${grew.toFixed(1)} MiB while the client read ${(received / MIB).toFixed(1)} MiB slowly`);
  });

  // (Without a Content-Length node:http sends the body chunked, one 64 KiB chunk per write.)
  for (const framing of ['Content-Length', 'chunked']) it(`a slow upstream reader of a fast 128 MiB upload (${framing}): proxy memory stays flat`, async () => {
    const idle = rss(cli.child.pid);
    sinkReceived = 0;
    const length = framing === 'chunked' ? {} : { 'content-length': 128 * MIB };
    const req = http.request(`http://127.0.0.1:${cli.port}/up`, { method: 'POST', agent: false, headers: { 'x-cmux-port-internal': String(upstream.address().port), ...length } });
    req.on('error', () => {});
    const chunk = Buffer.alloc(64 * 1024, 121);
    let written = 0;
    let peak = idle;
    const deadline = Date.now() + 2500;
    while (Date.now() < deadline && written < 128 * MIB) {
      if (!req.write(chunk)) await Promise.race([once(req, 'drain'), sleep(100)]);
      written += chunk.length;
      peak = Math.max(peak, rss(cli.child.pid));
    }
    req.destroy();
    const grew = (peak - idle) / MIB;
    assert.ok(sinkReceived > 0, 'the upstream got some of it');
    assert.ok(written - sinkReceived < 64 * MIB, `the client could not run far ahead of the upstream (${((written - sinkReceived) / MIB).toFixed(1)} MiB in flight)`);
    assert.ok(grew < 32, `proxy RSS grew ${grew.toFixed(1)} MiB`);
  });
});
