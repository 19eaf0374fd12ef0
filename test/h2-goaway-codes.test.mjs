// HTTP/2 connection errors end with the GOAWAY error code RFC 9113 §5.4.1 and RFC 9113 §6 name, not
// INTERNAL_ERROR: Node destroys a session over an nghttp2 error without a code, which would make
// every such GOAWAY say INTERNAL_ERROR. The connection is closed right after the GOAWAY.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { startProxy, startUpstream } from './helpers/servers.mjs';
import {
  ERROR,
  FRAME,
  H2RawClient,
  dataFrame,
  errorName,
  frame,
  headersFrame,
  pingFrame,
  requestHeaders,
  rstStreamFrame,
  settingsFrame,
  windowUpdateFrame,
} from './helpers/h2-raw.mjs';

const GEN = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));

/** Waits for the GOAWAY and the close after it; asserts the code. */
async function assertGoaway(c, expected, what) {
  const goaway = await c.waitForGoaway({ timeoutMs: 5000 });
  assert.ok(goaway !== null, `${what}: no GOAWAY (closed: ${c.closed})`);
  assert.equal(errorName(goaway.errorCode), errorName(expected), `${what}: GOAWAY(${errorName(goaway.errorCode)})`);
  assert.ok(await c.waitForClose({ timeoutMs: 3000 }), `${what}: the connection stayed open after the GOAWAY`);
  return goaway;
}

describe('GOAWAY error codes of HTTP/2 connection errors', () => {
  let dir;
  let px;
  let up;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-goaway-'));
    execFileSync('bash', [GEN, '--out', dir, '--name', 'main'], { stdio: 'ignore' });
    // Answers after 5 s: its streams stay open (half-closed remote) while a test runs.
    up = await startUpstream((req, res) => setTimeout(() => res.end('late'), 5000).unref());
    px = await startProxy({ tls: { certFile: join(dir, 'main.pem'), keyFile: join(dir, 'main-key.pem') } });
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('an invalid connection preface over TLS (ALPN h2) -> GOAWAY(PROTOCOL_ERROR)', async () => {
    const socket = tls.connect({ port: px.port, host: '127.0.0.1', ALPNProtocols: ['h2'], rejectUnauthorized: false });
    await new Promise((resolve, reject) => {
      socket.once('secureConnect', resolve);
      socket.once('error', reject);
    });
    assert.equal(socket.alpnProtocol, 'h2');
    const c = new H2RawClient(socket);
    c.send(Buffer.from('PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n', 'latin1'), settingsFrame({}));
    await assertGoaway(c, ERROR.PROTOCOL_ERROR, 'bad preface');
  });

  it('a WINDOW_UPDATE taking the connection window past 2^31-1 -> GOAWAY(FLOW_CONTROL_ERROR)', async () => {
    const c = await H2RawClient.connect(px.port);
    c.send(windowUpdateFrame(0, 0x7fffffff));
    await assertGoaway(c, ERROR.FLOW_CONTROL_ERROR, 'WINDOW_UPDATE overflow');
  });

  it('RST_STREAM on an idle stream -> GOAWAY(PROTOCOL_ERROR)', async () => {
    const c = await H2RawClient.connect(px.port);
    c.send(rstStreamFrame(1, ERROR.CANCEL));
    await assertGoaway(c, ERROR.PROTOCOL_ERROR, 'RST_STREAM on idle stream');
  });

  // nghttp2 answers the next three with its own GOAWAY before Node sees an error: kept here so
  // that the mapping never changes them.
  it('DATA on an idle stream -> GOAWAY(PROTOCOL_ERROR)', async () => {
    const c = await H2RawClient.connect(px.port);
    c.send(dataFrame(1, 'hello'));
    await assertGoaway(c, ERROR.PROTOCOL_ERROR, 'DATA on idle stream');
  });

  it('a PING with a 3-byte payload -> GOAWAY(FRAME_SIZE_ERROR)', async () => {
    const c = await H2RawClient.connect(px.port);
    c.send(frame(FRAME.PING, 0, 0, Buffer.from('abc')));
    await assertGoaway(c, ERROR.FRAME_SIZE_ERROR, 'PING length 3');
  });

  it('an undecodable HPACK block -> GOAWAY(COMPRESSION_ERROR)', async () => {
    const c = await H2RawClient.connect(px.port);
    c.send(headersFrame(1, Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), { endStream: true }));
    await assertGoaway(c, ERROR.COMPRESSION_ERROR, 'bad HPACK');
  });

  it('10,000 SETTINGS in one write (unsent ACKs flood) -> GOAWAY(ENHANCE_YOUR_CALM)', async () => {
    const c = await H2RawClient.connect(px.port);
    c.send(Buffer.concat(Array.from({ length: 10_000 }, () => settingsFrame({}))));
    await assertGoaway(c, ERROR.ENHANCE_YOUR_CALM, 'SETTINGS flood');
  });

  // RFC 9113 §6.7 gives a PING ACK nobody asked for no meaning: it is ignored. Node reports it
  // as NGHTTP2_ERR_PROTO, the report a stream error also makes, and the proxy keeps the session
  // for those: the connection serves on.
  it('an unsolicited PING ACK is ignored: no GOAWAY, the connection answers a PING after it', async () => {
    const c = await H2RawClient.connect(px.port);
    c.send(pingFrame(Buffer.from('unasked!'), { ack: true }));
    c.send(pingFrame(Buffer.from('asked!!!')));
    const ack = await c.waitForFrame((f) => f.type === FRAME.PING && (f.flags & 0x1) !== 0, { timeoutMs: 3000 });
    assert.ok(ack !== null, `no PING ACK (closed: ${c.closed})`);
    assert.equal(ack.payload.toString('latin1'), 'asked!!!');
    assert.equal(await c.waitForGoaway({ timeoutMs: 500 }), null, 'a GOAWAY after an unsolicited PING ACK');
    c.close();
  });

  it('a flood of unsolicited PING ACKs (10,000 in one write) -> GOAWAY(ENHANCE_YOUR_CALM) and close', async () => {
    // Each one costs the proxy a protocol-error report from Node (about 2 us of CPU): ignored
    // without a bound, 17 bytes a frame would keep a core busy at a few MB/s.
    const c = await H2RawClient.connect(px.port);
    const ack = pingFrame(Buffer.from('unasked!'), { ack: true });
    c.send(Buffer.concat(Array.from({ length: 10_000 }, () => ack)));
    await assertGoaway(c, ERROR.ENHANCE_YOUR_CALM, 'PING ACK flood');
  });

  // On a fully closed stream nghttp2 keeps no state (Node sets its no_closed_streams option) and
  // ignores the frame; it reports STREAM_CLOSED while the stream is half-closed (remote).
  it('HEADERS again on a stream the client already ended -> GOAWAY(STREAM_CLOSED)', async () => {
    const c = await H2RawClient.connect(px.port);
    c.send(headersFrame(1, requestHeaders(up.port, { path: '/slow' }), { endStream: true }));
    // The request reached the upstream: stream 1 is half-closed (remote) at the proxy.
    const deadline = Date.now() + 5000;
    while (!up.requests.some((r) => r.url === '/slow') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(up.requests.some((r) => r.url === '/slow'), 'the request never reached the upstream');
    c.send(headersFrame(1, requestHeaders(up.port, { path: '/again' }), { endStream: true }));
    const goaway = await assertGoaway(c, ERROR.STREAM_CLOSED, 'HEADERS on a half-closed stream');
    assert.equal(goaway.lastStreamId, 1);
  });
});
