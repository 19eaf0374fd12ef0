// Hostile TLS clients and half-written certificate files.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { startProxy, startUpstream } from './helpers/servers.mjs';

const GEN = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));

function gen(dir, name, ...names) {
  execFileSync('bash', [GEN, '--out', dir, '--name', name, ...names], { stdio: 'ignore' });
  return { certFile: join(dir, `${name}.pem`), keyFile: join(dir, `${name}-key.pem`) };
}

function peerCn(port, servername, ca) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ port, host: '127.0.0.1', servername, ca, ALPNProtocols: ['http/1.1'] }, () => {
      const cn = socket.getPeerCertificate().subject.CN;
      socket.end();
      resolve(cn);
    });
    socket.on('error', reject);
  });
}

describe('TLS under attack', () => {
  let dir;
  let ca;
  let main;
  let other;
  let up;
  let px;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-tls-hostile-'));
    main = gen(dir, 'main', 'localhost');
    other = gen(dir, 'other', 'sni.test');
    ca = readFileSync(join(dir, 'ca.pem'));
    up = await startUpstream();
    px = await startProxy({ tls: { ...main, sni: { 'sni.test': other } } });
  });

  after(async () => {
    await px?.proxy.stop();
    await up?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a TLS 1.2 client asking to renegotiate is refused and its connection closed, not served handshake after handshake', async () => {
    const socket = tls.connect({ port: px.port, host: '127.0.0.1', ca, servername: 'localhost', maxVersion: 'TLSv1.2', ALPNProtocols: ['http/1.1'] });
    socket.on('error', () => {});
    await new Promise((resolve, reject) => {
      socket.once('secureConnect', resolve);
      socket.once('error', reject);
    });
    const closed = new Promise((resolve) => socket.once('close', resolve));
    let renegotiated = 0;
    const renegotiateOnce = () =>
      new Promise((resolve) => {
        const ok = socket.renegotiate({ rejectUnauthorized: false }, (err) => {
          if (!err) renegotiated++;
          resolve(err ?? null);
        });
        if (!ok) resolve(new Error('renegotiate() refused locally'));
      });
    // The first attempt must end the connection; a second one must not succeed either.
    const first = await Promise.race([renegotiateOnce(), closed.then(() => 'closed')]);
    if (first !== 'closed' && !socket.destroyed) await Promise.race([renegotiateOnce(), closed]);
    await Promise.race([closed, new Promise((r) => setTimeout(r, 3000))]);
    assert.equal(renegotiated, 0, 'no renegotiation completed');
    assert.ok(socket.destroyed, 'the proxy closed the connection');
    // Other clients are served.
    assert.equal(await peerCn(px.port, 'localhost', ca), 'main');
  });

  it('a failed reload (half-written SNI key) keeps every SNI certificate as it was', async () => {
    assert.equal(await peerCn(px.port, 'sni.test', ca), 'other');
    const goodKey = readFileSync(other.keyFile);
    writeFileSync(other.keyFile, goodKey.subarray(0, 40));
    try {
      assert.equal(px.proxy.reloadCertificates(), false, 'the reload reports failure');
      assert.equal(await peerCn(px.port, 'sni.test', ca), 'other', 'sni.test still gets its own certificate');
    } finally {
      writeFileSync(other.keyFile, goodKey);
    }
  });
});
