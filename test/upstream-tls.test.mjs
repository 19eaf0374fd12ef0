// TLS to upstreams: dev servers that serve HTTPS themselves. Real `https` and
// `http2.createSecureServer` upstreams with a test CA (scripts/gen-dev-cert.sh), a self-signed
// certificate, an expired one and one for another name; HTTP/1.1 and h2 clients, WebSockets over
// HTTP/1.1 Upgrade and RFC 8441 extended CONNECT, pooling, and the hostile cases.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket, { WebSocketServer } from 'ws';
import { createProxyServer } from '../dist/index.js';
import { startProxy, startRawServer, request, h2connect, h2request } from './helpers/servers.mjs';

const GEN = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));

function openssl(args) {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

/** Certificates for the upstreams: CA-signed (good, other name, expired) and self-signed. */
function makeCerts(dir) {
  execFileSync('bash', [GEN, '--out', dir, '--name', 'good'], { stdio: 'ignore' });
  const ca = join(dir, 'ca.pem');
  const caKey = join(dir, 'ca-key.pem');
  const pair = (name) => ({ cert: readFileSync(join(dir, `${name}.pem`)), key: readFileSync(join(dir, `${name}-key.pem`)) });
  // Self-signed, for localhost and 127.0.0.1 (what Vite's basic-ssl plugin and `next dev --experimental-https` make).
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-sha256', '-days', '30', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', join(dir, 'self-key.pem'), '-out', join(dir, 'self.pem')]);
  // Signed by the CA for other.test only (not the upstream's name or address).
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-sha256', '-subj', '/CN=other.test', '-keyout', join(dir, 'other-key.pem'), '-out', join(dir, 'other.csr')]);
  writeFileSync(join(dir, 'other.ext'), 'subjectAltName=DNS:other.test\nextendedKeyUsage=serverAuth\n');
  openssl(['x509', '-req', '-in', join(dir, 'other.csr'), '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-days', '30', '-sha256',
    '-extfile', join(dir, 'other.ext'), '-out', join(dir, 'other.pem')]);
  // Signed by the CA for localhost, valid in January 2020 only.
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-sha256', '-subj', '/CN=localhost', '-keyout', join(dir, 'expired-key.pem'), '-out', join(dir, 'expired.csr')]);
  writeFileSync(join(dir, 'index.txt'), '');
  writeFileSync(join(dir, 'serial'), '1000\n');
  writeFileSync(join(dir, 'ca.cnf'), [
    '[ca]', 'default_ca = d', '[d]', `database = ${join(dir, 'index.txt')}`, `new_certs_dir = ${dir}`, `serial = ${join(dir, 'serial')}`,
    'default_md = sha256', 'policy = p', 'unique_subject = no', '[p]', 'commonName = supplied', '[ext]',
    'subjectAltName = DNS:localhost,IP:127.0.0.1', 'extendedKeyUsage = serverAuth', '',
  ].join('\n'));
  openssl(['ca', '-batch', '-notext', '-config', join(dir, 'ca.cnf'), '-extensions', 'ext', '-cert', ca, '-keyfile', caKey,
    '-in', join(dir, 'expired.csr'), '-out', join(dir, 'expired.pem'), '-startdate', '20200101000000Z', '-enddate', '20200201000000Z']);
  return { ca, good: pair('good'), self: pair('self'), other: pair('other'), expired: pair('expired') };
}

/** What an upstream saw of a request: TLS or not, ALPN, SNI, HTTP version, headers. */
function describeRequest(req) {
  const socket = req.socket ?? req.stream?.session?.socket;
  return {
    tls: socket?.encrypted === true,
    alpn: socket?.alpnProtocol ?? null,
    servername: socket?.servername ?? null,
    version: req.httpVersion,
    resumed: typeof socket?.isSessionReused === 'function' ? socket.isSessionReused() : false,
    scheme: req.headers[':scheme'] ?? null,
    schemeHeader: req.headers['x-cmux-upstream-scheme'] ?? null,
    host: req.headers.host ?? req.headers[':authority'] ?? null,
  };
}

function answer(req, res) {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ ...describeRequest(req), body: Buffer.concat(chunks).toString() }));
  });
}

async function listen(server) {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server.address().port;
}

async function close(server) {
  server.closeAllConnections?.();
  await new Promise((r) => server.close(() => r()));
}

const route = (port, scheme = 'https') => ({ 'x-cmux-port-internal': String(port), 'x-cmux-upstream-scheme': scheme });

describe('TLS to upstreams', () => {
  let dir;
  let certs;
  let goodH1; // https, ALPN http/1.1
  let goodH2; // http2 secure, h2 only
  let selfSigned;
  let otherName;
  let expired;
  let ports;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-uptls-'));
    certs = makeCerts(dir);
    goodH1 = https.createServer({ ...certs.good }, answer);
    goodH2 = http2.createSecureServer({ ...certs.good }, answer);
    selfSigned = https.createServer({ ...certs.self }, answer);
    otherName = https.createServer({ ...certs.other }, answer);
    expired = https.createServer({ ...certs.expired }, answer);
    ports = {
      goodH1: await listen(goodH1),
      goodH2: await listen(goodH2),
      selfSigned: await listen(selfSigned),
      otherName: await listen(otherName),
      expired: await listen(expired),
    };
  });
  after(async () => {
    for (const s of [goodH1, goodH2, selfSigned, otherName, expired]) await close(s);
    rmSync(dir, { recursive: true, force: true });
  });

  it('an HTTP/1.1 client reaches an HTTPS upstream (ALPN http/1.1, SNI = the Host) with X-Cmux-Upstream-Scheme: https; the header is not forwarded', async () => {
    const px = await startProxy({ upstreamCa: certs.ca });
    try {
      const res = await request(`${px.url}/x`, { method: 'POST', headers: { ...route(ports.goodH1), host: 'app.localhost' }, body: 'hello' });
      assert.equal(res.status, 200, res.body);
      const seen = JSON.parse(res.body);
      assert.deepEqual(
        { tls: seen.tls, alpn: seen.alpn, servername: seen.servername, body: seen.body, schemeHeader: seen.schemeHeader, host: seen.host },
        { tls: true, alpn: 'http/1.1', servername: 'app.localhost', body: 'hello', schemeHeader: null, host: 'app.localhost' },
      );
      // Keep-alive: a second request for the same Host (server name) reuses the TLS socket.
      const again = await request(`${px.url}/y`, { headers: { ...route(ports.goodH1), host: 'app.localhost' } });
      assert.equal(again.status, 200);
      const stats = px.proxy.getStats();
      assert.equal(stats.upstreamSocketsCreated, 1);
      assert.equal(stats.upstreamSocketsReused, 1);
    } finally {
      await px.proxy.stop();
    }
  });

  it('an h2 client reaches an HTTPS upstream over HTTP/1.1 and an h2-only upstream over HTTP/2 (ALPN h2, :scheme https) with upstreamProtocol auto', async () => {
    const px = await startProxy({ upstreamCa: certs.ca, upstreamProtocol: 'auto', upstreamTls: true });
    const session = h2connect(px.port);
    try {
      const h1 = await h2request(session, { ':path': '/a', 'x-cmux-port-internal': String(ports.goodH1) });
      assert.equal(h1.headers[':status'], 200, h1.body);
      assert.deepEqual(JSON.parse(h1.body).alpn, 'http/1.1');
      assert.equal(JSON.parse(h1.body).version, '1.1');
      const h2 = await h2request(session, { ':method': 'POST', ':path': '/b', 'x-cmux-port-internal': String(ports.goodH2) }, 'body-h2');
      assert.equal(h2.headers[':status'], 200, h2.body);
      const seen = JSON.parse(h2.body);
      assert.deepEqual({ tls: seen.tls, alpn: seen.alpn, version: seen.version, scheme: seen.scheme, body: seen.body }, { tls: true, alpn: 'h2', version: '2.0', scheme: 'https', body: 'body-h2' });
      assert.ok(px.proxy.getStats().upstreamH2Sessions >= 1);
    } finally {
      session.close();
      await px.proxy.stop();
    }
  });

  it('upstreamProtocol h2c speaks HTTP/2 with ALPN h2 to a TLS upstream (HTTP/1.1 client)', async () => {
    const px = await startProxy({ upstreamCa: certs.ca, upstreamProtocol: 'h2c' });
    try {
      const res = await request(`${px.url}/c`, { headers: route(ports.goodH2) });
      assert.equal(res.status, 200, res.body);
      assert.equal(JSON.parse(res.body).alpn, 'h2');
    } finally {
      await px.proxy.stop();
    }
  });

  it('refuses a self-signed upstream by default: 502 UPSTREAM_TLS_CERT, counted; accepted with upstreamTlsInsecureLoopback', async () => {
    const px = await startProxy();
    try {
      const res = await request(`${px.url}/`, { headers: route(ports.selfSigned) });
      assert.equal(res.status, 502);
      assert.match(res.body, /UPSTREAM_TLS_CERT/);
      assert.match(res.body, /certificate did not verify/);
      assert.equal(px.proxy.getStats().upstreamErrors.UPSTREAM_TLS_CERT, 1);
      // The CA-signed one is refused too without upstreamCa.
      const good = await request(`${px.url}/`, { headers: route(ports.goodH1) });
      assert.equal(good.status, 502);
      assert.match(good.body, /UPSTREAM_TLS_CERT/);
    } finally {
      await px.proxy.stop();
    }
    const insecure = await startProxy({ upstreamTlsInsecureLoopback: true });
    try {
      const res = await request(`${insecure.url}/`, { headers: route(ports.selfSigned) });
      assert.equal(res.status, 200, res.body);
      assert.equal(JSON.parse(res.body).tls, true);
    } finally {
      await insecure.proxy.stop();
    }
  });

  it('upstreamTlsInsecureLoopback counts `localhost` as loopback (a fallback named by host name)', async () => {
    const px = await startProxy({ upstreamTlsInsecureLoopback: true, fallback: { port: ports.selfSigned, host: 'localhost', tls: true } });
    try {
      const res = await request(`${px.url}/`, { headers: { host: 'unrouted.example' } });
      assert.equal(res.status, 200, res.body);
      assert.equal(JSON.parse(res.body).tls, true);
    } finally {
      await px.proxy.stop();
    }
  });

  it('a fallback { port, tls: true } is spoken to over TLS (per-route option)', async () => {
    const px = await startProxy({ upstreamCa: certs.ca, fallback: { port: ports.goodH1, tls: true } });
    try {
      const res = await request(`${px.url}/fb`, { headers: { host: 'unrouted.example' } });
      assert.equal(res.status, 200, res.body);
      assert.equal(JSON.parse(res.body).tls, true);
    } finally {
      await px.proxy.stop();
    }
  });

  it('routes: an upstream with tls: true is spoken to over TLS (certificate checks as for any target), active checks too; tls: false stays cleartext under upstreamTls', async () => {
    const plain = http.createServer(answer);
    const plainPort = await listen(plain);
    const px = await startProxy({
      upstreamCa: certs.ca,
      upstreamTls: true,
      routes: [
        { match: { host: 'secure.test' }, upstreams: [{ address: `127.0.0.1:${ports.goodH1}`, tls: true }], healthCheck: { path: '/health', intervalMs: 500 } },
        { match: { host: 'default.test' }, upstreams: [`127.0.0.1:${ports.goodH1}`] },
        { match: { host: 'plain.test' }, upstreams: [{ address: `127.0.0.1:${plainPort}`, tls: false }], healthCheck: { path: '/health', intervalMs: 500 } },
        { match: { host: 'bad-cert.test' }, upstreams: [{ address: `127.0.0.1:${ports.selfSigned}`, tls: true }] },
      ],
    });
    try {
      // The TLS active check passes: a failing one would take the only upstream out (503). (Each
      // check has 500 ms for its connect, handshake and status line, generous on a busy machine.)
      await new Promise((r) => setTimeout(r, 1200));
      for (const host of ['secure.test', 'default.test']) {
        const res = await request(`${px.url}/r`, { headers: { host } });
        assert.equal(res.status, 200, `${host}: ${res.body}`);
        assert.equal(JSON.parse(res.body).tls, true, host);
      }
      const plainRes = await request(`${px.url}/r`, { headers: { host: 'plain.test' } });
      assert.equal(plainRes.status, 200, plainRes.body);
      assert.equal(JSON.parse(plainRes.body).tls, false);
      const bad = await request(`${px.url}/r`, { headers: { host: 'bad-cert.test' } });
      assert.equal(bad.status, 502);
      assert.match(bad.body, /UPSTREAM_TLS_CERT/);
      const states = Object.fromEntries(px.proxy.getStats().routeUpstreams.map((u) => [u.route, u.healthy]));
      assert.equal(states['secure.test'], true);
      assert.equal(states['plain.test'], true);
      assert.throws(() => px.proxy.updateRoutes([{ match: { host: 'x.test' }, upstreams: [{ address: '/tmp/x.sock', tls: true }] }]), /routes\[0\]\.upstreams\[0\]\.tls/);
      assert.throws(() => px.proxy.updateRoutes([{ match: { host: 'x.test' }, upstreams: [{ address: '127.0.0.1:1', tls: 'yes' }] }]), /tls: "yes"/);
    } finally {
      await px.proxy.stop();
      await close(plain);
    }
  });

  it('an active check to a TLS upstream names it in Host as host:port (as a cleartext one), not by its pool key', async () => {
    const hosts = [];
    const checked = https.createServer({ ...certs.good }, (req, res) => {
      if (req.url === '/health') hosts.push(req.headers.host);
      res.end('ok');
    });
    const port = await listen(checked);
    const px = await startProxy({
      upstreamCa: certs.ca,
      routes: [{ match: { host: 'secure.test' }, upstreams: [{ address: `127.0.0.1:${port}`, tls: true }], healthCheck: { path: '/health', intervalMs: 200 } }],
    });
    try {
      for (let i = 0; i < 100 && hosts.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual([...new Set(hosts)], [`127.0.0.1:${port}`]);
    } finally {
      await px.proxy.stop();
      await close(checked);
    }
  });

  it('hostile: an expired certificate and one for another name get 502 UPSTREAM_TLS_CERT; the other name passes when it is the Host asked for', async () => {
    const px = await startProxy({ upstreamCa: certs.ca });
    try {
      const old = await request(`${px.url}/`, { headers: route(ports.expired) });
      assert.equal(old.status, 502);
      assert.match(old.body, /UPSTREAM_TLS_CERT/);
      const wrong = await request(`${px.url}/`, { headers: route(ports.otherName) });
      assert.equal(wrong.status, 502);
      assert.match(wrong.body, /UPSTREAM_TLS_CERT/);
      assert.equal(px.proxy.getStats().upstreamErrors.UPSTREAM_TLS_CERT, 2);
      // The certificate names other.test: asked for as other.test (SNI and Host), it verifies.
      const named = await request(`${px.url}/`, { headers: { ...route(ports.otherName), host: 'other.test' } });
      assert.equal(named.status, 200, named.body);
      assert.equal(JSON.parse(named.body).servername, 'other.test');
    } finally {
      await px.proxy.stop();
    }
  });

  it('hostile: a pooled connection whose certificate named one client\'s Host never serves another Host (HTTP/1.1 and h2 pools)', async () => {
    const otherH2 = http2.createSecureServer({ ...certs.other }, answer);
    const otherH2Port = await listen(otherH2);
    const px = await startProxy({ upstreamCa: certs.ca });
    const h2px = await startProxy({ upstreamCa: certs.ca, upstreamProtocol: 'h2c' });
    try {
      for (const [p, port] of [[px, ports.otherName], [h2px, otherH2Port]]) {
        // The certificate names other.test only: a client asking for other.test is served (the
        // connection is pooled), one asking for victim.test must get what a new connection gets.
        const named = await request(`${p.url}/`, { headers: { ...route(port), host: 'other.test' } });
        assert.equal(named.status, 200, named.body);
        const victim = await request(`${p.url}/`, { headers: { ...route(port), host: 'victim.test' } });
        assert.equal(victim.status, 502, victim.body);
        assert.match(victim.body, /UPSTREAM_TLS_CERT/);
        // And other.test still has its pooled connection.
        const again = await request(`${p.url}/`, { headers: { ...route(port), host: 'other.test' } });
        assert.equal(again.status, 200, again.body);
        assert.equal(JSON.parse(again.body).servername, 'other.test');
      }
    } finally {
      await px.proxy.stop();
      await h2px.proxy.stop();
      await close(otherH2);
    }
  });

  it('hostile: a handshake that never completes is a 504 within the connect timeout; a cleartext server on the TLS route is a 502', async () => {
    const silent = await startRawServer(() => {}); // accepts, never answers the ClientHello
    const plain = http.createServer((req, res) => res.end('plain'));
    const plainPort = await listen(plain);
    const px = await startProxy({ upstreamConnectTimeoutMs: 500 });
    try {
      const t0 = Date.now();
      const hung = await request(`${px.url}/`, { headers: route(silent.port) });
      assert.equal(hung.status, 504);
      assert.ok(Date.now() - t0 < 4000, 'answered within the connect timeout (plus slack)');
      assert.equal(px.proxy.getStats().upstreamConnectTimeouts, 1);
      // Nothing listening: the connect's own code, not a TLS one.
      const down = net.createServer();
      const downPort = await listen(down);
      await new Promise((r) => down.close(r));
      const refused = await request(`${px.url}/`, { headers: route(downPort) });
      assert.equal(refused.status, 502);
      assert.match(refused.body, /ECONNREFUSED/);
      const cleartext = await request(`${px.url}/`, { headers: route(plainPort) });
      assert.equal(cleartext.status, 502);
      assert.match(cleartext.body, /UPSTREAM_TLS_HANDSHAKE/);
      // h2 toward the same two (session pool): the same answers.
      const h2px = await startProxy({ upstreamConnectTimeoutMs: 500, upstreamProtocol: 'h2c' });
      try {
        assert.equal((await request(`${h2px.url}/`, { headers: route(silent.port) })).status, 504);
        const bad = await request(`${h2px.url}/`, { headers: route(plainPort) });
        assert.equal(bad.status, 502);
        assert.match(bad.body, /UPSTREAM_TLS_HANDSHAKE/);
        // An HTTPS server that does not speak h2 refuses ALPN h2 in the handshake.
        const h1only = await request(`${h2px.url}/`, { headers: route(ports.selfSigned) });
        assert.equal(h1only.status, 502);
        assert.match(h1only.body, /UPSTREAM_TLS_HANDSHAKE/);
        const selfH2 = http2.createSecureServer({ ...certs.self }, answer);
        const selfH2Port = await listen(selfH2);
        try {
          const self = await request(`${h2px.url}/`, { headers: route(selfH2Port) });
          assert.equal(self.status, 502);
          assert.match(self.body, /UPSTREAM_TLS_CERT/);
        } finally {
          await close(selfH2);
        }
      } finally {
        await h2px.proxy.stop();
      }
    } finally {
      await px.proxy.stop();
      await silent.close();
      await close(plain);
    }
  });

  it('pooling never mixes TLS and cleartext sockets to the same host:port, and reuses each', async () => {
    // One port serving both: TLS when the first byte is a TLS handshake record, else HTTP.
    const tlsSide = https.createServer({ ...certs.good }, answer);
    const plainSide = http.createServer(answer);
    const both = net.createServer((socket) => {
      socket.once('readable', () => {
        const first = socket.read(1);
        if (first === null) return socket.destroy();
        socket.unshift(first);
        (first[0] === 0x16 ? tlsSide : plainSide).emit('connection', socket);
      });
    });
    const port = await listen(both);
    const px = await startProxy({ upstreamCa: certs.ca });
    try {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      for (let i = 0; i < 6; i++) {
        const scheme = i % 2 === 0 ? 'https' : 'http';
        const res = await request(`${px.url}/${i}`, { headers: route(port, scheme), agent });
        assert.equal(res.status, 200, res.body);
        assert.equal(JSON.parse(res.body).tls, scheme === 'https', `request ${i} (${scheme})`);
      }
      agent.destroy();
      const stats = px.proxy.getStats();
      assert.equal(stats.upstreamSocketsCreated, 2, 'one TLS and one cleartext socket');
      assert.equal(stats.upstreamSocketsReused, 4);
    } finally {
      await px.proxy.stop();
      both.close();
      tlsSide.closeAllConnections();
      plainSide.closeAllConnections();
    }
  });

  it('resumes TLS sessions on new upstream connections', async () => {
    const px = await startProxy({ upstreamCa: certs.ca, maxIdleSocketsPerUpstream: 0 });
    try {
      const first = JSON.parse((await request(`${px.url}/1`, { headers: route(ports.goodH1) })).body);
      assert.equal(first.resumed, false);
      let resumed = false;
      for (let i = 0; i < 5 && !resumed; i++) {
        const next = JSON.parse((await request(`${px.url}/2`, { headers: route(ports.goodH1) })).body);
        resumed = next.resumed;
      }
      assert.ok(resumed, 'a later connection resumed the session');
      assert.ok(px.proxy.getStats().upstreamSocketsCreated >= 2);
    } finally {
      await px.proxy.stop();
    }
  });

  it('X-Cmux-Upstream-Scheme is validated: other values and repeats get 400; http overrides upstreamTls; ignored when header routing is off', async () => {
    const plain = http.createServer(answer);
    const plainPort = await listen(plain);
    const px = await startProxy({ upstreamTls: true, upstreamCa: certs.ca });
    try {
      const bad = await request(`${px.url}/`, { headers: route(plainPort, 'ftp') });
      assert.equal(bad.status, 400);
      assert.match(bad.body, /X-Cmux-Upstream-Scheme/);
      const twice = await rawTwice(px.port, plainPort);
      assert.match(twice, /^HTTP\/1\.1 400 /);
      assert.match(twice, /given more than once/);
      const http1 = await request(`${px.url}/`, { headers: route(plainPort, ' HTTP ') });
      assert.equal(http1.status, 200, http1.body);
      assert.equal(JSON.parse(http1.body).tls, false);
      // upstreamTls: true routes Host routes over TLS too.
      const host = await request(`${px.url}/`, { headers: { host: `app.${ports.goodH1}.localhost` } });
      assert.equal(host.status, 200, host.body);
      assert.equal(JSON.parse(host.body).tls, true);
    } finally {
      await px.proxy.stop();
    }
    const off = await startProxy({ headerRoutingEnabled: false, fallback: { port: plainPort } });
    try {
      const res = await request(`${off.url}/`, { headers: route(ports.goodH1) });
      assert.equal(res.status, 200);
      const seen = JSON.parse(res.body);
      assert.equal(seen.tls, false);
      assert.equal(seen.schemeHeader, null, 'stripped even when not honoured');
    } finally {
      await off.proxy.stop();
      await close(plain);
    }
  });

  it('options: upstreamCa must be a readable PEM file; the TLS options are booleans', () => {
    assert.throws(() => createProxyServer({ listenPort: 0, upstreamCa: join(dir, 'missing.pem') }), /Invalid option upstreamCa/);
    assert.throws(() => createProxyServer({ listenPort: 0, upstreamCa: join(dir, 'index.txt') }), /Invalid option upstreamCa/);
    assert.throws(() => createProxyServer({ listenPort: 0, upstreamTls: 'yes' }), /Invalid option upstreamTls/);
    assert.throws(() => createProxyServer({ listenPort: 0, upstreamTlsInsecureLoopback: 1 }), /Invalid option upstreamTlsInsecureLoopback/);
    assert.throws(() => createProxyServer({ listenPort: 0, fallback: { port: 1, tls: 'on' } }), /Invalid option fallback\.tls/);
  });

  describe('WebSockets to a TLS upstream', () => {
    let server;
    let wss;
    let wsPort;
    let seen;
    before(async () => {
      seen = [];
      server = https.createServer({ ...certs.good }, (req, res) => res.end('not a websocket'));
      wss = new WebSocketServer({ server, perMessageDeflate: false });
      wss.on('connection', (ws, req) => {
        seen.push({ tls: req.socket.encrypted === true, alpn: req.socket.alpnProtocol, servername: req.socket.servername });
        ws.on('message', (data, binary) => ws.send(data, { binary }));
      });
      wsPort = await listen(server);
    });
    after(async () => {
      for (const c of wss.clients) c.terminate();
      wss.close();
      await close(server);
    });

    it('over HTTP/1.1 Upgrade', async () => {
      const px = await startProxy({ upstreamCa: certs.ca });
      try {
        const ws = new WebSocket(`ws://127.0.0.1:${px.port}/chat`, { headers: { ...route(wsPort), host: 'ws.localhost' } });
        await once(ws, 'open');
        ws.send('over tls');
        const [data] = await once(ws, 'message');
        assert.equal(String(data), 'over tls');
        ws.close();
        await once(ws, 'close');
        assert.deepEqual(seen.at(-1), { tls: true, alpn: 'http/1.1', servername: 'ws.localhost' });
      } finally {
        await px.proxy.stop();
      }
    });

    it('over HTTP/2 extended CONNECT', async () => {
      const px = await startProxy({ upstreamCa: certs.ca });
      const session = http2.connect(`http://127.0.0.1:${px.port}`);
      session.on('error', () => {});
      try {
        await once(session, 'remoteSettings');
        const stream = session.request(
          { ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': '/chat', ':authority': 'ws2.localhost', 'sec-websocket-version': '13', ...route(wsPort) },
          { endStream: false },
        );
        const [headers] = await once(stream, 'response');
        assert.equal(headers[':status'], 200);
        // A masked text frame "h2-tls"; the echo comes back unmasked.
        const payload = Buffer.from('h2-tls');
        const mask = Buffer.from([1, 2, 3, 4]);
        const frame = Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, Buffer.from(payload.map((b, i) => b ^ mask[i % 4]))]);
        stream.write(frame);
        const [chunk] = await once(stream, 'data');
        assert.equal(chunk.subarray(2, 2 + payload.length).toString(), 'h2-tls');
        assert.deepEqual(seen.at(-1), { tls: true, alpn: 'http/1.1', servername: 'ws2.localhost' });
        stream.close();
      } finally {
        session.close();
        await px.proxy.stop();
      }
    });

    it('a self-signed WebSocket upstream is refused (502) on both paths by default', async () => {
      const selfServer = https.createServer({ ...certs.self });
      const selfWss = new WebSocketServer({ server: selfServer });
      const port = await listen(selfServer);
      const px = await startProxy();
      const session = http2.connect(`http://127.0.0.1:${px.port}`);
      session.on('error', () => {});
      const settings = once(session, 'remoteSettings');
      try {
        const ws = new WebSocket(`ws://127.0.0.1:${px.port}/`, { headers: route(port) });
        ws.on('error', () => {});
        const [req, res] = await once(ws, 'unexpected-response');
        assert.equal(res.statusCode, 502);
        req.destroy();
        await settings;
        const stream = session.request({ ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': '/', ':authority': 'x.localhost', 'sec-websocket-version': '13', ...route(port) }, { endStream: false });
        stream.on('error', () => {});
        const [headers] = await once(stream, 'response');
        assert.equal(headers[':status'], 502);
        stream.resume();
        await once(stream, 'close');
        assert.equal(px.proxy.getStats().upstreamErrors.UPSTREAM_TLS_CERT, 2);
      } finally {
        session.close();
        await px.proxy.stop();
        selfWss.close();
        await close(selfServer);
      }
    });
  });
});

/** A request with X-Cmux-Upstream-Scheme given twice, raw (Node's client would join them). */
function rawTwice(proxyPort, upstreamPort) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(proxyPort, '127.0.0.1');
    let out = '';
    socket.on('data', (c) => (out += c));
    socket.on('end', () => resolve(out));
    socket.on('close', () => resolve(out));
    socket.on('error', reject);
    socket.write(`GET / HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal: ${upstreamPort}\r\nX-Cmux-Upstream-Scheme: https\r\nX-Cmux-Upstream-Scheme: http\r\nConnection: close\r\n\r\n`);
  });
}
