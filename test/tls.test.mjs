// TLS on the same port: ALPN h2 / http/1.1, SNI, certificate hot reload, cleartext
// still served beside it, X-Forwarded-Proto https; checked with curl and Node clients.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { createProxyServer } from '../dist/index.js';
import { startProxy, startUpstream, request, sleep, waitFor } from './helpers/servers.mjs';
import { runCli, startCli, stopCli } from './helpers/cli.mjs';

const exec = promisify(execFile);
const GEN = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));

function gen(dir, name, ...names) {
  execFileSync('bash', [GEN, '--out', dir, '--name', name, ...names], { stdio: 'ignore' });
  return { certFile: join(dir, `${name}.pem`), keyFile: join(dir, `${name}-key.pem`) };
}

/** The certificate the proxy presents for `servername` (its subject CN and fingerprint). */
function peerCert(port, servername, ca) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ port, host: '127.0.0.1', servername, ca, ALPNProtocols: ['http/1.1'] }, () => {
      const cert = socket.getPeerCertificate();
      socket.end();
      resolve({ cn: cert.subject.CN, fingerprint: cert.fingerprint256, authorized: socket.authorized });
    });
    socket.on('error', reject);
  });
}

describe('TLS on the proxy port', () => {
  let dir;
  let ca;
  let main;
  let other;
  let up;
  let px;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-tls-'));
    main = gen(dir, 'main', '*.3000.localhost');
    other = gen(dir, 'other', 'other.test');
    ca = readFileSync(join(dir, 'ca.pem'));
    up = await startUpstream();
    px = await startProxy({ tls: { ...main, sni: { 'other.test': other } } });
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('curl -k --http2 and --http1.1 get HTTP/2 and HTTP/1.1 on the TLS port; cleartext h1/h2c still work there', async () => {
    const route = ['-H', `X-Cmux-Port-Internal: ${up.port}`];
    const version = async (args, url) => (await exec('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_version}', ...route, ...args, url])).stdout;
    assert.equal(await version(['-k', '--http2'], `https://127.0.0.1:${px.port}/`), '2');
    assert.equal(await version(['-k', '--http1.1'], `https://127.0.0.1:${px.port}/`), '1.1');
    assert.equal(await version(['--http2-prior-knowledge'], `http://127.0.0.1:${px.port}/`), '2');
    assert.equal(await version(['--http1.1'], `http://127.0.0.1:${px.port}/`), '1.1');
    const s = px.proxy.getStats();
    assert.ok(s.tlsRequests >= 2);
  });

  it('verifies against the generated CA for <container>.<port>.localhost and sets X-Forwarded-Proto https', async () => {
    const res = await new Promise((resolve, reject) => {
      https
        .get({ host: '127.0.0.1', port: px.port, servername: 'app.3000.localhost', path: '/secure', ca, headers: { host: 'app.3000.localhost', 'x-cmux-port-internal': String(up.port) } }, (r) => {
          let body = '';
          r.on('data', (c) => (body += c));
          r.on('end', () => resolve({ status: r.statusCode, body: JSON.parse(body) }));
        })
        .on('error', reject);
    });
    assert.equal(res.status, 200);
    assert.equal(res.body.headers['x-forwarded-proto'], 'https');
    assert.equal(res.body.headers.host, 'app.3000.localhost');
  });

  it('speaks HTTP/2 over TLS to a Node client (ALPN h2)', async () => {
    const session = http2.connect(`https://localhost:${px.port}`, { ca });
    try {
      const res = await new Promise((resolve, reject) => {
        const stream = session.request({ ':path': '/h2tls', 'x-cmux-port-internal': String(up.port) });
        let body = '';
        stream.on('response', (h) => (stream.status = h[':status']));
        stream.on('data', (c) => (body += c));
        stream.on('end', () => resolve({ status: stream.status, body: JSON.parse(body) }));
        stream.on('error', reject);
      });
      assert.equal(res.status, 200);
      assert.equal(res.body.headers['x-forwarded-proto'], 'https');
      assert.equal(session.alpnProtocol, 'h2');
    } finally {
      session.close();
    }
  });

  it('offers http/1.1 to clients without ALPN', async () => {
    const alpn = await new Promise((resolve, reject) => {
      const socket = tls.connect({ port: px.port, host: '127.0.0.1', servername: 'localhost', ca }, () => {
        resolve(socket.alpnProtocol);
        socket.end();
      });
      socket.on('error', reject);
    });
    assert.equal(alpn, false);
    const answer = await new Promise((resolve, reject) => {
      const socket = tls.connect({ port: px.port, host: '127.0.0.1', servername: 'localhost', ca }, () => {
        socket.write(`GET /noalpn HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`);
      });
      let data = '';
      socket.on('data', (c) => (data += c));
      socket.on('end', () => resolve(data));
      socket.on('error', reject);
    });
    assert.match(answer, /^HTTP\/1\.1 200 /);
  });

  it('chooses the certificate by SNI', async () => {
    const a = await peerCert(px.port, 'app.3000.localhost', ca);
    assert.equal(a.cn, 'main');
    assert.equal(a.authorized, true);
    const b = await peerCert(px.port, 'other.test', ca);
    assert.equal(b.cn, 'other');
    assert.equal(b.authorized, true);
  });

  it('reloads the certificate files without a restart', async () => {
    const before = await peerCert(px.port, 'localhost', ca);
    const fresh = gen(dir, 'renewed');
    copyFileSync(fresh.certFile, main.certFile);
    copyFileSync(fresh.keyFile, main.keyFile);
    assert.ok(px.proxy.reloadCertificates(), 'reload succeeded');
    const after = await peerCert(px.port, 'localhost', ca);
    assert.equal(after.cn, 'renewed');
    assert.notEqual(after.fingerprint, before.fingerprint);
  });

  it('notices changed files by itself (watched)', async () => {
    const fresh = gen(dir, 'watched');
    copyFileSync(fresh.certFile, main.certFile);
    copyFileSync(fresh.keyFile, main.keyFile);
    assert.ok(await waitFor(async () => (await peerCert(px.port, 'localhost', ca)).cn === 'watched', { timeoutMs: 8000, stepMs: 250 }));
  });
});

describe('TLS misconfiguration and absence', () => {
  it('rejects unreadable certificate files at createProxyServer', async () => {
    await assert.rejects(async () => startProxy({ tls: { certFile: '/nonexistent.pem', keyFile: '/nonexistent-key.pem' } }), /ENOENT/);
  });

  it('closes a TLS ClientHello when no certificate is configured, and keeps serving', async () => {
    const up = await startUpstream();
    const px = await startProxy();
    try {
      await assert.rejects(new Promise((resolve, reject) => {
        const socket = tls.connect({ port: px.port, host: '127.0.0.1', rejectUnauthorized: false }, resolve);
        socket.on('error', reject);
      }));
      const res = await request(px.url, { headers: { 'x-cmux-port-internal': String(up.port) } });
      assert.equal(res.status, 200);
    } finally {
      await px.proxy.stop();
      await up.close();
    }
  });

  it('the CLI takes --tls-cert/--tls-key and serves curl --http2 over TLS', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cmux-tls-cli-'));
    const files = gen(dir, 'cli');
    const up = await startUpstream();
    const { child, port, stderr } = await startCli(['--port', '0', '--tls-cert', files.certFile, '--tls-key', files.keyFile]);
    try {
      assert.match(stderr(), /TLS/);
      const res = await exec('curl', ['-sS', '--cacert', join(dir, 'ca.pem'), '--http2', '-o', '/dev/null', '-w', '%{http_version}', '-H', `X-Cmux-Port-Internal: ${up.port}`, `https://localhost:${port}/`]);
      assert.equal(res.stdout, '2');
    } finally {
      await stopCli(child);
      await up.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('certificate files: every error names the file; one log line per reload', () => {
  let dir;
  let a;
  let b;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-tls-files-'));
    a = gen(dir, 'a');
    b = gen(dir, 'b');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('createProxyServer names the certificate or key file that is unreadable or not PEM, and both when they do not match', async () => {
    const garbage = join(dir, 'garbage.pem');
    writeFileSync(garbage, 'not a pem file\n');
    const missing = join(dir, 'missing.pem');
    const cases = [
      [{ certFile: missing, keyFile: a.keyFile }, `cannot read TLS certificate file ${missing} (ENOENT: no such file or directory)`],
      [{ certFile: a.certFile, keyFile: missing }, `cannot read TLS key file ${missing} (ENOENT: no such file or directory)`],
      [{ certFile: dir, keyFile: a.keyFile }, `cannot read TLS certificate file ${dir} (EISDIR`],
      [{ certFile: garbage, keyFile: a.keyFile }, `TLS certificate file ${garbage} holds no valid PEM certificate`],
      [{ certFile: a.certFile, keyFile: garbage }, `TLS key file ${garbage} holds no valid PEM private key`],
      [{ certFile: a.certFile, keyFile: b.keyFile }, `TLS certificate file ${a.certFile} and key file ${b.keyFile} cannot be used together`],
      [{ ...a, sni: { 'x.test': { certFile: garbage, keyFile: a.keyFile } } }, `TLS certificate file ${garbage} holds no valid PEM certificate`],
    ];
    for (const [tlsOption, message] of cases) {
      assert.throws(() => createProxyServer({ listenPort: 0, logLevel: 'silent', tls: tlsOption }), (err) => {
        assert.ok(err.message.startsWith(message), `${err.message} starts with ${message}`);
        return true;
      });
    }
  });

  it('the CLI exits 1 with one line naming a key file that is not PEM', async () => {
    const garbage = join(dir, 'garbage-key.pem');
    writeFileSync(garbage, 'nope\n');
    const r = await runCli(['--port', '0', '--tls-cert', a.certFile, '--tls-key', garbage]);
    assert.equal(r.code, 1);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.ok(lines[0].startsWith(`cmux-proxy: TLS key file ${garbage} holds no valid PEM private key`), lines[0]);
  });

  it('a renewal that rewrites certificate and key is one reload and one log line; a bad file at reload is named in the log', async () => {
    const files = { certFile: join(dir, 'live.pem'), keyFile: join(dir, 'live-key.pem') };
    copyFileSync(a.certFile, files.certFile);
    copyFileSync(a.keyFile, files.keyFile);
    const lines = [];
    const logger = { debug() {}, info: (m) => lines.push(`info ${m}`), warn: (m) => lines.push(`warn ${m}`), error: (m) => lines.push(`error ${m}`) };
    const proxy = createProxyServer({ listenPort: 0, logLevel: 'info', logger, tls: files });
    await proxy.start();
    const port = proxy.address().port;
    const ca = readFileSync(join(dir, 'ca.pem'));
    try {
      const reloads = () => lines.filter((l) => /reload/.test(l));
      copyFileSync(b.certFile, files.certFile);
      copyFileSync(b.keyFile, files.keyFile);
      assert.ok(await waitFor(() => reloads().length > 0, { timeoutMs: 10000, stepMs: 100 }), 'the change was noticed');
      await sleep(4500); // two more polls: nothing else may be logged for this renewal
      assert.deepEqual(reloads(), [`info TLS certificates reloaded (${files.certFile}, ${files.keyFile} changed)`]);
      assert.equal((await peerCert(port, 'localhost', ca)).cn, 'b');
      writeFileSync(files.certFile, 'half-written');
      assert.ok(await waitFor(() => reloads().length > 1, { timeoutMs: 10000, stepMs: 100 }), 'the bad file was noticed');
      assert.match(reloads()[1], new RegExp(`^error TLS certificate reload failed, keeping the current ones: TLS certificate file ${files.certFile} holds no valid PEM certificate`));
      assert.equal((await peerCert(port, 'localhost', ca)).cn, 'b', 'still served with the last good certificate');
    } finally {
      await proxy.stop();
    }
  });
});
