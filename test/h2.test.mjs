// Sniffing and forwarding over HTTP/2: h2c prior knowledge (node:http2 client) -> proxy -> HTTP/1.1
// upstream, routed by X-Cmux-Port-Internal. Real sockets on 127.0.0.1, no mocks.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { ERR_NO_ROUTE } from '../dist/route/router.js';
import { refusedPort } from './helpers/servers.mjs';
import {
  digestBody,
  startProxy,
  startUpstream,
  startRawServer,
  rawRequest,
  h2connect,
  h2request,
  sleep,
  waitFor,
} from './helpers/servers.mjs';

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
/** An empty SETTINGS frame (length 0, type 4, flags 0, stream 0). */
const EMPTY_SETTINGS = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);
const TEXT_PLAIN = 'text/plain; charset=utf-8';
const VIA_H2 = /^2 cmux-proxy-[0-9a-f]+$/;

const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

/** One HTTP/2 request whose body is collected as a Buffer; fails after `timeoutMs`. */
function h2requestRaw(session, headers, body, { timeoutMs = 8000 } = {}) {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: body === undefined });
    let response;
    const chunks = [];
    const timer = setTimeout(() => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      reject(new Error(`h2 stream did not end within ${timeoutMs} ms`));
    }, timeoutMs);
    stream.on('response', (h) => (response = h));
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', () => {
      clearTimeout(timer);
      resolve({ status: response?.[':status'], headers: response, body: Buffer.concat(chunks), rstCode: stream.rstCode });
    });
    stream.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    if (body !== undefined) stream.end(body);
  });
}

function closeSession(session) {
  if (session.closed || session.destroyed) return Promise.resolve();
  return new Promise((resolve) => session.close(resolve));
}

/** Frames (type, flags, stream id) in a raw HTTP/2 byte string from the server. */
function parseFrames(latin1) {
  const buf = Buffer.from(latin1, 'latin1');
  const frames = [];
  let at = 0;
  while (at + 9 <= buf.length) {
    const length = buf.readUIntBE(at, 3);
    frames.push({ length, type: buf[at + 3], flags: buf[at + 4], streamId: buf.readUInt32BE(at + 5) & 0x7fffffff });
    at += 9 + length;
  }
  return frames;
}

describe('HTTP/2 (h2c prior knowledge) -> HTTP/1.1 upstream', () => {
  let proxy;
  let port;
  let echo;
  let session;

  before(async () => {
    ({ proxy, port } = await startProxy());
    echo = await startUpstream();
    session = h2connect(port);
  });

  after(async () => {
    await closeSession(session);
    await proxy.stop();
    await echo.close();
  });

  const routed = (extra = {}, upstreamPort = echo.port) => ({ 'x-cmux-port-internal': String(upstreamPort), ...extra });

  it('GET reaches the upstream as HTTP/1.1 with the path and no routing header', async () => {
    const res = await h2request(session, routed({ ':method': 'GET', ':path': '/hello?x=1&y=%20' }));
    assert.equal(res.status, 200);
    const got = JSON.parse(res.body);
    assert.equal(got.method, 'GET');
    assert.equal(got.url, '/hello?x=1&y=%20');
    assert.equal(got.httpVersion, '1.1');
    assert.equal(got.bodyLength, 0);
    assert.equal(got.headers['x-cmux-port-internal'], undefined);
    assert.equal(got.headers['transfer-encoding'], undefined, 'a GET without body must not be sent chunked');
    // No pseudo-header leaks into the HTTP/1.1 head.
    assert.deepEqual(got.rawHeaders.filter((_, i) => i % 2 === 0 && got.rawHeaders[i].startsWith(':')), []);
  });

  it('POST body arrives byte-exact (with and without content-length)', async () => {
    const body = 'héllo wörld\u0000\r\n-- end';
    const withLength = await h2request(
      session,
      routed({ ':method': 'POST', ':path': '/post', 'content-type': 'text/plain', 'content-length': String(Buffer.byteLength(body)) }),
      body,
    );
    assert.equal(withLength.status, 200);
    let got = JSON.parse(withLength.body);
    assert.equal(got.method, 'POST');
    assert.equal(got.url, '/post');
    assert.equal(got.body, body);
    assert.equal(got.bodyLength, Buffer.byteLength(body));
    assert.equal(got.headers['content-type'], 'text/plain');
    assert.equal(got.headers['content-length'], String(Buffer.byteLength(body)));

    const noLength = await h2request(session, routed({ ':method': 'POST', ':path': '/post2' }), body);
    assert.equal(noLength.status, 200);
    got = JSON.parse(noLength.body);
    assert.equal(got.body, body);
    assert.equal(got.bodyLength, Buffer.byteLength(body));
  });

  it(':authority becomes the upstream Host (exactly one Host field)', async () => {
    const res = await h2request(session, routed({ ':method': 'GET', ':path': '/a', ':authority': 'app.example.test:8443' }));
    assert.equal(res.status, 200);
    const got = JSON.parse(res.body);
    assert.equal(got.headers.host, 'app.example.test:8443');
    const hostFields = got.rawHeaders.filter((v, i) => i % 2 === 0 && v.toLowerCase() === 'host');
    assert.equal(hostFields.length, 1);
    assert.equal(got.headers['x-forwarded-host'], 'app.example.test:8443');
    assert.equal(got.headers['x-forwarded-proto'], 'http');
    assert.equal(got.headers['x-forwarded-for'], '127.0.0.1');
  });

  it('several cookie fields are joined into one `cookie: a=1; b=2`', async () => {
    const res = await h2request(session, routed({ ':method': 'GET', ':path': '/c', cookie: ['a=1', 'b=2'] }));
    assert.equal(res.status, 200);
    const got = JSON.parse(res.body);
    const cookieFields = [];
    for (let i = 0; i < got.rawHeaders.length; i += 2) {
      if (got.rawHeaders[i].toLowerCase() === 'cookie') cookieFields.push(got.rawHeaders[i + 1]);
    }
    assert.deepEqual(cookieFields, ['a=1; b=2']);
  });

  it("the upstream's several Set-Cookie arrive as an array", async () => {
    const up = await startUpstream((_req, res) => {
      res.setHeader('set-cookie', ['sid=abc; Path=/; HttpOnly', 'theme=dark', 'lang=en; Max-Age=60']);
      res.end('ok');
    });
    try {
      const res = await h2request(session, routed({ ':method': 'GET', ':path': '/sc' }, up.port));
      assert.equal(res.status, 200);
      assert.equal(res.body, 'ok');
      assert.deepEqual(res.headers['set-cookie'], ['sid=abc; Path=/; HttpOnly', 'theme=dark', 'lang=en; Max-Age=60']);
    } finally {
      await up.close();
    }
  });

  it('connection-specific upstream headers are dropped and never break the h2 response', async () => {
    const up = await startRawServer((socket) => {
      let buf = '';
      socket.on('data', (c) => {
        buf += c.toString('latin1');
        while (buf.includes('\r\n\r\n')) {
          buf = buf.slice(buf.indexOf('\r\n\r\n') + 4);
          socket.write(
            'HTTP/1.1 200 OK\r\n' +
              'Connection: keep-alive, X-Hop\r\n' +
              'Keep-Alive: timeout=30, max=100\r\n' +
              'Transfer-Encoding: chunked\r\n' +
              'Upgrade: h2c\r\n' +
              'Proxy-Connection: keep-alive\r\n' +
              'X-Hop: secret\r\n' +
              'X-Kept: yes\r\n' +
              'Content-Type: text/plain\r\n' +
              '\r\n' +
              '5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n',
          );
        }
      });
    });
    try {
      for (let i = 0; i < 2; i++) {
        const res = await h2request(session, routed({ ':method': 'GET', ':path': `/hop${i}` }, up.port));
        assert.equal(res.status, 200);
        assert.equal(res.body, 'hello world');
        for (const name of ['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'x-hop']) {
          assert.equal(res.headers[name], undefined, `${name} must not reach the HTTP/2 client`);
        }
        assert.equal(res.headers['x-kept'], 'yes');
        assert.equal(res.headers['content-type'], 'text/plain');
      }
      // The session survived (no ERR_HTTP2_INVALID_CONNECTION_HEADERS tearing it down).
      assert.equal(session.destroyed, false);
      const again = await h2request(session, routed({ ':method': 'GET', ':path': '/after-hop' }));
      assert.equal(again.status, 200);
    } finally {
      await up.close();
    }
  });

  it('Via gets `2 cmux-proxy-<hex>` appended', async () => {
    const plain = JSON.parse((await h2request(session, routed({ ':method': 'GET', ':path': '/v1' }))).body);
    assert.match(plain.headers.via, VIA_H2);
    const token = plain.headers.via.slice(2);
    const chained = JSON.parse((await h2request(session, routed({ ':method': 'GET', ':path': '/v2', via: '1.1 edge' }))).body);
    assert.equal(chained.headers.via, `1.1 edge, 2 ${token}`);
  });

  it('100 concurrent streams on one session to an h1 upstream all succeed with their own bodies', async () => {
    const s = h2connect(port);
    try {
      const results = await Promise.all(
        Array.from({ length: 100 }, (_, i) =>
          h2request(s, routed({ ':method': 'POST', ':path': `/stream/${i}`, 'content-length': String(`body-${i}`.length) }), `body-${i}`),
        ),
      );
      results.forEach((res, i) => {
        assert.equal(res.status, 200, `stream ${i}`);
        const got = JSON.parse(res.body);
        assert.equal(got.url, `/stream/${i}`);
        assert.equal(got.body, `body-${i}`);
      });
    } finally {
      await closeSession(s);
    }
  });

  it('a 5 MiB upload and a 5 MiB download are byte-exact', async () => {
    const payload = randomBytes(5 * 1024 * 1024);
    const up = await startUpstream((req, res) => {
      if (req.url === '/download') {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': payload.length });
        res.end(payload);
        return;
      }
      if (req.url === '/echo') {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        req.pipe(res);
        return;
      }
      digestBody(req).then((d) => res.end(JSON.stringify(d)), () => {});
    });
    try {
      const upload = await h2requestRaw(session, routed({ ':method': 'PUT', ':path': '/upload' }, up.port), payload);
      assert.equal(upload.status, 200);
      assert.deepEqual(JSON.parse(upload.body.toString()), { length: payload.length, sha: sha256(payload) });

      const download = await h2requestRaw(session, routed({ ':method': 'GET', ':path': '/download' }, up.port));
      assert.equal(download.status, 200);
      assert.equal(download.headers['content-length'], String(payload.length));
      assert.equal(download.body.length, payload.length);
      assert.equal(sha256(download.body), sha256(payload));

      const echoed = await h2requestRaw(session, routed({ ':method': 'POST', ':path': '/echo' }, up.port), payload);
      assert.equal(echoed.status, 200);
      assert.equal(echoed.body.length, payload.length);
      assert.equal(sha256(echoed.body), sha256(payload));
    } finally {
      await up.close();
    }
  });

  it('HEAD and 204 answers end the stream without a body', async () => {
    const up = await startUpstream((req, res) => {
      if (req.url === '/no-content') {
        res.writeHead(204, { 'x-kind': 'empty' });
        res.end();
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '11' });
      res.end(req.method === 'HEAD' ? undefined : 'hello world');
    });
    try {
      const head = await h2requestRaw(session, routed({ ':method': 'HEAD', ':path': '/thing' }, up.port), undefined, { timeoutMs: 3000 });
      assert.equal(head.status, 200);
      assert.equal(head.headers['content-length'], '11');
      assert.equal(head.body.length, 0);
      assert.equal(up.requests.at(-1).method, 'HEAD');

      const noContent = await h2requestRaw(session, routed({ ':method': 'GET', ':path': '/no-content' }, up.port), undefined, { timeoutMs: 3000 });
      assert.equal(noContent.status, 204);
      assert.equal(noContent.headers['x-kind'], 'empty');
      assert.equal(noContent.body.length, 0);

      // A GET after them on the same upstream socket still gets its whole body.
      const get = await h2requestRaw(session, routed({ ':method': 'GET', ':path': '/thing' }, up.port), undefined, { timeoutMs: 3000 });
      assert.equal(get.status, 200);
      assert.equal(get.body.toString(), 'hello world');
    } finally {
      await up.close();
    }
  });

  it('no route -> 400 with the routing help text, text/plain; charset=utf-8', async () => {
    const res = await h2request(session, { ':method': 'GET', ':path': '/nowhere', ':authority': 'not-routable.example' });
    assert.equal(res.status, 400);
    assert.equal(res.headers['content-type'], TEXT_PLAIN);
    assert.equal(res.body, ERR_NO_ROUTE.message);
    assert.match(res.body, /X-Cmux-Port-Internal/);
    assert.equal(res.headers['content-length'], String(Buffer.byteLength(res.body)));
  });

  it("bad port -> 400 'invalid port in X-Cmux-Port-Internal'", async () => {
    for (const bad of ['70000', '0', 'abc', '80x', '-1']) {
      const res = await h2request(session, { ':method': 'GET', ':path': '/', 'x-cmux-port-internal': bad });
      assert.equal(res.status, 400, `port ${bad}`);
      assert.equal(res.headers['content-type'], TEXT_PLAIN);
      assert.equal(res.body, 'invalid port in X-Cmux-Port-Internal', `port ${bad}`);
    }
  });

  it("refused upstream -> 502 'upstream request error: ECONNREFUSED'", async () => {
    const dead = await refusedPort();
    const res = await h2request(session, routed({ ':method': 'GET', ':path': '/' }, dead));
    assert.equal(res.status, 502);
    assert.equal(res.headers['content-type'], TEXT_PLAIN);
    assert.equal(res.body, 'upstream request error: ECONNREFUSED');
    // The session keeps serving.
    const ok = await h2request(session, routed({ ':method': 'GET', ':path': '/after-502' }));
    assert.equal(ok.status, 200);
  });

  it('the h2c preface split over 3 TCP writes still works (full request through a splitting relay)', async () => {
    // A relay that forwards the client's first 24 bytes (the preface) in 3 separate, delayed writes.
    const relay = net.createServer((client) => {
      client.pause();
      const upstream = net.connect({ port, host: '127.0.0.1' });
      upstream.setNoDelay(true);
      client.on('error', () => {});
      upstream.on('error', () => {});
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      upstream.once('connect', () => {
        let pending = Buffer.alloc(0);
        const onData = async (chunk) => {
          pending = Buffer.concat([pending, chunk]);
          if (pending.length < 24) return;
          client.removeListener('data', onData);
          client.pause();
          upstream.write(pending.subarray(0, 7));
          await sleep(40);
          upstream.write(pending.subarray(7, 16));
          await sleep(40);
          upstream.write(pending.subarray(16));
          client.pipe(upstream);
          upstream.pipe(client);
          client.resume();
        };
        client.on('data', onData);
        client.resume();
      });
    });
    relay.listen(0, '127.0.0.1');
    await once(relay, 'listening');
    const s = h2connect(relay.address().port);
    try {
      const res = await h2request(s, routed({ ':method': 'POST', ':path': '/split' }), 'split-body');
      assert.equal(res.status, 200);
      const got = JSON.parse(res.body);
      assert.equal(got.url, '/split');
      assert.equal(got.body, 'split-body');
    } finally {
      await closeSession(s);
      relay.close();
    }
  });

  it('the h2c preface in 3 raw writes gets a SETTINGS frame back', async () => {
    const out = await rawRequest(
      port,
      [PREFACE.subarray(0, 5), PREFACE.subarray(5, 15), Buffer.concat([PREFACE.subarray(15), EMPTY_SETTINGS])],
      { timeoutMs: 2000, until: (s) => parseFrames(s).some((f) => f.type === 4 && (f.flags & 1) === 1) },
    );
    assert.ok(!out.startsWith('HTTP/1'), `got an HTTP/1 answer: ${JSON.stringify(out.slice(0, 40))}`);
    const frames = parseFrames(out);
    assert.ok(frames.length >= 1, 'no frame came back');
    assert.equal(frames[0].type, 4, 'first frame is SETTINGS');
    assert.equal(frames[0].flags & 1, 0, 'first SETTINGS is not an ACK');
    assert.equal(frames[0].streamId, 0);
    assert.ok(frames.some((f) => f.type === 4 && (f.flags & 1) === 1), 'our SETTINGS is acknowledged');
  });
});

describe('HTTP/2 disabled', () => {
  let proxy;
  let port;
  before(async () => {
    ({ proxy, port } = await startProxy({ enableHttp2: false }));
  });
  after(async () => {
    await proxy.stop();
  });

  /** An HTTP/2 answer an h2 client can read: SETTINGS, then GOAWAY(HTTP_1_1_REQUIRED, last stream 0). */
  function assertHttp11Required(out) {
    assert.ok(!out.startsWith('HTTP/1'), `got an HTTP/1 answer: ${JSON.stringify(out.slice(0, 40))}`);
    const buf = Buffer.from(out, 'latin1');
    const frames = parseFrames(out);
    assert.deepEqual(frames.map((f) => f.type), [4, 7], 'SETTINGS then GOAWAY');
    assert.equal(frames[0].flags, 0);
    const goaway = buf.subarray(9 + frames[0].length + 9);
    assert.equal(goaway.readUInt32BE(0), 0, 'last stream id');
    assert.equal(goaway.readUInt32BE(4), 0xd, 'HTTP_1_1_REQUIRED');
    assert.equal(goaway.subarray(8).toString('latin1'), 'HTTP/2 is disabled on this proxy');
  }

  it('an h2c preface gets GOAWAY(HTTP_1_1_REQUIRED) and a close', async () => {
    const started = Date.now();
    const out = await rawRequest(port, Buffer.concat([PREFACE, EMPTY_SETTINGS]), { timeoutMs: 3000 });
    const elapsed = Date.now() - started;
    assertHttp11Required(out);
    assert.ok(elapsed < 2000, `the proxy did not close the connection (${elapsed} ms)`);
  });

  it('a node:http2 client is told HTTP/1.1 is required', async () => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const errored = new Promise((resolve) => session.on('error', resolve));
    const [code] = await once(session, 'goaway');
    assert.equal(code, http2.constants.NGHTTP2_HTTP_1_1_REQUIRED);
    assert.match(String((await errored).message), /error code 13/);
    session.destroy();
  });

  it('a split preface gets the GOAWAY too, and HTTP/1.1 still works', async () => {
    const out = await rawRequest(port, [PREFACE.subarray(0, 10), PREFACE.subarray(10)], { timeoutMs: 3000 });
    assertHttp11Required(out);
    const echo = await startUpstream();
    try {
      const res = await rawRequest(
        port,
        `GET /ok HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${echo.port}\r\nConnection: close\r\n\r\n`,
        { timeoutMs: 3000 },
      );
      assert.match(res, /^HTTP\/1\.1 200 /);
    } finally {
      await echo.close();
    }
  });
});

describe('HTTP/2 stats', () => {
  let proxy;
  let port;
  let echo;
  before(async () => {
    ({ proxy, port } = await startProxy());
    echo = await startUpstream();
  });
  after(async () => {
    await proxy.stop();
    await echo.close();
  });

  it('count http2Requests and http2Connections (back to 0 after the session closes)', async () => {
    assert.equal(proxy.getStats().http2Connections, 0);
    assert.equal(proxy.getStats().http2Requests, 0);
    const a = h2connect(port);
    const b = h2connect(port);
    try {
      for (let i = 0; i < 3; i++) {
        const res = await h2request(a, { ':method': 'GET', ':path': `/s${i}`, 'x-cmux-port-internal': String(echo.port) });
        assert.equal(res.status, 200);
      }
      const res = await h2request(b, { ':method': 'GET', ':path': '/b', 'x-cmux-port-internal': String(echo.port) });
      assert.equal(res.status, 200);
      let stats = proxy.getStats();
      assert.equal(stats.http2Connections, 2);
      assert.equal(stats.http2Requests, 4);
      assert.equal(stats.http1Requests, 0);
      assert.equal(stats.totalRequests, 4);
      assert.equal(typeof stats.bytesTransferred, 'number');

      await closeSession(a);
      assert.ok(await waitFor(() => proxy.getStats().http2Connections === 1), `http2Connections: ${proxy.getStats().http2Connections}`);
      b.destroy();
      assert.ok(await waitFor(() => proxy.getStats().http2Connections === 0), `http2Connections: ${proxy.getStats().http2Connections}`);
      stats = proxy.getStats();
      assert.equal(stats.http2Requests, 4);
      assert.ok(await waitFor(() => proxy.getStats().activeConnections === 0));
    } finally {
      await closeSession(a);
      b.destroy();
    }
  });
});
