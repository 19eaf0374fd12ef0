// HTTP/2 connection errors (RFC 9113 §5.4.1) must not leave the socket behind. After a PING with
// a 3-byte payload, a SETTINGS whose length is not a multiple of 6, DATA on an idle stream,
// CONTINUATION without HEADERS or an undecodable HPACK block, nghttp2 sends GOAWAY and wants no
// more input; Node stops reading the socket and tells JavaScript nothing, so the client's FIN
// was never read: the socket sat in CLOSE-WAIT with its fd and its maxConnections slot until the
// idle timeout (+5 s). 1,000 such 45-byte connections locked every later client out (503).
// The proxy runs in a child process so that its file descriptors can be counted in /proc.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { readdirSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { startUpstream, request, h2connect, h2request, sleep, waitFor } from './helpers/servers.mjs';
import { FRAME, PREFACE, continuationFrame, dataFrame, frame, headersFrame, settingsFrame } from './helpers/h2-raw.mjs';

/** The attacks: preface + empty SETTINGS + one frame that is a connection error. */
const ATTACKS = [
  // PING payload must be 8 bytes (RFC 9113 §6.7): FRAME_SIZE_ERROR. 45 bytes in all.
  ['PING with a 3-byte payload', Buffer.concat([PREFACE, settingsFrame({}), frame(FRAME.PING, 0, 0, Buffer.from('abc'))])],
  // SETTINGS length not a multiple of 6 (RFC 9113 §6.5): FRAME_SIZE_ERROR.
  ['SETTINGS with a 5-byte payload', Buffer.concat([PREFACE, settingsFrame({}), frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(5))])],
  // DATA on an idle stream (RFC 9113 §5.1): PROTOCOL_ERROR.
  ['DATA on idle stream 1', Buffer.concat([PREFACE, settingsFrame({}), dataFrame(1, 'hello')])],
  // CONTINUATION not preceded by HEADERS (RFC 9113 §6.10): PROTOCOL_ERROR.
  ['CONTINUATION without HEADERS', Buffer.concat([PREFACE, settingsFrame({}), continuationFrame(1, Buffer.alloc(0), { endHeaders: true })])],
  // An indexed field with an index far past both tables (RFC 7541 §2.3.3): COMPRESSION_ERROR.
  ['undecodable HPACK block', Buffer.concat([PREFACE, settingsFrame({}), headersFrame(1, Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), { endStream: true })])],
];

function startProxyProcess(options) {
  const child = fork(fileURLToPath(new URL('./helpers/proxy-child.mjs', import.meta.url)), [JSON.stringify(options)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('proxy child did not start')), 15_000);
    child.once('exit', (code) => reject(new Error(`proxy child exited (${code})`)));
    child.on('message', (msg) => {
      if (msg?.type !== 'ready') return;
      clearTimeout(timer);
      resolve({ child, port: msg.port });
    });
  });
}

function stopProxyProcess(child) {
  if (child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 12_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.send({ type: 'stop' });
  });
}

const fdCount = (pid) => readdirSync(`/proc/${pid}/fd`).length;

/** Connects, writes `bytes`, reads until the server's GOAWAY arrived, then closes at once. */
function attack(port, bytes) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    let got = 0;
    const done = () => {
      socket.destroy();
      resolve(got);
    };
    socket.on('connect', () => socket.write(bytes));
    socket.on('data', (chunk) => {
      got += chunk.length;
      // The server's SETTINGS (9 + n) and GOAWAY (17): enough once a GOAWAY header is in.
      if (chunk.includes(Buffer.from([0x07, 0x00, 0x00, 0x00, 0x00, 0x00]))) done();
    });
    socket.on('error', done);
    socket.on('close', done);
    setTimeout(done, 200);
  });
}

describe('HTTP/2 connection errors: the socket is closed after the GOAWAY', { timeout: 120_000 }, () => {
  let up;
  let px;

  before(async () => {
    up = await startUpstream();
    // Defaults (maxConnections 1,000, 120 s idle timeout): the numbers of the attack as reported.
    px = await startProxyProcess({});
  });

  after(async () => {
    if (px) await stopProxyProcess(px.child);
    await up?.close();
  });

  async function servedOverH1(path) {
    const res = await request(`http://127.0.0.1:${px.port}${path}`, { headers: { 'x-cmux-port-internal': String(up.port) }, timeoutMs: 5000 });
    assert.equal(res.status, 200, `a normal HTTP/1.1 client is served (${path}): got ${res.status} ${res.body}`);
  }

  async function servedOverH2(path) {
    const session = h2connect(px.port);
    try {
      const res = await h2request(session, { ':method': 'GET', ':path': path, 'x-cmux-port-internal': String(up.port) });
      assert.equal(res.status, 200, `a normal HTTP/2 client is served (${path})`);
    } finally {
      session.destroy();
    }
  }

  for (const [name, bytes] of ATTACKS) {
    it(`${name}: GOAWAY, then the proxy closes the connection within a second`, async () => {
      const socket = net.connect({ port: px.port, host: '127.0.0.1' });
      await new Promise((resolve) => socket.once('connect', resolve));
      socket.on('error', () => {});
      let received = Buffer.alloc(0);
      socket.on('data', (c) => (received = Buffer.concat([received, c])));
      const closed = new Promise((resolve) => socket.once('close', () => resolve(Date.now())));
      const start = Date.now();
      socket.write(bytes);
      // The client stays connected and silent: the proxy itself must end the connection.
      const at = await Promise.race([closed, sleep(3000).then(() => null)]);
      socket.destroy();
      assert.notEqual(at, null, `${name}: connection still open 3 s after the connection error`);
      assert.ok(at - start < 1500, `${name}: closed after ${at - start} ms`);
      let goaway = false;
      for (let at = 0; at + 9 <= received.length; at += 9 + received.readUIntBE(at, 3)) if (received[at + 3] === FRAME.GOAWAY) goaway = true;
      assert.ok(goaway, `${name}: a GOAWAY came before the close`);
    });
  }

  it('1,000 such connections in a row (45 bytes each, client closes at once): fds back to baseline within 2 s, normal clients served throughout', async (t) => {
    await servedOverH1('/warm-h1');
    await servedOverH2('/warm-h2');
    await sleep(200);
    const baseline = fdCount(px.child.pid);
    let peak = baseline;
    for (let i = 0; i < 1000; i++) {
      await attack(px.port, ATTACKS[i % ATTACKS.length][1]);
      if (i % 100 === 99) {
        peak = Math.max(peak, fdCount(px.child.pid));
        await servedOverH1(`/during-${i}`);
        await servedOverH2(`/during-h2-${i}`);
      }
    }
    peak = Math.max(peak, fdCount(px.child.pid));
    const end = Date.now();
    // A few pooled upstream sockets may come and go with the normal requests: allow 4.
    const back = await waitFor(() => fdCount(px.child.pid) <= baseline + 4, { timeoutMs: 2000, stepMs: 50 });
    const now = fdCount(px.child.pid);
    t.diagnostic(`fds: baseline ${baseline}, peak ${peak}, ${Date.now() - end} ms after the last attack ${now}`);
    assert.ok(back, `fds back to baseline within 2 s of the last attack: baseline ${baseline}, now ${now}`);
    await servedOverH1('/after-h1');
    await servedOverH2('/after-h2');
  });
});
