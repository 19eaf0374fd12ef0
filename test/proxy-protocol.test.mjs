// PROXY protocol v1 and v2 on the listener (acceptProxyProtocol): the header's client address is
// what X-Forwarded-For and the access log report; HTTP/1.1, h2c and TLS (both ALPNs) work behind
// it; every malformed header, written byte for byte, closes the connection without an answer.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createProxyServer } from '../dist/index.js';
import { startProxy, startUpstream, sleep, waitFor } from './helpers/servers.mjs';
import { PREFACE, settingsFrame, headersFrame, H2RawClient } from './helpers/h2-raw.mjs';

const GEN = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));
const SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

function v1(line) {
  return Buffer.from(line, 'latin1');
}

/** A v2 header: `cmd` 0 LOCAL / 1 PROXY, `fam` the family/transport byte, then addresses and TLVs. */
function v2({ cmd = 1, fam = 0x11, src = [203, 0, 113, 7], dst = [127, 0, 0, 1], sport = 40000, dport = 443, tlvs = Buffer.alloc(0), length } = {}) {
  let addr;
  if (fam >> 4 === 1) {
    addr = Buffer.alloc(12);
    Buffer.from(src).copy(addr, 0);
    Buffer.from(dst).copy(addr, 4);
    addr.writeUInt16BE(sport, 8);
    addr.writeUInt16BE(dport, 10);
  } else if (fam >> 4 === 2) {
    addr = Buffer.alloc(36);
    Buffer.from(src).copy(addr, 0);
    Buffer.from(dst).copy(addr, 16);
    addr.writeUInt16BE(sport, 32);
    addr.writeUInt16BE(dport, 34);
  } else if (fam >> 4 === 3) {
    addr = Buffer.alloc(216);
  } else addr = Buffer.alloc(0);
  const body = Buffer.concat([addr, tlvs]);
  const head = Buffer.alloc(4);
  head[0] = 0x20 | cmd;
  head[1] = fam;
  head.writeUInt16BE(length ?? body.length, 2);
  return Buffer.concat([SIG, head, body]);
}

function tlv(type, value) {
  const b = Buffer.alloc(3 + value.length);
  b[0] = type;
  b.writeUInt16BE(value.length, 1);
  Buffer.from(value).copy(b, 3);
  return b;
}

const IPV6_SRC = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x42];

/**
 * Connects, writes `parts` (Buffers) with `gapMs` between them, collects what comes back until
 * the proxy closes or `timeoutMs`. Resolves { text, closed, ms } (`closed`: the proxy ended it).
 */
function exchange(port, parts, { gapMs = 15, timeoutMs = 10000, end = false } = {}) {
  return new Promise((resolve) => {
    const started = Date.now();
    const socket = net.connect({ port, host: '127.0.0.1', noDelay: true });
    const chunks = [];
    let done = false;
    const finish = (closed) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ text: Buffer.concat(chunks).toString('latin1'), closed, ms: Date.now() - started, sent });
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    let sent = 0;
    socket.on('connect', async () => {
      for (let i = 0; i < parts.length; i++) {
        if (i > 0) await sleep(gapMs);
        if (socket.destroyed) return;
        socket.write(parts[i]);
        sent++;
      }
      if (end) socket.end();
    });
    socket.on('data', (c) => chunks.push(c));
    socket.on('close', () => finish(true));
    socket.on('error', () => {});
  });
}

function getRequest(port, path = '/') {
  return Buffer.from(`GET ${path} HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${port}\r\nConnection: close\r\n\r\n`, 'latin1');
}

/** The X-Forwarded-For the echo upstream saw, from an HTTP/1.1 response text. */
function xffOf(text) {
  const body = text.slice(text.indexOf('\r\n\r\n') + 4);
  return JSON.parse(body).headers['x-forwarded-for'];
}

describe('PROXY protocol: the client address comes from the header', () => {
  let up;
  let px;
  const entries = [];
  before(async () => {
    up = await startUpstream();
    px = await startProxy({ acceptProxyProtocol: true, accessLog: (e) => entries.push(e) });
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
  });

  it('v1 TCP4: X-Forwarded-For and the access log name the header source, not the balancer', async () => {
    entries.length = 0;
    const r = await exchange(px.port, [Buffer.concat([v1('PROXY TCP4 198.51.100.22 127.0.0.1 51234 443\r\n'), getRequest(up.port, '/v1')])]);
    assert.match(r.text, /^HTTP\/1\.1 200 /);
    assert.equal(xffOf(r.text), '198.51.100.22');
    await waitFor(() => entries.length > 0);
    assert.equal(entries[0].client, '198.51.100.22');
  });

  it('v1 TCP6: the address is reported in the form Node uses (lower case, compressed)', async () => {
    const r = await exchange(px.port, [Buffer.concat([v1('PROXY TCP6 2001:DB8:0:0:0:0:0:42 ::1 51234 443\r\n'), getRequest(up.port)])]);
    assert.equal(xffOf(r.text), '2001:db8::42');
  });

  it('v2 TCP4 and TCP6 with TLVs (ALPN, authority, unique id, a NOOP) skipped', async () => {
    const tlvs = Buffer.concat([tlv(0x01, 'h2'), tlv(0x02, 'app.example'), tlv(0x05, 'x'.repeat(64)), tlv(0x04, '')]);
    let r = await exchange(px.port, [Buffer.concat([v2({ tlvs }), getRequest(up.port)])]);
    assert.equal(xffOf(r.text), '203.0.113.7');
    r = await exchange(px.port, [Buffer.concat([v2({ fam: 0x21, src: IPV6_SRC, dst: new Array(16).fill(0), tlvs }), getRequest(up.port)])]);
    assert.equal(xffOf(r.text), '2001:db8::42');
  });

  it('v2 LOCAL (a balancer health check), unspecified and unix families, and v1 UNKNOWN keep the connection address', async () => {
    for (const header of [v2({ cmd: 0, tlvs: tlv(0x04, 'abc') }), v2({ fam: 0x00 }), v2({ fam: 0x31 }), v1('PROXY UNKNOWN ffff::1 ::1 1 2\r\n'), v1('PROXY UNKNOWN\r\n')]) {
      const r = await exchange(px.port, [Buffer.concat([header, getRequest(up.port)])]);
      assert.equal(xffOf(r.text), '127.0.0.1', header.toString('latin1'));
    }
  });

  it('a header split at every byte, then the request', async () => {
    for (const header of [v1('PROXY TCP4 198.51.100.22 127.0.0.1 51234 443\r\n'), v2({ tlvs: tlv(0x01, 'http/1.1') })]) {
      for (let k = 1; k < header.length; k++) {
        const r = await exchange(px.port, [header.subarray(0, k), Buffer.concat([header.subarray(k), getRequest(up.port)])], { gapMs: 5 });
        assert.match(r.text, /^HTTP\/1\.1 200 /, `split at ${k}`);
        assert.notEqual(xffOf(r.text), '127.0.0.1', `split at ${k}`);
      }
    }
  });

  it('a header written one byte per write', async () => {
    const header = v2({ fam: 0x21, src: IPV6_SRC, dst: new Array(16).fill(0) });
    const parts = [...header].map((b) => Buffer.from([b]));
    const r = await exchange(px.port, [...parts, getRequest(up.port)], { gapMs: 2 });
    assert.equal(xffOf(r.text), '2001:db8::42');
  });

  it('the header, the h2c preface and a request in one write', async () => {
    const socket = net.connect({ port: px.port, host: '127.0.0.1' });
    await new Promise((resolve) => socket.once('connect', resolve));
    const c = new H2RawClient(socket);
    const headers = [[':method', 'GET'], [':scheme', 'http'], [':authority', 'app.test'], [':path', '/h2'], ['x-cmux-port-internal', String(up.port)]];
    c.send(v1('PROXY TCP4 192.0.2.9 127.0.0.1 1000 80\r\n'), PREFACE, settingsFrame({}), headersFrame(1, headers, { endStream: true }));
    const out = await c.streamOutcome(1);
    c.close();
    assert.equal(out.status, 200);
    assert.equal(JSON.parse(out.body.toString()).headers['x-forwarded-for'], '192.0.2.9');
  });

  it('node:http2 client behind a v2 header', async () => {
    const session = http2.connect(`http://127.0.0.1:${px.port}`, {
      createConnection: () => {
        const s = net.connect({ port: px.port, host: '127.0.0.1' });
        s.write(v2());
        return s;
      },
    });
    session.on('error', () => {});
    const body = await new Promise((resolve, reject) => {
      const stream = session.request({ ':path': '/', 'x-cmux-port-internal': String(up.port) });
      const chunks = [];
      stream.on('data', (c) => chunks.push(c));
      stream.on('end', () => resolve(Buffer.concat(chunks).toString()));
      stream.on('error', reject);
    });
    session.close();
    assert.equal(JSON.parse(body).headers['x-forwarded-for'], '203.0.113.7');
  });
});

describe('PROXY protocol: rate limits count the header client, not the balancer', () => {
  let up;
  let px;
  before(async () => {
    up = await startUpstream();
    px = await startProxy({ acceptProxyProtocol: true, rateLimit: { rate: 1, burst: 2 } });
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
  });

  it('one client past its burst gets 429 while another behind the same balancer is served', async () => {
    const from = (ip) => v1(`PROXY TCP4 ${ip} 127.0.0.1 40000 443\r\n`);
    const statuses = [];
    for (let i = 0; i < 3; i++) {
      const r = await exchange(px.port, [Buffer.concat([from('198.51.100.1'), getRequest(up.port)])]);
      statuses.push(r.text.slice(9, 12));
    }
    assert.deepEqual(statuses, ['200', '200', '429']);
    const other = await exchange(px.port, [Buffer.concat([from('198.51.100.2'), getRequest(up.port)])]);
    assert.match(other.text, /^HTTP\/1\.1 200 /);
    assert.equal(px.proxy.getStats().rateLimited, 1);
  });

  it('IPv6 clients share a bucket per /64 (one host holds a whole /64); an IPv4-mapped address is its IPv4 one', async () => {
    const tcp6 = (ip) => v1(`PROXY TCP6 ${ip} ::1 40000 443\r\n`);
    const status = async (header) => (await exchange(px.port, [Buffer.concat([header, getRequest(up.port)])])).text.slice(9, 12);
    const before = px.proxy.getStats().rateLimited;
    // Three addresses of one /64, written in different forms: the third request is past the burst.
    const one = [await status(tcp6('2001:db8:0:7::1')), await status(tcp6('2001:0db8:0000:0007:ffff::2')), await status(tcp6('2001:DB8::7:0:0:0:3'))];
    assert.deepEqual(one, ['200', '200', '429']);
    // The next /64 is another client.
    assert.equal(await status(tcp6('2001:db8:0:8::1')), '200');
    // ::ffff:198.51.100.9 (a v2 header's IPv4-mapped address) and 198.51.100.9 are one client.
    const mapped = [await status(tcp6('::ffff:198.51.100.9')), await status(v1('PROXY TCP4 198.51.100.9 127.0.0.1 40000 443\r\n')), await status(tcp6('::ffff:198.51.100.9'))];
    assert.deepEqual(mapped, ['200', '200', '429']);
    assert.equal(px.proxy.getStats().rateLimited - before, 2);
  });
});

describe('PROXY protocol: bad headers close the connection, unanswered', () => {
  let up;
  let px;
  before(async () => {
    up = await startUpstream();
    px = await startProxy({ acceptProxyProtocol: true, requestHeadersTimeoutMs: 30000 });
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
  });

  const BAD = [
    ['no header at all', getRequest(1)],
    ['v1 lower-case', v1('proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n')],
    ['v1 port with a leading zero', v1('PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n')],
    ['v1 port 65536', v1('PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n')],
    ['v1 negative port', v1('PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n')],
    ['v1 port not a number', v1('PROXY TCP4 1.2.3.4 5.6.7.8 http 2\r\n')],
    ['v1 TCP4 with an IPv6 address', v1('PROXY TCP4 ::1 127.0.0.1 1 2\r\n')],
    ['v1 TCP6 with an IPv4 address', v1('PROXY TCP6 1.2.3.4 ::1 1 2\r\n')],
    ['v1 TCP6 with two ::', v1('PROXY TCP6 1::2::3 ::1 1 2\r\n')],
    ['v1 TCP6 with nine groups', v1('PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n')],
    ['v1 IPv4 part over 255', v1('PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n')],
    ['v1 missing field', v1('PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n')],
    ['v1 double space', v1('PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n')],
    ['v1 unknown protocol', v1('PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n')],
    ['v1 LF without CR', v1('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n')],
    ['v1 CR not followed by LF', v1('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX')],
    ['v1 NUL in the line', v1('PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n')],
    ['v1 of 108 bytes', v1(`PROXY UNKNOWN ${'x'.repeat(92)}\r\n`)],
    ['v1 over 107 bytes with no CRLF', v1(`PROXY UNKNOWN ${'x'.repeat(200)}`)],
    ['v2 bad signature', Buffer.concat([Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0b]), v2().subarray(12)])],
    ['v2 version 1', Buffer.concat([SIG, Buffer.from([0x11, 0x11, 0, 12]), Buffer.alloc(12)])],
    ['v2 command 2', Buffer.concat([SIG, Buffer.from([0x22, 0x11, 0, 12]), Buffer.alloc(12)])],
    ['v2 family 4', Buffer.concat([SIG, Buffer.from([0x21, 0x41, 0, 12]), Buffer.alloc(12)])],
    ['v2 transport 3', Buffer.concat([SIG, Buffer.from([0x21, 0x13, 0, 12]), Buffer.alloc(12)])],
    ['v2 length 65535', Buffer.concat([SIG, Buffer.from([0x21, 0x11, 0xff, 0xff]), Buffer.alloc(12)])],
    ['v2 length 1025', Buffer.concat([SIG, Buffer.from([0x21, 0x11, 0x04, 0x01]), Buffer.alloc(12)])],
    ['v2 TCP4 with a length shorter than its addresses', Buffer.concat([SIG, Buffer.from([0x21, 0x11, 0, 8]), Buffer.alloc(8)])],
    ['v2 TCP6 with a length shorter than its addresses', Buffer.concat([SIG, Buffer.from([0x21, 0x21, 0, 12]), Buffer.alloc(12)])],
  ];

  for (const [name, bytes] of BAD) {
    it(`${name}: closed at once, no answer, nothing forwarded`, async () => {
      const before = up.requests.length;
      const parseErrors = px.proxy.getStats().parseErrors;
      // The request after the header would reach the upstream if the header were taken.
      const r = await exchange(px.port, [Buffer.concat([bytes, getRequest(up.port)])], { timeoutMs: 10000 });
      assert.equal(r.closed, true, 'closed by the proxy');
      assert.ok(r.ms < 5000, `closed before the ${30000} ms head deadline (${r.ms} ms)`);
      assert.equal(r.text, '');
      assert.equal(up.requests.length, before);
      assert.equal(px.proxy.getStats().parseErrors, parseErrors + 1);
    });
  }

  it('a truncated header then FIN: closed, nothing counted as served', async () => {
    for (const bytes of [v1('PROXY TCP4 1.2.3.4 5.6'), v2().subarray(0, 20)]) {
      const r = await exchange(px.port, [bytes], { end: true });
      assert.equal(r.closed, true);
      assert.equal(r.text, '');
    }
    assert.ok(await waitFor(() => px.proxy.getStats().activeConnections === 0));
  });

  it('a complete header and no other byte, then FIN: closed, nothing counted as served', async () => {
    const before = up.requests.length;
    const r = await exchange(px.port, [v2()], { end: true });
    assert.equal(r.closed, true);
    assert.equal(r.text, '');
    assert.equal(up.requests.length, before);
    assert.ok(await waitFor(() => px.proxy.getStats().activeConnections === 0));
  });

  it("'v1' refuses a v2 header and 'v2' a v1 header", async () => {
    const only1 = await startProxy({ acceptProxyProtocol: 'v1' });
    const only2 = await startProxy({ acceptProxyProtocol: 'v2' });
    try {
      let r = await exchange(only1.port, [Buffer.concat([v2(), getRequest(up.port)])]);
      assert.equal(r.closed, true);
      assert.equal(r.text, '');
      r = await exchange(only2.port, [Buffer.concat([v1('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'), getRequest(up.port)])]);
      assert.equal(r.closed, true);
      assert.equal(r.text, '');
      r = await exchange(only1.port, [Buffer.concat([v1('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'), getRequest(up.port)])]);
      assert.equal(xffOf(r.text), '1.2.3.4');
      r = await exchange(only2.port, [Buffer.concat([v2(), getRequest(up.port)])]);
      assert.equal(xffOf(r.text), '203.0.113.7');
    } finally {
      await only1.proxy.stop();
      await only2.proxy.stop();
    }
  });

  it('the option is validated', () => {
    for (const bad of ['v3', 'any', 1, null]) {
      assert.throws(() => createProxyServer({ listenPort: 0, acceptProxyProtocol: bad }), /Invalid option acceptProxyProtocol/);
    }
  });
});

describe('PROXY protocol: a header trickled past the deadline', () => {
  let px;
  before(async () => {
    px = await startProxy({ acceptProxyProtocol: true, requestHeadersTimeoutMs: 1000 });
  });
  after(async () => {
    await px.proxy.stop();
  });

  it('a byte every 100 ms: closed at the fixed deadline, not kept alive by each byte', async () => {
    const header = v1(`PROXY TCP6 ${'1111:'.repeat(7)}1111 ::1 65535 65535\r\n`);
    const parts = [...header].map((b) => Buffer.from([b]));
    const timeouts = px.proxy.getStats().requestHeadersTimeouts;
    const r = await exchange(px.port, parts, { gapMs: 100, timeoutMs: 20000 });
    assert.equal(r.closed, true);
    assert.ok(r.sent < parts.length, `closed after ${r.sent} of ${parts.length} bytes (${r.ms} ms)`);
    assert.equal(px.proxy.getStats().requestHeadersTimeouts, timeouts + 1);
  });
});

describe('PROXY protocol: TLS behind the header', () => {
  let dir;
  let ca;
  let up;
  let px;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-pp-tls-'));
    execFileSync('bash', [GEN, '--out', dir, '--name', 'main', 'localhost'], { stdio: 'ignore' });
    ca = readFileSync(join(dir, 'ca.pem'));
    up = await startUpstream();
    px = await startProxy({ acceptProxyProtocol: true, tls: { certFile: join(dir, 'main.pem'), keyFile: join(dir, 'main-key.pem') } });
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function tlsOver(header, alpn) {
    const raw = net.connect({ port: px.port, host: '127.0.0.1' });
    raw.write(header);
    return tls.connect({ socket: raw, servername: 'localhost', ca, ALPNProtocols: [alpn] });
  }

  it('HTTP/1.1 over TLS', async () => {
    const body = await new Promise((resolve, reject) => {
      const req = http.request(
        { path: '/', headers: { 'x-cmux-port-internal': String(up.port) }, createConnection: () => tlsOver(v1('PROXY TCP4 198.51.100.5 127.0.0.1 4000 443\r\n'), 'http/1.1') },
        (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => resolve(Buffer.concat(chunks).toString()));
        },
      );
      req.on('error', reject);
      req.end();
    });
    const seen = JSON.parse(body);
    assert.equal(seen.headers['x-forwarded-for'], '198.51.100.5');
    assert.equal(seen.headers['x-forwarded-proto'], 'https');
  });

  it('HTTP/2 over TLS', async () => {
    const session = http2.connect(`https://localhost:${px.port}`, { createConnection: () => tlsOver(v2({ fam: 0x21, src: IPV6_SRC, dst: new Array(16).fill(0) }), 'h2') });
    session.on('error', () => {});
    const body = await new Promise((resolve, reject) => {
      const stream = session.request({ ':path': '/', 'x-cmux-port-internal': String(up.port) });
      const chunks = [];
      stream.on('data', (c) => chunks.push(c));
      stream.on('end', () => resolve(Buffer.concat(chunks).toString()));
      stream.on('error', reject);
    });
    session.close();
    assert.equal(JSON.parse(body).headers['x-forwarded-for'], '2001:db8::42');
  });
});

describe('PROXY protocol: stop() while a balancer connection has not sent its request yet', () => {
  let up;
  before(async () => {
    up = await startUpstream();
  });
  after(async () => {
    await up.close();
  });

  it('HTTP/1.1: the request that arrives during the drain is served, then the connection closes', async () => {
    const px = await startProxy({ acceptProxyProtocol: true, drainTimeoutMs: 10000 });
    const socket = net.connect({ port: px.port, host: '127.0.0.1' });
    await new Promise((resolve) => socket.once('connect', resolve));
    const chunks = [];
    socket.on('data', (c) => chunks.push(c));
    socket.on('error', () => {});
    const closed = new Promise((resolve) => socket.once('close', resolve));
    socket.write(v2());
    await waitFor(() => px.proxy.getStats().activeConnections === 1);
    await sleep(50);
    const stopped = px.proxy.stop();
    await sleep(50);
    socket.write(getRequest(up.port, '/late'));
    await closed;
    await stopped;
    const text = Buffer.concat(chunks).toString('latin1');
    assert.match(text, /^HTTP\/1\.1 200 /);
    assert.match(text, /\r\nconnection: close\r\n/i);
    assert.equal(xffOf(text), '203.0.113.7');
  });

  it('h2c: a session opened during the drain gets GOAWAY and closes without waiting for the drain deadline', async () => {
    const px = await startProxy({ acceptProxyProtocol: true, drainTimeoutMs: 20000 });
    const socket = net.connect({ port: px.port, host: '127.0.0.1' });
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write(v1('PROXY TCP4 192.0.2.1 127.0.0.1 1 2\r\n'));
    await waitFor(() => px.proxy.getStats().activeConnections === 1);
    await sleep(50);
    const started = Date.now();
    const stopped = px.proxy.stop();
    await sleep(50);
    const c = new H2RawClient(socket);
    c.send(PREFACE, settingsFrame({}));
    const goaway = await c.waitForGoaway();
    assert.notEqual(goaway, null);
    await stopped;
    c.close();
    assert.ok(Date.now() - started < 10000, 'stopped before the drain deadline');
  });

  it('without the PROXY protocol a connection that has sent nothing is closed at stop()', async () => {
    const px = await startProxy({ drainTimeoutMs: 10000 });
    const r = exchange(px.port, [Buffer.alloc(0)], { timeoutMs: 8000 });
    await waitFor(() => px.proxy.getStats().activeConnections === 1);
    await px.proxy.stop();
    assert.equal((await r).closed, true);
  });
});
