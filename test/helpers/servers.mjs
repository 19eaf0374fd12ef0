// Real servers on port 0 for the tests: the proxy (through the public API), upstreams that
// record what reached them, and raw clients.
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createProxyServer } from '../../dist/index.js';

/**
 * A loopback port that refuses connections and that no `listen(0)` of this run can take: picked
 * below the kernel's ephemeral range (a port bound on 0 and closed again can be handed to the next
 * listener, e.g. the proxy itself, which then answers a request to it with 508).
 */
export async function refusedPort() {
  const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  const [from, to] = low > 2048 ? [1024, low] : [1, 1024];
  for (let attempt = 0; attempt < 64; attempt++) {
    const port = from + Math.floor(Math.random() * (to - from));
    const refused = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(false);
      });
      socket.once('error', (err) => resolve(err.code === 'ECONNREFUSED'));
    });
    if (refused) return port;
  }
  throw new Error('no refusing port found below the ephemeral range');
}

/** Starts a proxy on 127.0.0.1:0; returns { proxy, port, url }. */
export async function startProxy(options = {}) {
  const proxy = createProxyServer({ listenPort: 0, logLevel: 'silent', ...options });
  await proxy.start();
  const port = proxy.address().port;
  return { proxy, port, url: `http://127.0.0.1:${port}` };
}

/**
 * An HTTP/1.1 upstream that answers JSON describing the request it got (method, url, headers,
 * rawHeaders, body length and sha of the body), unless `handler` is given.
 */
export async function startUpstream(handler, { host = '127.0.0.1', port = 0 } = {}) {
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push(req);
    if (handler) return handler(req, res);
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const payload = JSON.stringify({
        method: req.method,
        url: req.url,
        httpVersion: req.httpVersion,
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        trailers: req.trailers,
        body: body.toString('utf8'),
        bodyLength: body.length,
        remoteAddress: req.socket.remoteAddress,
        localAddress: req.socket.localAddress,
      });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
      res.end(payload);
    });
  });
  server.listen(port, host);
  await once(server, 'listening');
  const sockets = new Set();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  return {
    server,
    requests,
    sockets,
    port: server.address().port,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

/** A raw TCP server whose connections get `onConnection(socket)`. */
export async function startRawServer(onConnection, { host = '127.0.0.1', port = 0 } = {}) {
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    onConnection(socket);
  });
  server.listen(port, host);
  await once(server, 'listening');
  return {
    server,
    port: server.address().port,
    sockets,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/** A fresh proxy for test `t` (see startProxy), stopped after it. */
export async function proxyFor(t, options = {}) {
  const p = await startProxy(options);
  t.after(() => p.proxy.stop());
  return p;
}

/** Calls `onRequest(socket, head, index)` for each request head (no body parsing) a raw upstream gets. */
export function onRequestHeads(socket, onRequest) {
  let buf = '';
  let index = 0;
  socket.on('data', (c) => {
    buf += c.toString('latin1');
    let at;
    while ((at = buf.indexOf('\r\n\r\n')) !== -1) {
      const head = buf.slice(0, at);
      buf = buf.slice(at + 4);
      onRequest(socket, head, index++);
    }
  });
}

/**
 * A raw upstream for test `t` (see startRawServer), closed after it: its connections get
 * `onConnection(socket)`, or, given bytes instead of a function, every request head it gets is
 * answered with those bytes.
 */
export async function rawUpstream(t, onConnection) {
  const handler = typeof onConnection === 'function' ? onConnection : (socket) => onRequestHeads(socket, (s) => s.write(onConnection));
  const up = await startRawServer(handler);
  t.after(() => up.close());
  return up;
}

/** Writes the pieces one by one (each waits for the previous to be flushed and a timer turn); stops once the socket is destroyed. */
export async function writePieces(socket, pieces) {
  for (const piece of pieces) {
    if (socket.destroyed) return;
    await new Promise((resolve) => socket.write(piece, 'latin1', resolve));
    await sleep(1);
  }
}

/** The JSON answers of startUpstream's default handler in a raw HTTP/1.1 response stream, in order. */
export function jsonAnswers(raw) {
  const out = [];
  let rest = raw;
  for (;;) {
    const headEnd = rest.indexOf('\r\n\r\n');
    if (headEnd === -1) break;
    const head = rest.slice(0, headEnd);
    const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? NaN);
    assert.ok(Number.isFinite(length), `no content-length in ${head}`);
    out.push({ status: Number(head.split(' ')[1]), body: JSON.parse(rest.slice(headEnd + 4, headEnd + 4 + length)) });
    rest = rest.slice(headEnd + 4 + length);
  }
  assert.equal(rest, '', 'nothing after the last response');
  return out;
}

/** The status code of each HTTP/1.1 response line in a raw response stream, in order (strings). */
export function statusCodes(raw) {
  return [...raw.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]);
}

/** Sends raw bytes, collects everything until the server closes (or `timeoutMs`). */
export function rawRequest(port, data, { timeoutMs = 3000, host = '127.0.0.1', until } = {}) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host });
    const chunks = [];
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(Buffer.concat(chunks).toString('latin1'));
    };
    const timer = setTimeout(finish, timeoutMs);
    socket.on('connect', () => {
      if (Array.isArray(data)) {
        let i = 0;
        const next = () => {
          if (i >= data.length) return;
          socket.write(data[i++]);
          setTimeout(next, 30);
        };
        next();
      } else socket.write(data);
    });
    socket.on('data', (c) => {
      chunks.push(c);
      if (until && until(Buffer.concat(chunks).toString('latin1'))) finish();
    });
    socket.on('end', finish);
    socket.on('close', finish);
    socket.on('error', (err) => (chunks.length ? finish() : reject(err)));
  });
}

/**
 * Reads HTTP/1.1 responses (with a Content-Length body or none) from a raw socket: resolves
 * [{ status, body }] once `count` came, and reads no further. If the socket closes first: with
 * `partial`, resolves with those that came (errors ignored); otherwise rejects.
 */
export function readResponses(socket, count, { partial = false } = {}) {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const out = [];
    const onData = (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end === -1) return;
        const head = buf.toString('latin1', 0, end);
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (buf.length < end + 4 + length) return;
        out.push({ status: Number(head.split(' ')[1]), body: buf.toString('latin1', end + 4, end + 4 + length) });
        buf = buf.subarray(end + 4 + length);
        if (out.length === count) {
          socket.removeListener('data', onData);
          resolve(out);
          return;
        }
      }
    };
    socket.on('data', onData);
    if (partial) {
      socket.on('close', () => resolve(out));
      socket.on('error', () => {});
    } else {
      socket.on('error', reject);
      socket.on('close', () => reject(new Error(`closed after ${out.length} of ${count} responses`)));
    }
  });
}

/** One HTTP/1.1 request with node:http (no agent reuse); resolves { status, headers, body }. */
export function request(url, { method = 'GET', headers = {}, body, agent = false, timeoutMs = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode, headers: res.headers, rawHeaders: res.rawHeaders, trailers: res.trailers, body: Buffer.concat(chunks).toString('utf8'), complete: res.complete }),
      );
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error('client timeout')));
    req.on('error', reject);
    if (body !== undefined) req.end(body);
    else req.end();
  });
}

/** One HTTP/2 request over a session; resolves { status, headers, body }. */
export function h2request(session, headers, body) {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: body === undefined });
    let response;
    const chunks = [];
    stream.on('response', (h) => (response = h));
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', () => resolve({ status: response?.[':status'], headers: response, body: Buffer.concat(chunks).toString('utf8') }));
    stream.on('error', reject);
    if (body !== undefined) stream.end(body);
  });
}

/** An HTTP/1.1 client of the proxy on `port`, connected (cleartext, or TLS with ALPN http/1.1). */
export async function connectClient(port, secure) {
  const socket = secure
    ? tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] })
    : net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  await once(socket, secure ? 'secureConnect' : 'connect');
  return socket;
}

export function h2connect(port) {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on('error', () => {});
  return session;
}

/** Reads a body stream through to its end: its byte count and sha256 (hex), nothing kept. */
export async function digestBody(readable) {
  const hash = createHash('sha256');
  let length = 0;
  for await (const chunk of readable) {
    hash.update(chunk);
    length += chunk.length;
  }
  return { length, sha: hash.digest('hex') };
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `predicate` until it is true or `timeoutMs` passes. */
export async function waitFor(predicate, { timeoutMs = 5000, stepMs = 20 } = {}) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await predicate()) return true;
    await sleep(stepMs);
  }
  return false;
}
