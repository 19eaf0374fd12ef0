// TLS session resumption across workers (`--workers 2 --tls-cert/--tls-key`): the workers share
// the session ticket keys, so a ticket one worker issued resumes on the other, with and without SNI.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { request, startUpstream, waitFor } from './helpers/servers.mjs';
import { startCli, stopCli } from './helpers/cli.mjs';

const GEN = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));

/** One TLS connection, one request; resolves { reused, session } once the proxy closes it. */
function connectOnce(port, target, { session, servername }) {
  return new Promise((resolve, reject) => {
    let ticket = null;
    let reused = null;
    const socket = tls.connect({ port, host: '127.0.0.1', servername, session, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
    socket.on('session', (s) => {
      ticket ??= s;
    });
    socket.on('secureConnect', () => {
      reused = socket.isSessionReused();
      socket.write(`GET /resume HTTP/1.1\r\nHost: localhost\r\nX-Cmux-Port-Internal: ${target}\r\nConnection: close\r\n\r\n`);
    });
    socket.on('data', () => {});
    socket.on('close', () => resolve({ reused, session: ticket }));
    socket.on('error', reject);
    socket.setTimeout(15000, () => socket.destroy(new Error('timed out')));
  });
}

describe('TLS with --workers 2', () => {
  let dir;
  let up;
  let c;
  let admin;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-tls-cluster-'));
    execFileSync('bash', [GEN, '--out', dir, '--name', 'main', 'localhost'], { stdio: 'ignore' });
    up = await startUpstream((req, res) => res.end('ok'));
    c = await startCli(['--port', '0', '--workers', '2', '--admin-port', '0', '--log-level', 'info', '--tls-cert', join(dir, 'main.pem'), '--tls-key', join(dir, 'main-key.pem')]);
    let m;
    const ok = await waitFor(() => (m = /admin on [^:\s]+:(\d+)/.exec(c.stderr())) !== null && /cluster: \d+ worker/.test(c.stderr()), { timeoutMs: 20000 });
    assert.ok(ok, c.stderr());
    admin = Number(m[1]);
  });
  after(async () => {
    if (c.child.exitCode === null) await stopCli(c.child, 'SIGKILL');
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const servername of ['localhost', undefined]) {
    it(`a session resumes on whichever worker takes the next connection (${servername === undefined ? 'no SNI' : 'SNI localhost'})`, { timeout: 60000 }, async () => {
      const before = JSON.parse((await request(`http://127.0.0.1:${admin}/stats`)).body).workers.map((w) => w.tlsRequests);
      const first = await connectOnce(c.port, up.port, { servername });
      assert.equal(first.reused, false);
      assert.ok(first.session, 'the first connection got a ticket');
      const reused = [];
      for (let i = 0; i < 16; i++) reused.push((await connectOnce(c.port, up.port, { servername, session: first.session })).reused);
      const after = JSON.parse((await request(`http://127.0.0.1:${admin}/stats`)).body).workers.map((w) => w.tlsRequests);
      const served = after.map((n, i) => n - before[i]);
      assert.equal(served.length, 2);
      // both workers took some of the 17 connections, so tickets crossed from one to the other
      for (const n of served) assert.ok(n > 0, `each worker served TLS requests: ${served}`);
      assert.deepEqual(reused, Array(16).fill(true), `resumed: ${reused}`);
    });
  }
});
