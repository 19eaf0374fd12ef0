// HTTP/1.1 and 1.0 with keep-alive and pipelining, and the forwarding rules:
// HTTP/1.1 client -> proxy -> HTTP/1.1 upstream over real sockets, routed with
// `X-Cmux-Port-Internal: <upstream port>` unless a test says otherwise.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { rawRequest, request, startProxy, startUpstream } from './helpers/servers.mjs';

const VIA_RE = /^1\.1 cmux-proxy-[0-9a-f]+$/;

function sha256(buf) {
  return createHash('sha256').update(buf).digest('hex');
}

/** Like `request` from the helpers, but the body comes back as a Buffer. */
function requestBuffer(url, { method = 'GET', headers = {}, body, agent = false } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode, headers: res.headers, rawHeaders: res.rawHeaders, trailers: res.trailers, body: Buffer.concat(chunks), complete: res.complete, socket: req.socket, reusedSocket: req.reusedSocket }),
      );
      res.on('error', reject);
    });
    req.setTimeout(10000, () => req.destroy(new Error('client timeout')));
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * Splits a raw byte stream (latin1 string) into HTTP/1.x responses. `methods[i]` is the method of
 * the i-th request, so HEAD answers are read without a body. 1xx answers are returned too.
 * Each response: { status, version, headers: [[lowerName, value]...], get(name), body, trailers, framing }.
 */
function parseResponses(text, methods = []) {
  const out = [];
  let pos = 0;
  let reqIndex = 0;
  while (pos < text.length) {
    const headEnd = text.indexOf('\r\n\r\n', pos);
    if (headEnd === -1) throw new Error(`incomplete response head at ${pos}: ${JSON.stringify(text.slice(pos, pos + 200))}`);
    const lines = text.slice(pos, headEnd).split('\r\n');
    const m = /^HTTP\/(1\.[01]) (\d{3})(?: (.*))?$/.exec(lines[0]);
    if (!m) throw new Error(`bad status line ${JSON.stringify(lines[0])}`);
    const status = Number(m[2]);
    const headers = lines.slice(1).map((l) => {
      const c = l.indexOf(':');
      return [l.slice(0, c).trim().toLowerCase(), l.slice(c + 1).trim()];
    });
    const get = (name) => {
      const found = headers.filter(([n]) => n === name).map(([, v]) => v);
      return found.length === 0 ? undefined : found.join(', ');
    };
    pos = headEnd + 4;
    const res = { status, version: m[1], reason: m[3], headers, get, body: '', trailers: [], framing: 'none' };
    out.push(res);
    if (status < 200) continue;
    const method = methods[reqIndex++];
    if (method === 'HEAD' || status === 204 || status === 304) continue;
    const te = get('transfer-encoding');
    const cl = get('content-length');
    if (te !== undefined && /chunked/i.test(te)) {
      res.framing = 'chunked';
      let body = '';
      for (;;) {
        const lineEnd = text.indexOf('\r\n', pos);
        if (lineEnd === -1) throw new Error('incomplete chunk size line');
        const size = Number.parseInt(text.slice(pos, lineEnd), 16);
        if (!Number.isFinite(size)) throw new Error(`bad chunk size ${JSON.stringify(text.slice(pos, lineEnd))}`);
        pos = lineEnd + 2;
        if (size === 0) {
          // trailers until an empty line
          for (;;) {
            const e = text.indexOf('\r\n', pos);
            if (e === -1) throw new Error('incomplete trailers');
            const line = text.slice(pos, e);
            pos = e + 2;
            if (line === '') break;
            const c = line.indexOf(':');
            res.trailers.push([line.slice(0, c).trim().toLowerCase(), line.slice(c + 1).trim()]);
          }
          break;
        }
        if (pos + size + 2 > text.length) throw new Error('incomplete chunk');
        body += text.slice(pos, pos + size);
        pos += size;
        if (text.slice(pos, pos + 2) !== '\r\n') throw new Error('chunk not followed by CRLF');
        pos += 2;
      }
      res.body = body;
    } else if (cl !== undefined) {
      res.framing = 'length';
      const n = Number(cl);
      if (pos + n > text.length) throw new Error(`incomplete body: want ${n}, have ${text.length - pos}`);
      res.body = text.slice(pos, pos + n);
      pos += n;
    } else {
      res.framing = 'close';
      res.body = text.slice(pos);
      pos = text.length;
    }
  }
  return out;
}

/** rawRequest plus whether the proxy closed the connection (rather than the timeout firing). */
async function rawExchange(port, data, timeoutMs = 2000) {
  const t0 = Date.now();
  const text = await rawRequest(port, data, { timeoutMs });
  return { text, closedByPeer: Date.now() - t0 < timeoutMs - 50 };
}

/** One raw client connection for sequential request/response turns on the same socket. */
class RawConn {
  constructor(port) {
    this.socket = net.connect({ port, host: '127.0.0.1' });
    this.buf = '';
    this.closed = false;
    this.waiter = null;
    this.socket.on('data', (c) => {
      this.buf += c.toString('latin1');
      this.waiter?.();
    });
    this.socket.on('close', () => {
      this.closed = true;
      this.waiter?.();
    });
    this.socket.on('error', () => {});
  }

  /** Sends `data` and resolves with the responses to `methods` (one per request in `data`). */
  exchange(data, methods, timeoutMs = 3000) {
    this.buf = '';
    this.socket.write(data);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`no complete response within ${timeoutMs} ms; got ${JSON.stringify(this.buf)} (closed: ${this.closed})`));
      }, timeoutMs);
      this.waiter = () => {
        let responses;
        try {
          responses = parseResponses(this.buf, methods);
        } catch {
          if (this.closed) {
            clearTimeout(timer);
            this.waiter = null;
            reject(new Error(`connection closed mid-response; got ${JSON.stringify(this.buf)}`));
          }
          return;
        }
        const finals = responses.filter((r) => r.status >= 200);
        if (finals.length < methods.length && !this.closed) return;
        clearTimeout(timer);
        this.waiter = null;
        resolve(finals);
      };
      this.waiter();
    });
  }

  /** Resolves true once the peer has closed, false after `timeoutMs`. */
  async waitClosed(timeoutMs = 2000) {
    const end = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    return this.closed;
  }

  destroy() {
    this.socket.destroy();
  }
}

/** Upstream for the framing tests: answers by path. */
function specialHandler(big) {
  return (req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const url = req.url;
      if (url === '/echo-body') {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length, 'x-body-sha256': sha256(body) });
        res.end(body);
      } else if (url === '/chunked') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('hello ');
        setTimeout(() => {
          res.write('world');
          res.end();
        }, 20);
      } else if (url === '/trailers') {
        res.writeHead(200, { 'content-type': 'text/plain', trailer: 'X-Checksum' });
        res.write('abc');
        res.addTrailers({ 'X-Checksum': 'xyz123' });
        res.end();
      } else if (url === '/head') {
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '42' });
        // a HEAD answer from node carries no body even if we wrote one
        if (req.method === 'HEAD') res.end();
        else res.end('x'.repeat(42));
      } else if (url === '/204') {
        res.writeHead(204, { 'x-kind': 'no-content' });
        res.end();
      } else if (url === '/304') {
        res.writeHead(304, { etag: '"v1"' });
        res.end();
      } else if (url === '/hop-response') {
        res.writeHead(200, [
          ['Content-Type', 'text/plain'],
          ['Connection', 'X-Foo'],
          ['X-Foo', 'secret'],
          ['Keep-Alive', 'timeout=5'],
          ['Proxy-Authenticate', 'Basic realm="upstream"'],
          ['X-Kept', 'yes'],
          ['Content-Length', '2'],
        ].flat());
        res.end('ok');
      } else if (url === '/big') {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': big.length });
        let off = 0;
        const pump = () => {
          while (off < big.length) {
            const piece = big.subarray(off, off + 65536);
            off += piece.length;
            if (!res.write(piece)) return res.once('drain', pump);
          }
          res.end();
        };
        pump();
      } else if (url.startsWith('/slow')) {
        setTimeout(() => {
          const payload = `slow ${url}`;
          res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(payload) });
          res.end(payload);
        }, 150);
      } else {
        const payload = `ok ${req.method} ${url}`;
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(payload) });
        res.end(payload);
      }
    });
  };
}

describe('HTTP/1.1 forwarding', () => {
  let proxy;
  let base;
  let pport;
  let echo; // JSON echo upstream
  let special; // path-dispatching upstream
  const big = randomBytes(1024 * 1024);

  before(async () => {
    ({ proxy, url: base, port: pport } = await startProxy());
    echo = await startUpstream();
    special = await startUpstream(specialHandler(big));
  });

  after(async () => {
    await proxy?.stop();
    await echo?.close();
    await special?.close();
  });

  const toEcho = (extra = {}) => ({ 'X-Cmux-Port-Internal': String(echo.port), ...extra });
  const toSpecial = (extra = {}) => ({ 'X-Cmux-Port-Internal': String(special.port), ...extra });

  it('GET reaches the upstream with method, path and query intact', async () => {
    const res = await request(`${base}/some/path?a=1&b=%20x`, { headers: toEcho() });
    assert.equal(res.status, 200);
    const seen = JSON.parse(res.body);
    assert.equal(seen.method, 'GET');
    assert.equal(seen.url, '/some/path?a=1&b=%20x');
    assert.equal(seen.httpVersion, '1.1');
    assert.equal(seen.bodyLength, 0);
  });

  it('POST text body reaches the upstream byte-exact (content-length kept)', async () => {
    const body = 'héllo wörld ✓ '.repeat(1000);
    const res = await request(`${base}/post`, {
      method: 'POST',
      headers: toEcho({ 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) }),
      body,
    });
    assert.equal(res.status, 200);
    const seen = JSON.parse(res.body);
    assert.equal(seen.method, 'POST');
    assert.equal(seen.body, body);
    assert.equal(seen.bodyLength, Buffer.byteLength(body));
    assert.equal(seen.headers['content-length'], String(Buffer.byteLength(body)));
    assert.equal(seen.headers['transfer-encoding'], undefined);
  });

  it('POST binary body (all byte values, 300 KiB) goes up and comes back byte-exact', async () => {
    const body = Buffer.concat([Buffer.from(Array.from({ length: 256 }, (_, i) => i)), randomBytes(300 * 1024)]);
    const res = await requestBuffer(`${base}/echo-body`, {
      method: 'POST',
      headers: toSpecial({ 'content-type': 'application/octet-stream', 'content-length': body.length }),
      body,
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-body-sha256'], sha256(body), 'upstream got the exact bytes');
    assert.equal(res.body.length, body.length);
    assert.ok(res.body.equals(body), 'response body differs from the request body');
  });

  it('removes hop-by-hop and routing headers toward the upstream; X-Cmux-Proxied passes', async () => {
    // X-Cmux-Workspace-Internal with isolation on routes to workspace-1 -> 127.18.0.1.
    const ws = await startUpstream(undefined, { host: '127.18.0.1' });
    try {
      const head =
        'GET /hop HTTP/1.1\r\n' +
        'Host: hop.example\r\n' +
        `X-Cmux-Port-Internal: ${ws.port}\r\n` +
        'X-Cmux-Workspace-Internal: workspace-1\r\n' +
        'X-Cmux-Host-Override: override.example\r\n' +
        'X-Cmux-Proxied: edge-1\r\n' +
        'Connection: X-Hop-A, x-hop-b, close\r\n' +
        'X-Hop-A: a\r\n' +
        'X-Hop-B: b\r\n' +
        'Keep-Alive: timeout=5\r\n' +
        'Proxy-Connection: keep-alive\r\n' +
        'Proxy-Authorization: Basic Zm9vOmJhcg==\r\n' +
        'TE: trailers\r\n' +
        'Trailer: X-Whatever\r\n' +
        'Upgrade: h2c\r\n' +
        'X-Normal: stays\r\n' +
        '\r\n';
      const { text, closedByPeer } = await rawExchange(pport, head);
      const [res] = parseResponses(text, ['GET']);
      assert.equal(res.status, 200, text);
      assert.equal(closedByPeer, true, 'Connection: close from the client closes the connection');
      assert.equal(ws.requests.length, 1);
      const seen = JSON.parse(res.body);
      const names = [];
      for (let i = 0; i < seen.rawHeaders.length; i += 2) names.push(seen.rawHeaders[i].toLowerCase());
      for (const banned of [
        'connection',
        'x-hop-a',
        'x-hop-b',
        'keep-alive',
        'proxy-connection',
        'proxy-authorization',
        'te',
        'trailer',
        'upgrade',
        'transfer-encoding',
        'x-cmux-port-internal',
        'x-cmux-workspace-internal',
        'x-cmux-host-override',
      ]) {
        assert.ok(!names.includes(banned), `upstream got hop-by-hop header ${banned}: ${JSON.stringify(seen.rawHeaders)}`);
      }
      assert.equal(seen.headers['x-cmux-proxied'], 'edge-1');
      assert.equal(seen.headers['x-normal'], 'stays');
      assert.equal(seen.headers.host, 'override.example');
      assert.equal(seen.localAddress, '127.18.0.1');
      assert.equal(names.filter((n) => n === 'host').length, 1);
    } finally {
      await ws.close();
    }
  });

  it('removes hop-by-hop headers toward the client (Connection-named, Keep-Alive, Proxy-Authenticate)', async () => {
    const res = await request(`${base}/hop-response`, { headers: toSpecial() });
    assert.equal(res.status, 200);
    assert.equal(res.body, 'ok');
    assert.equal(res.headers['x-kept'], 'yes');
    assert.equal(res.headers['x-foo'], undefined);
    assert.equal(res.headers['keep-alive'], undefined);
    assert.equal(res.headers['proxy-authenticate'], undefined);
    const connection = res.headers.connection;
    assert.ok(connection === undefined || connection === 'close' || connection === 'keep-alive', `connection: ${connection}`);
  });

  it('X-Forwarded-For appended, X-Forwarded-Proto http, X-Forwarded-Host set, Via appended', async () => {
    const res = await request(`${base}/fwd`, {
      headers: toEcho({ host: 'app.example:8080', 'x-forwarded-for': '203.0.113.7, 198.51.100.2', via: '1.1 edge-router' }),
    });
    assert.equal(res.status, 200);
    const seen = JSON.parse(res.body);
    assert.equal(seen.headers['x-forwarded-for'], '203.0.113.7, 198.51.100.2, 127.0.0.1');
    assert.equal(seen.headers['x-forwarded-proto'], 'http');
    assert.equal(seen.headers['x-forwarded-host'], 'app.example:8080');
    const via = seen.headers.via.split(',').map((s) => s.trim());
    assert.equal(via.length, 2, seen.headers.via);
    assert.equal(via[0], '1.1 edge-router');
    assert.match(via[1], VIA_RE);
  });

  it('without client forwarding headers: X-Forwarded-For is the client address and Via is one entry', async () => {
    const res = await request(`${base}/fwd2`, { headers: toEcho({ host: 'plain.example' }) });
    const seen = JSON.parse(res.body);
    assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1');
    assert.equal(seen.headers['x-forwarded-proto'], 'http');
    assert.equal(seen.headers['x-forwarded-host'], 'plain.example');
    assert.match(seen.headers.via, VIA_RE);
  });

  it('keeps Host by default', async () => {
    const res = await request(`${base}/h`, { headers: toEcho({ host: 'my-app.example:1234' }) });
    const seen = JSON.parse(res.body);
    assert.equal(seen.headers.host, 'my-app.example:1234');
  });

  it('X-Cmux-Host-Override replaces Host (and is not forwarded)', async () => {
    const res = await request(`${base}/h`, { headers: toEcho({ host: 'my-app.example', 'x-cmux-host-override': 'other.example:9000' }) });
    const seen = JSON.parse(res.body);
    assert.equal(seen.headers.host, 'other.example:9000');
    assert.equal(seen.headers['x-cmux-host-override'], undefined);
    assert.equal(seen.headers['x-forwarded-host'], 'my-app.example');
  });

  it('preserveHost: false rewrites Host to the target 127.0.0.1:<port>', async () => {
    const p2 = await startProxy({ preserveHost: false });
    try {
      const res = await request(`${p2.url}/h`, { headers: toEcho({ host: 'my-app.example' }) });
      assert.equal(res.status, 200);
      const seen = JSON.parse(res.body);
      assert.equal(seen.headers.host, `127.0.0.1:${echo.port}`);
      assert.equal(seen.headers['x-forwarded-host'], 'my-app.example');
    } finally {
      await p2.proxy.stop();
    }
  });

  it('keep-alive: several requests on one client connection reuse one upstream socket', async () => {
    const up = await startUpstream();
    let upstreamConnections = 0;
    up.server.on('connection', () => upstreamConnections++);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const before = proxy.getStats().upstreamSocketsReused;
      const clientSockets = new Set();
      for (let i = 0; i < 4; i++) {
        const res = await requestBuffer(`${base}/ka/${i}`, { headers: { 'X-Cmux-Port-Internal': String(up.port) }, agent });
        assert.equal(res.status, 200);
        assert.equal(JSON.parse(res.body.toString()).url, `/ka/${i}`);
        clientSockets.add(res.socket);
        if (i > 0) assert.equal(res.reusedSocket, true, `request ${i} did not reuse the client connection`);
      }
      assert.equal(clientSockets.size, 1, 'client connection was not kept alive');
      assert.equal(up.requests.length, 4);
      assert.equal(upstreamConnections, 1, 'upstream saw more than one connection');
      const reused = proxy.getStats().upstreamSocketsReused - before;
      assert.equal(reused, 3);
      assert.equal(typeof proxy.getStats().upstreamSocketsReused, 'number');
    } finally {
      agent.destroy();
      await up.close();
    }
  });

  it('pipelining: 3 keep-alive requests in one TCP write come back in order on an open connection', async () => {
    const p = special.port;
    const data =
      `GET /slow/1 HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n` +
      `GET /fast/2 HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n` +
      `GET /fast/3 HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`;
    const conn = new RawConn(pport);
    try {
      const responses = await conn.exchange(data, ['GET', 'GET', 'GET']);
      assert.deepEqual(
        responses.map((r) => [r.status, r.body, r.get('connection')]),
        [
          [200, 'slow /slow/1', undefined],
          [200, 'ok GET /fast/2', undefined],
          [200, 'ok GET /fast/3', undefined],
        ],
      );
      assert.equal(conn.closed, false);
    } finally {
      conn.destroy();
    }
  });

  it('pipelining: Connection: close on a middle request ends the connection after its response (RFC 9112 §9.6)', async () => {
    const up = await startUpstream(specialHandler(big));
    try {
      const p = up.port;
      const data =
        `GET /slow/1 HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n` +
        `GET /fast/2 HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\nConnection: close\r\n\r\n` +
        `GET /fast/3 HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`;
      const { text, closedByPeer } = await rawExchange(pport, data, 3000);
      const responses = parseResponses(text, ['GET', 'GET']);
      assert.deepEqual(
        responses.map((r) => [r.status, r.body]),
        [
          [200, 'slow /slow/1'],
          [200, 'ok GET /fast/2'],
        ],
        text,
      );
      assert.equal(responses[1].get('connection'), 'close');
      assert.equal(closedByPeer, true);
      assert.deepEqual(
        up.requests.map((r) => r.url),
        ['/slow/1', '/fast/2'],
      );
    } finally {
      await up.close();
    }
  });

  it('pipelining: 3 requests in one TCP write come back in order', async () => {
    const p = special.port;
    const data =
      `GET /slow/1 HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n` +
      `GET /fast/2 HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n` +
      `GET /fast/3 HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\nConnection: close\r\n\r\n`;
    const { text, closedByPeer } = await rawExchange(pport, data, 3000);
    const responses = parseResponses(text, ['GET', 'GET', 'GET']);
    assert.deepEqual(
      responses.map((r) => [r.status, r.body]),
      [
        [200, 'slow /slow/1'],
        [200, 'ok GET /fast/2'],
        [200, 'ok GET /fast/3'],
      ],
    );
    assert.equal(closedByPeer, true);
  });

  it('chunked request body arrives whole (re-framed for the upstream)', async () => {
    const p = echo.port;
    const chunks = [
      `POST /chunked-up HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`,
      '5\r\nhello\r\n',
      '6\r\n world\r\n',
      '1a\r\nabcdefghijklmnopqrstuvwxyz\r\n',
      '0\r\n\r\n',
    ];
    const { text } = await rawExchange(pport, chunks, 3000);
    const [res] = parseResponses(text, ['POST']);
    assert.equal(res.status, 200, text);
    const seen = JSON.parse(res.body);
    assert.equal(seen.body, 'hello worldabcdefghijklmnopqrstuvwxyz');
    assert.equal(seen.bodyLength, 37);
    assert.equal(seen.headers['transfer-encoding'], 'chunked');
    assert.equal(seen.headers['content-length'], undefined);
  });

  it('chunked upstream response arrives whole to an HTTP/1.1 client', async () => {
    const res = await request(`${base}/chunked`, { headers: toSpecial() });
    assert.equal(res.status, 200);
    assert.equal(res.body, 'hello world');
    assert.equal(res.complete, true);
    assert.equal(res.headers['transfer-encoding'], 'chunked');
    assert.equal(res.headers['content-length'], undefined);
  });

  it('chunked upstream response is close-delimited to an HTTP/1.0 client', async () => {
    const { text, closedByPeer } = await rawExchange(pport, `GET /chunked HTTP/1.0\r\nHost: a\r\nX-Cmux-Port-Internal: ${special.port}\r\n\r\n`);
    const [res] = parseResponses(text, ['GET']);
    assert.equal(res.status, 200);
    assert.equal(res.get('transfer-encoding'), undefined, 'no chunked framing toward HTTP/1.0');
    assert.equal(res.get('content-length'), undefined);
    assert.equal(res.framing, 'close');
    assert.equal(res.body, 'hello world');
    assert.equal(closedByPeer, true, 'the proxy must close to end a close-delimited body');
  });

  it('response trailers reach the client', async () => {
    const res = await request(`${base}/trailers`, { headers: toSpecial() });
    assert.equal(res.status, 200);
    assert.equal(res.body, 'abc');
    assert.deepEqual(res.trailers, { 'x-checksum': 'xyz123' });
  });

  it('HEAD gets the upstream content-length and no body; the connection stays usable', async () => {
    const res = await request(`${base}/head`, { method: 'HEAD', headers: toSpecial() });
    assert.equal(res.status, 200);
    assert.equal(res.headers['content-length'], '42');
    assert.equal(res.body, '');
    // Same connection, one turn at a time: a proxy that waited for 42 body bytes would hang here.
    const conn = new RawConn(pport);
    try {
      const p = special.port;
      const [head] = await conn.exchange(`HEAD /head HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`, ['HEAD']);
      assert.equal(head.status, 200);
      assert.equal(head.get('content-length'), '42');
      assert.equal(head.get('transfer-encoding'), undefined);
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(conn.buf.length, conn.buf.indexOf('\r\n\r\n') + 4, `bytes after the HEAD response: ${JSON.stringify(conn.buf)}`);
      const [next] = await conn.exchange(`GET /after-head HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`, ['GET']);
      assert.equal(next.status, 200);
      assert.equal(next.body, 'ok GET /after-head');
      assert.equal(conn.closed, false);
    } finally {
      conn.destroy();
    }
  });

  it('204 and 304 have no body and the connection stays usable', async () => {
    const conn = new RawConn(pport);
    try {
      const p = special.port;
      const [r204] = await conn.exchange(`GET /204 HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`, ['GET']);
      assert.equal(r204.status, 204);
      assert.equal(r204.get('x-kind'), 'no-content');
      assert.equal(r204.get('transfer-encoding'), undefined);
      assert.equal(r204.get('content-length'), undefined);
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(conn.buf.length, conn.buf.indexOf('\r\n\r\n') + 4, `bytes after the 204: ${JSON.stringify(conn.buf)}`);
      const [r304] = await conn.exchange(`GET /304 HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\nIf-None-Match: "v1"\r\n\r\n`, ['GET']);
      assert.equal(r304.status, 304);
      assert.equal(r304.get('etag'), '"v1"');
      assert.equal(r304.get('transfer-encoding'), undefined);
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(conn.buf.length, conn.buf.indexOf('\r\n\r\n') + 4, `bytes after the 304: ${JSON.stringify(conn.buf)}`);
      const [after] = await conn.exchange(`GET /after HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`, ['GET']);
      assert.equal(after.status, 200);
      assert.equal(after.body, 'ok GET /after');
      assert.equal(conn.closed, false);
    } finally {
      conn.destroy();
    }
  });

  it('Expect: 100-continue works with a node:http client', async () => {
    const body = 'continued body ✓';
    const result = await new Promise((resolve, reject) => {
      let gotContinue = false;
      const req = http.request(`${base}/expect`, {
        method: 'POST',
        agent: false,
        headers: toEcho({ expect: '100-continue', 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) }),
      });
      const timer = setTimeout(() => req.destroy(new Error('no 100 Continue / response within 3 s')), 3000);
      req.on('continue', () => {
        gotContinue = true;
        req.end(body);
      });
      req.on('response', (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          clearTimeout(timer);
          resolve({ gotContinue, status: res.statusCode, body: Buffer.concat(chunks).toString() });
        });
      });
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      req.flushHeaders();
    });
    assert.equal(result.gotContinue, true);
    assert.equal(result.status, 200);
    const seen = JSON.parse(result.body);
    assert.equal(seen.body, body);
    assert.equal(seen.headers.expect, '100-continue');
  });

  it('HTTP/1.0 request without Host works', async () => {
    const { text, closedByPeer } = await rawExchange(pport, `GET /v10?x=1 HTTP/1.0\r\nX-Cmux-Port-Internal: ${echo.port}\r\n\r\n`);
    const [res] = parseResponses(text, ['GET']);
    assert.equal(res.status, 200, text);
    const seen = JSON.parse(res.body);
    assert.equal(seen.url, '/v10?x=1');
    assert.equal(seen.method, 'GET');
    // the upstream speaks HTTP/1.1 and must get exactly one Host: the target
    assert.equal(seen.headers.host, `127.0.0.1:${echo.port}`);
    assert.equal(closedByPeer, true, 'HTTP/1.0 without keep-alive closes after the response');
  });

  it('absolute-form target routes by its authority; upstream gets origin-form', async () => {
    const p = echo.port;
    const { text } = await rawExchange(pport, `GET http://app.${p}.localhost/x?q=1 HTTP/1.1\r\nHost: ignored.example\r\nConnection: close\r\n\r\n`);
    const [res] = parseResponses(text, ['GET']);
    assert.equal(res.status, 200, text);
    const seen = JSON.parse(res.body);
    assert.equal(seen.url, '/x?q=1');
    assert.equal(seen.headers.host, `app.${p}.localhost`);
    assert.equal(seen.headers['x-forwarded-host'], `app.${p}.localhost`);
  });

  it('a request with 40 header fields (under the default maxHeadersCount 200) is forwarded with all of them', async () => {
    // llhttp hands node's binding headers in batches of 32; the 33rd field takes the slow path.
    let extra = '';
    for (let i = 0; i < 38; i++) extra += `X-Many-${i}: value-${i}\r\n`;
    const { text } = await rawExchange(pport, `GET /many HTTP/1.1\r\nHost: many.example\r\nX-Cmux-Port-Internal: ${echo.port}\r\n${extra}Connection: close\r\n\r\n`);
    assert.notEqual(text, '', 'no answer at all');
    const [res] = parseResponses(text, ['GET']);
    assert.equal(res.status, 200, text);
    const seen = JSON.parse(res.body);
    assert.equal(seen.url, '/many');
    assert.equal(seen.headers.host, 'many.example');
    for (let i = 0; i < 38; i++) assert.equal(seen.headers[`x-many-${i}`], `value-${i}`);
    const after = await request(`${base}/after-many`, { headers: toEcho(), timeoutMs: 2000 });
    assert.equal(after.status, 200);
  });

  it('a request head split across several TCP packets is forwarded', async () => {
    const p = echo.port;
    const { text } = await rawExchange(pport, [`GET /sp`, `lit?q=1 HTTP/1.1\r\nHo`, `st: split.example\r\nX-Cmux-Port-`, `Internal: ${p}\r\nConnection: close\r\n`, `\r\n`], 3000);
    const [res] = parseResponses(text, ['GET']);
    assert.equal(res.status, 200, text);
    const seen = JSON.parse(res.body);
    assert.equal(seen.url, '/split?q=1');
    assert.equal(seen.headers.host, 'split.example');
  });

  it('a 1 MiB response streams byte-exact', async () => {
    const res = await requestBuffer(`${base}/big`, { headers: toSpecial() });
    assert.equal(res.status, 200);
    assert.equal(res.headers['content-length'], String(big.length));
    assert.equal(res.body.length, big.length);
    assert.equal(sha256(res.body), sha256(big));
  });
});

// The proxy joins a response head and a small body that arrive in one upstream read into one
// write; a head whose body comes later must still leave at once, and every size must stay exact.
describe('response head and body batching', () => {
  let proxy;
  let upstream;
  const seen = [];

  before(async () => {
    ({ proxy } = await startProxy());
    upstream = net.createServer((socket) => {
      socket.on('error', () => {});
      socket.once('data', (d) => {
        const path = d.toString('latin1').split(' ')[1];
        const [, kind, size] = path.split('/');
        const body = Buffer.alloc(Number(size), 0).map((_, i) => (i * 7 + 3) & 0xff);
        const head = `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
        if (kind === 'together') socket.end(Buffer.concat([Buffer.from(head, 'latin1'), body]));
        else {
          socket.write(head);
          setTimeout(() => socket.end(body), 1500);
        }
      });
    });
    await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
  });

  after(async () => {
    await proxy?.stop();
    upstream?.close();
  });

  function fetchTimed(path) {
    return new Promise((resolve, reject) => {
      const t0 = Date.now();
      const req = http.request(
        { host: '127.0.0.1', port: proxy.address().port, path, agent: false, headers: { 'X-Cmux-Port-Internal': String(upstream.address().port) } },
        (res) => {
          const headAt = Date.now() - t0;
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode, headAt, body: Buffer.concat(chunks), complete: res.complete }));
        },
      );
      req.on('error', reject);
      req.end();
    });
  }

  for (const size of [0, 1, 100, 4095, 4096, 4097, 70_000]) {
    it(`head and a ${size}-byte body in one upstream write arrive byte-exact`, async () => {
      const res = await fetchTimed(`/together/${size}`);
      assert.equal(res.status, 200);
      assert.equal(res.body.length, size);
      assert.ok(res.body.equals(Buffer.alloc(size, 0).map((_, i) => (i * 7 + 3) & 0xff)), 'body differs');
    });
  }

  it('a head whose body comes 1.5 s later reaches the client before the body', async () => {
    const res = await fetchTimed('/later/100');
    assert.equal(res.body.length, 100);
    assert.ok(res.headAt < 1000, `the head waited for the body: ${res.headAt} ms`);
  });
});
