// Concurrent HTTP/2 uploads and ENHANCE_YOUR_CALM. What was found: the RST_STREAM(ENHANCE_YOUR_CALM)
// frames seen with 8 concurrent 2 MiB POST loops on one Node http2 client connection are sent
// by the *client* (counted on the wire: client -> proxy), not by the proxy: Node's client counts
// every body it has queued in its own maxSessionMemory (10 MB by default) and refuses answers'
// HEADERS past it (8 x 2 MiB queued > 10 MB; 4 loops, or 64 KiB bodies, stay under; h2load with
// 32 concurrent 2 MiB uploads on one connection sees no refusal). A second finding pinned here:
// a Node client whose stream gets RST_STREAM(NO_ERROR) while its body is still queued and no
// response was seen never closes that stream and keeps the body counted against its
// maxSessionMemory for good (from then on it refuses every new stream); RFC 9113 §8.1 allows
// that RST after a complete response, so the proxy must not use it: after a proxy-made answer
// the rest of the body is read and dropped (the flow-control window keeps opening).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { fork } from 'node:child_process';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startProxy, startUpstream, startRawServer, sleep, refusedPort } from './helpers/servers.mjs';
import { FRAME, H2RawClient, dataFrame, errorName, headersFrame, requestHeaders } from './helpers/h2-raw.mjs';

const MIB = 1024 * 1024;

/** An HTTP/1.1 upstream in a child process (so it can be SIGKILLed) that reads bodies at full speed. */
function startUpstreamProcess(dir, port = 0) {
  const file = join(dir, 'upstream.mjs');
  writeFileSync(
    file,
    `import http from 'node:http';
const srv = http.createServer((req, res) => { let n = 0; req.on('data', (c) => (n += c.length)); req.on('end', () => res.end(String(n))); });
srv.listen(Number(process.argv[2]), '127.0.0.1', () => process.send({ port: srv.address().port }));`,
  );
  return new Promise((resolve, reject) => {
    const child = fork(file, [String(port)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child.once('message', (m) => resolve({ child, port: m.port }));
    child.once('exit', (code) => reject(new Error(`upstream exited ${code}`)));
  });
}

/** One POST of `size` bytes on `session`; resolves { status, rstCode, body }. */
function post(session, port, size, body) {
  return new Promise((resolve) => {
    if (session.destroyed || session.closed) return resolve({ status: 'session gone' });
    const s = session.request({ ':method': 'POST', ':path': '/up', 'x-cmux-port-internal': String(port), 'content-length': String(size) });
    let status;
    const chunks = [];
    s.on('response', (h) => (status = h[':status']));
    s.on('data', (c) => chunks.push(c));
    s.on('error', () => {});
    s.on('close', () => resolve({ status, rstCode: s.rstCode, body: Buffer.concat(chunks).toString() }));
    s.end(body);
  });
}

describe('HTTP/2 uploads: no refusal from the proxy, and no connection left refusing', { timeout: 120_000 }, () => {
  let px;
  let up;
  before(async () => {
    px = await startProxy();
    up = await startUpstream((req, res) => {
      let n = 0;
      req.on('data', (c) => (n += c.length));
      req.on('end', () => res.end(String(n)));
    });
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
  });

  it('502 while the client is still sending its body: a complete 502, then the rest of the body is read and dropped, no RST_STREAM(NO_ERROR)', async () => {
    const deadPort = await refusedPort();
    const c = await H2RawClient.connect(px.port);
    try {
      // A 256 KiB upload announced, 16 KiB sent, to a port nothing listens on.
      c.send(headersFrame(1, requestHeaders(deadPort, { method: 'POST', path: '/upload', extra: [['content-length', String(256 * 1024)]] })));
      c.send(dataFrame(1, Buffer.alloc(16384, 0x61)));
      const out = await c.streamOutcome(1);
      assert.equal(out.status, 502);
      assert.equal(out.body, 'upstream request error: ECONNREFUSED');
      assert.ok(out.ended, 'the 502 is complete (END_STREAM)');
      // The rest, within the windows the proxy opens (its initial stream window is 64 KiB - 1).
      for (let sent = 16384; sent < 256 * 1024; sent += 16384) {
        const more = sent + 16384 >= 256 * 1024;
        const from = c.frames.length;
        c.send(dataFrame(1, Buffer.alloc(16384, 0x61), { endStream: more }));
        if (sent % 49152 === 0) await c.waitForFrame((f) => f.type === FRAME.WINDOW_UPDATE, { from, timeoutMs: 500 });
      }
      await sleep(200);
      const rst = c.frames.find((f) => f.streamId === 1 && f.type === FRAME.RST_STREAM);
      assert.equal(rst, undefined, `no RST_STREAM after the body ended (got ${rst && errorName(rst.errorCode)})`);
      assert.equal(c.frames.some((f) => f.type === FRAME.GOAWAY), false);
      c.send(headersFrame(3, requestHeaders(up.port, { path: '/next' }), { endStream: true }));
      const next = await c.streamOutcome(3);
      assert.equal(next.status, 200);
    } finally {
      c.close();
    }
  });

  it('Node client: 2 MiB uploads answered 502 mid-body all close (none wedged), 4 concurrent x 4 rounds on one connection', async () => {
    const deadPort = await refusedPort();
    const session = http2.connect(`http://127.0.0.1:${px.port}`);
    session.on('error', () => {});
    try {
      const body = Buffer.alloc(2 * MIB, 0x64);
      for (let round = 0; round < 4; round++) {
        const results = await Promise.all(
          Array.from({ length: 4 }, () => Promise.race([post(session, deadPort, body.length, body), sleep(5000).then(() => ({ status: 'stuck' }))])),
        );
        assert.deepEqual(results.map((r) => r.status), [502, 502, 502, 502], `round ${round}`);
      }
      const ok = await post(session, up.port, 5, 'hello');
      assert.equal(ok.status, 200, 'the same connection serves a healthy upstream afterwards');
    } finally {
      session.destroy();
    }
  });

  it('32 concurrent 2 MiB uploads on one connection, 3 rounds: every one 200, no refusal', async () => {
    // maxSessionMemory: the Node client's own limit (10 MB) would make it refuse answers itself.
    const session = http2.connect(`http://127.0.0.1:${px.port}`, { maxSessionMemory: 256 });
    session.on('error', () => {});
    try {
      const body = Buffer.alloc(2 * MIB, 0x62);
      for (let round = 0; round < 3; round++) {
        const results = await Promise.all(Array.from({ length: 32 }, () => post(session, up.port, body.length, body)));
        const bad = results.filter((r) => r.status !== 200 || r.body !== String(2 * MIB));
        assert.deepEqual(bad, [], `round ${round}: ${bad.length} of 32 failed (${JSON.stringify(bad[0])})`);
      }
    } finally {
      session.destroy();
    }
  });

  it('upstream SIGKILLed mid-upload and restarted: the same client connection serves again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cmux-h2-upload-'));
    let upstream = await startUpstreamProcess(dir);
    const port = upstream.port;
    const session = http2.connect(`http://127.0.0.1:${px.port}`);
    session.on('error', () => {});
    try {
      const body = Buffer.alloc(2 * MIB, 0x63);
      let phase = 'before';
      const seen = { before: [], outage: [], after: [] };
      let running = true;
      const loops = Array.from({ length: 4 }, async () => {
        while (running && !session.destroyed) seen[phase].push(await Promise.race([post(session, port, body.length, body), sleep(10_000).then(() => ({ status: 'stuck' }))]));
      });
      await sleep(800);
      phase = 'outage';
      upstream.child.kill('SIGKILL');
      await sleep(800);
      upstream = await startUpstreamProcess(dir, port);
      await sleep(300);
      phase = 'after';
      await sleep(1500);
      running = false;
      await Promise.all(loops);
      const ok = seen.after.filter((r) => r.status === 200).length;
      const refused = seen.after.filter((r) => r.rstCode === http2.constants.NGHTTP2_ENHANCE_YOUR_CALM).length;
      assert.ok(seen.before.some((r) => r.status === 200), 'uploads worked before the kill');
      assert.equal(session.destroyed, false, 'the same connection is still up');
      assert.ok(ok > 0, `served after the restart: ${ok} ok, ${refused} refused, ${seen.after.length} in all`);
      assert.equal(refused, 0, 'no refusal after the restart');
    } finally {
      session.destroy();
      upstream.child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
