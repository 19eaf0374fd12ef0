// Idle footprint: a proxy that only sees cleartext HTTP/1.1 must not load node:http2, node:tls,
// node:crypto or node:http (about 6 MiB of RSS together, see src/builtins.ts), and loads
// node:http2 on the first h2c connection. The literal HTTP/2 constants must match Node's.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import http2 from 'node:http2';
import * as constants from '../dist/h2/constants.js';

const child = `
import net from 'node:net';
import { createProxyServer } from './dist/index.js';
const loaded = () => ['http2', 'tls', 'crypto', 'http'].filter((m) => process.moduleLoadList.includes('NativeModule ' + m));
const upstream = net.createServer((s) => s.once('data', () => s.end('HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\nconnection: close\\r\\n\\r\\nok')));
await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
const proxy = createProxyServer({ listenPort: 0, logLevel: 'silent' });
await proxy.start();
const out = { afterStart: loaded() };
const address = proxy.address();
const reply = await new Promise((resolve, reject) => {
  const s = net.connect(address.port, '127.0.0.1', () => s.write('GET / HTTP/1.1\\r\\nHost: x\\r\\nX-Cmux-Port-Internal: ' + upstream.address().port + '\\r\\nConnection: close\\r\\n\\r\\n'));
  let data = '';
  s.setEncoding('latin1').on('data', (d) => (data += d)).on('end', () => resolve(data)).on('error', reject);
});
out.h1Status = reply.split('\\r\\n')[0];
out.afterH1 = loaded();
await new Promise((resolve) => {
  const s = net.connect(address.port, '127.0.0.1', () => s.write('PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n'));
  s.once('data', () => { s.destroy(); resolve(); });
});
out.afterH2c = loaded();
await proxy.stop();
upstream.close();
console.log(JSON.stringify(out));
`;

describe('lazily loaded builtins', () => {
  it('HTTP/1.1 cleartext loads no http2/tls/crypto/http; h2c loads http2', async () => {
    const stdout = await new Promise((resolve, reject) => {
      execFile(process.execPath, ['--input-type=module', '-e', child], { cwd: new URL('..', import.meta.url) }, (err, out, errOut) =>
        err ? reject(new Error(`${err.message}\n${errOut}`)) : resolve(out),
      );
    });
    const out = JSON.parse(stdout.trim().split('\n').pop());
    assert.deepEqual(out.afterStart, []);
    assert.equal(out.h1Status, 'HTTP/1.1 200 OK');
    assert.deepEqual(out.afterH1, []);
    assert.ok(out.afterH2c.includes('http2'), `after h2c: ${out.afterH2c}`);
  });

  it('literal HTTP/2 constants equal http2.constants', () => {
    for (const [name, value] of Object.entries(constants)) assert.equal(value, http2.constants[name], name);
    assert.ok(Object.keys(constants).length >= 7);
  });
});
