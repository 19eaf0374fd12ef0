// Trailers through the proxy in every combination where both sides can carry them: HTTP/1.1
// chunked trailer sections and HTTP/2 trailing HEADERS, from HTTP/1.1 and h2c upstreams, to
// HTTP/1.1, h2c and TLS h2 clients, both directions; fields that never travel in trailers are
// dropped, oversized trailer sections end in a clean error.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http2 from 'node:http2';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { startProxy, startUpstream, startRawServer, rawRequest, h2connect, waitFor } from './helpers/servers.mjs';
import { H2RawClient, FRAME, FLAG, headersFrame, dataFrame, pingFrame, requestHeaders } from './helpers/h2-raw.mjs';

const exec = promisify(execFile);
const GEN = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));
const MAX_HEADER_SIZE = 4096;

/** An HTTP/1.1 upstream (node:http) answering chunked bodies with trailers. */
function h1Handler(req, res) {
  req.resume();
  req.on('end', () => {
    if (req.url === '/length') {
      res.writeHead(200, { 'content-length': '5' });
      res.end('plain');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum' });
    res.write('hello ');
    res.addTrailers({ 'x-checksum': 'abc' });
    res.end('world');
  });
}

/**
 * A raw HTTP/1.1 upstream: records the exact bytes of each request (one per connection, answered
 * with `connection: close`) and answers by path: `/hostile`, `/hostile-framing` and `/big` send
 * scripted trailer sections, anything else `200 ok`.
 */
async function startRecordingUpstream() {
  const requests = [];
  const raw = await startRawServer((socket) => {
    let buf = Buffer.alloc(0);
    const record = { bytes: '', complete: false, closed: false };
    requests.push(record);
    socket.on('close', () => (record.closed = true));
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      record.bytes = buf.toString('latin1');
      if (record.complete) return;
      const text = record.bytes;
      const headEnd = text.indexOf('\r\n\r\n');
      if (headEnd === -1) return;
      const head = text.slice(0, headEnd).toLowerCase();
      const body = text.slice(headEnd + 4);
      const length = /\r\ncontent-length: *(\d+)/.exec(head);
      if (/\r\ntransfer-encoding: *chunked/.test(head)) {
        if (!/(?:^|\r\n)0\r\n(?:[^\r\n]+\r\n)*\r\n$/.test(body)) return;
      } else if (length !== null && body.length < Number(length[1])) return;
      record.complete = true;
      const path = text.slice(0, text.indexOf('\r\n')).split(' ')[1];
      if (path === '/hostile') {
        socket.end(
          'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n' +
            'Host: evil.example\r\nConnection: x-ok\r\nKeep-Alive: timeout=1\r\nProxy-Connection: keep-alive\r\n' +
            'X-Cmux-Port-Internal: 1\r\nTrailer: x-ok\r\nX-Ok: yes\r\nX-Checksum: abc\r\n\r\n',
        );
      } else if (path === '/hostile-framing') {
        socket.end('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 5\r\nX-Ok: yes\r\n\r\n');
      } else if (path === '/big') {
        socket.end(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Big: ${'a'.repeat(MAX_HEADER_SIZE * 2)}\r\n\r\n`);
      } else {
        socket.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok');
      }
    });
  });
  return { ...raw, requests };
}

/**
 * An h2c upstream: `/trailers` answers with trailers, `/trailers-only` with HEADERS + END_STREAM,
 * `/echo` echoes body and request trailers, `/big` sends oversized trailers.
 */
async function startH2cUpstream() {
  const seen = [];
  const sessions = new Set();
  const server = http2.createServer();
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    const record = { headers, trailers: null, body: '' };
    seen.push(record);
    stream.on('trailers', (t) => (record.trailers = t));
    stream.on('data', (c) => (record.body += c));
    const path = headers[':path'];
    if (path === '/trailers-only') {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '5', 'grpc-message': 'nope' }, { endStream: true });
      return;
    }
    stream.on('end', () => {
      stream.respond({ ':status': 200, 'content-type': 'text/plain' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'x-checksum': 'abc', 'grpc-status': '0' }));
      if (path === '/big') {
        stream.removeAllListeners('wantTrailers');
        stream.on('wantTrailers', () => stream.sendTrailers({ 'x-big': 'a'.repeat(MAX_HEADER_SIZE * 3) }));
        stream.end('hello');
      } else if (path === '/echo') stream.end(JSON.stringify(record));
      else {
        stream.write('hello ');
        stream.end('world');
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    seen,
    port: server.address().port,
    close: () =>
      new Promise((r) => {
        for (const s of sessions) s.destroy();
        server.close(r);
      }),
  };
}

/**
 * One HTTP/2 request; resolves `{ status, headers, endStreamOnHeaders, body, trailers, rstCode }`.
 * `trailers` (an object) are sent after `body`.
 */
function h2fetch(session, headers, { body, trailers } = {}) {
  return new Promise((resolve) => {
    const hasBody = body !== undefined || trailers !== undefined;
    const stream = session.request(headers, { endStream: !hasBody, waitForTrailers: trailers !== undefined });
    const out = { status: undefined, headers: undefined, endStreamOnHeaders: false, body: '', trailers: null, rstCode: undefined };
    stream.on('response', (h, flags) => {
      out.status = h[':status'];
      out.headers = h;
      out.endStreamOnHeaders = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    });
    stream.on('trailers', (t) => (out.trailers = t));
    stream.on('data', (c) => (out.body += c));
    stream.on('error', () => {});
    stream.on('close', () => {
      out.rstCode = stream.rstCode;
      resolve(out);
    });
    if (trailers !== undefined) stream.on('wantTrailers', () => stream.sendTrailers(trailers));
    if (hasBody) stream.end(body ?? '');
    stream.resume();
  });
}

/** The first request recorded at or after index `from` whose request line names `path`. */
function recorded(up, from, path) {
  return up.requests.slice(from).find((r) => r.bytes.startsWith(`POST ${path} `) || r.bytes.startsWith(`GET ${path} `));
}

/** The trailer section after the last chunk of a raw chunked HTTP/1.1 response, or null. */
function trailerSection(response) {
  const m = /\r\n0\r\n((?:[^\r\n]+\r\n)*)\r\n$/.exec(response);
  return m === null ? null : m[1];
}

describe('trailers', () => {
  let h1Up;
  let recUp;
  let h2Up;
  let px; // HTTP/1.1 upstreams
  let pxH2c; // h2c upstreams
  let pxTls; // TLS, upstream protocol found by probing
  let dir;
  let ca;
  before(async () => {
    h1Up = await startUpstream(h1Handler);
    recUp = await startRecordingUpstream();
    h2Up = await startH2cUpstream();
    px = await startProxy({ maxHeaderSize: MAX_HEADER_SIZE });
    pxH2c = await startProxy({ upstreamProtocol: 'h2c', maxHeaderSize: MAX_HEADER_SIZE });
    dir = mkdtempSync(join(tmpdir(), 'cmux-trailers-'));
    execFileSync('bash', [GEN, '--out', dir, '--name', 'main'], { stdio: 'ignore' });
    ca = readFileSync(join(dir, 'ca.pem'));
    pxTls = await startProxy({ upstreamProtocol: 'auto', tls: { certFile: join(dir, 'main.pem'), keyFile: join(dir, 'main-key.pem') } });
  });
  after(async () => {
    for (const p of [px, pxH2c, pxTls]) await p?.proxy.stop();
    await h1Up?.close();
    await recUp?.close();
    await h2Up?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const h1Get = (proxyPort, upstreamPort, path, extra = '') =>
    rawRequest(proxyPort, `GET ${path} HTTP/1.1\r\nHost: app.test\r\nTE: trailers\r\nX-Cmux-Port-Internal: ${upstreamPort}\r\nConnection: close\r\n${extra}\r\n`, { timeoutMs: 10000 });

  it('HTTP/1.1 upstream -> HTTP/1.1 client: the chunked trailer section is relayed', async () => {
    const res = await h1Get(px.port, h1Up.port, '/trailers');
    assert.match(res, /^HTTP\/1\.1 200 /);
    assert.match(res, /\r\ntransfer-encoding: chunked\r\n/i);
    assert.equal(trailerSection(res), 'x-checksum: abc\r\n');
  });

  it('HTTP/1.1 upstream -> HTTP/2 client: a trailing HEADERS frame (node:http2)', async () => {
    const session = h2connect(px.port);
    try {
      const res = await h2fetch(session, { ':path': '/trailers', 'x-cmux-port-internal': String(h1Up.port), te: 'trailers' });
      assert.equal(res.status, 200);
      assert.equal(res.body, 'hello world');
      assert.equal(res.rstCode, http2.constants.NGHTTP2_NO_ERROR);
      assert.equal(res.trailers?.['x-checksum'], 'abc');
      assert.equal(res.headers['trailer'], undefined, 'Trailer is hop-by-hop');
      // A response with a length carries no trailers and ends as before.
      const plain = await h2fetch(session, { ':path': '/length', 'x-cmux-port-internal': String(h1Up.port) });
      assert.equal(plain.body, 'plain');
      assert.equal(plain.trailers, null);
    } finally {
      session.close();
    }
  });

  it('HTTP/1.1 upstream -> HTTP/2 client: nghttp -nv shows the trailing HEADERS with END_STREAM after the DATA', async () => {
    const { stdout } = await exec('nghttp', ['-nv', '-H', 'te: trailers', '-H', `x-cmux-port-internal: ${h1Up.port}`, `http://127.0.0.1:${px.port}/trailers`], { timeout: 15000 });
    // nghttp prints a HEADERS frame's fields before the frame line.
    assert.match(stdout, /recv DATA frame <length=\d+, flags=0x00, stream_id=13>\n[\s\S]*recv \(stream_id=13\) x-checksum: abc\n[^\n]*recv HEADERS frame <length=\d+, flags=0x05, stream_id=13>/);
  });

  it('HTTP/2 client -> HTTP/1.1 upstream: a body without length goes chunked with the trailer section (exact bytes)', async () => {
    const session = h2connect(px.port);
    try {
      const before = recUp.requests.length;
      const res = await h2fetch(
        session,
        { ':method': 'POST', ':path': '/up', 'x-cmux-port-internal': String(recUp.port) },
        { body: 'hello', trailers: { 'x-req-checksum': 'r1', 'x-other': 'two' } },
      );
      assert.equal(res.status, 200);
      assert.equal(res.body, 'ok');
      const got = recorded(recUp, before, '/up').bytes;
      assert.match(got, /\r\ntransfer-encoding: chunked\r\n/);
      assert.ok(got.endsWith('\r\n\r\n5\r\nhello\r\n0\r\nx-req-checksum: r1\r\nx-other: two\r\n\r\n'), JSON.stringify(got));
    } finally {
      session.close();
    }
  });

  it('HTTP/2 client -> HTTP/1.1 upstream: a body sent with content-length keeps it and its trailers are dropped', async () => {
    const session = h2connect(px.port);
    try {
      const before = recUp.requests.length;
      const res = await h2fetch(
        session,
        { ':method': 'POST', ':path': '/up', 'content-length': '5', 'x-cmux-port-internal': String(recUp.port) },
        { body: 'hello', trailers: { 'x-req-checksum': 'r1' } },
      );
      assert.equal(res.status, 200);
      const got = recorded(recUp, before, '/up').bytes;
      assert.match(got, /\r\ncontent-length: 5\r\n/);
      assert.doesNotMatch(got, /transfer-encoding/i);
      assert.ok(got.endsWith('\r\n\r\nhello'), JSON.stringify(got));
      assert.doesNotMatch(got, /x-req-checksum/);
    } finally {
      session.close();
    }
  });

  it('HTTP/2 client -> HTTP/1.1 upstream: host, routing and hop-by-hop fields in request trailers are dropped', async () => {
    const session = h2connect(px.port);
    try {
      const before = recUp.requests.length;
      await h2fetch(
        session,
        { ':method': 'POST', ':path': '/up', 'x-cmux-port-internal': String(recUp.port) },
        { body: 'hello', trailers: { host: 'evil.example', 'x-cmux-port-internal': '1', trailer: 'x-ok', 'proxy-authorization': 'secret', 'x-ok': 'yes' } },
      );
      const got = recorded(recUp, before, '/up').bytes;
      assert.ok(got.endsWith('\r\n5\r\nhello\r\n0\r\nx-ok: yes\r\n\r\n'), JSON.stringify(got));
    } finally {
      session.close();
    }
  });

  it('HTTP/1.1 client -> HTTP/1.1 upstream: request trailers stay in the chunked body, host and hop-by-hop fields dropped', async () => {
    const before = recUp.requests.length;
    const res = await rawRequest(
      px.port,
      `POST /up HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${recUp.port}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n` +
        '5\r\nhello\r\n0\r\nX-Req: 1\r\nHost: evil\r\nConnection: close\r\nKeep-Alive: timeout=1\r\nX-Cmux-Port-Internal: 1\r\n\r\n',
      { timeoutMs: 10000 },
    );
    assert.match(res, /^HTTP\/1\.1 200 /);
    assert.ok(recorded(recUp, before, '/up').bytes.endsWith('\r\n5\r\nhello\r\n0\r\nX-Req: 1\r\n\r\n'), JSON.stringify(recorded(recUp, before, '/up').bytes));
  });

  it('forwarding fields the proxy sets (X-Forwarded-For/-Host/-Proto, Via, X-Request-Id) in request trailers are dropped, HTTP/1.1 and HTTP/2 clients, HTTP/1.1 and h2c upstreams', async () => {
    const spoofed = 'X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nVia: 1.1 evil\r\nX-Request-Id: spoofed\r\nX-Req: 1\r\n';
    const spoofedH2 = { 'x-forwarded-for': '6.6.6.6', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'https', via: '1.1 evil', 'x-request-id': 'spoofed', 'x-req': '1' };
    const h1Post = (port, upstreamPort, path) =>
      rawRequest(port, `POST ${path} HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${upstreamPort}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n${spoofed}\r\n`, { timeoutMs: 10000 });
    // HTTP/1.1 client -> HTTP/1.1 upstream
    let before = recUp.requests.length;
    assert.match(await h1Post(px.port, recUp.port, '/up'), /^HTTP\/1\.1 200 /);
    let got = recorded(recUp, before, '/up').bytes;
    assert.ok(got.endsWith('\r\n5\r\nhello\r\n0\r\nX-Req: 1\r\n\r\n'), JSON.stringify(got));
    // HTTP/2 client -> HTTP/1.1 upstream
    const session = h2connect(px.port);
    try {
      before = recUp.requests.length;
      await h2fetch(session, { ':method': 'POST', ':path': '/up', 'x-cmux-port-internal': String(recUp.port) }, { body: 'hello', trailers: spoofedH2 });
      got = recorded(recUp, before, '/up').bytes;
      assert.ok(got.endsWith('\r\n5\r\nhello\r\n0\r\nx-req: 1\r\n\r\n'), JSON.stringify(got));
    } finally {
      session.close();
    }
    // HTTP/1.1 and HTTP/2 clients -> h2c upstream
    before = h2Up.seen.length;
    assert.match(await h1Post(pxH2c.port, h2Up.port, '/echo'), /^HTTP\/1\.1 200 /);
    assert.deepEqual(Object.keys(h2Up.seen[before].trailers).filter((n) => !n.startsWith(':')), ['x-req']);
    const s2 = h2connect(pxH2c.port);
    try {
      const res = await h2fetch(s2, { ':method': 'POST', ':path': '/echo', 'x-cmux-port-internal': String(h2Up.port) }, { body: 'hello', trailers: spoofedH2 });
      assert.deepEqual(Object.keys(JSON.parse(res.body).trailers).filter((n) => !n.startsWith(':')), ['x-req']);
    } finally {
      s2.close();
    }
  });

  it('HTTP/1.1 request trailers with Content-Length or Transfer-Encoding: 400, and the upstream never sees a complete body', async () => {
    for (const bad of ['Content-Length: 3', 'Transfer-Encoding: chunked']) {
      const before = recUp.requests.length;
      const res = await rawRequest(
        px.port,
        [
          `POST /up HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${recUp.port}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`,
          `0\r\n${bad}\r\n\r\n`,
        ],
        { timeoutMs: 10000 },
      );
      assert.match(res, /^HTTP\/1\.1 400 /, bad);
      const seen = recorded(recUp, before, '/up');
      if (seen !== undefined) {
        assert.ok(await waitFor(() => seen.closed, { timeoutMs: 10000 }), 'the upstream connection is cut');
        assert.equal(seen.complete, false, JSON.stringify(seen.bytes));
      }
    }
  });

  it('HTTP/1.1 upstream trailers with framing, hop-by-hop and routing fields: only the end-to-end ones reach HTTP/1.1 and HTTP/2 clients', async () => {
    const h1 = await h1Get(px.port, recUp.port, '/hostile');
    assert.match(h1, /^HTTP\/1\.1 200 /);
    assert.equal(trailerSection(h1), 'X-Ok: yes\r\nX-Checksum: abc\r\n');
    const session = h2connect(px.port);
    try {
      const res = await h2fetch(session, { ':path': '/hostile', 'x-cmux-port-internal': String(recUp.port) });
      assert.equal(res.status, 200);
      assert.equal(res.body, 'hello');
      assert.equal(res.rstCode, http2.constants.NGHTTP2_NO_ERROR);
      const names = Object.keys(res.trailers ?? {}).filter((n) => !n.startsWith(':')).sort();
      assert.deepEqual(names, ['x-checksum', 'x-ok']);
    } finally {
      session.close();
    }
  });

  it('upstream trailers with Content-Length (refused by the response parser): HTTP/1.1 client cut, HTTP/2 stream reset', async () => {
    const h1 = await h1Get(px.port, recUp.port, '/hostile-framing');
    assert.match(h1, /^HTTP\/1\.1 200 /);
    assert.equal(trailerSection(h1), null, 'no complete chunked body');
    const session = h2connect(px.port);
    try {
      const res = await h2fetch(session, { ':path': '/hostile-framing', 'x-cmux-port-internal': String(recUp.port) });
      assert.equal(res.status, 200);
      assert.equal(res.trailers, null);
      assert.equal(res.rstCode, http2.constants.NGHTTP2_INTERNAL_ERROR);
    } finally {
      session.close();
    }
  });

  it('HTTP/2 request trailers with a pseudo-header, a connection field or a content-length the body does not match: the stream is reset and the upstream never sees a complete body', async () => {
    for (const bad of [[':path', '/x'], ['connection', 'close'], ['transfer-encoding', 'chunked'], ['content-length', '6']]) {
      const before = recUp.requests.length;
      const client = await H2RawClient.connect(px.port);
      try {
        client.send(headersFrame(1, requestHeaders(recUp.port, { method: 'POST', path: '/up' })), dataFrame(1, Buffer.from('hello')));
        assert.ok(await waitFor(() => recorded(recUp, before, '/up')?.bytes.includes('hello'), { timeoutMs: 10000 }), 'body reached the upstream');
        const seen = recorded(recUp, before, '/up');
        client.send(headersFrame(1, [bad], { endStream: true }));
        const out = await client.streamOutcome(1, { timeoutMs: 10000 });
        assert.equal(out.rstCode, 1 /* PROTOCOL_ERROR */, `${bad[0]}: ${JSON.stringify(out)}`);
        assert.ok(await waitFor(() => seen.closed, { timeoutMs: 10000 }), 'the upstream connection is cut');
        assert.equal(seen.complete, false, `${bad[0]}: ${JSON.stringify(seen.bytes)}`);
      } finally {
        client.close();
      }
    }
  });

  it('oversized upstream trailers: HTTP/1.1 client connection cut before the last chunk, HTTP/2 stream reset', async () => {
    const h1 = await h1Get(px.port, recUp.port, '/big');
    assert.match(h1, /^HTTP\/1\.1 200 /);
    assert.equal(trailerSection(h1), null, 'no complete chunked body');
    assert.doesNotMatch(h1, /X-Big/i);
    const session = h2connect(px.port);
    try {
      const res = await h2fetch(session, { ':path': '/big', 'x-cmux-port-internal': String(recUp.port) });
      assert.equal(res.status, 200);
      assert.equal(res.trailers, null);
      assert.notEqual(res.rstCode, http2.constants.NGHTTP2_NO_ERROR);
      // The session is still good for the next request.
      const next = await h2fetch(session, { ':path': '/trailers', 'x-cmux-port-internal': String(h1Up.port) });
      assert.equal(next.trailers?.['x-checksum'], 'abc');
    } finally {
      session.close();
    }
    const stats = px.proxy.getStats();
    assert.ok(stats.responsesReset >= 2, JSON.stringify(stats));
  });

  it('HTTP/2 request trailers with a matching content-length: relayed without it', async () => {
    const before = recUp.requests.length;
    const client = await H2RawClient.connect(px.port);
    try {
      client.send(
        headersFrame(1, requestHeaders(recUp.port, { method: 'POST', path: '/up' })),
        dataFrame(1, Buffer.from('hello')),
        headersFrame(1, [['content-length', '5'], ['x-ok', 'yes']], { endStream: true }),
      );
      const out = await client.streamOutcome(1, { timeoutMs: 10000 });
      assert.equal(out.status, 200, JSON.stringify(out));
      const got = recorded(recUp, before, '/up').bytes;
      assert.ok(got.endsWith('\r\n5\r\nhello\r\n0\r\nx-ok: yes\r\n\r\n'), JSON.stringify(got));
    } finally {
      client.close();
    }
  });

  it('oversized HTTP/2 request trailers (past maxHeaderSize x 2): the stream is reset and the upstream never sees a complete body', async () => {
    const before = recUp.requests.length;
    const client = await H2RawClient.connect(px.port);
    try {
      // The proxy's SETTINGS_MAX_HEADER_LIST_SIZE binds streams opened once the client has
      // acknowledged it: a PING answered after the ACK says it was.
      assert.ok(await client.waitForFrame((f) => f.type === FRAME.SETTINGS && !(f.flags & FLAG.ACK), { timeoutMs: 10000 }));
      client.send(pingFrame(Buffer.from('trailers')));
      assert.ok(await client.waitForFrame((f) => f.type === FRAME.PING && f.flags & FLAG.ACK, { timeoutMs: 10000 }));
      client.send(headersFrame(1, requestHeaders(recUp.port, { method: 'POST', path: '/up' })), dataFrame(1, Buffer.from('hello')));
      assert.ok(await waitFor(() => recorded(recUp, before, '/up')?.bytes.includes('hello'), { timeoutMs: 10000 }), 'body reached the upstream');
      const seen = recorded(recUp, before, '/up');
      client.send(headersFrame(1, [['x-big', 'a'.repeat(MAX_HEADER_SIZE * 3)]], { endStream: true }));
      const out = await client.streamOutcome(1, { timeoutMs: 10000 });
      assert.equal(out.rstCode, 11 /* ENHANCE_YOUR_CALM */, JSON.stringify(out));
      assert.ok(await waitFor(() => seen.closed, { timeoutMs: 10000 }), 'the upstream connection is cut');
      assert.equal(seen.complete, false, JSON.stringify(seen.bytes));
    } finally {
      client.close();
    }
  });

  it('h2c upstream -> HTTP/2 client: trailers follow the body', async () => {
    const session = h2connect(pxH2c.port);
    try {
      const res = await h2fetch(session, { ':path': '/trailers', 'x-cmux-port-internal': String(h2Up.port), te: 'trailers' });
      assert.equal(res.status, 200);
      assert.equal(res.body, 'hello world');
      assert.equal(res.trailers?.['x-checksum'], 'abc');
      assert.equal(res.trailers?.['grpc-status'], '0');
    } finally {
      session.close();
    }
  });

  it('h2c upstream -> HTTP/2 client: a trailers-only answer stays one HEADERS frame with END_STREAM', async () => {
    const session = h2connect(pxH2c.port);
    try {
      const res = await h2fetch(session, { ':path': '/trailers-only', 'x-cmux-port-internal': String(h2Up.port), te: 'trailers' });
      assert.equal(res.status, 200);
      assert.equal(res.endStreamOnHeaders, true);
      assert.equal(res.headers['grpc-status'], '5');
      assert.equal(res.headers['grpc-message'], 'nope');
      assert.equal(res.body, '');
    } finally {
      session.close();
    }
  });

  it('HTTP/2 client -> h2c upstream: request trailers arrive, framing fields dropped', async () => {
    const session = h2connect(pxH2c.port);
    try {
      const res = await h2fetch(
        session,
        { ':method': 'POST', ':path': '/echo', 'x-cmux-port-internal': String(h2Up.port), te: 'trailers' },
        { body: 'payload', trailers: { 'x-req-checksum': 'r1', host: 'evil.example', 'x-cmux-port-internal': '1', trailer: 'x' } },
      );
      assert.equal(res.status, 200);
      const echo = JSON.parse(res.body);
      assert.equal(echo.body, 'payload');
      assert.equal(echo.trailers['x-req-checksum'], 'r1');
      assert.deepEqual(Object.keys(echo.trailers).filter((n) => !n.startsWith(':')), ['x-req-checksum']);
      assert.equal(res.trailers?.['x-checksum'], 'abc');
    } finally {
      session.close();
    }
  });

  it('h2c upstream -> HTTP/1.1 client: chunked with the trailer section', async () => {
    const res = await h1Get(pxH2c.port, h2Up.port, '/trailers');
    assert.match(res, /^HTTP\/1\.1 200 /);
    assert.match(res, /\r\ntransfer-encoding: chunked\r\n/i);
    assert.equal(trailerSection(res), 'x-checksum: abc\r\ngrpc-status: 0\r\n');
  });

  it('h2c trailers-only answer -> HTTP/1.1 client: its fields in the head, an empty chunked body', async () => {
    const res = await h1Get(pxH2c.port, h2Up.port, '/trailers-only');
    assert.match(res, /^HTTP\/1\.1 200 /);
    assert.match(res, /\r\ngrpc-status: 5\r\n/);
    assert.ok(res.endsWith('\r\n\r\n0\r\n\r\n'), JSON.stringify(res));
  });

  it('HTTP/1.1 client -> h2c upstream: chunked request trailers become a trailing HEADERS frame, framing fields dropped', async () => {
    const before = h2Up.seen.length;
    const res = await rawRequest(
      pxH2c.port,
      `POST /echo HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${h2Up.port}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n` +
        '7\r\npayload\r\n0\r\nX-Req-Checksum: r1\r\nConnection: close\r\nKeep-Alive: timeout=1\r\nHost: evil\r\nX-Cmux-Port-Internal: 1\r\n\r\n',
      { timeoutMs: 10000 },
    );
    assert.match(res, /^HTTP\/1\.1 200 /);
    const seen = h2Up.seen[before];
    assert.equal(seen.body, 'payload');
    assert.deepEqual(Object.keys(seen.trailers).filter((n) => !n.startsWith(':')), ['x-req-checksum']);
    assert.equal(seen.trailers['x-req-checksum'], 'r1');
  });

  it('a request body without trailers to an h2c upstream ends cleanly (no trailing HEADERS)', async () => {
    const session = h2connect(pxH2c.port);
    try {
      const before = h2Up.seen.length;
      const res = await h2fetch(session, { ':method': 'POST', ':path': '/echo', 'x-cmux-port-internal': String(h2Up.port) }, { body: 'x' });
      assert.equal(res.status, 200);
      assert.equal(JSON.parse(res.body).body, 'x');
      assert.equal(h2Up.seen[before].trailers, null);
    } finally {
      session.close();
    }
  });

  it('oversized h2c upstream trailers (past maxHeaderSize x 2): HTTP/1.1 client cut before the last chunk, HTTP/2 stream reset', async () => {
    // A first exchange has the upstream session's SETTINGS acknowledged.
    assert.match(await h1Get(pxH2c.port, h2Up.port, '/trailers'), /^HTTP\/1\.1 200 /);
    const h1 = await h1Get(pxH2c.port, h2Up.port, '/big');
    assert.match(h1, /^HTTP\/1\.1 200 /);
    assert.equal(trailerSection(h1), null, 'no complete chunked body');
    assert.doesNotMatch(h1, /x-big/i);
    const session = h2connect(pxH2c.port);
    try {
      const res = await h2fetch(session, { ':path': '/big', 'x-cmux-port-internal': String(h2Up.port) });
      assert.equal(res.status, 200);
      assert.equal(res.trailers, null);
      assert.equal(res.rstCode, http2.constants.NGHTTP2_INTERNAL_ERROR);
      const next = await h2fetch(session, { ':path': '/trailers', 'x-cmux-port-internal': String(h2Up.port) });
      assert.equal(next.trailers?.['x-checksum'], 'abc');
    } finally {
      session.close();
    }
    assert.ok(await waitFor(() => pxH2c.proxy.getStats().upstreamH2Streams === 0, { timeoutMs: 10000 }));
  });

  it('TLS h2 client: trailers from HTTP/1.1 and h2c upstreams, request trailers to both', async () => {
    const session = http2.connect(`https://localhost:${pxTls.port}`, { ca });
    session.on('error', () => {});
    try {
      const fromH1 = await h2fetch(session, { ':path': '/trailers', 'x-cmux-port-internal': String(h1Up.port) });
      assert.equal(fromH1.body, 'hello world');
      assert.equal(fromH1.trailers?.['x-checksum'], 'abc');
      const fromH2 = await h2fetch(
        session,
        { ':method': 'POST', ':path': '/echo', 'x-cmux-port-internal': String(h2Up.port) },
        { body: 'tls', trailers: { 'x-req-checksum': 'r2' } },
      );
      assert.equal(fromH2.status, 200);
      assert.equal(JSON.parse(fromH2.body).trailers['x-req-checksum'], 'r2');
      assert.equal(fromH2.trailers?.['x-checksum'], 'abc');
      const before = recUp.requests.length;
      await h2fetch(session, { ':method': 'POST', ':path': '/up', 'x-cmux-port-internal': String(recUp.port) }, { body: 'hello', trailers: { 'x-req': 'tls' } });
      assert.ok(recorded(recUp, before, '/up').bytes.endsWith('\r\n5\r\nhello\r\n0\r\nx-req: tls\r\n\r\n'), JSON.stringify(recorded(recUp, before, '/up').bytes));
      assert.equal(session.alpnProtocol, 'h2');
    } finally {
      session.close();
    }
  });
});
