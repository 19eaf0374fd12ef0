// Proxy CPU for one request body sent as 1-byte chunks against the same body in one chunk
// (a body of N bytes as N chunks makes the parser call back once per chunk). The proxy runs in
// a child process; its CPU is read from /proc/<pid>/stat around each upload.
// Each figure is the mean of `repeat` uploads, `repeat` x 10 for the body in one chunk (the CPU
// clock ticks in 10 ms steps; one 2 MiB upload in one chunk costs less than one tick).
// Usage: node bench/hostile/tiny-chunks.mjs [bodyBytes=2097152] [repeat=5]
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const BYTES = Number(process.argv[2] ?? 2 * 1024 * 1024);
const REPEAT = Number(process.argv[3] ?? 5);
const CHILD = fileURLToPath(new URL('../../test/helpers/proxy-child.mjs', import.meta.url));
const TICK_MS = 10; // CLK_TCK 100

function cpuMs(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'latin1').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) * TICK_MS;
}

/** Sends `chunked` (already framed) after the head; resolves when the upstream answered. */
function upload(port, upstreamPort, chunked) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.write(`POST /tiny HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstreamPort}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`);
      socket.end(chunked);
    });
    let text = '';
    socket.on('data', (c) => (text += c));
    socket.on('close', () => resolve(text));
    socket.on('error', reject);
  });
}

export async function measureTinyChunks(bytes = BYTES, repeat = REPEAT) {
  let received = 0;
  const upstream = http.createServer((req, res) => {
    let n = 0;
    req.on('data', (c) => (n += c.length));
    req.on('end', () => {
      received = n;
      res.end(String(n));
    });
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  const child = fork(CHILD, [JSON.stringify({})], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const [ready] = await once(child, 'message');
  const uport = upstream.address().port;
  const one = Buffer.from(`${bytes.toString(16)}\r\n${'x'.repeat(bytes)}\r\n0\r\n\r\n`, 'latin1');
  const tiny = Buffer.from(`${'1\r\nx\r\n'.repeat(bytes)}0\r\n\r\n`, 'latin1');
  const result = {};
  for (const [name, body] of [['oneChunk', one], ['oneByteChunks', tiny], ['oneChunkAgain', one]]) {
    const before = cpuMs(child.pid);
    const t0 = process.hrtime.bigint();
    const uploads = body === one ? repeat * 10 : repeat;
    for (let i = 0; i < uploads; i++) {
      received = 0;
      const answer = await upload(ready.port, uport, body);
      if (received !== bytes || !answer.includes(` 200 `)) throw new Error(`${name}: upstream got ${received} of ${bytes}`);
    }
    const wallMs = Number(process.hrtime.bigint() - t0) / 1e6 / uploads;
    result[name] = { cpuMs: (cpuMs(child.pid) - before) / uploads, wallMs: Math.round(wallMs * 10) / 10 };
  }
  child.kill();
  upstream.close();
  return result;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const r = await measureTinyChunks();
  const base = Math.max(1 / REPEAT, Math.min(r.oneChunk.cpuMs, r.oneChunkAgain.cpuMs));
  console.log(JSON.stringify(r));
  console.log(
    `1-byte chunks cost ${(r.oneByteChunks.cpuMs / base).toFixed(1)}x the proxy CPU of one chunk (body ${BYTES} bytes, mean of ${REPEAT} uploads; CPU resolution 10 ms)`,
  );
}
