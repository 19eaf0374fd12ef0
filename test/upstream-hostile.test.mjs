// A hostile (or broken) HTTP/1.1 upstream, written as raw bytes: responses that overrun their
// framing onto a pooled socket another client is waiting for, a 101 nobody asked for, status
// codes outside 100-599, and an upstream whose TCP handshake never completes.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { onRequestHeads, proxyFor, rawUpstream, startProxy, rawRequest, request, sleep, statusCodes, waitFor } from './helpers/servers.mjs';
import { ERROR, FRAME, SETTING, dataFrame, headersFrame, rstStreamFrame, serveH2cFrames, settingsFrame, windowUpdateFrame } from './helpers/h2-raw.mjs';

const TEXT_PLAIN = 'text/plain; charset=utf-8';

/** The attacker's response: what a victim must never receive. */
const EVIL = 'HTTP/1.1 200 OK\r\nSet-Cookie: session=attacker; Path=/\r\nContent-Length: 6\r\n\r\nPWNED!';

describe('a pooled upstream socket with bytes left after the response is never handed on', () => {
  // Each case: the attacker's method and the exact bytes the upstream writes in one write().
  const cases = [
    {
      name: 'a naive upstream sends a body for HEAD',
      method: 'HEAD',
      bytes: `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${EVIL.length}\r\n\r\n${EVIL}`,
    },
    {
      name: 'two responses in one write',
      method: 'GET',
      bytes: `HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok${EVIL}`,
    },
    {
      name: 'a Content-Length shorter than the body',
      method: 'GET',
      bytes: `HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, world\r\n${EVIL}`,
    },
  ];
  for (const c of cases) {
    it(`${c.name}: the waiting client gets its own answer from a fresh socket, the socket is destroyed and counted`, async (t) => {
      const { proxy, port } = await proxyFor(t, { maxSocketsPerUpstream: 1 });
      let connections = 0;
      const seen = [];
      const up = await rawUpstream(t, (socket) => {
        const connection = ++connections;
        onRequestHeads(socket, async (s, head) => {
          const target = head.split(' ')[1];
          seen.push({ connection, target });
          if (target === '/attacker') {
            // Answer only once the victim waits for this very socket.
            await waitFor(() => proxy.getStats().upstreamWaiters === 1, { timeoutMs: 3000 });
            s.write(c.bytes);
            return;
          }
          const body = `victim answer on conn ${connection}`;
          s.write(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
        });
      });
      const route = `X-Cmux-Port-Internal: ${up.port}\r\n`;
      const attacker = rawRequest(port, `${c.method} /attacker HTTP/1.1\r\nHost: a\r\n${route}\r\n`, {
        timeoutMs: 3000,
        until: (s) => s.includes('\r\n\r\n') && (c.method === 'HEAD' || s.endsWith('ok') || s.endsWith('hello')),
      });
      await waitFor(() => seen.length === 1, { timeoutMs: 3000 });
      const victim = rawRequest(port, `GET /victim HTTP/1.1\r\nHost: v\r\nCookie: victim=1\r\n${route}\r\n`, {
        timeoutMs: 4000,
        until: (s) => /victim answer on conn \d+$/.test(s) || s.endsWith('PWNED!'),
      });
      const [a, v] = await Promise.all([attacker, victim]);
      assert.match(a, /^HTTP\/1\.1 200 OK\r\n/);
      assert.doesNotMatch(v, /attacker|PWNED/, `the victim got the attacker's response:\n${v}`);
      assert.match(v, /^HTTP\/1\.1 200 OK\r\n/);
      assert.match(v, /victim answer on conn 2$/, 'the victim must be served on a fresh upstream socket');
      assert.deepEqual(
        seen.map((r) => `${r.connection} ${r.target}`),
        ['1 /attacker', '2 /victim'],
      );
      assert.equal(proxy.getStats().upstreamErrors.UNEXPECTED_RESPONSE, 1);
      assert.equal(proxy.getStats().upstreamSocketsReused, 0);
    });
  }

  it('the same bytes on an ordinary keep-alive socket: a response followed by nothing is still reused', async (t) => {
    const { proxy, url } = await proxyFor(t, { maxSocketsPerUpstream: 1 });
    let connections = 0;
    const up = await rawUpstream(t, (socket) => {
      const connection = ++connections;
      onRequestHeads(socket, (s, head) => {
        const body = `conn ${connection} ${head.split(' ')[1]}`;
        s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      });
    });
    const headers = { 'x-cmux-port-internal': String(up.port) };
    const answers = await Promise.all([1, 2, 3, 4].map((i) => request(`${url}/r${i}`, { headers })));
    assert.deepEqual(answers.map((r) => r.body).sort(), ['conn 1 /r1', 'conn 1 /r2', 'conn 1 /r3', 'conn 1 /r4']);
    assert.equal(connections, 1);
    assert.equal(proxy.getStats().upstreamSocketsReused, 3);
    assert.equal(proxy.getStats().upstreamErrors.UNEXPECTED_RESPONSE, undefined);
  });
});

describe('a Content-Length body relayed outside llhttp is counted to its last byte', () => {
  // The body is longer than the read that carries the head, so its rest is relayed from the
  // socket's own reads (not parsed by llhttp); bytes past it must still discard the socket.
  const N = 150_000;
  const head = `HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${N}\r\n\r\n`;

  /** An upstream whose first connection answers /attacker with `write(socket)`, others answer normally. */
  async function setup(t, write) {
    const { proxy, port } = await proxyFor(t, { maxSocketsPerUpstream: 1 });
    let connections = 0;
    const seen = [];
    const up = await rawUpstream(t, (socket) => {
      socket.setNoDelay(true);
      const connection = ++connections;
      onRequestHeads(socket, async (s, reqHead) => {
        const target = reqHead.split(' ')[1];
        seen.push(`${connection} ${target}`);
        if (target === '/attacker') return write(s);
        const body = `victim answer on conn ${connection}`;
        s.write(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      });
    });
    const route = `X-Cmux-Port-Internal: ${up.port}\r\n`;
    return { proxy, port, route, seen };
  }

  /** The whole response: its head and 1000 body bytes, then all but the last byte, then the last byte (50 ms apart). */
  async function writeInThreeReads(s) {
    s.write(head + 'a'.repeat(1000));
    await sleep(50);
    s.write('b'.repeat(N - 1001));
    await sleep(50);
    s.write('z');
  }

  function attackerRequest(port, route) {
    return rawRequest(port, `GET /attacker HTTP/1.1\r\nHost: a\r\n${route}\r\n`, {
      timeoutMs: 5000,
      until: (s) => s.length >= s.indexOf('\r\n\r\n') + 4 + N && s.endsWith('z'),
    });
  }

  function victimRequest(port, route) {
    return rawRequest(port, `GET /victim HTTP/1.1\r\nHost: v\r\n${route}\r\n`, {
      timeoutMs: 5000,
      until: (s) => /victim answer on conn \d+$/.test(s) || s.includes('PWNED'),
    });
  }

  function assertWholeBody(a) {
    assert.match(a, /^HTTP\/1\.1 200 OK\r\n/);
    const body = a.slice(a.indexOf('\r\n\r\n') + 4);
    assert.equal(body.length, N, 'the client gets exactly Content-Length body bytes');
    assert.equal(body, 'a'.repeat(1000) + 'b'.repeat(N - 1001) + 'z');
  }

  it('extra bytes in the same read as the body\'s last byte: the waiting client gets a fresh socket and its own answer', async (t) => {
    const { proxy, port, route, seen } = await setup(t, async (s) => {
      s.write(head + 'a'.repeat(1000));
      await waitFor(() => proxy.getStats().upstreamWaiters === 1, { timeoutMs: 3000 });
      await sleep(50);
      s.write('b'.repeat(N - 1001));
      await sleep(50);
      // The body's last byte and an attacker's response in one write.
      s.write('z' + EVIL);
    });
    const attacker = attackerRequest(port, route);
    await waitFor(() => seen.length === 1, { timeoutMs: 3000 });
    const victim = victimRequest(port, route);
    const [a, v] = await Promise.all([attacker, victim]);
    assertWholeBody(a);
    assert.doesNotMatch(v, /attacker|PWNED/, `the victim got the attacker's response:\n${v}`);
    assert.match(v, /^HTTP\/1\.1 200 OK\r\n[^]*victim answer on conn 2$/);
    assert.deepEqual(seen, ['1 /attacker', '2 /victim']);
    assert.equal(proxy.getStats().upstreamErrors.UNEXPECTED_RESPONSE, 1);
    assert.equal(proxy.getStats().upstreamSocketsReused, 0);
  });

  it('extra bytes in a later read, on the idle socket: it is destroyed, the next client gets a fresh socket and its own answer', async (t) => {
    let attackerSocket = null;
    const { proxy, port, route, seen } = await setup(t, (s) => {
      attackerSocket = s;
      return writeInThreeReads(s);
    });
    const a = await attackerRequest(port, route);
    assertWholeBody(a);
    // The socket went back to the pool, idle; now the upstream sends bytes nobody asked for.
    assert.ok(await waitFor(() => proxy.getStats().upstreamSocketsIdle === 1, { timeoutMs: 3000 }), 'the socket went idle');
    attackerSocket.write(EVIL);
    assert.ok(await waitFor(() => proxy.getStats().upstreamErrors.UNEXPECTED_RESPONSE === 1, { timeoutMs: 3000 }), 'the idle socket is discarded');
    const v = await victimRequest(port, route);
    assert.doesNotMatch(v, /attacker|PWNED/, `the victim got the attacker's response:\n${v}`);
    assert.match(v, /victim answer on conn 2$/);
    assert.deepEqual(seen, ['1 /attacker', '2 /victim']);
  });

  it('body bytes that look like a response, in a later read, are relayed as body, never parsed as a response', async (t) => {
    const fake = EVIL.repeat(50);
    const { proxy, port, route, seen } = await setup(t, async (s) => {
      s.write(head + 'a'.repeat(1000));
      await sleep(50);
      // The rest of the body: responses' bytes, padded to exactly Content-Length.
      s.write(fake + 'b'.repeat(N - 1001 - fake.length) + 'z');
    });
    const a = await attackerRequest(port, route);
    const body = a.slice(a.indexOf('\r\n\r\n') + 4);
    assert.equal(body.length, N);
    assert.equal(body, 'a'.repeat(1000) + fake + 'b'.repeat(N - 1001 - fake.length) + 'z');
    const v = await victimRequest(port, route);
    assert.doesNotMatch(v, /PWNED/);
    assert.match(v, /victim answer on conn 1$/);
    assert.deepEqual(seen, ['1 /attacker', '1 /victim']);
    assert.equal(proxy.getStats().upstreamErrors.UNEXPECTED_RESPONSE, undefined);
  });

  it('a body that ends exactly at a read boundary, then a second response on the same socket: reused, both whole', async (t) => {
    const { proxy, port, route, seen } = await setup(t, writeInThreeReads);
    const a = await attackerRequest(port, route);
    assertWholeBody(a);
    // The next response on the same socket is parsed by a fresh llhttp state.
    const v = await rawRequest(port, `GET /victim HTTP/1.1\r\nHost: v\r\n${route}\r\n`, {
      timeoutMs: 5000,
      until: (s) => /victim answer on conn \d+$/.test(s),
    });
    assert.match(v, /victim answer on conn 1$/);
    const again = await attackerRequest(port, route);
    assertWholeBody(again);
    assert.deepEqual(seen, ['1 /attacker', '1 /victim', '1 /attacker']);
    assert.equal(proxy.getStats().upstreamSocketsReused, 2);
    assert.equal(proxy.getStats().upstreamErrors.UNEXPECTED_RESPONSE, undefined);
  });
});

/** Both client protocols: resolves { status, headers, body } or throws. */
async function h2Get(port, path, headers) {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on('error', () => {});
  try {
    return await new Promise((resolve, reject) => {
      const stream = session.request({ ':path': path, ...headers });
      const chunks = [];
      let response;
      const timer = setTimeout(() => reject(new Error('HTTP/2 client timeout')), 4000);
      stream.on('response', (h) => (response = h));
      stream.on('data', (d) => chunks.push(d));
      stream.on('end', () => {
        clearTimeout(timer);
        resolve({ status: response?.[':status'], headers: response, body: Buffer.concat(chunks).toString('latin1') });
      });
      stream.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  } finally {
    session.close();
  }
}

/** An HTTP/2 request for `path` through the proxy to `up` gets 502 BAD_RESPONSE; the upstream socket is closed and the error counted. */
async function assertH2BadResponse(proxy, port, up, path) {
  const res = await h2Get(port, path, { 'x-cmux-port-internal': String(up.port) });
  assert.equal(res.status, 502);
  assert.equal(res.body, 'upstream request error: BAD_RESPONSE');
  assert.ok(await waitFor(() => up.sockets.size === 0, { timeoutMs: 2000 }), 'the upstream socket stays open');
  assert.equal(proxy.getStats().upstreamErrors.BAD_RESPONSE, 1);
}

describe('an upstream 101 to a request that did not ask to upgrade', () => {
  const answers = {
    'with Upgrade: websocket': 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello from the other protocol',
    'without Upgrade': 'HTTP/1.1 101 Switching Protocols\r\n\r\n',
  };
  for (const [name, bytes] of Object.entries(answers)) {
    it(`${name} -> 502 BAD_RESPONSE at once (HTTP/1.1 client), upstream socket destroyed`, async (t) => {
      const { proxy, port } = await proxyFor(t, { upstreamResponseTimeoutMs: 30_000 });
      const up = await rawUpstream(t, bytes);
      const started = Date.now();
      const out = await rawRequest(port, `GET /plain HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`, {
        timeoutMs: 3000,
        until: (s) => s.includes('BAD_RESPONSE'),
      });
      assert.ok(Date.now() - started < 2500, 'the client was left waiting');
      assert.match(out, /^HTTP\/1\.1 502 Bad Gateway\r\n/);
      assert.ok(out.includes(`content-type: ${TEXT_PLAIN}`));
      assert.ok(out.endsWith('\r\n\r\nupstream request error: BAD_RESPONSE'), out);
      assert.doesNotMatch(out, /101|other protocol/);
      assert.ok(await waitFor(() => up.sockets.size === 0, { timeoutMs: 2000 }), 'the upstream socket stays open');
      assert.equal(proxy.getStats().upstreamErrors.BAD_RESPONSE, 1);
      assert.equal(proxy.getStats().upstreamSocketsActive, 0);
    });

    it(`${name} -> 502 BAD_RESPONSE at once (HTTP/2 client)`, async (t) => {
      const { proxy, port } = await proxyFor(t, { upstreamResponseTimeoutMs: 30_000 });
      await assertH2BadResponse(proxy, port, await rawUpstream(t, bytes), '/plain');
    });
  }
});

describe('upstream status codes outside 100-599', () => {
  const statuses = {
    '099': 'HTTP/1.1 099 Nine\r\nContent-Length: 5\r\n\r\nhello',
    '000': 'HTTP/1.1 000 Zero\r\nContent-Length: 5\r\n\r\nhello',
    '888': 'HTTP/1.1 888 Eights\r\nContent-Length: 5\r\n\r\nhello',
    '600': 'HTTP/1.1 600 Six\r\nContent-Length: 5\r\n\r\nhello',
  };
  for (const [code, bytes] of Object.entries(statuses)) {
    it(`${code} -> 502 upstream request error: BAD_RESPONSE (HTTP/1.1 client), nothing else on the connection`, async (t) => {
      const { proxy, port } = await proxyFor(t);
      const up = await rawUpstream(t, bytes);
      const out = await rawRequest(port, `GET /status HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`, { timeoutMs: 1500 });
      const body = 'upstream request error: BAD_RESPONSE';
      assert.match(out, /^HTTP\/1\.1 502 Bad Gateway\r\n/);
      assert.ok(out.endsWith(`\r\n\r\n${body}`), `one 502 and nothing after it:\n${out}`);
      assert.equal(out.split('HTTP/1.1 ').length, 2, `more than one response:\n${out}`);
      assert.doesNotMatch(out, /hello|Zero|Nine|Eights|Six/);
      assert.ok(await waitFor(() => up.sockets.size === 0, { timeoutMs: 2000 }), 'the upstream socket stays open');
      assert.equal(proxy.getStats().upstreamErrors.BAD_RESPONSE, 1);
    });

    it(`${code} -> 502 upstream request error: BAD_RESPONSE (HTTP/2 client)`, async (t) => {
      const { proxy, port } = await proxyFor(t);
      const up = await rawUpstream(t, bytes);
      const res = await h2Get(port, '/status', { 'x-cmux-port-internal': String(up.port) });
      assert.equal(res.status, 502);
      assert.equal(res.body, 'upstream request error: BAD_RESPONSE');
      assert.equal(proxy.getStats().upstreamErrors.BAD_RESPONSE, 1);
      // The proxy still serves this client protocol afterwards.
      await sleep(10);
    });
  }

  /**
   * An h2c upstream written as raw frames: every request stream gets HEADERS with `status`;
   * the error code of each RST_STREAM it receives goes to `resets`.
   */
  function rawH2cUpstream(status, resets = []) {
    return (socket) =>
      serveH2cFrames(socket, ({ type, streamId, payload }) => {
        if (type === FRAME.RST_STREAM && payload.length === 4) resets.push(payload.readUInt32BE(0));
        if (type === FRAME.HEADERS && streamId !== 0) {
          socket.write(headersFrame(streamId, [[':status', status], ['content-type', 'text/plain'], ['set-cookie', 'session=attacker']], { endStream: true }));
        }
      });
  }

  // nghttp2 1.70 and later (Node 24) reset an upstream stream whose :status is below 100 as
  // malformed (RST_STREAM(PROTOCOL_ERROR) to the upstream) before Node reports a response, so the
  // proxy only sees a reset stream: 502 UPSTREAM_RESET. Earlier versions hand the head over and
  // the proxy refuses it: 502 BAD_RESPONSE. Either way nothing of the response reaches the client.
  const [nghttp2Major, nghttp2Minor] = process.versions.nghttp2.split('.').map(Number);
  const nghttp2ResetsLowStatus = nghttp2Major > 1 || nghttp2Minor >= 70;
  for (const status of ['099', '000', '888']) {
    const code = nghttp2ResetsLowStatus && Number(status) < 100 ? 'UPSTREAM_RESET' : 'BAD_RESPONSE';
    for (const client of ['HTTP/1.1', 'HTTP/2']) {
      it(`:status ${status} from an h2c upstream -> 502 ${code} (${client} client, nghttp2 ${process.versions.nghttp2})`, async (t) => {
        const { proxy, port } = await proxyFor(t, { upstreamProtocol: 'h2c' });
        const resets = [];
        const up = await rawUpstream(t, rawH2cUpstream(status, resets));
        const res =
          client === 'HTTP/2'
            ? await h2Get(port, '/h2c', { 'x-cmux-port-internal': String(up.port) })
            : await request(`http://127.0.0.1:${port}/h2c`, { headers: { 'x-cmux-port-internal': String(up.port) } });
        assert.equal(res.status, 502);
        assert.equal(res.body, `upstream request error: ${code}`);
        assert.equal(res.headers['set-cookie'], undefined);
        assert.equal(proxy.getStats().upstreamErrors[code], 1);
        if (code === 'UPSTREAM_RESET') assert.ok(await waitFor(() => resets.includes(ERROR.PROTOCOL_ERROR)), `the proxy side resets the upstream stream as malformed (got ${resets})`);
      });
    }
  }

  it('100-599 pass: a 599 is relayed', async (t) => {
    const { port } = await proxyFor(t);
    const up = await rawUpstream(t, 'HTTP/1.1 599 Edge\r\nContent-Length: 2\r\n\r\nok');
    const out = await rawRequest(port, `GET / HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`, { timeoutMs: 3000, until: (s) => s.endsWith('ok') });
    assert.match(out, /^HTTP\/1\.1 599 Edge\r\n/);
  });
});

describe('an upstream that answers with 1xx without end', () => {
  // 103 Early Hints with a 1 KiB Link each, 2,000 of them in one burst: more than a response
  // deadline would ever stop in time (they went on without limit, ~90 MiB/s into the proxy's memory).
  const hint = `HTTP/1.1 103 Early Hints\r\nLink: </${'a'.repeat(1024)}>; rel=preload\r\n\r\n`;
  const flood = (socket) => onRequestHeads(socket, (s) => s.write(hint.repeat(2000)));

  it('HTTP/1.1 client: 16 interim answers are relayed, then 502 BAD_RESPONSE; the upstream socket is closed', async (t) => {
    const { proxy, port } = await proxyFor(t);
    const up = await rawUpstream(t, flood);
    const out = await rawRequest(port, `GET /hints HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`, {
      timeoutMs: 3000,
      until: (text) => text.endsWith('upstream request error: BAD_RESPONSE'),
    });
    const statuses = statusCodes(out);
    assert.deepEqual(statuses, [...Array(16).fill('103'), '502'], `statuses: ${statuses.length} ${statuses.slice(-3)}`);
    assert.ok(await waitFor(() => up.sockets.size === 0, { timeoutMs: 2000 }), 'the upstream socket stays open');
    assert.equal(proxy.getStats().upstreamErrors.BAD_RESPONSE, 1);
  });

  it('HTTP/2 client: the stream gets 502 BAD_RESPONSE; the upstream socket is closed', async (t) => {
    const { proxy, port } = await proxyFor(t);
    await assertH2BadResponse(proxy, port, await rawUpstream(t, flood), '/hints');
  });

  it('a 100 Continue and 15 Early Hints before the answer are all relayed', async (t) => {
    const { port } = await proxyFor(t);
    const up = await rawUpstream(t, 'HTTP/1.1 100 Continue\r\n\r\n' + hint.repeat(15) + 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    const out = await rawRequest(port, `GET /hints HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`, { timeoutMs: 3000, until: (text) => text.endsWith('\r\n\r\nok') });
    const statuses = statusCodes(out);
    assert.deepEqual(statuses, ['100', ...Array(15).fill('103'), '200']);
  });
});

describe('connect timeout', () => {
  /**
   * A loopback listener whose accept queue is full, so the kernel drops further SYNs and a
   * connect() to it never completes: python3 listens with backlog 0 and never accepts, and two
   * connections fill its queue.
   */
  async function blackHole(t) {
    const py = spawn('python3', [
      '-c',
      'import socket,sys,time\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(60)',
    ], { stdio: ['ignore', 'pipe', 'inherit'] });
    t.after(() => py.kill());
    const [line] = await once(py.stdout, 'data');
    const port = Number(String(line).trim());
    const net = await import('node:net');
    const fillers = [];
    for (let i = 0; i < 3; i++) {
      const s = net.connect({ port, host: '127.0.0.1' });
      s.on('error', () => {});
      fillers.push(s);
    }
    t.after(() => fillers.forEach((s) => s.destroy()));
    await sleep(200);
    return port;
  }

  it("an upstream whose TCP handshake never completes -> 504 'upstream timeout', counted in upstreamConnectTimeouts", async (t) => {
    const port = await blackHole(t);
    const { proxy, url } = await proxyFor(t, { upstreamConnectTimeoutMs: 500, upstreamResponseTimeoutMs: 30_000 });
    const started = Date.now();
    const res = await request(`${url}/never`, { headers: { 'x-cmux-port-internal': String(port) } });
    const elapsed = Date.now() - started;
    assert.equal(res.status, 504);
    assert.equal(res.headers['content-type'], TEXT_PLAIN);
    assert.equal(res.body, 'upstream timeout');
    assert.ok(elapsed >= 400 && elapsed < 3000, `answered after ${elapsed} ms`);
    const stats = proxy.getStats();
    assert.equal(stats.upstreamConnectTimeouts, 1);
    assert.equal(stats.upstreamErrors.CONNECT_TIMEOUT, 1);
    assert.equal(stats.upstreamSocketsActive, 0);
  });
});

describe('an h2c upstream that opens its windows wide and stops reading', () => {
  it('stop() still closes its socket (Node\'s session destroy waits for the stuck write forever)', { timeout: 60_000 }, async (t) => {
    const { proxy, port } = await startProxy({ upstreamProtocol: 'h2c' });
    let upSocket = null;
    let upClosed = false;
    const up = await rawUpstream(t, (socket) => {
      upSocket = socket;
      socket.on('close', () => (upClosed = true));
      let seenPreface = false;
      let buf = Buffer.alloc(0);
      socket.on('data', (c) => {
        if (seenPreface) return;
        buf = Buffer.concat([buf, c]);
        if (buf.length < 24) return;
        seenPreface = true;
        // Windows of 2^31-1 for every stream and the connection, then nothing more is read.
        socket.write(Buffer.concat([settingsFrame({ [SETTING.INITIAL_WINDOW_SIZE]: 0x7fffffff }), settingsFrame({}, { ack: true }), windowUpdateFrame(0, 0x7fff0000)]));
        setTimeout(() => socket.pause(), 100);
      });
    });
    // A 64 MiB upload: the proxy writes it upstream until the socket buffers are full.
    const client = net.connect(port, '127.0.0.1');
    client.on('error', () => {});
    t.after(() => client.destroy());
    client.write(`POST /upload HTTP/1.1\r\nHost: app\r\nX-Cmux-Port-Internal: ${up.port}\r\nContent-Length: ${64 * 1024 * 1024}\r\n\r\n`);
    const chunk = Buffer.alloc(1024 * 1024, 0x61);
    for (let i = 0; i < 64 && !client.destroyed; i++) {
      if (client.write(chunk)) continue;
      // Stalled: the upstream reads nothing and the proxy's buffers toward it are full.
      if ((await Promise.race([once(client, 'drain').then(() => 'drain'), sleep(1000)])) !== 'drain') break;
    }
    assert.ok(await waitFor(() => upSocket !== null && proxy.getStats().upstreamH2Streams === 1), 'the upload runs on an h2c stream');
    await sleep(500);
    // This process's socket to the upstream (the proxy runs in it): open until the proxy lets it go.
    const toUpstream = () => process._getActiveHandles().filter((h) => h instanceof net.Socket && h.remotePort === up.port && !h.destroyed).length;
    assert.equal(toUpstream(), 1);
    await proxy.stop();
    assert.ok(await waitFor(() => toUpstream() === 0, { timeoutMs: 10_000 }), 'the proxy closed its upstream socket in stop()');
    // Reading again, the upstream gets everything queued, then the close.
    upSocket.resume();
    assert.ok(await waitFor(() => upClosed, { timeoutMs: 10_000 }), 'the upstream sees the close');
  });
});

describe('an h2c upstream that resets a stream with NO_ERROR or CANCEL', () => {
  // Node ends the readable side of an upstream stream reset with NO_ERROR or CANCEL as it ends
  // one that got END_STREAM. Taken for a complete response, a reset before the head left the
  // client waiting for ever, and a CANCEL mid-body reached the client as a complete, truncated body.
  /** Answers each request stream with `frames(streamId)`, written in one write. */
  const answering = (frames) => (socket) =>
    serveH2cFrames(socket, ({ type, streamId }) => {
      if (type === FRAME.HEADERS && streamId !== 0) socket.write(Buffer.concat(frames(streamId)));
    });
  const head = (id) => headersFrame(id, [[':status', '200'], ['content-type', 'text/plain']]);

  /** What an HTTP/1.1 client gets: status, body and whether the message was complete. */
  function h1Get(port, upstreamPort) {
    return new Promise((resolve, reject) => {
      const req = http.get({ port, path: '/', headers: { 'x-cmux-port-internal': String(upstreamPort) } }, (res) => {
        let body = '';
        res.setEncoding('latin1');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, body, complete: res.complete }));
        res.on('error', () => resolve({ status: res.statusCode, body, complete: false }));
      });
      req.on('error', reject);
      req.setTimeout(4000, () => reject(new Error('HTTP/1.1 client timeout')));
    });
  }

  for (const [name, code, answer] of [
    ['NO_ERROR', ERROR.NO_ERROR, 'UPSTREAM_CLOSED'],
    ['CANCEL', ERROR.CANCEL, 'UPSTREAM_RESET'],
  ]) {
    it(`RST_STREAM(${name}) before the head: 502 ${answer} to HTTP/1.1 and HTTP/2 clients`, async (t) => {
      const { proxy, port } = await proxyFor(t, { upstreamProtocol: 'h2c' });
      const up = await rawUpstream(t, answering((id) => [rstStreamFrame(id, code)]));
      const h2 = await h2Get(port, '/', { 'x-cmux-port-internal': String(up.port) });
      assert.equal(h2.status, 502);
      assert.equal(h2.body, `upstream request error: ${answer}`);
      const h1 = await h1Get(port, up.port);
      assert.equal(h1.status, 502);
      assert.equal(h1.body, `upstream request error: ${answer}`);
      assert.equal(proxy.getStats().upstreamErrors[answer], 2);
    });

    // RST_STREAM(NO_ERROR) mid-body cannot be told from the body's end (see H2UpstreamRequest.onEnd).
    if (code === ERROR.NO_ERROR) continue;
    it(`RST_STREAM(${name}) mid-body: no client gets a complete-looking response`, async (t) => {
      const { port } = await proxyFor(t, { upstreamProtocol: 'h2c' });
      const up = await rawUpstream(t, answering((id) => [head(id), dataFrame(id, Buffer.from('partial-')), rstStreamFrame(id, code)]));
      await assert.rejects(h2Get(port, '/', { 'x-cmux-port-internal': String(up.port) }), (err) => err.code === 'ERR_HTTP2_STREAM_ERROR');
      const h1 = await h1Get(port, up.port);
      assert.equal(h1.status, 200);
      assert.equal(h1.complete, false, `HTTP/1.1 client got ${JSON.stringify(h1)}`);
    });
  }

  it('RST_STREAM(NO_ERROR) right after a complete response (RFC 9113 §8.1) leaves it complete', async (t) => {
    const { port } = await proxyFor(t, { upstreamProtocol: 'h2c' });
    const up = await rawUpstream(t, answering((id) => [head(id), dataFrame(id, Buffer.from('whole body'), { endStream: true }), rstStreamFrame(id, ERROR.NO_ERROR)]));
    const h2 = await h2Get(port, '/', { 'x-cmux-port-internal': String(up.port) });
    assert.deepEqual([h2.status, h2.body], [200, 'whole body']);
    const h1 = await h1Get(port, up.port);
    assert.deepEqual(h1, { status: 200, body: 'whole body', complete: true });
  });
});
