// HTTP/1.1 over TLS on the proxy port, where llhttp reads the decrypted records straight from
// the TLS socket's handle: requests that arrive with the handshake, pipelined in one record or
// split into one-byte records, large request bodies, WebSocket upgrades (wss) and half-closes.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import https from 'node:https';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { jsonAnswers, startProxy, startUpstream } from './helpers/servers.mjs';
import { nextMessage, openWs, startWsEcho } from './helpers/ws.mjs';

const GEN = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));

/** Opens a TLS connection (ALPN http/1.1) and resolves with every byte it reads until the peer ends. */
function tlsExchange(port, write) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
    const chunks = [];
    socket.on('data', (c) => chunks.push(c));
    socket.on('end', () => resolve(Buffer.concat(chunks).toString('latin1')));
    socket.on('error', reject);
    socket.setTimeout(20000, () => {
      socket.destroy();
      reject(new Error(`timed out; read so far: ${Buffer.concat(chunks).toString('latin1').slice(0, 300)}`));
    });
    write(socket);
  });
}

describe('HTTP/1.1 over TLS on the proxy port', () => {
  let dir;
  let up;
  let echo;
  let px;
  const get = (path, target, extra = '') => `GET ${path} HTTP/1.1\r\nHost: a.test\r\nX-Cmux-Port-Internal: ${target}\r\n${extra}\r\n`;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-tls-h1-'));
    execFileSync('bash', [GEN, '--out', dir, '--name', 'main', 'localhost'], { stdio: 'ignore' });
    up = await startUpstream();
    echo = await startWsEcho();
    px = await startProxy({ tls: { certFile: join(dir, 'main.pem'), keyFile: join(dir, 'main-key.pem') } });
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
    await echo.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers requests written before the handshake ends, pipelined in one record, then one byte per record, in order', async () => {
    const raw = await tlsExchange(px.port, (socket) => {
      // written before secureConnect: Node sends it right behind the client's Finished
      socket.write(get('/first', up.port) + get('/second', up.port));
      socket.once('data', () => {
        const third = get('/third', up.port, 'Connection: close\r\n');
        let i = 0;
        const next = () => {
          if (i < third.length) socket.write(third[i++], 'latin1', next);
        };
        next();
      });
    });
    const got = jsonAnswers(raw);
    assert.deepEqual(got.map((a) => [a.status, a.body.url]), [[200, '/first'], [200, '/second'], [200, '/third']]);
    assert.equal(got[0].body.headers['x-forwarded-proto'], 'https');
  });

  it('forwards a 4 MiB request body whole, and the connection serves the next request', async () => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1, rejectUnauthorized: false });
    const post = (body) =>
      new Promise((resolve, reject) => {
        const req = https.request(
          { host: '127.0.0.1', port: px.port, method: 'POST', path: '/upload', agent, headers: { 'X-Cmux-Port-Internal': String(up.port), 'content-length': body.length } },
          (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(Buffer.concat(chunks).toString()), socket: req.socket }));
          },
        );
        req.on('error', reject);
        req.end(body);
      });
    try {
      const big = await post(Buffer.alloc(4 * 1024 * 1024, 0x61));
      assert.equal(big.status, 200);
      assert.equal(big.body.bodyLength, 4 * 1024 * 1024);
      const small = await post(Buffer.from('hello'));
      assert.equal(small.status, 200);
      assert.equal(small.body.body, 'hello');
      assert.equal(small.socket, big.socket, 'the same keep-alive TLS connection');
    } finally {
      agent.destroy();
    }
  });

  it('upgrades to a WebSocket (wss) and echoes small and large messages', async () => {
    const ws = await openWs(`wss://127.0.0.1:${px.port}/chat`, undefined, {
      rejectUnauthorized: false,
      headers: { 'X-Cmux-Port-Internal': String(echo.port) },
    });
    ws.send('ping over tls');
    assert.equal((await nextMessage(ws)).data.toString(), 'ping over tls');
    ws.send(Buffer.alloc(200000, 0x62));
    assert.equal((await nextMessage(ws)).data.length, 200000);
    ws.close();
  });

  it('answers a client that half-closes right after its request', async () => {
    const raw = await tlsExchange(px.port, (socket) => {
      socket.end(get('/half', up.port));
    });
    const got = jsonAnswers(raw);
    assert.deepEqual(got.map((a) => [a.status, a.body.url]), [[200, '/half']]);
  });
});
