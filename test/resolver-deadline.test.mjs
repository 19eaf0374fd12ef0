// The container-port resolver under a hostile or stuck Docker Engine API: a look-up has a
// deadline (upstreamConnectTimeoutMs) that ends every request waiting on it with a 504 and lets
// the next request ask again; the Docker resolver itself has a total deadline, accepts only
// decimal HostPorts, honours HostIp, and never puts a name Docker would refuse into its path.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CachedPortResolver } from '../dist/route/port-resolver.js';
import { createDockerPortResolver } from '../dist/route/docker-resolver.js';
import { startProxy, startUpstream, rawRequest, request } from './helpers/servers.mjs';

const TEXT_PLAIN = 'text/plain; charset=utf-8';

/**
 * A fake Docker Engine API on a unix socket. `mode.trickle`: the answer's head goes out at once,
 * then its body one byte a second (an idle timeout never fires). Otherwise `containers[name]`.
 */
async function fakeDocker(t, containers, mode) {
  const dir = mkdtempSync(join(tmpdir(), 'cmux-docker-hostile-'));
  const socketPath = join(dir, 'docker.sock');
  const seen = [];
  const timers = new Set();
  const server = http.createServer((req, res) => {
    seen.push(req.url);
    const m = /^\/containers\/([^/]+)\/json$/.exec(req.url);
    const name = m ? decodeURIComponent(m[1]) : undefined;
    if (name === undefined || !(name in containers)) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"message":"No such container"}');
      return;
    }
    const body = JSON.stringify(containers[name]);
    if (!mode.trickle) {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    let i = 0;
    const timer = setInterval(() => {
      if (res.destroyed || i >= body.length) {
        clearInterval(timer);
        timers.delete(timer);
        if (!res.destroyed) res.end();
        return;
      }
      res.write(body[i++]);
    }, 1000);
    timers.add(timer);
  });
  await new Promise((resolve) => server.listen(socketPath, resolve));
  t.after(async () => {
    for (const timer of timers) clearInterval(timer);
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });
  return { socketPath, seen, server };
}

const published = (hostPort, hostIp = '0.0.0.0') => ({ NetworkSettings: { Ports: { '3000/tcp': [{ HostIp: hostIp, HostPort: hostPort }] } } });

describe('container port resolver deadline', () => {
  let upstream;
  before(async () => {
    upstream = await startUpstream();
  });
  after(() => upstream.close());

  it('a Docker API that trickles its answer a byte a second -> 504 CMUX_RESOLVER_TIMEOUT for every waiting request; the next request asks again', async (t) => {
    const mode = { trickle: true };
    const docker = await fakeDocker(t, { web: published(String(upstream.port)) }, mode);
    const { proxy, port, url } = await startProxy({ dockerSocketPath: docker.socketPath, upstreamConnectTimeoutMs: 700, portResolverCacheTtlMs: 60_000 });
    t.after(() => proxy.stop());
    const started = Date.now();
    // Two requests share the look-up; both must end at its deadline.
    const attack = `GET / HTTP/1.1\r\nHost: web.3000.localhost\r\n\r\n`;
    const [a, b] = await Promise.all([
      rawRequest(port, attack, { timeoutMs: 5000, until: (s) => s.includes('timed out') }),
      rawRequest(port, attack, { timeoutMs: 5000, until: (s) => s.includes('timed out') }),
    ]);
    const elapsed = Date.now() - started;
    for (const out of [a, b]) {
      assert.match(out, /^HTTP\/1\.1 504 Gateway Timeout\r\n/, out);
      assert.ok(out.includes(`content-type: ${TEXT_PLAIN}`));
      assert.ok(out.endsWith('\r\n\r\ncontainer port resolver timed out'), out);
    }
    assert.ok(elapsed >= 600 && elapsed < 2500, `answered after ${elapsed} ms`);
    assert.equal(docker.seen.length, 1, 'the two requests share one look-up');
    // The stuck look-up is not shared any more: the Docker API is fixed, the next request asks again.
    mode.trickle = false;
    const res = await request(`${url}/again`, { headers: { host: 'web.3000.localhost' } });
    assert.equal(res.status, 200);
    assert.equal(JSON.parse(res.body).url, '/again');
    assert.equal(docker.seen.length, 2);
  });

  it('CachedPortResolver: a look-up past its deadline rejects with code RESOLVER_TIMEOUT and is dropped from the in-flight map', async () => {
    let calls = 0;
    const never = () => {
      calls++;
      return new Promise(() => {});
    };
    const cached = new CachedPortResolver(never, 1000);
    const started = Date.now();
    await assert.rejects(cached.resolve('web', 3000, 100), (err) => err.code === 'RESOLVER_TIMEOUT');
    assert.ok(Date.now() - started < 1000);
    await assert.rejects(cached.resolve('web', 3000, 100), (err) => err.code === 'RESOLVER_TIMEOUT');
    assert.equal(calls, 2, 'the second request started its own look-up');
  });

  it('createDockerPortResolver: a trickled answer fails after its total deadline', async (t) => {
    const docker = await fakeDocker(t, { web: published('49153') }, { trickle: true });
    const resolve = createDockerPortResolver(docker.socketPath, 300);
    const started = Date.now();
    await assert.rejects(resolve('web', 3000), /timed out/);
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 250 && elapsed < 1500, `rejected after ${elapsed} ms`);
  });
});

describe('createDockerPortResolver: what the Docker API answers is checked', () => {
  it('HostPort must be decimal digits, 1-65535', async (t) => {
    const bad = ['0x9ac1', ' 39617 ', '39617 ', '+80', '1e3', '-1', '0', '65536', '80.0', '', '١٢٣'];
    const containers = Object.fromEntries(bad.map((p, i) => [`c${i}`, published(p)]));
    containers.good = published('39617');
    const docker = await fakeDocker(t, containers, {});
    const resolve = createDockerPortResolver(docker.socketPath);
    for (let i = 0; i < bad.length; i++) assert.equal(await resolve(`c${i}`, 3000), null, `HostPort ${JSON.stringify(bad[i])}`);
    assert.equal(await resolve('good', 3000), 39617);
  });

  it('HostIp is honoured: all addresses and 127.0.0.1 -> the port, :: and ::1 -> ::1, another loopback address as is, a non-loopback address is skipped', async (t) => {
    const docker = await fakeDocker(
      t,
      {
        any: published('40001', '0.0.0.0'),
        empty: published('40002', ''),
        lo: published('40003', '127.0.0.1'),
        v6any: published('40004', '::'),
        v6lo: published('40005', '::1'),
        lo5: published('40006', '127.0.0.5'),
        lan: published('40007', '192.168.1.5'),
        lanThenLo: { NetworkSettings: { Ports: { '3000/tcp': [{ HostIp: '10.0.0.2', HostPort: '40008' }, { HostIp: '127.0.0.1', HostPort: '40009' }] } } },
        weird: published('40010', '127.0.0.1.evil'),
      },
      {},
    );
    const resolve = createDockerPortResolver(docker.socketPath);
    assert.equal(await resolve('any', 3000), 40001);
    assert.equal(await resolve('empty', 3000), 40002);
    assert.equal(await resolve('lo', 3000), 40003);
    assert.deepEqual(await resolve('v6any', 3000), { host: '::1', port: 40004 });
    assert.deepEqual(await resolve('v6lo', 3000), { host: '::1', port: 40005 });
    assert.deepEqual(await resolve('lo5', 3000), { host: '127.0.0.5', port: 40006 });
    assert.equal(await resolve('lan', 3000), null);
    assert.equal(await resolve('lanThenLo', 3000), 40009);
    assert.equal(await resolve('weird', 3000), null);
  });

  it('a name Docker would refuse (.., /, %, spaces...) never reaches the API path', async (t) => {
    const docker = await fakeDocker(t, { ok: published('40020') }, {});
    const resolve = createDockerPortResolver(docker.socketPath);
    for (const name of ['..', '.', '../containers/ok', 'a/b', '%2e%2e', '.hidden', '-x', '_x', 'a b', 'a?b', 'a#b', 'ünï', '', 'x'.repeat(256)]) {
      assert.equal(await resolve(name, 3000), null, JSON.stringify(name));
    }
    assert.deepEqual(docker.seen, []);
    assert.equal(await resolve('ok', 3000), 40020);
    assert.deepEqual(docker.seen, ['/containers/ok/json']);
  });

  it('through the proxy: a .. container in the Host gets 404 and the Docker API is not asked', async (t) => {
    const docker = await fakeDocker(t, {}, {});
    const { proxy, port } = await startProxy({ dockerSocketPath: docker.socketPath });
    t.after(() => proxy.stop());
    const out = await rawRequest(port, 'GET / HTTP/1.1\r\nHost: ...3000.localhost\r\n\r\n', { timeoutMs: 3000, until: (s) => s.includes('not found') });
    assert.match(out, /^HTTP\/1\.1 404 Not Found\r\n/);
    assert.deepEqual(docker.seen, []);
  });

  it('through the proxy: a container published on 127.0.0.5 is reached there, not on 127.0.0.1', async (t) => {
    const onLo5 = await startUpstream(undefined, { host: '127.0.0.5' });
    t.after(() => onLo5.close());
    const docker = await fakeDocker(t, { web: published(String(onLo5.port), '127.0.0.5') }, {});
    const { proxy, url } = await startProxy({ dockerSocketPath: docker.socketPath });
    t.after(() => proxy.stop());
    const res = await request(`${url}/x`, { headers: { host: 'web.3000.localhost' } });
    assert.equal(res.status, 200);
    assert.equal(JSON.parse(res.body).localAddress, '127.0.0.5');
  });
});
