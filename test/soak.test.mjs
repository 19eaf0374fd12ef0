// Forwarding, WebSockets and tunnels under load: a bounded soak of the proxy run as a child process (the CLI).
//
// Mixed traffic: HTTP/1.1 keep-alive GET/POST, HTTP/2 (node:http2) GET/POST and WebSockets (`ws`),
// bodies of random sizes 0..4 MiB with sha256 checked on both ends (the upstream checks every
// request body and message it receives as complete, the client every answer), random client
// aborts at every stage (before headers, mid-upload, mid-download, in the WebSocket handshake,
// mid-WebSocket; HTTP/2 aborts are RST_STREAM without END_STREAM). In the middle of the run the
// upstream is restarted (all its sockets closed, not listening for ~300 ms, listening again on
// the same port). Then: every completed exchange was byte-exact, failures are only clean ones
// (502/504 or a reset) and only around the restart, nothing hung past EXCHANGE_TIMEOUT_MS, and
// once every client has gone the proxy process has no client or upstream socket left, its fd
// count (/proc/<pid>/fd) is within +10 of the baseline taken after a warm-up, and its RSS
// (/proc/<pid>/status) within +32 MiB of the baseline taken after a short warm-up load (the
// process cannot be GC'd from outside; the warm-up load lets the allocator reach its working
// size first, so what is left is growth). Last, a fresh proxy gets SIGTERM under load: in-flight
// exchanges complete (HTTP/1.1 with Connection: close), new connections are refused while they
// do, the process exits 0 before the drain timeout.
//
// CMUX_SOAK_SECONDS (default 8) sets the soak length; CMUX_SOAK_SEED replays the random plan
// (sizes, operations, aborts; timing still varies). Everything is on 127.0.0.1.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import WebSocket, { WebSocketServer } from 'ws';
import { startCli } from './helpers/cli.mjs';
import { refusedPort } from './helpers/servers.mjs';

const MIB = 1024 * 1024;
const SOAK_MS = Math.max(2, Number(process.env.CMUX_SOAK_SECONDS ?? 8)) * 1000;
const SEED = Number(process.env.CMUX_SOAK_SEED ?? Math.floor(Math.random() * 2 ** 31)) >>> 0;
const MAX_BODY = 4 * MIB;
const CHUNK = 64 * 1024;
/** No exchange may take longer than this: past it, it counts as a hang. */
const EXCHANGE_TIMEOUT_MS = 20_000;
const RESTART_GAP_MS = 300;
/** Failures of exchanges that overlap [restart, relisten + grace] are the restart's doing. */
const RESTART_GRACE_MS = 3_000;
const ABORT_RATE = 0.12;
/** Load before the RSS baseline (see the soak test). */
const WARM_LOAD_MS = 2_000;
const H1_WORKERS = 6;
const H2_SESSIONS = 2;
const H2_STREAMS_PER_SESSION = 3;
const WS_WORKERS = 3;
const FD_SLACK = 10;
const RSS_SLACK = 32 * MIB;
const CLI_ARGS = ['--port', '0', '--max-connections', '2000', '--log-level', 'warn'];

// ---- randomness -----------------------------------------------------------------------------

function mulberry32(seed) {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = mulberry32(SEED);
/** Inclusive. */
const randInt = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
/** Bodies are views of one random block at random offsets. */
const POOL = randomBytes(2 * MAX_BODY);
const slice = (size) => {
  const at = randInt(0, POOL.length - size);
  return POOL.subarray(at, at + size);
};
const sha = (buf) => createHash('sha256').update(buf).digest('hex');

function bodySize(max = MAX_BODY) {
  const r = rnd();
  let n;
  if (r < 0.08) n = 0;
  else if (r < 0.45) n = randInt(1, 4096);
  else if (r < 0.75) n = randInt(4097, 256 * 1024);
  else if (r < 0.93) n = randInt(256 * 1024 + 1, MIB);
  else if (r < 0.97) n = randInt(MIB + 1, MAX_BODY - 1);
  else n = MAX_BODY;
  return Math.min(n, max);
}

let seq = 0;
/** One HTTP exchange: down (GET, upstream sends `size`), up (POST, upstream hashes), echo (POST, streamed back). */
function planExchange(proto, { maxSize = MAX_BODY, abortRate = ABORT_RATE } = {}) {
  const r = rnd();
  const op = r < 0.4 ? 'down' : r < 0.8 ? 'up' : 'echo';
  const size = bodySize(maxSize);
  const plan = { id: `${proto}-${++seq}`, op, size, chunked: rnd() < 0.5, delay: rnd() < 0.3 ? randInt(1, 30) : 0, abort: null };
  if (rnd() < abortRate) {
    const stages = ['before-headers'];
    if (op !== 'down' && size >= 2 * CHUNK) stages.push('mid-upload');
    if (op !== 'up' && size >= 2 * CHUNK) stages.push('mid-download');
    const stage = stages[randInt(0, stages.length - 1)];
    plan.abort = { stage, at: stage === 'before-headers' ? randInt(0, 15) : randInt(1, size - CHUNK), rstError: rnd() < 0.5 };
  }
  return plan;
}

function planWebSocket({ abortRate = ABORT_RATE, messages = randInt(1, 30) } = {}) {
  const plan = { id: `ws-${++seq}`, deflate: rnd() < 0.2, messages: [], abort: null };
  for (let i = 0; i < messages; i++) {
    const r = rnd();
    plan.messages.push({ binary: rnd() < 0.7, size: r < 0.6 ? randInt(0, 4096) : r < 0.95 ? randInt(4097, 128 * 1024) : randInt(128 * 1024, MIB) });
  }
  if (rnd() < abortRate) {
    plan.abort = rnd() < 0.3 ? { stage: 'ws-handshake', at: randInt(0, 10) } : { stage: 'mid-websocket', after: randInt(0, messages - 1) };
  }
  return plan;
}

/** A message carries the sha256 of its payload in front, so the upstream can check it too. */
function makeMessage({ binary, size }) {
  if (binary) {
    const payload = slice(size);
    const buf = Buffer.concat([createHash('sha256').update(payload).digest(), payload]);
    return { binary, data: buf, buf };
  }
  const payload = slice(Math.floor((size * 3) / 4)).toString('base64');
  const str = sha(payload) + payload;
  return { binary, data: str, buf: Buffer.from(str) };
}

function messageIsIntact(data, isBinary) {
  if (isBinary) return data.length >= 32 && createHash('sha256').update(data.subarray(32)).digest().equals(data.subarray(0, 32));
  const str = data.toString('utf8');
  return str.length >= 64 && sha(str.slice(64)) === str.slice(0, 64);
}

// ---- small utilities ------------------------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const noop = () => {};

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function waitFor(predicate, timeoutMs, stepMs = 50) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return true;
    if (Date.now() >= end) return false;
    await sleep(stepMs);
  }
}

const fdCount = (pid) => readdirSync(`/proc/${pid}/fd`).length;

const TCP_STATES = { '01': 'ESTABLISHED', '02': 'SYN_SENT', '03': 'SYN_RECV', '04': 'FIN_WAIT1', '05': 'FIN_WAIT2', '06': 'TIME_WAIT', '07': 'CLOSE', '08': 'CLOSE_WAIT', '09': 'LAST_ACK', '0A': 'LISTEN', '0B': 'CLOSING' };

/** What the process's fds are: TCP sockets by role and state (from /proc/<pid>/net/tcp), and the rest by kind. */
function describeFds(pid, proxyPort, upstreamPort) {
  const sockets = new Map();
  for (const file of ['tcp', 'tcp6']) {
    let text = '';
    try {
      text = readFileSync(`/proc/${pid}/net/${file}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const localPort = parseInt(f[1].split(':')[1], 16);
      const remotePort = parseInt(f[2].split(':')[1], 16);
      const inode = f[9];
      const role = localPort === proxyPort ? (f[3] === '0A' ? 'listener' : 'client connection') : remotePort === upstreamPort ? 'upstream connection' : `tcp ${localPort}->${remotePort}`;
      sockets.set(inode, `${role} ${TCP_STATES[f[3]] ?? f[3]}`);
    }
  }
  const out = {};
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    const kind = m ? (sockets.get(m[1]) ?? 'socket (not tcp)') : target.replace(/:\[\d+\]$/, '').replace(/^\/.*$/, 'file');
    out[kind] = (out[kind] ?? 0) + 1;
  }
  return out;
}
function statusField(pid, field) {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]) * 1024;
}
const rssBytes = (pid) => statusField(pid, 'VmRSS');
const mib = (n) => `${(n / MIB).toFixed(1)} MiB`;
const human = (n) => (n >= 1024 * MIB ? `${(n / 1024 / MIB).toFixed(2)} GiB` : mib(n));

/** A 502/504 the proxy made: text/plain, short, the code in the body. */
function statusOutcome(proto, status, headers, body, allow = [502, 504]) {
  const text = body.toString('utf8');
  const plain = /^text\/plain/.test(String(headers['content-type'] ?? ''));
  if (allow.includes(status) && plain && text.length < 200) {
    const m = /^upstream request error: ([A-Z0-9_]+)$/.exec(text);
    if (status === 502 && m) return ['clean', `${proto} 502 ${m[1]}`];
    if (status === 504 && text === 'upstream timeout') return ['clean', `${proto} 504`];
    if (status === 503) return ['clean', `${proto} 503 ${text}`];
  }
  return ['unexpected', `${proto} status ${status} (${headers['content-type']}): ${JSON.stringify(text.slice(0, 200))}`];
}

// ---- the upstream ---------------------------------------------------------------------------

/**
 * An HTTP/1.1 + WebSocket upstream: GET /down?size= sends random bytes with their sha in
 * `x-body-sha256`; POST /up answers the sha of what it received; POST /echo streams the body
 * back; GET /slow waits for `openGate()`. Every request body and WebSocket message is checked
 * here too (`problems`): a complete body that differs from what the client sent is corruption
 * even when the client never sees an answer.
 */
async function startSoakUpstream() {
  const sockets = new Set();
  const seen = new Map();
  const problems = [];
  let gate = null;
  const server = http.createServer(onRequest);
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * MIB, perMessageDeflate: true });
  server.on('upgrade', (req, socket, head) => {
    socket.on('error', noop);
    wss.handleUpgrade(req, socket, head, (ws) => {
      const id = new URL(req.url, 'http://x').searchParams.get('id');
      ws.on('error', noop);
      ws.on('message', (data, isBinary) => {
        if (!messageIsIntact(data, isBinary)) {
          problems.push({ id, what: 'the upstream received a corrupt WebSocket message', bytes: data.length, isBinary });
        }
        if (ws.readyState === WebSocket.OPEN) ws.send(data, { binary: isBinary });
      });
    });
  });

  function sendBody(req, res, id, size, chunked) {
    if (res.destroyed || req.socket.destroyed) return;
    const body = slice(size);
    const headers = { 'x-req-id': id, 'x-body-sha256': sha(body), 'x-body-len': String(size), 'content-type': 'application/octet-stream' };
    if (!chunked) headers['content-length'] = String(size);
    res.writeHead(200, headers);
    let off = 0;
    const pump = () => {
      while (off < size) {
        if (res.destroyed) return;
        const end = Math.min(size, off + CHUNK);
        const ok = res.write(body.subarray(off, end));
        off = end;
        if (!ok) {
          res.once('drain', pump);
          return;
        }
      }
      res.end();
    };
    pump();
  }

  function onRequest(req, res) {
    const id = String(req.headers['x-req-id'] ?? '');
    seen.set(id, Date.now());
    req.on('error', noop);
    res.on('error', noop);
    const url = new URL(req.url, 'http://x');
    const size = Number(url.searchParams.get('size') ?? 0);
    const delay = Number(url.searchParams.get('delay') ?? 0);
    const later = (fn) => (delay > 0 ? setTimeout(fn, delay) : fn());
    if (url.pathname === '/down' || url.pathname === '/slow') {
      req.resume();
      const go = () => later(() => sendBody(req, res, id, size, url.searchParams.get('chunked') === '1'));
      if (url.pathname === '/slow' && gate !== null) gate.promise.then(go);
      else go();
      return;
    }
    if (url.pathname === '/up' || url.pathname === '/echo') {
      const echo = url.pathname === '/echo';
      const hash = createHash('sha256');
      let n = 0;
      if (echo) res.writeHead(200, { 'x-req-id': id, 'content-type': 'application/octet-stream' });
      req.on('data', (c) => {
        hash.update(c);
        n += c.length;
        if (echo && !res.write(c)) {
          req.pause();
          res.once('drain', () => req.resume());
        }
      });
      req.on('end', () => {
        const got = hash.digest('hex');
        const want = req.headers['x-expect-sha256'];
        const wantLen = Number(req.headers['x-expect-len']);
        if (want !== undefined && (got !== want || n !== wantLen)) {
          problems.push({
            id,
            what: 'the upstream received a complete request body that differs from what the client sent',
            expectedLen: wantLen,
            gotLen: n,
            framing: req.headers['transfer-encoding'] ?? `content-length ${req.headers['content-length']}`,
          });
        }
        if (echo) {
          res.end();
          return;
        }
        later(() => {
          if (res.destroyed) return;
          const body = JSON.stringify({ id, bytes: n, sha: got });
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-req-id': id });
          res.end(body);
        });
      });
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  }

  server.listen(0, '127.0.0.1');
  await withTimeout(once(server, 'listening'), 5000, 'upstream listen');
  const port = server.address().port;
  return {
    port,
    seen,
    problems,
    sockets,
    closeGate() {
      let open;
      const promise = new Promise((r) => (open = r));
      gate = { promise, open };
    },
    openGate() {
      gate?.open();
      gate = null;
    },
    /** Closes every socket (upgraded ones too), stops listening for `gapMs`, listens again on the same port. */
    async restart(gapMs) {
      const begin = Date.now();
      const closed = new Promise((r) => server.close(r));
      for (const s of sockets) s.destroy();
      await withTimeout(closed, 5000, 'upstream close during restart');
      await sleep(gapMs);
      server.listen(port, '127.0.0.1');
      await withTimeout(once(server, 'listening'), 5000, 'upstream re-listen');
      return { begin, relisten: Date.now() };
    },
    async close() {
      for (const client of wss.clients) client.terminate();
      for (const s of sockets) s.destroy();
      if (server.listening) await withTimeout(new Promise((r) => server.close(r)), 5000, 'upstream close');
    },
  };
}

// ---- clients --------------------------------------------------------------------------------

function newRecord(proto, plan) {
  return { proto, id: plan.id, op: plan.op ?? 'ws', size: plan.size, chunked: plan.chunked, abort: plan.abort?.stage ?? null, t0: Date.now(), t1: 0, cls: '', label: '', phase: 'request', sent: 0, received: 0, bytes: 0, detail: undefined };
}

/** Checks a 200 answer: the right request, the right length, the right sha. Returns [cls, label, detail]. */
function verify200(proto, plan, headers, received, digest, jsonBody, bodySha) {
  if (headers['x-req-id'] !== plan.id) {
    return ['corrupt', `${proto} answer for another request`, { expectedId: plan.id, gotId: headers['x-req-id'] }];
  }
  if (plan.op === 'down' || plan.op === 'slow') {
    if (received !== plan.size || headers['x-body-sha256'] !== digest) {
      return ['corrupt', `${proto} download differs`, { expectedLen: plan.size, gotLen: received, upstreamSha: headers['x-body-sha256'], gotSha: digest, chunked: plan.chunked }];
    }
  } else if (plan.op === 'up') {
    let answer;
    try {
      answer = JSON.parse(jsonBody.toString('utf8'));
    } catch {
      return ['corrupt', `${proto} upload answer is not JSON`, { body: jsonBody.toString('latin1').slice(0, 200) }];
    }
    if (answer.id !== plan.id || answer.bytes !== plan.size || answer.sha !== bodySha) {
      return ['corrupt', `${proto} upload reached the upstream altered`, { expectedLen: plan.size, upstreamLen: answer.bytes, expectedSha: bodySha, upstreamSha: answer.sha, chunked: plan.chunked }];
    }
  } else if (received !== plan.size || digest !== bodySha) {
    return ['corrupt', `${proto} echo differs`, { expectedLen: plan.size, gotLen: received, expectedSha: bodySha, gotSha: digest, chunked: plan.chunked }];
  }
  return ['ok', 'ok', undefined];
}

function pathFor(plan) {
  if (plan.op === 'down') return `/down?size=${plan.size}&chunked=${plan.chunked ? 1 : 0}&delay=${plan.delay}&id=${plan.id}`;
  if (plan.op === 'slow') return `/slow?size=${plan.size}&chunked=${plan.chunked ? 1 : 0}&id=${plan.id}`;
  return `/${plan.op}?delay=${plan.delay}&id=${plan.id}`;
}

/** Writes `body` in CHUNK pieces with backpressure; stops when `stop()` says so or the stream closes. */
async function pumpBody(w, body, rec, plan, abortNow, isDone) {
  let off = 0;
  while (off < body.length) {
    if (isDone() || w.destroyed) return;
    if (plan.abort?.stage === 'mid-upload' && off >= plan.abort.at) {
      abortNow('mid-upload');
      return;
    }
    const end = Math.min(body.length, off + CHUNK);
    const ok = w.write(body.subarray(off, end));
    off = end;
    rec.sent = off;
    if (!ok) {
      await new Promise((resolve) => {
        const done = () => {
          w.off('drain', done);
          w.off('close', done);
          resolve();
        };
        w.on('drain', done);
        w.on('close', done);
      });
    }
  }
  if (!isDone() && !w.destroyed) {
    w.end();
    rec.uploadDone = true;
  }
}

/** One HTTP/1.1 exchange over `agent` (keep-alive). Always resolves, within EXCHANGE_TIMEOUT_MS. */
function h1Exchange(port, agent, upstreamPort, plan) {
  return new Promise((resolve) => {
    const rec = newRecord('h1', plan);
    let settled = false;
    let aborting = false;
    const body = plan.op === 'down' || plan.op === 'slow' ? null : slice(plan.size);
    const bodySha = body === null ? null : sha(body);
    const headers = { 'x-cmux-port-internal': String(upstreamPort), 'x-req-id': plan.id };
    if (body !== null) {
      headers['x-expect-sha256'] = bodySha;
      headers['x-expect-len'] = String(plan.size);
      if (!plan.chunked) headers['content-length'] = String(plan.size);
    }
    const req = http.request({ host: '127.0.0.1', port, method: body === null ? 'GET' : 'POST', path: pathFor(plan), headers, agent });
    const finish = (cls, label, detail) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      Object.assign(rec, { t1: Date.now(), cls, label, detail });
      // An answer that came before the upload ended (a 502): the request is over, stop sending.
      if (!req.writableFinished && !req.destroyed) req.destroy();
      resolve(rec);
    };
    const timeoutMs = plan.timeoutMs ?? EXCHANGE_TIMEOUT_MS;
    const timer = setTimeout(() => {
      req.destroy();
      finish('hang', `h1 no outcome after ${timeoutMs} ms`, { phase: rec.phase, sent: rec.sent, received: rec.received });
    }, timeoutMs);
    const abortNow = (stage) => {
      if (settled) return;
      aborting = true;
      req.destroy();
      finish('aborted', stage);
    };
    req.on('error', (err) => {
      if (aborting || settled) return;
      if (err.code === 'ECONNREFUSED') finish('unexpected', 'h1 the proxy refused a connection', { message: err.message });
      else finish('clean', `h1 reset ${rec.phase === 'request' ? 'before response' : 'mid-response'} ${err.code ?? err.message}`);
    });
    req.on('response', (res) => {
      rec.phase = 'response';
      rec.connection = res.headers.connection;
      const status = res.statusCode;
      const hash = createHash('sha256');
      const kept = [];
      res.on('data', (c) => {
        rec.received += c.length;
        if (status === 200 && plan.op !== 'up') hash.update(c);
        else if (rec.received <= 64 * 1024) kept.push(c);
        if (plan.abort?.stage === 'mid-download' && rec.received >= plan.abort.at) abortNow('mid-download');
      });
      res.on('error', (err) => {
        if (!aborting) finish('clean', `h1 reset mid-response ${err.code ?? err.message}`);
      });
      res.on('close', () => {
        if (!aborting && !res.complete) finish('clean', 'h1 reset mid-response (closed before the end)');
      });
      res.on('end', () => {
        if (!res.complete) return finish('clean', 'h1 reset mid-response (incomplete)');
        if (status !== 200) {
          if (status === plan.expectStatus) return finish('ok', `expected ${status}`);
          const [cls, label] = statusOutcome('h1', status, res.headers, Buffer.concat(kept));
          return finish(cls, label);
        }
        const [cls, label, detail] = verify200('h1', plan, res.headers, rec.received, hash.digest('hex'), Buffer.concat(kept), bodySha);
        if (cls === 'ok') rec.bytes = plan.op === 'echo' ? 2 * plan.size : plan.size;
        finish(cls, label, detail);
      });
    });
    if (body === null) req.end();
    else pumpBody(req, body, rec, plan, abortNow, () => settled).catch(noop);
    if (plan.abort?.stage === 'before-headers') {
      setTimeout(() => {
        if (rec.phase === 'request') abortNow('before-headers');
      }, plan.abort.at);
    }
  });
}

/** HTTP/2 sessions to the proxy, reconnected when one goes away. */
class H2Client {
  constructor(port) {
    this.port = port;
    this.session = null;
    this.opened = 0;
    this.goaways = 0;
    this.sessionErrors = [];
  }
  get() {
    const s = this.session;
    if (s !== null && !s.closed && !s.destroyed) return s;
    const session = http2.connect(`http://127.0.0.1:${this.port}`);
    this.opened++;
    session.on('error', (err) => this.sessionErrors.push(`${err.code}: ${err.message}`));
    session.on('goaway', (code, lastStreamID) => {
      this.goaways++;
      this.lastGoaway = `GOAWAY(code ${code}, last stream ${lastStreamID}) at ${new Date().toISOString()}`;
      if (code !== 0) this.sessionErrors.push(this.lastGoaway);
    });
    this.session = session;
    return session;
  }
  async close() {
    const s = this.session;
    this.session = null;
    if (s === null || s.destroyed) return;
    try {
      await withTimeout(new Promise((r) => s.close(r)), 5000, 'h2 session close');
    } catch {
      s.destroy();
    }
  }
}

/** One HTTP/2 exchange on a shared session. Always resolves, within EXCHANGE_TIMEOUT_MS. */
function h2Exchange(client, upstreamPort, plan) {
  return new Promise((resolve) => {
    const rec = newRecord('h2', plan);
    rec.uploadDone = plan.op === 'down' || plan.op === 'slow';
    if (plan.abort) rec.rst = plan.abort.rstError ? 'RST_STREAM(INTERNAL_ERROR)' : 'RST_STREAM(NO_ERROR)';
    let settled = false;
    let aborting = false;
    let stream = null;
    const body = plan.op === 'down' || plan.op === 'slow' ? null : slice(plan.size);
    const bodySha = body === null ? null : sha(body);
    const headers = {
      ':method': body === null ? 'GET' : 'POST',
      ':path': pathFor(plan),
      'x-cmux-port-internal': String(upstreamPort),
      'x-req-id': plan.id,
    };
    if (body !== null) {
      headers['x-expect-sha256'] = bodySha;
      headers['x-expect-len'] = String(plan.size);
      if (!plan.chunked) headers['content-length'] = String(plan.size);
    }
    const finish = (cls, label, detail) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      Object.assign(rec, { t1: Date.now(), cls, label, detail });
      // destroy(), not close(): Node's close() sends END_STREAM before RST_STREAM, which tells the
      // proxy the request body is complete. destroy() resets with NO_ERROR, destroy(err) with
      // INTERNAL_ERROR; neither ends the request.
      // Only streams still open are reset: RST_STREAM after a complete exchange would count
      // against nghttp2's reset rate limit (1000 burst, 33/s), which ends the session with
      // GOAWAY(INTERNAL_ERROR).
      // A complete answer before the upload ended (a 502) is reset too: the client stops sending.
      if ((cls !== 'ok' || !rec.uploadDone) && stream !== null && !stream.destroyed && !stream.closed) {
        stream.destroy(plan.abort?.rstError ? new Error('client abort') : undefined);
      }
      resolve(rec);
    };
    const timeoutMs = plan.timeoutMs ?? EXCHANGE_TIMEOUT_MS;
    const timer = setTimeout(() => {
      finish('hang', `h2 no outcome after ${timeoutMs} ms`, { phase: rec.phase, sent: rec.sent, received: rec.received });
    }, timeoutMs);
    try {
      stream = client.get().request(headers, { endStream: body === null });
    } catch (err) {
      finish('clean', `h2 session unusable ${err.code ?? err.message}`);
      client.session = null;
      return;
    }
    const abortNow = (stage) => {
      if (settled) return;
      aborting = true;
      finish('aborted', stage);
    };
    let status = 0;
    let resHeaders = {};
    const hash = createHash('sha256');
    const kept = [];
    stream.on('response', (h) => {
      rec.phase = 'response';
      status = Number(h[':status']);
      resHeaders = h;
    });
    stream.on('data', (c) => {
      rec.received += c.length;
      if (status === 200 && plan.op !== 'up') hash.update(c);
      else if (rec.received <= 64 * 1024) kept.push(c);
      if (plan.abort?.stage === 'mid-download' && rec.received >= plan.abort.at) abortNow('mid-download');
    });
    stream.on('end', () => {
      if (settled) return;
      if (status === 0) {
        // Node ends the readable side on RST_STREAM(NO_ERROR) too: that is a reset.
        return finish('unexpected', `h2 stream ended without a response (rstCode ${stream.rstCode}${client.lastGoaway ? `, session got ${client.lastGoaway}` : ''})`, { streamId: stream.id });
      }
      if (status !== 200) {
        if (status === plan.expectStatus) return finish('ok', `expected ${status}`);
        const [cls, label] = statusOutcome('h2', status, resHeaders, Buffer.concat(kept));
        return finish(cls, label);
      }
      const [cls, label, detail] = verify200('h2', plan, resHeaders, rec.received, hash.digest('hex'), Buffer.concat(kept), bodySha);
      if (cls === 'ok') rec.bytes = plan.op === 'echo' ? 2 * plan.size : plan.size;
      finish(cls, label, detail);
    });
    stream.on('error', (err) => {
      if (!aborting) finish('clean', `h2 reset ${rec.phase === 'request' ? 'before response' : 'mid-response'} ${err.code ?? err.message}`, { message: err.message, streamId: stream.id });
    });
    stream.on('close', () => {
      if (!aborting) finish('clean', `h2 reset ${rec.phase === 'request' ? 'before response' : 'mid-response'} rst ${stream.rstCode}`);
    });
    if (body !== null) pumpBody(stream, body, rec, plan, abortNow, () => settled).catch(noop);
    if (plan.abort?.stage === 'before-headers') {
      setTimeout(() => {
        if (rec.phase === 'request') abortNow('before-headers');
      }, plan.abort.at);
    }
  });
}

/**
 * One WebSocket: each message is sent, its echo compared byte for byte, then the next; a clean
 * close at the end. `untilClosed` keeps sending (graceful-stop test). Always resolves.
 */
function wsSession(port, upstreamPort, plan, { untilClosed = null } = {}) {
  return new Promise((resolve) => {
    const rec = newRecord('ws', plan);
    rec.size = 0;
    let settled = false;
    let aborting = false;
    let closing = false;
    let opened = false;
    let lastError = null;
    let index = 0;
    let expected = null;
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?id=${plan.id}`, {
      headers: { 'x-cmux-port-internal': String(upstreamPort) },
      perMessageDeflate: plan.deflate,
      handshakeTimeout: EXCHANGE_TIMEOUT_MS,
      maxPayload: 64 * MIB,
    });
    const finish = (cls, label, detail) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      Object.assign(rec, { t1: Date.now(), cls, label, detail, messages: index });
      if (ws.readyState !== WebSocket.CLOSED) ws.terminate();
      resolve(rec);
    };
    const timer = setTimeout(() => finish('hang', `ws no outcome after ${EXCHANGE_TIMEOUT_MS} ms`, { opened, messages: index }), untilClosed ? 60_000 : EXCHANGE_TIMEOUT_MS);
    const abortNow = (stage) => {
      if (settled) return;
      aborting = true;
      ws.terminate();
      finish('aborted', stage);
    };
    const sendNext = () => {
      const spec = untilClosed ? (untilClosed() ? null : plan.messages[index % plan.messages.length]) : plan.messages[index];
      if (plan.abort?.stage === 'mid-websocket' && index === plan.abort.after) {
        // A message on its way, then the client vanishes.
        ws.send(makeMessage(plan.messages[index]).data);
        abortNow('mid-websocket');
        return;
      }
      if (spec === undefined || spec === null) {
        closing = true;
        ws.close(1000, 'done');
        return;
      }
      expected = makeMessage(spec);
      rec.sent += expected.buf.length;
      ws.send(expected.data, { binary: expected.binary });
    };
    ws.on('open', () => {
      opened = true;
      rec.phase = 'response';
      sendNext();
    });
    ws.on('message', (data, isBinary) => {
      if (settled) return;
      if (expected === null) return finish('corrupt', 'ws a message nobody asked for', { index, bytes: data.length });
      if (isBinary !== expected.binary || !data.equals(expected.buf)) {
        return finish('corrupt', 'ws echo differs', { index, binary: expected.binary, sentLen: expected.buf.length, gotLen: data.length, sentSha: sha(expected.buf), gotSha: sha(data) });
      }
      rec.received += data.length;
      rec.bytes += 2 * data.length;
      index++;
      expected = null;
      sendNext();
    });
    ws.on('unexpected-response', (req, res) => {
      const kept = [];
      res.on('data', (c) => kept.push(c));
      res.on('error', noop);
      res.on('end', () => {
        const [cls, label] = statusOutcome('ws', res.statusCode, res.headers, Buffer.concat(kept), untilClosed ? [502, 503, 504] : [502, 504]);
        finish(cls, label);
        req.destroy();
      });
    });
    ws.on('error', (err) => (lastError = err));
    ws.on('close', (code) => {
      if (aborting || settled) return;
      if (closing && code === 1000) return finish('ok', 'ok');
      finish('clean', `ws closed ${code} ${opened ? 'after open' : 'in handshake'}${lastError ? ` ${lastError.code ?? lastError.message}` : ''}`);
    });
    if (plan.abort?.stage === 'ws-handshake') {
      setTimeout(() => {
        if (!opened) abortNow('ws-handshake');
      }, plan.abort.at);
    }
  });
}

/**
 * Every abort kind once, deterministically, on its own connections: HTTP/1.1 and HTTP/2 (reset
 * with NO_ERROR and with INTERNAL_ERROR) x before headers / mid-upload / mid-download of 4 MiB
 * bodies, plus a POST to a refused upstream (502 while the body is still being sent, then the
 * next request on the same connection). Random aborts in the soak hit the same paths, but only
 * by chance; these make the leak checks at the end see each of them. Returns the HTTP/2 clients,
 * still open.
 */
async function abortMatrix(port, upstreamPort, deadPort, record) {
  const big = 4 * MIB;
  const plans = (proto, rst) => [
    { op: 'down', size: big, abort: { stage: 'mid-download', at: 256 * 1024, rstError: rst } },
    { op: 'echo', size: big, abort: { stage: 'mid-download', at: 256 * 1024, rstError: rst } },
    { op: 'up', size: big, abort: { stage: 'mid-upload', at: 512 * 1024, rstError: rst } },
    { op: 'echo', size: big, abort: { stage: 'mid-upload', at: 512 * 1024, rstError: rst } },
    { op: 'down', size: big, delay: 50, abort: { stage: 'before-headers', at: 10, rstError: rst } },
    // HTTP/1.1: a body small enough to be queued whole, so the 502 keeps the connection for the next request;
    // HTTP/2: a body still being sent when the 502 comes (the client then resets the stream).
    { op: 'up', size: proto === 'h1' ? 2000 : big, abort: null, upstream: deadPort, expectStatus: 502 },
    { op: 'down', size: 1000, abort: null },
  ].map((p) => ({ id: `matrix-${proto}-${++seq}`, chunked: false, delay: 0, ...p }));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    for (const plan of plans('h1', false)) record(await h1Exchange(port, agent, plan.upstream ?? upstreamPort, plan));
  } finally {
    agent.destroy();
  }
  // The sessions stay open (returned to the caller): a stream the proxy never tore down then
  // still holds what it held, instead of being swept when its session goes away.
  const clients = [];
  for (const rst of [false, true]) {
    const client = new H2Client(port);
    clients.push(client);
    for (const plan of plans('h2', rst)) record(await h2Exchange(client, plan.upstream ?? upstreamPort, plan));
  }
  return clients;
}

/**
 * The soak's traffic: H1_WORKERS keep-alive HTTP/1.1 clients, H2_SESSIONS sessions with
 * H2_STREAMS_PER_SESSION concurrent streams each, WS_WORKERS WebSocket clients, each looping
 * until `deadline` (or `stop()` says so). Every outcome goes to `record`.
 */
function mixedLoad(port, upstreamPort, { deadline, abortRate, record, stop }) {
  const agents = [];
  const h2clients = [];
  const workers = [];
  const running = () => Date.now() < deadline && !stop();
  const backoff = (r) => (r.cls === 'ok' || r.cls === 'aborted' ? null : sleep(5));
  for (let w = 0; w < H1_WORKERS; w++) {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    agents.push(agent);
    workers.push(
      (async () => {
        let prev;
        while (running()) {
          const r = await h1Exchange(port, agent, upstreamPort, planExchange('h1', { abortRate }));
          r.prev = prev;
          prev = `${r.id} ${r.op} ${r.chunked ? 'chunked' : 'content-length'} ${r.size} B -> ${r.cls}: ${r.label} (connection: ${r.connection ?? '-'})`;
          record(r);
          await backoff(r);
        }
      })(),
    );
  }
  for (let s = 0; s < H2_SESSIONS; s++) {
    const client = new H2Client(port);
    h2clients.push(client);
    for (let w = 0; w < H2_STREAMS_PER_SESSION; w++) {
      workers.push(
        (async () => {
          while (running()) {
            const r = await h2Exchange(client, upstreamPort, planExchange('h2', { abortRate }));
            record(r);
            await backoff(r);
          }
        })(),
      );
    }
  }
  for (let w = 0; w < WS_WORKERS; w++) {
    workers.push(
      (async () => {
        while (running()) {
          const r = await wsSession(port, upstreamPort, planWebSocket({ abortRate }));
          record(r);
          await backoff(r);
        }
      })(),
    );
  }
  return {
    h2clients,
    done: withTimeout(Promise.all(workers), deadline - Date.now() + EXCHANGE_TIMEOUT_MS + 10_000, 'load workers'),
    /** Every client goes away. */
    async close() {
      for (const agent of agents) agent.destroy();
      await Promise.all(h2clients.map((c) => c.close()));
    },
    /** The HTTP/1.1 clients go away; the HTTP/2 sessions stay open (idle). */
    closeH1() {
      for (const agent of agents) agent.destroy();
    },
  };
}

// ---- reporting ------------------------------------------------------------------------------

function tally(records, key) {
  const out = {};
  for (const r of records) out[key(r)] = (out[key(r)] ?? 0) + 1;
  return Object.fromEntries(Object.entries(out).sort((a, b) => b[1] - a[1]));
}

function describeRecords(records, max = 8) {
  return records
    .slice(0, max)
    .map((r) =>
      JSON.stringify({
        id: r.id, proto: r.proto, op: r.op, size: r.size, chunked: r.chunked, abort: r.abort, label: r.label, phase: r.phase, sent: r.sent, received: r.received,
        startedMs: r.t0 - r.base, endedMs: r.t1 - r.base, detail: r.detail, previousOnThisConnection: r.prev,
      }),
    )
    .join('\n  ');
}

// ---- the tests ------------------------------------------------------------------------------

describe('soak: mixed h1/h2/WebSocket load through the proxy process', () => {
  let upstream;
  const children = [];
  before(async () => {
    upstream = await startSoakUpstream();
  });
  after(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await upstream?.close();
  });

  it(`${SOAK_MS / 1000} s soak with an upstream restart: byte-exact, clean failures only, no fd or memory growth`, { timeout: SOAK_MS + 180_000 }, async () => {
    const cli = await startCli(CLI_ARGS);
    children.push(cli.child);
    const pid = cli.child.pid;
    let exited = null;
    cli.child.on('exit', (code, signal) => (exited = { code, signal }));
    const port = cli.port;
    const up = upstream.port;

    // Warm-up: every kind once or twice, then every client closed; the baseline is taken after.
    {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      const h2c = new H2Client(port);
      // Fails fast: a broken basic path would otherwise cost a hang timeout per exchange.
      const check = (r) => assert.equal(r.cls, 'ok', `warm-up exchange failed (the basic path is broken):\n  ${describeRecords([{ ...r, base: r.t0 }])}`);
      try {
        for (let i = 0; i < 3; i++) {
          for (const op of ['down', 'up', 'echo']) {
            const plan = { id: `warm-${++seq}`, op, size: 200_000, chunked: i % 2 === 1, delay: 0, abort: null, timeoutMs: 10_000 };
            check(await h1Exchange(port, agent, up, plan));
            check(await h2Exchange(h2c, up, { ...plan, id: `warm-${++seq}` }));
          }
          check(await wsSession(port, up, { id: `warm-ws-${++seq}`, deflate: i === 1, messages: [{ binary: true, size: 1000 }, { binary: false, size: 70_000 }], abort: null }));
        }
      } finally {
        agent.destroy();
        await h2c.close();
      }
    }
    // The fd count settles once the warm-up's sockets have closed on the proxy side.
    let fdBase = fdCount(pid);
    {
      let stable = 0;
      await waitFor(() => {
        const n = fdCount(pid);
        stable = n === fdBase ? stable + 1 : 0;
        fdBase = n;
        return stable >= 5;
      }, 3000, 100);
    }
    const fdKindsBase = describeFds(pid, port, up);
    const rssStartup = rssBytes(pid);

    const base = Date.now();
    const records = [];
    const record = (r) => {
      r.base = base;
      records.push(r);
    };
    const dead = () => exited !== null;

    // Warm-up load: the soak's mix for WARM_LOAD_MS without aborts, so the allocator has reached
    // its working size when the RSS baseline is taken: growth past it is what a leak looks like.
    // Its outcomes are checked like the soak's.
    const warmLoad = mixedLoad(port, up, { deadline: Date.now() + WARM_LOAD_MS, abortRate: 0, record, stop: dead });
    await warmLoad.done;
    await warmLoad.close();
    await sleep(500);
    const rssBase = rssBytes(pid);

    // The soak.
    const soakStart = Date.now();
    const load = mixedLoad(port, up, { deadline: soakStart + SOAK_MS, abortRate: ABORT_RATE, record, stop: dead });
    const h2clients = load.h2clients;
    const matrix = abortMatrix(port, up, await refusedPort(), record);
    await sleep(SOAK_MS / 2);
    const restart = await upstream.restart(RESTART_GAP_MS);
    await load.done;
    const matrixClients = await withTimeout(matrix, 4 * EXCHANGE_TIMEOUT_MS, 'abort matrix');
    const soakMs = Date.now() - soakStart;

    // Every exchange is over. With the HTTP/2 sessions still open (idle), the proxy must let go
    // of every upstream socket once its pool's idle sockets expire (before the upstream's 5 s
    // Keep-Alive timeout): one still held belongs to an exchange the proxy never tore down.
    load.closeH1();
    const heldStart = Date.now();
    let upstreamHeld = {};
    const upstreamOnly = (kinds) => Object.fromEntries(Object.entries(kinds).filter(([k]) => k.startsWith('upstream connection')));
    await waitFor(() => Object.keys((upstreamHeld = upstreamOnly(describeFds(pid, port, up)))).length === 0, 10_000, 200);
    const upstreamHeldMs = Date.now() - heldStart;

    // Every client goes away.
    await load.close();
    await Promise.all(matrixClients.map((c) => c.close()));

    // Failures are clean ones, caused by the restart: the exchange overlapped it.
    const windowEnd = restart.relisten + RESTART_GRACE_MS;
    for (const r of records) {
      if (r.cls === 'clean' && !(r.t1 >= restart.begin && r.t0 <= windowEnd)) {
        r.cls = 'unexpected';
        r.label += ' (outside the upstream restart window)';
      }
    }

    // Back to baseline: the pool's idle upstream sockets close before the upstream's Keep-Alive
    // timeout (5 s), so this may take a few seconds. Past that, no client or upstream socket may
    // remain: one that does is an exchange the proxy never tore down.
    const settleStart = Date.now();
    let fdAfter = fdCount(pid);
    let fdKindsAfter = describeFds(pid, port, up);
    const socketsLeft = (kinds) => Object.entries(kinds).filter(([k]) => /^(client|upstream) connection/.test(k));
    const fdSettled = await waitFor(() => {
      fdAfter = fdCount(pid);
      fdKindsAfter = describeFds(pid, port, up);
      return fdAfter <= fdBase + FD_SLACK && socketsLeft(fdKindsAfter).length === 0;
    }, 15_000, 200);
    const fdSettleMs = Date.now() - settleStart;
    const rssStart = Date.now();
    let rssAfter = rssBytes(pid);
    const rssSettled = await waitFor(() => (rssAfter = rssBytes(pid)) <= rssBase + RSS_SLACK, 5_000, 100);
    const rssSettleMs = Date.now() - rssStart;

    // Report.
    const by = (cls) => records.filter((r) => r.cls === cls);
    const ok = by('ok');
    const aborted = by('aborted');
    const clean = by('clean');
    const corrupt = by('corrupt');
    const hung = by('hang');
    const unexpected = by('unexpected');
    const wsRecords = records.filter((r) => r.proto === 'ws');
    const sum = (rs, f) => rs.reduce((n, r) => n + f(r), 0);
    const log = (line) => console.log(`# soak: ${line}`);
    log(`${(soakMs / 1000).toFixed(1)} s (after ${WARM_LOAD_MS / 1000} s of warm-up load), seed ${SEED}, proxy pid ${pid}`);
    log(
      `requests ${records.length} (h1 ${records.filter((r) => r.proto === 'h1').length}, h2 ${records.filter((r) => r.proto === 'h2').length}, ` +
        `ws sessions ${wsRecords.length} with ${sum(wsRecords, (r) => r.messages ?? 0)} echoed messages): ok ${ok.length}, client-aborted ${aborted.length}, ` +
        `clean failures ${clean.length}, corrupt ${corrupt.length}, hung ${hung.length}, unexpected ${unexpected.length}`,
    );
    log(`bytes ${human(sum(ok, (r) => r.bytes))} verified end to end (sent ${human(sum(records, (r) => r.sent))}, received ${human(sum(records, (r) => r.received))})`);
    log(`aborts by stage ${JSON.stringify(tally(aborted, (r) => r.abort))}`);
    log(`errors by kind ${JSON.stringify(tally([...clean, ...corrupt, ...hung, ...unexpected], (r) => `${r.cls}: ${r.label}`))}`);
    log(`upstream restart at +${((restart.begin - soakStart) / 1000).toFixed(2)} s, not listening for ${restart.relisten - restart.begin} ms; upstream-side problems ${upstream.problems.length}`);
    log(`h2 sessions opened ${sum(h2clients, (c) => c.opened)}, GOAWAYs ${sum(h2clients, (c) => c.goaways)}, session errors ${JSON.stringify(h2clients.flatMap((c) => c.sessionErrors))}`);
    log(`upstream sockets held with the HTTP/2 sessions idle: ${JSON.stringify(upstreamHeld)} (after ${upstreamHeldMs} ms)`);
    log(`proxy fds: baseline ${fdBase}, after ${fdAfter} (${fdSettled ? 'settled' : 'NOT settled'} in ${fdSettleMs} ms)${fdSettled ? '' : ` ${JSON.stringify(fdKindsAfter)}`}`);
    log(`proxy RSS: after startup ${mib(rssStartup)}, baseline after warm-up load ${mib(rssBase)}, peak ${mib(statusField(pid, 'VmHWM'))}, after ${mib(rssAfter)} (${rssSettled ? 'settled' : 'NOT settled'} in ${rssSettleMs} ms)`);
    const proxyLog = cli.stderr().split('\n').filter((l) => l !== '' && !/listening on/.test(l));
    if (proxyLog.length > 0) log(`proxy stderr (${proxyLog.length} lines): ${proxyLog.slice(0, 5).join(' | ')}`);

    // Verdicts: every broken promise is listed, with the client's view of the exchange.
    const failures = [];
    const clientView = (id) => {
      const r = records.find((x) => x.id === id);
      return r === undefined
        ? 'no client record'
        : `${r.proto} ${r.op} ${r.chunked ? 'without content-length' : 'with content-length'}: client saw ${r.cls}: ${r.label}${r.abort ? ` (client abort ${r.abort}${r.rst ? ` by ${r.rst}` : ''})` : ''}, sent ${r.sent} of ${r.size}, received ${r.received}`;
    };
    if (exited !== null) failures.push(`the proxy process exited during the soak: ${JSON.stringify(exited)}\n${cli.stderr()}`);
    if (corrupt.length > 0) failures.push(`${corrupt.length} completed exchanges with wrong bytes:\n  ${describeRecords(corrupt)}`);
    if (upstream.problems.length > 0) {
      failures.push(
        `the upstream received ${upstream.problems.length} corrupt request bodies or messages as complete:\n  ` +
          upstream.problems.slice(0, 8).map((p) => `${JSON.stringify(p)} <- ${clientView(p.id)}`).join('\n  '),
      );
    }
    if (hung.length > 0) failures.push(`${hung.length} exchanges with no outcome after ${EXCHANGE_TIMEOUT_MS} ms:\n  ${describeRecords(hung)}`);
    if (unexpected.length > 0) failures.push(`${unexpected.length} failures that are not a clean 502/504/reset around the restart:\n  ${describeRecords(unexpected)}`);
    for (const proto of ['h1', 'h2', 'ws']) if (!ok.some((r) => r.proto === proto)) failures.push(`no ${proto} exchange completed`);
    if (clean.length === 0) failures.push('no exchange noticed the upstream restart');
    if (Object.keys(upstreamHeld).length > 0) {
      failures.push(
        `${upstreamHeldMs} ms after the last exchange ended, with the HTTP/2 sessions still open, the proxy still holds upstream sockets: ${JSON.stringify(upstreamHeld)} ` +
          '(exchanges it never tore down; ESTABLISHED: the upstream still serves them, CLOSE_WAIT: the upstream closed but the proxy is not reading)',
      );
    }
    if (fdAfter > fdBase + FD_SLACK) {
      failures.push(`proxy fds did not come back: baseline ${fdBase}, now ${fdAfter} (> +${FD_SLACK}) ${fdSettleMs} ms after all clients closed; baseline ${JSON.stringify(fdKindsBase)}, now ${JSON.stringify(fdKindsAfter)}`);
    }
    if (socketsLeft(fdKindsAfter).length > 0) {
      failures.push(
        `sockets still open in the proxy ${fdSettleMs} ms after every client closed: ${JSON.stringify(Object.fromEntries(socketsLeft(fdKindsAfter)))} ` +
          '(ESTABLISHED upstream: an exchange still holds its upstream socket; CLOSE_WAIT: the peer closed but the proxy is not reading that socket)',
      );
    }
    if (!rssSettled) failures.push(`proxy RSS did not come back: baseline ${mib(rssBase)}, now ${mib(rssAfter)} (> +${mib(RSS_SLACK)}) ${rssSettleMs} ms after all clients closed`);
    assert.equal(failures.length, 0, `soak seed ${SEED}:\n${failures.join('\n')}`);

    const stopped = new Promise((r) => cli.child.once('exit', (code, signal) => r({ code, signal })));
    if (exited === null) cli.child.kill('SIGTERM');
    const stop = exited ?? (await withTimeout(stopped, 15_000, 'proxy exit after SIGTERM'));
    assert.equal(stop.code, 0, `exit after the soak: ${JSON.stringify(stop)}\n${cli.stderr()}`);
  });

  it('SIGTERM under load: in-flight exchanges complete, new connections are refused, exit 0 within the drain timeout', { timeout: 120_000 }, async () => {
    const DRAIN_MS = 5000;
    const cli = await startCli([...CLI_ARGS, '--drain-timeout-ms', String(DRAIN_MS)]);
    children.push(cli.child);
    const port = cli.port;
    const up = upstream.port;
    let exitInfo = null;
    const exited = new Promise((r) =>
      cli.child.once('exit', (code, signal) => {
        exitInfo = { code, signal, at: Date.now() };
        r(exitInfo);
      }),
    );
    upstream.closeGate();
    const problemsBefore = upstream.problems.length;
    const base = Date.now();
    const records = [];
    const record = (r) => {
      r.base = base;
      records.push(r);
    };
    // The background load runs until the held exchanges are done (or the process is gone).
    let loadOver = false;
    const over = () => loadOver || exitInfo !== null;
    const opts = { maxSize: MIB, abortRate: 0 };
    const agents = [];
    const h2clients = [];
    const workers = [];
    for (let w = 0; w < 3; w++) {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      agents.push(agent);
      workers.push(
        (async () => {
          while (!over()) {
            const r = await h1Exchange(port, agent, up, planExchange('h1', opts));
            record(r);
            await sleep(r.cls === 'ok' ? 2 : 25);
          }
        })(),
      );
    }
    const bgH2 = new H2Client(port);
    h2clients.push(bgH2);
    for (let w = 0; w < 2; w++) {
      workers.push(
        (async () => {
          while (!over()) {
            const r = await h2Exchange(bgH2, up, planExchange('h2', opts));
            record(r);
            await sleep(r.cls === 'ok' ? 2 : 25);
          }
        })(),
      );
    }
    workers.push(
      (async () => {
        while (!over()) {
          const r = await wsSession(port, up, planWebSocket({ abortRate: 0, messages: 8 }), { untilClosed: over });
          record(r);
          await sleep(25);
        }
      })(),
    );

    // Held exchanges: they reach the upstream, which answers only after the signal.
    const heldAgent = new http.Agent({ keepAlive: true });
    agents.push(heldAgent);
    const heldH2 = new H2Client(port);
    h2clients.push(heldH2);
    const heldPlans = [];
    const held = [];
    for (let i = 0; i < 6; i++) {
      const plan = { id: `held-h1-${++seq}`, op: 'slow', size: randInt(256 * 1024, 2 * MIB), chunked: i % 2 === 0, delay: 0, abort: null };
      heldPlans.push(plan);
      held.push(h1Exchange(port, heldAgent, up, plan));
    }
    for (let i = 0; i < 4; i++) {
      const plan = { id: `held-h2-${++seq}`, op: 'slow', size: randInt(256 * 1024, 2 * MIB), chunked: i % 2 === 0, delay: 0, abort: null };
      heldPlans.push(plan);
      held.push(h2Exchange(heldH2, up, plan));
    }
    let heldSettled = 0;
    for (const p of held) p.then(() => heldSettled++);
    try {
      const heldArrived = await waitFor(() => heldPlans.every((p) => upstream.seen.has(p.id)), 10_000);
      assert.ok(heldArrived, `held requests did not reach the upstream: ${heldPlans.filter((p) => !upstream.seen.has(p.id)).map((p) => p.id)}`);
      const loaded = await waitFor(() => records.filter((r) => r.cls === 'ok').length >= 20, 10_000);
      assert.ok(loaded, `background load did not run: ${JSON.stringify(tally(records, (r) => `${r.cls}: ${r.label}`))}`);
    } catch (err) {
      loadOver = true;
      upstream.openGate();
      throw err;
    }

    const tSignal = Date.now();
    cli.child.kill('SIGTERM');

    // New connections are refused while the held exchanges are still in flight.
    let refusedAfter = null;
    const attempts = [];
    await waitFor(async () => {
      const outcome = await tryConnect(port);
      attempts.push(outcome);
      if (outcome === 'refused') refusedAfter = Date.now() - tSignal;
      return outcome === 'refused';
    }, 3000, 20);
    const drainingWhenRefused = exitInfo === null && heldSettled === 0;
    upstream.openGate();
    const heldResults = await withTimeout(Promise.all(held), 20_000, 'held exchanges');
    const heldDoneMs = Date.now() - tSignal;
    loadOver = true;
    await withTimeout(Promise.all(workers), EXCHANGE_TIMEOUT_MS + 10_000, 'background workers');
    for (const agent of agents) agent.destroy();
    const exit = await withTimeout(exited, DRAIN_MS + 10_000, 'proxy exit after SIGTERM');
    const exitMs = exit.at - tSignal;
    await Promise.all(h2clients.map((c) => c.close()));

    // Background exchanges: those the upstream saw must have completed; the others may be
    // refused (new connection, GOAWAY, the keep-alive close race) but never cut mid-response.
    const bad = [];
    for (const r of records) {
      if (r.cls === 'unexpected' && /refused a connection/.test(r.label) && r.t1 >= tSignal) {
        r.cls = 'refused';
        r.label = 'h1 new connection refused after the signal';
      }
      if (r.cls === 'ok' || r.cls === 'refused') continue;
      if (r.cls === 'corrupt' || r.cls === 'hang') bad.push(r);
      else if (r.proto === 'ws') {
        // Echoes before the end were checked; a WebSocket may be refused or cut by the stop.
        if (r.cls === 'unexpected') bad.push(r);
      } else if (upstream.seen.has(r.id)) {
        r.label = `reached the upstream (${upstream.seen.get(r.id) - tSignal} ms after the signal) but did not complete: ${r.label}`;
        bad.push(r);
      } else if (r.phase !== 'request' || r.t0 < tSignal - 5000) bad.push(r);
    }
    const heldBad = heldResults.filter((r) => r.cls !== 'ok' || (r.proto === 'h1' && r.connection !== 'close'));

    const log = (line) => console.log(`# soak graceful stop: ${line}`);
    log(
      `signal at +${tSignal - base} ms; new connections refused after ${refusedAfter} ms (attempts ${JSON.stringify(tally(attempts.map((a) => ({ a })), (x) => x.a))}); ` +
        `held exchanges done after ${heldDoneMs} ms; exit ${JSON.stringify({ code: exit.code, signal: exit.signal })} after ${exitMs} ms (drain timeout ${DRAIN_MS} ms)`,
    );
    log(`held ${heldResults.length}: ${JSON.stringify(tally(heldResults, (r) => `${r.cls}: ${r.label}${r.proto === 'h1' ? ` connection=${r.connection}` : ''}`))}`);
    log(`background ${records.length}: ${JSON.stringify(tally(records, (r) => `${r.cls}: ${r.label}`))}`);

    const failures = [];
    if (refusedAfter === null) failures.push(`new connections were still accepted 3 s after SIGTERM: ${JSON.stringify(attempts.slice(-5))}`);
    else if (!drainingWhenRefused) failures.push(`the proxy was not draining when new connections were refused (exited ${JSON.stringify(exitInfo)}, held settled ${heldSettled})`);
    if (heldBad.length > 0) {
      failures.push(`in-flight exchanges did not complete byte-exact with Connection: close:\n  ${describeRecords(heldBad.map((r) => ({ ...r, base, detail: { ...r.detail, connection: r.connection } })))}`);
    }
    if (bad.length > 0) failures.push(`background exchanges failed badly during the drain:\n  ${describeRecords(bad)}`);
    if (exit.code !== 0) failures.push(`exit code ${exit.code} (signal ${exit.signal})\n${cli.stderr()}`);
    if (exitMs > DRAIN_MS) failures.push(`exit took ${exitMs} ms after SIGTERM although every exchange had finished after ${heldDoneMs} ms (drain timeout ${DRAIN_MS} ms): something kept the drain waiting`);
    const problems = upstream.problems.slice(problemsBefore);
    if (problems.length > 0) failures.push(`the upstream received corrupt bodies or messages: ${JSON.stringify(problems.slice(0, 8))}`);
    assert.equal(failures.length, 0, failures.join('\n'));
  });
});

function tryConnect(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const timer = setTimeout(() => {
      socket.destroy();
      resolve('timeout');
    }, 1000);
    socket.on('connect', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve('accepted');
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      resolve(err.code === 'ECONNREFUSED' ? 'refused' : (err.code ?? err.message));
    });
  });
}
