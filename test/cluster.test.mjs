// Workers (`--workers`, startCluster): N processes on one port. Requests spread over the workers
// (the primary's admin listener reports each worker's figures), a killed worker is started
// again, SIGTERM drains every worker, the API runs the same script in primary and workers.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startCluster } from '../dist/index.js';
import { hasReusePort } from '../dist/cluster.js';
import { request, startUpstream, sleep, waitFor } from './helpers/servers.mjs';
import { runCli, startCli, stopCli } from './helpers/cli.mjs';

const CHILD = fileURLToPath(new URL('./helpers/cluster-child.mjs', import.meta.url));

function pidAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function adminJson(port, path = '/stats') {
  const r = await request(`http://127.0.0.1:${port}${path}`);
  return JSON.parse(r.body);
}

/** startCli, then also waits for the admin line and the cluster line: { child, port, admin, stderr }. */
async function startClusterCli(args, options) {
  const started = await startCli(args, options);
  let m;
  const ok = await waitFor(() => (m = /admin on [^:\s]+:(\d+)/.exec(started.stderr())) !== null && /cluster: \d+ worker/.test(started.stderr()), { timeoutMs: 15000 });
  assert.ok(ok, started.stderr());
  return { ...started, admin: Number(m[1]) };
}

describe('workers: two processes on one port (CLI --workers 2)', () => {
  let up;
  let c;
  before(async () => {
    up = await startUpstream((req, res) => {
      const delay = Number(new URL(req.url, 'http://x').searchParams.get('delay') ?? 0);
      setTimeout(() => res.end(`ok ${req.url}`), delay);
    });
    c = await startClusterCli(['--port', '0', '--workers', '2', '--admin-port', '0', '--log-level', 'info']);
  });
  after(async () => {
    if (c.child.exitCode === null) await stopCli(c.child, 'SIGKILL');
    await up.close();
  });

  it('requests on new connections are spread over both workers; /stats sums them and lists each', async () => {
    for (let i = 0; i < 40; i++) {
      const r = await request(`http://127.0.0.1:${c.port}/spread/${i}`, { headers: { 'x-cmux-port-internal': String(up.port) } });
      assert.equal(r.status, 200);
    }
    const stats = await adminJson(c.admin);
    assert.equal(stats.workers.length, 2);
    const per = stats.workers.map((w) => w.totalRequests);
    for (const n of per) assert.ok(n > 0, `each worker answered some requests: ${per}`);
    assert.equal(stats.totalRequests, per[0] + per[1]);
    assert.ok(stats.totalRequests >= 40);
    assert.equal(new Set(stats.workers.map((w) => w.pid)).size, 2);
    assert.deepEqual(stats.workers.map((w) => w.worker).sort(), [1, 2]);
  });

  it('/metrics labels every series with its worker; /readyz and /healthz answer for the cluster', async () => {
    const text = (await request(`http://127.0.0.1:${c.admin}/metrics`)).body;
    assert.match(text, /^cmux_proxy_workers 2$/m);
    assert.match(text, /^cmux_proxy_requests_total\{worker="1"\} [1-9]\d*$/m);
    assert.match(text, /^cmux_proxy_requests_total\{worker="2"\} [1-9]\d*$/m);
    assert.match(text, /^cmux_proxy_request_duration_seconds_count\{worker="1",protocol="http1",status_class="2xx"\} [1-9]/m);
    // One HELP/TYPE per family, as the text format requires.
    assert.equal(text.match(/^# TYPE cmux_proxy_requests_total /gm).length, 1);
    assert.equal((await request(`http://127.0.0.1:${c.admin}/readyz`)).status, 200);
    assert.equal((await request(`http://127.0.0.1:${c.admin}/healthz`)).status, 200);
  });

  it('a killed worker is started again and serves; the restart is counted', async () => {
    const before = await adminJson(c.admin);
    const victim = before.workers[0].pid;
    process.kill(victim, 'SIGKILL');
    let now;
    const replaced = await waitFor(
      async () => {
        now = await adminJson(c.admin);
        return now.workers.length === 2 && !now.workers.some((w) => w.pid === victim);
      },
      { timeoutMs: 15000, stepMs: 100 },
    );
    assert.ok(replaced, JSON.stringify(now?.workers?.map((w) => w.pid)));
    assert.equal(now.workerRestarts, 1);
    assert.match(c.stderr(), new RegExp(`worker \\d \\(pid ${victim}\\) exited \\(SIGKILL\\); starting it again in \\d+ ms`));
    // Both serve again.
    for (let i = 0; i < 20; i++) assert.equal((await request(`http://127.0.0.1:${c.port}/after/${i}`, { headers: { 'x-cmux-port-internal': String(up.port) } })).status, 200);
    const stats = await adminJson(c.admin);
    const fresh = stats.workers.find((w) => !before.workers.some((b) => b.pid === w.pid));
    assert.ok(fresh.totalRequests > 0, 'the new worker answers requests');
  });

  it('SIGTERM drains every worker: requests in flight on each complete, then all processes exit 0', async () => {
    const pids = (await adminJson(c.admin)).workers.map((w) => w.pid);
    // Slow requests on 16 connections, so both workers have some in flight (with reusePort the
    // kernel picks the worker by a hash of the addresses: all 16 on one would be 1 in 32768).
    const inflight = Array.from({ length: 16 }, (_, i) =>
      request(`http://127.0.0.1:${c.port}/slow/${i}?delay=1500`, { headers: { 'x-cmux-port-internal': String(up.port) } }),
    );
    // All 16 at the upstream (a connection still on its way to a worker at the stop is refused).
    assert.ok(await waitFor(() => up.requests.filter((r) => r.url.startsWith('/slow/')).length === 16, { timeoutMs: 5000 }));
    assert.ok((await adminJson(c.admin)).workers.every((w) => w.activeConnections > 0), 'both workers have requests in flight');
    const exit = await stopCli(c.child, 'SIGTERM');
    const results = await Promise.all(inflight);
    for (const r of results) assert.equal(r.status, 200);
    assert.equal(exit.code, 0);
    for (const pid of pids) assert.ok(await waitFor(() => !pidAlive(pid)), `worker ${pid} exited`);
    await assert.rejects(request(`http://127.0.0.1:${c.port}/`, { timeoutMs: 2000 }));
  });
});

describe('workers: startCluster() from the API', () => {
  it('the embedding script runs in every worker (a fallback handler function works); SIGTERM stops all', async () => {
    const child = spawn(process.execPath, [CHILD], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const ready = await waitFor(() => out.includes('\n'), { timeoutMs: 15000 });
    assert.ok(ready);
    const { port, pids } = JSON.parse(out);
    assert.equal(pids.length, 2);
    const seen = new Set();
    for (let i = 0; i < 20; i++) {
      const r = await request(`http://127.0.0.1:${port}/`);
      assert.match(r.body, /^worker \d+ 127\.0\.0\.1$/);
      seen.add(r.body.split(' ')[1]);
    }
    assert.deepEqual([...seen].map(Number).sort(), [...pids].sort());
    const exit = await stopCli(child, 'SIGTERM');
    assert.equal(exit.code, 0);
    for (const pid of pids) assert.ok(await waitFor(() => !pidAlive(pid)));
  });

  it('watchdog: a worker whose event loop is stuck (SIGSTOP) is killed and started again; requests go on', async () => {
    const child = spawn(process.execPath, [CHILD], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, WATCHDOG_MS: '1000' } });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    try {
      assert.ok(await waitFor(() => out.includes('\n'), { timeoutMs: 15000 }));
      const { port, pids } = JSON.parse(out);
      process.kill(pids[0], 'SIGSTOP');
      assert.ok(await waitFor(() => !pidAlive(pids[0]), { timeoutMs: 8000 }), 'the stuck worker is killed');
      const seen = new Set();
      assert.ok(
        await waitFor(async () => {
          const r = await request(`http://127.0.0.1:${port}/`, { timeoutMs: 3000 }).catch(() => null);
          if (r !== null) seen.add(Number(r.body.split(' ')[1]));
          return seen.size === 2 && !seen.has(pids[0]);
        }, { timeoutMs: 15000, stepMs: 50 }),
        `answered by ${[...seen]}`,
      );
      assert.ok(seen.has(pids[1]));
    } finally {
      const exit = await stopCli(child, 'SIGTERM');
      assert.equal(exit.code, 0);
    }
  });

  it('workerWatchdogMs is validated', async () => {
    for (const bad of [-1, 100, 1.5, '1000']) {
      await assert.rejects(startCluster({ listenPort: 0, workers: 1, workerWatchdogMs: bad }), /Invalid option workerWatchdogMs/);
    }
  });

  it('bad workers values are refused before anything is forked', async () => {
    for (const bad of [0, -1, 1.5, '2', 'all', 2000]) {
      await assert.rejects(startCluster({ listenPort: 0, workers: bad }), /Invalid option workers/);
    }
    await assert.rejects(startCluster({ listenPort: -1, workers: 2 }), /Invalid option listenPort/);
  });

  it('CLI: --workers 0 exits 2; a taken port exits 1 naming it', async () => {
    let r = await runCli(['--port', '0', '--workers', '0']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--workers 0: expected an integer from 1 to 1024 or 'auto'/);
    const blocker = net.createServer().listen(0, '127.0.0.1');
    await new Promise((resolve) => blocker.once('listening', resolve));
    try {
      r = await runCli(['--port', String(blocker.address().port), '--workers', '2'], { timeoutMs: 15000 });
      assert.equal(r.code, 1);
      assert.match(r.stderr, /address already in use|EADDRINUSE/);
    } finally {
      blocker.close();
    }
  });
});

describe('workers: SIGHUP replaces them one at a time under load', () => {
  let up;
  let c;
  before(async () => {
    up = await startUpstream((req, res) => setTimeout(() => res.end(`ok ${req.url}`), 5));
    c = await startClusterCli(['--port', '0', '--workers', '2', '--admin-port', '0', '--drain-timeout-ms', '5000']);
  });
  after(async () => {
    if (c.child.exitCode === null) await stopCli(c.child, 'SIGKILL');
    await up.close();
  });

  it('HTTP/1.1 keep-alive and HTTP/2 requests all succeed across the restart; every worker is new', async () => {
    const route = { 'x-cmux-port-internal': String(up.port) };
    const failures = [];
    const counts = { h1: 0, h2: 0, h1Retried: 0, h2Retried: 0 };
    let running = true;
    // HTTP/1.1 keep-alive: a request on a reused connection that the server closed while it was
    // idle gets no answer; RFC 9112 §9.3.1 lets the client send it again on a new connection.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
    const h1once = (fresh = false) =>
      new Promise((resolve, reject) => {
        const req = http.get(`http://127.0.0.1:${c.port}/h1`, { agent: fresh ? false : agent, headers: route }, (res) => {
          let body = '';
          res.on('data', (d) => (body += d));
          res.on('end', () => resolve({ status: res.statusCode, body }));
          res.on('error', reject);
        });
        req.on('error', (err) => reject(Object.assign(err, { reused: req.reusedSocket })));
      });
    const h1loop = async () => {
      while (running) {
        try {
          let r;
          try {
            r = await h1once();
          } catch (err) {
            if (!err.reused) throw err;
            counts.h1Retried++;
            // On a new connection: another idle socket of the pool may be closing too.
            r = await h1once(true);
          }
          if (r.status !== 200) failures.push(`h1 ${r.status} ${r.body}`);
          else counts.h1++;
        } catch (err) {
          failures.push(`h1 ${err.message}`);
          await sleep(5);
        }
        if (failures.length > 100) running = false;
      }
    };
    // HTTP/2: GOAWAY from a draining worker; a stream it refused (REFUSED_STREAM, or made after
    // the GOAWAY) was not processed and is sent again on a new connection.
    let session = null;
    const h2session = () => {
      if (session === null || session.closed || session.destroyed) {
        const s = http2.connect(`http://127.0.0.1:${c.port}`);
        s.on('error', () => {});
        s.on('goaway', () => {
          if (session === s) session = null;
        });
        s.on('close', () => {
          if (session === s) session = null;
        });
        session = s;
      }
      return session;
    };
    const h2once = () =>
      new Promise((resolve, reject) => {
        let stream;
        try {
          stream = h2session().request({ ':path': '/h2', ...route });
        } catch (err) {
          // The session is going away: the next attempt opens a new one.
          session = null;
          return reject(Object.assign(err, { retry: true }));
        }
        let status = 0;
        let body = '';
        stream.on('response', (h) => (status = h[':status']));
        stream.on('data', (d) => (body += d));
        stream.on('end', () => resolve({ status, body }));
        stream.on('error', (err) => reject(Object.assign(err, { retry: stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM || err.code === 'ERR_HTTP2_GOAWAY_SESSION' })));
        stream.on('close', () => {
          if (status === 0 && stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM) reject(Object.assign(new Error('refused'), { retry: true }));
        });
      });
    const h2loop = async () => {
      while (running) {
        try {
          let r;
          for (let attempt = 0; ; attempt++) {
            try {
              r = await h2once();
              break;
            } catch (err) {
              if (!err.retry || attempt > 3) throw err;
              counts.h2Retried++;
              await sleep(5);
            }
          }
          if (r.status !== 200) failures.push(`h2 ${r.status} ${r.body}`);
          else counts.h2++;
        } catch (err) {
          failures.push(`h2 ${err.code ?? ''} ${err.message}`);
          await sleep(5);
        }
        if (failures.length > 100) running = false;
      }
    };
    const loops = [h1loop(), h1loop(), h1loop(), h1loop(), h2loop(), h2loop()];
    await waitFor(() => counts.h1 > 200 && counts.h2 > 100, { timeoutMs: 20000 });
    const before = (await adminJson(c.admin)).workers.map((w) => w.pid);
    const mark = { h1: counts.h1, h2: counts.h2 };
    process.kill(c.child.pid, 'SIGHUP');
    assert.ok(await waitFor(() => /cluster: 2 worker\(s\) replaced/.test(c.stderr()), { timeoutMs: 30000 }), c.stderr());
    await waitFor(() => counts.h1 > mark.h1 + 200 && counts.h2 > mark.h2 + 100, { timeoutMs: 20000 });
    running = false;
    await Promise.all(loops);
    agent.destroy();
    session?.close();
    const now = await adminJson(c.admin);
    assert.deepEqual(failures, [], `${failures.length} failed; ${JSON.stringify(counts)}`);
    assert.equal(now.workers.length, 2);
    for (const w of now.workers) assert.ok(!before.includes(w.pid), `worker ${w.worker} is a new process`);
    for (const pid of before) assert.equal(pidAlive(pid), false);
    assert.equal(now.workerRestarts, 0, 'a restart is not counted as a crash');
    assert.ok(counts.h1 > mark.h1 + 200 && counts.h2 > mark.h2 + 100, JSON.stringify(counts));
    console.log(`rolling restart under load: ${JSON.stringify(counts)}`);
  });
});

// Forced, since the default also needs net.ipv4.tcp_migrate_req = 1; on Node 20 (no reusePort)
// the override falls back to round-robin.
describe('workers: reusePort scheduling', () => {
  let up;
  let c;
  before(async () => {
    up = await startUpstream();
    c = await startClusterCli(['--port', '0', '--workers', '2', '--admin-port', '0'], { env: { CMUX_PROXY_CLUSTER_SCHEDULING: 'reuseport' } });
  });
  after(async () => {
    if (c.child.exitCode === null) await stopCli(c.child, 'SIGKILL');
    await up.close();
  });

  it('both workers bind the one port themselves, the kernel spreads connections, a killed one comes back', async () => {
    assert.match(c.stderr(), hasReusePort() ? /reusePort: the kernel spreads connections/ : /round-robin by the primary/);
    for (let i = 0; i < 40; i++) assert.equal((await request(`http://127.0.0.1:${c.port}/`, { headers: { 'x-cmux-port-internal': String(up.port) } })).status, 200);
    const stats = await adminJson(c.admin);
    for (const w of stats.workers) assert.ok(w.totalRequests > 0, JSON.stringify(stats.workers.map((x) => x.totalRequests)));
    process.kill(stats.workers[0].pid, 'SIGKILL');
    assert.ok(await waitFor(async () => (await adminJson(c.admin)).workers.length === 2 && (await adminJson(c.admin)).workerRestarts === 1, { timeoutMs: 15000, stepMs: 100 }));
    for (let i = 0; i < 10; i++) assert.equal((await request(`http://127.0.0.1:${c.port}/`, { headers: { 'x-cmux-port-internal': String(up.port) } })).status, 200);
  });
});

describe('workers: restarts meeting crashes and stop()', () => {
  const FLAKY = fileURLToPath(new URL('./helpers/cluster-flaky-child.mjs', import.meta.url));

  /** The flaky cluster child: { child, port, pids, out(), err(), send(line) }. */
  async function startFlaky(env) {
    const child = spawn(process.execPath, [FLAKY], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    assert.ok(await waitFor(() => out.includes('\n'), { timeoutMs: 20000 }), err);
    const { port, pids } = JSON.parse(out.slice(0, out.indexOf('\n')));
    return { child, port, pids, out: () => out, err: () => err, send: (line) => child.stdin.write(`${line}\n`) };
  }

  function crashFile() {
    return path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'cmux-flaky-')), 'crash');
  }

  it('with port 0, the only worker killed comes back on the same port (the one address() reports)', async () => {
    const c = await startFlaky({ WORKERS: '1', CRASH_FILE: crashFile() });
    try {
      process.kill(c.pids[0], 'SIGKILL');
      const served = await waitFor(
        async () => {
          try {
            return (await request(`http://127.0.0.1:${c.port}/`, { timeoutMs: 2000 })).body.startsWith('worker ');
          } catch {
            return false;
          }
        },
        { timeoutMs: 20000, stepMs: 200 },
      );
      assert.ok(served, c.err());
    } finally {
      c.child.kill('SIGKILL');
    }
  });

  it('a worker crash-looping when a restart comes keeps being started again, and serves once it can', async () => {
    const flag = crashFile();
    const c = await startFlaky({ WORKERS: '1', CRASH_FILE: flag });
    try {
      fs.writeFileSync(flag, '');
      process.kill(c.pids[0], 'SIGKILL');
      // The worker started again after the kill exits at once (code 3): it is in its back-off.
      assert.ok(await waitFor(() => /exited \(code 3\)/.test(c.err()), { timeoutMs: 20000 }), c.err());
      c.send('restart');
      assert.ok(await waitFor(() => c.out().includes('restart failed'), { timeoutMs: 20000 }), c.out() + c.err());
      fs.rmSync(flag);
      // The slot is still supervised: its next attempt starts a worker that serves.
      const served = await waitFor(
        async () => {
          try {
            return (await request(`http://127.0.0.1:${c.port}/`, { timeoutMs: 2000 })).body.startsWith('worker ');
          } catch {
            return false;
          }
        },
        { timeoutMs: 30000, stepMs: 200 },
      );
      assert.ok(served, c.err());
    } finally {
      c.child.kill('SIGKILL');
    }
  });

  it('a restart asked for while one runs (its old worker still draining) runs after it: the last config wins', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cmux-flaky-'));
    const versionFile = path.join(dir, 'version');
    fs.writeFileSync(versionFile, 'v1');
    const c = await startFlaky({ WORKERS: '1', CRASH_FILE: path.join(dir, 'crash'), VERSION_FILE: versionFile });
    const version = async () => (await request(`http://127.0.0.1:${c.port}/`, { timeoutMs: 5000 })).body.split(' ')[2];
    try {
      // A slow request keeps the old worker draining after the first restart's new worker listens.
      const slow = request(`http://127.0.0.1:${c.port}/?delay=4000`, { timeoutMs: 20000 });
      await sleep(300);
      fs.writeFileSync(versionFile, 'v2');
      c.send('restart');
      assert.ok(await waitFor(() => c.err().split('listening on').length === 3, { timeoutMs: 20000 }), c.err());
      // Once the old worker is told to drain (an IPC round trip after the new one logs that it
      // listens; a connection the primary handed out just before still goes to it) every new
      // request is the new worker's: the old one drains only what it had.
      assert.ok(await waitFor(async () => (await version()) === 'v2', { timeoutMs: 5000, stepMs: 50 }), 'the new worker never answered');
      for (let i = 0; i < 6; i++) assert.equal(await version(), 'v2');
      // The config changes again while the first restart waits for its old worker.
      fs.writeFileSync(versionFile, 'v3');
      c.send('restart');
      assert.equal((await slow).body.split(' ')[2], 'v1');
      assert.ok(await waitFor(() => c.out().split('restarted').length === 3, { timeoutMs: 20000 }), c.out() + c.err());
      assert.equal(await version(), 'v3', c.err());
    } finally {
      c.child.kill('SIGKILL');
    }
  });

  it('stop() during a restart whose new worker dies before listening ends, and stops the old worker', async () => {
    const flag = crashFile();
    const c = await startFlaky({ WORKERS: '1', CRASH_FILE: flag, START_DELAY_MS: '1000' });
    const [old] = c.pids;
    try {
      fs.writeFileSync(flag, '');
      c.send('restart');
      // The new worker is in its start delay (it will exit with code 3) when stop() comes.
      await sleep(300);
      c.send('stop');
      assert.ok(await waitFor(() => c.out().includes('stopped'), { timeoutMs: 20000 }), c.out() + c.err());
      assert.ok(await waitFor(() => !pidAlive(old), { timeoutMs: 10000 }), 'the old worker still runs');
    } finally {
      c.child.kill('SIGKILL');
      if (pidAlive(old)) process.kill(old, 'SIGKILL');
    }
  });
});
