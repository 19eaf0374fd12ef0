// Routing rule 2 with a resolver: the container's published host port is looked up (cached for
// the TTL); unknown container -> 404 `container not found`, resolver failure -> 502.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CachedPortResolver } from '../dist/route/port-resolver.js';
import { createDockerPortResolver } from '../dist/route/docker-resolver.js';

/** A resolver that counts calls and answers from a script. */
function counting(answer) {
  const calls = [];
  const fn = (container, port) => {
    calls.push([container, port]);
    return answer(container, port, calls.length);
  };
  return { fn, calls };
}

describe('CachedPortResolver', () => {
  it('caches a hit for the TTL, then asks again', async () => {
    const r = counting(async () => 49153);
    const cached = new CachedPortResolver(r.fn, 80);
    assert.equal(cached.peek('web', 3000), undefined);
    assert.equal(await cached.resolve('web', 3000), 49153);
    assert.equal(await cached.resolve('web', 3000), 49153);
    assert.equal(cached.peek('web', 3000), 49153);
    assert.equal(r.calls.length, 1);
    await sleep(150);
    assert.equal(cached.peek('web', 3000), undefined);
    assert.equal(await cached.resolve('web', 3000), 49153);
    assert.equal(r.calls.length, 2);
    assert.deepEqual(r.calls, [['web', 3000], ['web', 3000]]);
  });

  it('caches "not found" (null) too', async () => {
    const r = counting(async () => null);
    const cached = new CachedPortResolver(r.fn, 1000);
    assert.equal(await cached.resolve('ghost', 80), null);
    assert.equal(cached.peek('ghost', 80), null);
    assert.equal(await cached.resolve('ghost', 80), null);
    assert.equal(r.calls.length, 1);
  });

  it('keys on container and port', async () => {
    const r = counting(async (c, p) => (c === 'a' ? 10000 : 20000) + p);
    const cached = new CachedPortResolver(r.fn, 1000);
    assert.equal(await cached.resolve('a', 1), 10001);
    assert.equal(await cached.resolve('a', 2), 10002);
    assert.equal(await cached.resolve('b', 1), 20001);
    assert.equal(await cached.resolve('a', 1), 10001);
    assert.equal(r.calls.length, 3);
  });

  it('shares one in-flight look-up among concurrent callers', async () => {
    let release;
    const gate = new Promise((resolve) => (release = resolve));
    const r = counting(async () => {
      await gate;
      return 40000;
    });
    const cached = new CachedPortResolver(r.fn, 1000);
    const pending = Array.from({ length: 10 }, () => cached.resolve('web', 3000));
    const other = cached.resolve('web', 3001);
    assert.equal(r.calls.length, 2);
    release();
    assert.deepEqual(await Promise.all(pending), Array(10).fill(40000));
    assert.equal(await other, 40000);
    assert.equal(r.calls.length, 2);
  });

  it('shares in-flight look-ups even with TTL 0, but does not cache', async () => {
    let release;
    const gate = new Promise((resolve) => (release = resolve));
    const r = counting(async () => {
      await gate;
      return 40001;
    });
    const cached = new CachedPortResolver(r.fn, 0);
    const a = cached.resolve('web', 3000);
    const b = cached.resolve('web', 3000);
    release();
    assert.deepEqual(await Promise.all([a, b]), [40001, 40001]);
    assert.equal(r.calls.length, 1);
    assert.equal(cached.peek('web', 3000), undefined);
    assert.equal(await cached.resolve('web', 3000), 40001);
    assert.equal(r.calls.length, 2);
  });

  it('does not cache failures (rejected promise)', async () => {
    const r = counting(async (_c, _p, n) => {
      if (n === 1) throw new Error('docker down');
      return 49154;
    });
    const cached = new CachedPortResolver(r.fn, 1000);
    await assert.rejects(cached.resolve('web', 3000), /docker down/);
    assert.equal(cached.peek('web', 3000), undefined);
    assert.equal(await cached.resolve('web', 3000), 49154);
    assert.equal(r.calls.length, 2);
  });

  it('concurrent callers all see the shared failure, and the next call retries', async () => {
    let fail;
    const gate = new Promise((_resolve, reject) => (fail = reject));
    const r = counting(async (_c, _p, n) => (n === 1 ? gate : 49155));
    const cached = new CachedPortResolver(r.fn, 1000);
    const pending = [cached.resolve('web', 1), cached.resolve('web', 1)];
    fail(new Error('boom'));
    for (const p of pending) await assert.rejects(p, /boom/);
    assert.equal(r.calls.length, 1);
    assert.equal(await cached.resolve('web', 1), 49155);
    assert.equal(r.calls.length, 2);
  });

  it('does not cache a failure thrown synchronously by the resolver', async () => {
    // ContainerPortResolver is typed to return a promise, but a plain JS resolver may throw.
    const r = counting((_c, _p, n) => {
      if (n === 1) throw new Error('sync failure');
      return Promise.resolve(49156);
    });
    const cached = new CachedPortResolver(r.fn, 1000);
    await assert.rejects(cached.resolve('web', 3000), /sync failure/);
    assert.equal(await cached.resolve('web', 3000), 49156);
    assert.equal(r.calls.length, 2);
  });

  it('rejects invalid ports from the resolver and does not cache them', async () => {
    for (const bad of [0, -1, 65536, 1.5, Number.NaN, '3000', undefined]) {
      const r = counting(async (_c, _p, n) => (n === 1 ? bad : 49157));
      const cached = new CachedPortResolver(r.fn, 1000);
      await assert.rejects(cached.resolve('web', 3000), /invalid port/, `answer ${String(bad)}`);
      assert.equal(cached.peek('web', 3000), undefined);
      assert.equal(await cached.resolve('web', 3000), 49157);
      assert.equal(r.calls.length, 2);
    }
  });

  it('accepts the port bounds 1 and 65535', async () => {
    const cached = new CachedPortResolver(async (_c, p) => (p === 1 ? 1 : 65535), 1000);
    assert.equal(await cached.resolve('x', 1), 1);
    assert.equal(await cached.resolve('x', 2), 65535);
  });

  it('clear() forgets cached answers', async () => {
    const r = counting(async () => 49158);
    const cached = new CachedPortResolver(r.fn, 10_000);
    await cached.resolve('web', 3000);
    cached.clear();
    assert.equal(cached.peek('web', 3000), undefined);
    await cached.resolve('web', 3000);
    assert.equal(r.calls.length, 2);
  });
});

describe('createDockerPortResolver (fake Docker Engine API on a unix socket)', () => {
  let dir;
  let socketPath;
  let server;
  const seen = [];
  const containers = {
    web: { Id: 'abc', NetworkSettings: { Ports: { '3000/tcp': [{ HostIp: '0.0.0.0', HostPort: '49153' }], '22/tcp': null } } },
    'my.app': { NetworkSettings: { Ports: { '8080/tcp': [{ HostIp: '::', HostPort: '' }, { HostIp: '0.0.0.0', HostPort: '49160' }] } } },
    'org/box': { NetworkSettings: { Ports: { '80/tcp': [{ HostIp: '0.0.0.0', HostPort: '49170' }] } } },
    noports: { NetworkSettings: { Ports: {} } },
    nonetwork: {},
    badport: { NetworkSettings: { Ports: { '3000/tcp': [{ HostIp: '0.0.0.0', HostPort: '70000' }] } } },
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-docker-'));
    socketPath = join(dir, 'docker.sock');
    server = http.createServer((req, res) => {
      seen.push({ method: req.method, url: req.url, host: req.headers.host });
      const m = /^\/containers\/([^/]+)\/json$/.exec(req.url);
      const name = m ? decodeURIComponent(m[1]) : undefined;
      if (name === 'broken') {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end('{"message":"server error"}');
        return;
      }
      if (name === 'garbage') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{not json');
        return;
      }
      if (req.method !== 'GET' || name === undefined || !(name in containers)) {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ message: `No such container: ${name}` }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(containers[name]));
    });
    await new Promise((resolve) => server.listen(socketPath, resolve));
  });

  after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  it('returns the published host port', async () => {
    const resolve = createDockerPortResolver(socketPath);
    assert.equal(await resolve('web', 3000), 49153);
    const last = seen.at(-1);
    assert.equal(last.method, 'GET');
    assert.equal(last.url, '/containers/web/json');
  });

  it('skips bindings without a HostPort; dotted names pass through', async () => {
    const resolve = createDockerPortResolver(socketPath);
    assert.equal(await resolve('my.app', 8080), 49160);
    assert.equal(seen.at(-1).url, '/containers/my.app/json');
  });

  it('a name Docker would refuse (here with a /) is not found, and never reaches the API path', async () => {
    const resolve = createDockerPortResolver(socketPath);
    const before = seen.length;
    assert.equal(await resolve('org/box', 80), null);
    assert.equal(seen.length, before);
  });

  it('unknown container (404) -> null', async () => {
    const resolve = createDockerPortResolver(socketPath);
    assert.equal(await resolve('ghost', 3000), null);
    assert.equal(seen.at(-1).url, '/containers/ghost/json');
  });

  it('unpublished or invalid port -> null', async () => {
    const resolve = createDockerPortResolver(socketPath);
    assert.equal(await resolve('web', 4000), null); // not listed
    assert.equal(await resolve('web', 22), null); // listed but null bindings
    assert.equal(await resolve('noports', 3000), null);
    assert.equal(await resolve('nonetwork', 3000), null);
    assert.equal(await resolve('badport', 3000), null);
  });

  it('500 -> rejects', async () => {
    const resolve = createDockerPortResolver(socketPath);
    await assert.rejects(resolve('broken', 3000), /500/);
  });

  it('invalid JSON -> rejects', async () => {
    const resolve = createDockerPortResolver(socketPath);
    await assert.rejects(resolve('garbage', 3000), SyntaxError);
  });

  it('missing socket -> rejects with ENOENT', async () => {
    const resolve = createDockerPortResolver(join(dir, 'nope.sock'));
    await assert.rejects(resolve('web', 3000), (err) => err.code === 'ENOENT');
  });

  it('works through CachedPortResolver (one API call per TTL)', async () => {
    const before = seen.length;
    const cached = new CachedPortResolver(createDockerPortResolver(socketPath), 1000);
    const answers = await Promise.all([cached.resolve('web', 3000), cached.resolve('web', 3000), cached.resolve('web', 3000)]);
    assert.deepEqual(answers, [49153, 49153, 49153]);
    assert.equal(await cached.resolve('web', 3000), 49153);
    assert.equal(await cached.resolve('ghost', 3000), null);
    assert.equal(await cached.resolve('ghost', 3000), null);
    assert.equal(seen.length - before, 2);
    await assert.rejects(cached.resolve('broken', 3000), /500/);
    await assert.rejects(cached.resolve('broken', 3000), /500/);
    assert.equal(seen.length - before, 4); // failures are asked again
  });
});
