// Hostile HTTP/1.1 input, each case with the exact bytes of the attack: framing the proxy must
// own, per-message parser state, pipelining and chunking costs, upgrades with bodies and early
// data, header-size edges.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { rawRequest, startProxy, startRawServer, startUpstream, statusCodes, waitFor } from './helpers/servers.mjs';

describe('HTTP/1.1 framing and parser state under attack', () => {
  let proxy;
  let pport;
  let upstream;

  before(async () => {
    ({ proxy, port: pport } = await startProxy());
    upstream = await startUpstream();
  });

  after(async () => {
    await proxy?.stop();
    await upstream?.close();
  });

  it('Connection: Content-Length cannot strip the framing: the body stays a body, never a second request', async () => {
    const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Smuggled: 1\r\nContent-Length: 10\r\n\r\n';
    const body = smuggled.padEnd(84, 'A');
    assert.equal(body.length, 84);
    const attack =
      `POST /p HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nConnection: Content-Length\r\n` +
      `Content-Length: 84\r\n\r\n${body}`;
    upstream.requests.length = 0;
    const text = await rawRequest(pport, attack, { until: (t) => t.includes('"bodyLength"') && t.endsWith('}') });
    assert.match(text, /^HTTP\/1\.1 200 /);
    const seen = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
    assert.equal(seen.url, '/p');
    assert.equal(seen.headers['content-length'], '84');
    assert.equal(seen.bodyLength, 84);
    assert.equal(seen.body, body);
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(upstream.requests.map((r) => r.url), ['/p'], 'the upstream saw exactly the one request the client sent');
  });

  it('Connection: Host cannot strip Host', async () => {
    const attack = `GET /h HTTP/1.1\r\nHost: victim.example\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nConnection: host, close\r\n\r\n`;
    const text = await rawRequest(pport, attack);
    const seen = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
    assert.equal(seen.headers.host, 'victim.example');
  });
});

describe('per-message parser state', () => {
  let proxy;
  let pport;
  let upstream;

  before(async () => {
    ({ proxy, port: pport } = await startProxy());
    upstream = await startUpstream();
  });

  after(async () => {
    await proxy?.stop();
    await upstream?.close();
  });

  it('a chunked request with a trailer does not glue its URL onto the next request on the connection', async () => {
    const route = `X-Cmux-Port-Internal: ${upstream.port}\r\n`;
    const attack =
      `POST /api/delete-account?confirm=yes&junk= HTTP/1.1\r\nHost: x\r\n${route}Transfer-Encoding: chunked\r\n\r\n` +
      '5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n' +
      `GET /account HTTP/1.1\r\nHost: x\r\n${route}Cookie: victim=1\r\nConnection: close\r\n\r\n`;
    upstream.requests.length = 0;
    await rawRequest(pport, attack);
    assert.deepEqual(
      upstream.requests.map((r) => r.url),
      ['/api/delete-account?confirm=yes&junk=', '/account'],
    );
    assert.equal(upstream.requests[0].trailers['x-t'], '1', 'the trailer still reaches the upstream');
  });

  it('the same after a head long enough to be delivered in pieces (over 32 fields)', async () => {
    const route = `X-Cmux-Port-Internal: ${upstream.port}\r\n`;
    let many = '';
    for (let i = 0; i < 40; i++) many += `X-F${i}: ${i}\r\n`;
    const attack =
      `POST /first HTTP/1.1\r\nHost: x\r\n${route}${many}Transfer-Encoding: chunked\r\n\r\n` +
      '5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n' +
      `GET /second HTTP/1.1\r\nHost: x\r\n${route}${many}Connection: close\r\n\r\n`;
    upstream.requests.length = 0;
    await rawRequest(pport, attack);
    assert.deepEqual(upstream.requests.map((r) => r.url), ['/first', '/second']);
  });
});

describe('request head size limits', () => {
  const MAX = 4096;
  let proxy;
  let pport;
  let upstream;

  before(async () => {
    ({ proxy, port: pport } = await startProxy({ maxHeaderSize: MAX }));
    upstream = await startUpstream();
  });

  after(async () => {
    await proxy?.stop();
    await upstream?.close();
  });

  /** A request head of exactly `size` bytes, padded in one header value. */
  function headOf(size) {
    const start = `GET / HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nConnection: close\r\nX-Pad: `;
    const head = `${start}${'a'.repeat(size - start.length - 4)}\r\n\r\n`;
    assert.equal(head.length, size);
    return head;
  }

  it('a head of exactly maxHeaderSize bytes is forwarded; one byte more gets 431 and a close', async () => {
    const exact = await rawRequest(pport, headOf(MAX));
    assert.match(exact, /^HTTP\/1\.1 200 /);
    const over = await rawRequest(pport, headOf(MAX + 1));
    assert.match(over, /^HTTP\/1\.1 431 /);
    assert.match(over, /\r\nconnection: close\r\n/i);
  });

  it('a short request line with a 1 MB header field gets 431, also when the field arrives in later reads', async () => {
    const start = 'GET / HTTP/1.1\r\nHost: x\r\nX-Big: ';
    const oneWrite = await rawRequest(pport, `${start}${'a'.repeat(1 << 20)}\r\n\r\n`);
    assert.match(oneWrite, /^HTTP\/1\.1 431 /);
    // The request line ends in the first read; the oversized field only in a later one.
    const split = await rawRequest(pport, [start, `${'a'.repeat(1 << 20)}\r\n\r\n`]);
    assert.match(split, /^HTTP\/1\.1 431 /);
  });

  it('a 100 KB request line keeps its 414, in one read or in pieces', async () => {
    const line = `GET /${'a'.repeat(100_000)} HTTP/1.1\r\nHost: x\r\n\r\n`;
    assert.match(await rawRequest(pport, line), /^HTTP\/1\.1 414 /);
    assert.match(await rawRequest(pport, [line.slice(0, 3000), line.slice(3000)]), /^HTTP\/1\.1 414 /);
  });
});

describe('pipelining', () => {
  let proxy;
  let pport;
  let upstream;

  before(async () => {
    ({ proxy, port: pport } = await startProxy());
    upstream = await startUpstream();
  });

  after(async () => {
    await proxy?.stop();
    await upstream?.close();
  });

  it('1,524 pipelined GETs in one write: at most a small bound is queued, those are answered in order, then the connection closes', async () => {
    const one = (i) => `GET /p${i} HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\n\r\n`;
    let data = '';
    for (let i = 0; i < 1524; i++) data += one(i);
    upstream.requests.length = 0;
    const text = await rawRequest(pport, data, { timeoutMs: 5000 });
    const answered = (text.match(/HTTP\/1\.1 200 /g) ?? []).length;
    assert.ok(answered >= 2 && answered <= 40, `answered ${answered}`);
    assert.ok(upstream.requests.length <= 40, `the upstream got ${upstream.requests.length}`);
    assert.deepEqual(upstream.requests.map((r) => r.url), Array.from({ length: upstream.requests.length }, (_, i) => `/p${i}`));
    // Each answer is the one for its request, and the last one says the connection closes.
    const urls = [...text.matchAll(/"url":"(\/p\d+)"/g)].map((m) => m[1]);
    assert.deepEqual(urls, Array.from({ length: answered }, (_, i) => `/p${i}`));
    assert.match(text.slice(text.lastIndexOf('HTTP/1.1 200')), /\r\nconnection: close\r\n/i);
  });

  it('valid requests pipelined before a bad one are answered first; then the 400 and a close', async () => {
    const good = (p) => `GET ${p} HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\n\r\n`;
    const attack = `${good('/one')}${good('/two')}GET /bad HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n`;
    upstream.requests.length = 0;
    const text = await rawRequest(pport, attack, { timeoutMs: 3000 });
    const statuses = statusCodes(text);
    assert.deepEqual(statuses, ['200', '200', '400'], text.slice(0, 400));
    assert.deepEqual(upstream.requests.map((r) => r.url), ['/one', '/two']);
  });

  it('a WebSocket upgrade pipelined behind other requests: every request read before it is answered, then the connection closes', async () => {
    const one = (method, path, extra = '') => `${method} ${path} HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\n${extra}`;
    const attack =
      one('GET', '/first', '\r\n') +
      one('PATCH', '/second', 'Content-Length: 5\r\n\r\nhello') +
      one('POST', '/third', 'Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n') +
      one('GET', '/ws', 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n') +
      'early frame bytes';
    upstream.requests.length = 0;
    const text = await rawRequest(pport, attack, { timeoutMs: 5000 });
    const urls = [...text.matchAll(/"url":"(\/[a-z]+)"/g)].map((m) => m[1]);
    assert.deepEqual(urls, ['/first', '/second', '/third'], text);
    assert.deepEqual(upstream.requests.map((r) => r.url), ['/first', '/second', '/third']);
    assert.match(text.slice(text.lastIndexOf('HTTP/1.1 200')), /\r\nconnection: close\r\n/i);
    assert.doesNotMatch(text, /HTTP\/1\.1 101/);
  });

  it('a close-delimited answer (HTTP/1.0, no length) is never followed by the 400 for bad input read behind it', async () => {
    const noLength = await startUpstream((req, res) => {
      res.write('the whole');
      res.end(' body');
    });
    try {
      const attack =
        `GET /old HTTP/1.0\r\nHost: x\r\nX-Cmux-Port-Internal: ${noLength.port}\r\nConnection: keep-alive\r\n\r\n` +
        'GET /bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n';
      const text = await rawRequest(pport, attack, { timeoutMs: 3000 });
      assert.match(text, /^HTTP\/1\.1 200 /);
      assert.ok(text.endsWith('\r\n\r\nthe whole body'), JSON.stringify(text));
    } finally {
      await noLength.close();
    }
  });

  it('after a refusal on a connection paused for pipelining, the client close is seen at once (no linger)', async () => {
    const slow = await startUpstream((req, res) => setTimeout(() => res.end('ok'), 200));
    try {
      const good = `GET /s HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${slow.port}\r\n\r\n`;
      const before = proxy.getStats().activeConnections;
      const socket = net.connect(pport, '127.0.0.1');
      socket.on('error', () => {});
      socket.write(`${good}${good}GET /bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n`);
      let text = '';
      socket.on('data', (c) => {
        text += c.toString('latin1');
      });
      await waitFor(() => text.includes('HTTP/1.1 400'), { timeoutMs: 3000 });
      socket.destroy();
      assert.ok(await waitFor(() => proxy.getStats().activeConnections <= before, { timeoutMs: 1500 }), 'the connection was released at once');
    } finally {
      await slow.close();
    }
  });
});

describe('upgrade requests with a body', () => {
  let proxy;
  let pport;
  let upstream;

  before(async () => {
    ({ proxy, port: pport } = await startProxy());
    upstream = await startUpstream();
  });

  after(async () => {
    await proxy?.stop();
    await upstream?.close();
  });

  const h2cHead = (port, framing) =>
    `POST /up HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${port}\r\nConnection: Upgrade, HTTP2-Settings\r\n` +
    `Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n${framing}\r\n`;

  it('Upgrade: h2c POST with a 200 KB Content-Length body is forwarded whole as an ordinary request, the connection\'s last', async () => {
    const body = 'b'.repeat(200_000);
    upstream.requests.length = 0;
    const data = `${h2cHead(upstream.port, `Content-Length: ${body.length}\r\n`)}${body}` +
      `GET /next HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nConnection: close\r\n\r\n`;
    const text = await rawRequest(pport, data, { timeoutMs: 5000 });
    const bodies = [...text.matchAll(/"bodyLength":(\d+)/g)].map((m) => Number(m[1]));
    assert.deepEqual(bodies, [200_000], text.slice(0, 300));
    assert.match(text, /\r\nconnection: close\r\n/i);
    assert.deepEqual(upstream.requests.map((r) => r.url), ['/up']);
    assert.equal(upstream.requests[0].headers.upgrade, undefined, 'Upgrade is not forwarded');
    assert.equal(upstream.requests[0].headers['http2-settings'], undefined);
  });

  it('bad bytes after an Upgrade: h2c request are never left unanswered: its answer says close and the connection closes', async () => {
    upstream.requests.length = 0;
    const attack =
      `GET /a HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n` +
      'GET /b HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx';
    const t0 = Date.now();
    const text = await rawRequest(pport, attack, { timeoutMs: 4000 });
    assert.ok(Date.now() - t0 < 2000, 'closed at once, not at the head timeout');
    assert.match(text, /^HTTP\/1\.1 200 [^]*\r\nconnection: close\r\n/i);
    assert.deepEqual(upstream.requests.map((r) => r.url), ['/a']);
  });

  it('Upgrade: h2c POST with a chunked 200 KB body reaches the upstream whole, never cut short', async () => {
    const piece = 'c'.repeat(10_000);
    let chunked = '';
    for (let i = 0; i < 20; i++) chunked += `${piece.length.toString(16)}\r\n${piece}\r\n`;
    chunked += '0\r\n\r\n';
    upstream.requests.length = 0;
    const text = await rawRequest(pport, `${h2cHead(upstream.port, 'Transfer-Encoding: chunked\r\n')}${chunked}`, {
      timeoutMs: 5000,
      until: (t) => t.includes('"bodyLength"'),
    });
    assert.match(text, /^HTTP\/1\.1 200 /);
    assert.match(text, /"bodyLength":200000/);
  });

  it('a WebSocket upgrade request that carries a body gets 400 and never reaches the upstream', async () => {
    upstream.requests.length = 0;
    const data =
      `GET /ws HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
      'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 5\r\n\r\nhello';
    const text = await rawRequest(pport, data);
    assert.match(text, /^HTTP\/1\.1 400 /);
    assert.equal(upstream.requests.length, 0);
  });
});

describe('clients that half-close', () => {
  let proxy;
  let pport;
  let upstream;
  let raw;
  let seen;

  before(async () => {
    ({ proxy, port: pport } = await startProxy());
    upstream = await startUpstream();
    // Answers a WebSocket-looking head with 101, then records what follows and answers the FIN.
    raw = await startRawServer((s) => {
      const record = { data: '', fin: false };
      seen.push(record);
      s.on('data', (c) => {
        const before = record.data;
        record.data += c.toString('latin1');
        if (!before.includes('\r\n\r\n') && record.data.includes('\r\n\r\n') && record.data.startsWith('GET ')) {
          s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
        }
      });
      s.on('end', () => {
        record.fin = true;
        s.end('BYE');
      });
    });
  });

  after(async () => {
    await proxy?.stop();
    await upstream?.close();
    await raw?.close();
  });

  async function halfClose(data) {
    const socket = net.connect(pport, '127.0.0.1');
    socket.on('error', () => {});
    let text = '';
    socket.on('data', (c) => {
      text += c.toString('latin1');
    });
    await once(socket, 'connect');
    socket.end(data);
    await Promise.race([once(socket, 'close'), new Promise((r) => setTimeout(r, 3000))]);
    socket.destroy();
    return text;
  }

  it('CONNECT head + early data + FIN in one go: the early data reaches the upstream, then the FIN, and its answer comes back', async () => {
    seen = [];
    const text = await halfClose(`CONNECT 127.0.0.1:${raw.port} HTTP/1.1\r\nHost: 127.0.0.1:${raw.port}\r\n\r\nPOST / HTTP/1.1\r\nHost: early\r\n\r\n`);
    assert.equal(seen.length, 1);
    assert.equal(seen[0].data, 'POST / HTTP/1.1\r\nHost: early\r\n\r\n');
    assert.equal(seen[0].fin, true);
    assert.equal(text, 'HTTP/1.1 200 Connection Established\r\n\r\nBYE');
  });

  it('WebSocket upgrade head + early frame bytes + FIN: the bytes follow the head upstream, then the FIN', async () => {
    seen = [];
    const head =
      `GET /ws HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${raw.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
      'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n';
    const text = await halfClose(`${head}EARLY-FRAME`);
    assert.equal(seen.length, 1);
    assert.ok(seen[0].data.endsWith('\r\n\r\nEARLY-FRAME'), JSON.stringify(seen[0].data));
    assert.equal(seen[0].fin, true);
    assert.match(text, /^HTTP\/1\.1 101 [^]*\r\n\r\nBYE$/);
  });

  it('a plain request then FIN still gets its answer', async () => {
    const text = await halfClose(`GET /half HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\n\r\n`);
    assert.match(text, /^HTTP\/1\.1 200 [^]*"url":"\/half"/);
  });

  it('a complete request, then half a head, then FIN: the complete one is still answered, the half one never forwarded', async () => {
    const slow = await startUpstream((req, res) => setTimeout(() => res.end(`done ${req.url}`), 150));
    try {
      const text = await halfClose(`GET /slow HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${slow.port}\r\n\r\nGET /b HT`);
      assert.match(text, /^HTTP\/1\.1 200 [^]*done \/slow$/);
      assert.deepEqual(slow.requests.map((r) => r.url), ['/slow']);
    } finally {
      await slow.close();
    }
  });

  it('a body cut short by FIN never reaches the upstream as a whole request', async () => {
    upstream.requests.length = 0;
    const text = await halfClose(`POST /cut HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${upstream.port}\r\nContent-Length: 100\r\n\r\nonly-some`);
    assert.doesNotMatch(text, /HTTP\/1\.1 200/);
    await new Promise((r) => setTimeout(r, 100));
    for (const req of upstream.requests) assert.equal(req.complete, false, 'the upstream never saw it complete');
  });
});

describe('bodies of 1-byte chunks', () => {
  it('go upstream in one write per client read, not three writes per chunk', async () => {
    let reads = 0;
    let body = '';
    let resolveDone;
    const done = new Promise((r) => (resolveDone = r));
    const raw = await startRawServer((s) => {
      let head = true;
      let seen = '';
      s.on('data', (c) => {
        reads++;
        seen += c.toString('latin1');
        if (head && seen.includes('\r\n\r\n')) head = false;
        if (!head && seen.endsWith('0\r\n\r\n')) {
          body = seen.slice(seen.indexOf('\r\n\r\n') + 4);
          s.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
          resolveDone();
        }
      });
    });
    const { proxy, port } = await startProxy();
    // Count the proxy's write() calls toward the upstream (Node and the kernel merge the
    // segments, so neither the syscalls nor the upstream's reads would tell).
    let writes = 0;
    const write = net.Socket.prototype.write;
    net.Socket.prototype.write = function (...args) {
      if (this.remotePort === raw.port) writes++;
      return write.apply(this, args);
    };
    try {
      const chunks = 16_384;
      const socket = net.connect(port, '127.0.0.1');
      socket.on('error', () => {});
      await once(socket, 'connect');
      // Head and all chunks in one write: the proxy reads them in a handful of reads.
      socket.write(
        `POST /tiny HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${raw.port}\r\nTransfer-Encoding: chunked\r\n\r\n` +
          `${'1\r\nx\r\n'.repeat(chunks)}0\r\n\r\n`,
      );
      await done;
      socket.destroy();
      // Re-framed by the proxy, the body is whole: every byte arrived, in few upstream reads.
      let decoded = '';
      for (let rest = body; ; ) {
        const eol = rest.indexOf('\r\n');
        const size = parseInt(rest.slice(0, eol), 16);
        if (size === 0) break;
        decoded += rest.slice(eol + 2, eol + 2 + size);
        rest = rest.slice(eol + 4 + size);
      }
      assert.equal(decoded, 'x'.repeat(chunks));
      assert.ok(reads > 0);
      assert.ok(writes < 64, `the proxy made ${writes} writes upstream for ${chunks} one-byte chunks`);
    } finally {
      delete net.Socket.prototype.write;
      await proxy.stop();
      await raw.close();
    }
  });
});

describe('response framing fields the proxy must not pass on', () => {
  it('Content-Length on a 204 (or a 1xx) from the upstream never reaches the client', async () => {
    const raw = await startRawServer((s) => {
      s.once('data', () => s.write('HTTP/1.1 103 Early Hints\r\nContent-Length: 9\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n'));
    });
    const { proxy, port } = await startProxy();
    try {
      const text = await rawRequest(port, `GET /x HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${raw.port}\r\nConnection: close\r\n\r\n`, {
        until: (t) => t.includes('204 No Content') && t.endsWith('\r\n\r\n'),
      });
      assert.match(text, /^HTTP\/1\.1 103 [^]*HTTP\/1\.1 204 /);
      assert.doesNotMatch(text, /content-length/i);
    } finally {
      await proxy.stop();
      await raw.close();
    }
  });
});
