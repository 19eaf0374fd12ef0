// Streamed bodies: 256 MiB up (with a Content-Length, then chunked) and down through the proxy
// (run as a child process), byte-exact, with the proxy's peak RSS over idle measured for each:
// under GROWTH_MIB for every one (their bodies are read into reused buffers, a chunked one scanned
// where it lies). CMUX_TEST_LARGE_MIB changes the size.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { startCli, stopCli } from './helpers/cli.mjs';

const MIB = 1024 * 1024;
const SIZE = Number(process.env.CMUX_TEST_LARGE_MIB ?? 256) * MIB;
const CHUNK = 64 * 1024;
/** What each transfer may add to the proxy's RSS at its peak. */
const GROWTH_MIB = 16;

/** Deterministic bytes: chunk i is filled from a pattern that depends on i. */
function chunkAt(i) {
  const buf = Buffer.allocUnsafe(CHUNK);
  for (let j = 0; j < CHUNK; j += 4) buf.writeUInt32LE((i * 2654435761 + j) >>> 0, j);
  return buf;
}
const PATTERN = Array.from({ length: 16 }, (_, i) => chunkAt(i));
const piece = (i) => PATTERN[i % PATTERN.length];

function expectedSha() {
  const h = createHash('sha256');
  for (let i = 0; i < SIZE / CHUNK; i++) h.update(piece(i));
  return h.digest('hex');
}

function status(pid, field) {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]) * 1024;
}

/** Writes SIZE bytes into a writable, respecting backpressure. */
async function pump(writable) {
  for (let i = 0; i < SIZE / CHUNK; i++) {
    if (!writable.write(piece(i))) await once(writable, 'drain');
  }
  writable.end();
}

describe('large bodies through the proxy process', () => {
  let upstream;
  let cli;
  const sha = expectedSha();
  before(async () => {
    upstream = http.createServer((req, res) => {
      if (req.method === 'POST') {
        const h = createHash('sha256');
        let n = 0;
        req.on('data', (c) => {
          h.update(c);
          n += c.length;
        });
        req.on('end', () => res.end(JSON.stringify({ bytes: n, sha: h.digest('hex') })));
        return;
      }
      if (req.url === '/warm') {
        res.end('warm');
        return;
      }
      res.writeHead(200, { 'content-length': SIZE, 'content-type': 'application/octet-stream' });
      pump(res);
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

  it(`streams ${SIZE / MIB} MiB up and down byte-exact with flat memory`, async () => {
    const headers = { 'x-cmux-port-internal': String(upstream.address().port) };
    const url = `http://127.0.0.1:${cli.port}/blob`;
    // Warm up (first request loads code paths), then take the idle RSS.
    await new Promise((resolve, reject) => http.get(`http://127.0.0.1:${cli.port}/warm`, { headers, agent: false }, (res) => res.resume().on('end', resolve)).on('error', reject));
    const idle = status(cli.child.pid, 'VmRSS');

    const pid = cli.child.pid;
    const growth = (label, limitMiB) => {
      const peak = status(pid, 'VmHWM');
      const grew = (peak - idle) / MIB;
      console.log(`# large-body ${label}: idle ${(idle / MIB).toFixed(1)} MiB, peak ${(peak / MIB).toFixed(1)} MiB, grew ${grew.toFixed(1)} MiB`);
      assert.ok(grew < limitMiB, `${label}: peak RSS grew ${grew.toFixed(1)} MiB over idle (${(idle / MIB).toFixed(1)} MiB)`);
      // The next step's peak from here (5: reset the peak RSS to the current RSS).
      writeFileSync(`/proc/${pid}/clear_refs`, '5');
    };

    const uploadedWithLength = await new Promise((resolve, reject) => {
      const req = http.request(url, { method: 'POST', headers: { ...headers, 'content-length': SIZE }, agent: false }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve(JSON.parse(body)));
      });
      req.on('error', reject);
      pump(req).catch(reject);
    });
    assert.equal(uploadedWithLength.bytes, SIZE);
    assert.equal(uploadedWithLength.sha, sha);
    growth('Content-Length upload', GROWTH_MIB);

    const uploaded = await new Promise((resolve, reject) => {
      const req = http.request(url, { method: 'POST', headers, agent: false }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve(JSON.parse(body)));
      });
      req.on('error', reject);
      pump(req).catch(reject);
    });
    assert.equal(uploaded.bytes, SIZE);
    assert.equal(uploaded.sha, sha);
    growth('chunked upload', GROWTH_MIB);

    const downloaded = await new Promise((resolve, reject) => {
      http.get(url, { headers, agent: false }, (res) => {
        const h = createHash('sha256');
        let n = 0;
        res.on('data', (c) => {
          h.update(c);
          n += c.length;
        });
        res.on('end', () => resolve({ bytes: n, sha: h.digest('hex'), complete: res.complete }));
        res.on('error', reject);
      }).on('error', reject);
    });
    assert.equal(downloaded.bytes, SIZE);
    assert.equal(downloaded.sha, sha);
    assert.ok(downloaded.complete);

    growth('download', GROWTH_MIB);
  });
});
