// A seeded fuzzer for the proxy: mutated HTTP/1.1 requests and random HTTP/2 frame sequences
// from raw TCP clients, a proxy in a child process, and byte-logging upstreams with a strict
// HTTP/1.1 parser of their own. Used by test/fuzz.test.mjs (bounded, fixed seed) and
// scripts/fuzz.mjs (longer, random seeds).
//
// Every generated request carries a unique `x-fuzz-id`, and the fuzzer records, per id, what the
// client sent as a whole request (method, origin-form path, decoded body) and what a strict
// RFC 9112 / RFC 9113 reading of the bytes allows:
//   FORWARD  a clean request: it must reach the upstream exactly as sent and its answer must come
//            back to the client that sent it;
//   EITHER   refusing it is fine, but if it reaches the upstream it must be exactly as sent;
//   REJECT   it must never reach the upstream as a complete request (bad framing, smuggling
//            attempts, fields RFC 9112 says to refuse);
//   SHADOW   bytes after an ambiguous message: no claim;
//   INNER    an id inside another request's body: reaching the upstream is request smuggling.
// The upstream checks each complete request it parses against that record (plus exactly one
// `Via` entry of the proxy and one `X-Forwarded-For`), answers with a body naming the id (one
// answer in five is followed by an unasked-for second response in the same write, as a naive
// upstream does), and the clients check that every answer they get names one of their own ids,
// in order. After the cases: the proxy process is alive, serves a normal request, and its file
// descriptors (/proc/<pid>/fd) and RSS are back near the baseline taken before the cases.
import { fork } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import {
  FLAG,
  FRAME,
  H2RawClient,
  continuationFrame,
  dataFrame,
  encodeHeaders,
  frame,
  goawayFrame,
  headersFrame,
  pingFrame,
  rstStreamFrame,
  settingsFrame,
  windowUpdateFrame,
} from './h2-raw.mjs';

export const FORWARD = 'FORWARD';
export const EITHER = 'EITHER';
export const REJECT = 'REJECT';
export const SHADOW = 'SHADOW';
export const INNER = 'INNER';

const PROXY_CHILD = fileURLToPath(new URL('./proxy-child.mjs', import.meta.url));
const CASE_TIMEOUT_MS = 3000;
const QUIET_MS = 300;
/** How long the proxy's fds may take to come back to their baseline after the run. */
const FD_SETTLE_MS = 6000;

// ---- seeded randomness ---------------------------------------------------------------------

/** mulberry32: small, fast, good enough for test input; the same seed gives the same cases. */
export function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n) => Math.floor(next() * n),
    range: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    chance: (p) => next() < p,
    pick: (arr) => arr[Math.floor(next() * arr.length)],
  };
}

/** The seed of case `i` of a run: cases do not depend on each other or on timing. */
function caseSeed(seed, i) {
  let h = (seed ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  return (h ^ (h >>> 13)) >>> 0;
}

const SAFE = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~ ';
function text(r, n, alphabet = SAFE) {
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[r.int(alphabet.length)];
  return s;
}
const TOKEN = 'abcdefghijklmnopqrstuvwxyz0123456789-';

// ---- the proxy in a child process ----------------------------------------------------------

/** Forks test/helpers/proxy-child.mjs: { child, pid, port, stats(), stop(), exited, stderr() }. */
export function startProxyChild(options) {
  return new Promise((resolve, reject) => {
    const child = fork(PROXY_CHILD, [JSON.stringify({ logLevel: 'silent', ...options })], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    let stderr = '';
    child.stderr.on('data', (c) => (stderr = (stderr + c).slice(-8000)));
    let statsId = 0;
    const statsWaiters = new Map();
    const handle = {
      child,
      pid: child.pid,
      port: 0,
      exited: null,
      stderr: () => stderr,
      stats() {
        if (handle.exited !== null) return Promise.resolve(null);
        const id = ++statsId;
        return new Promise((res) => {
          statsWaiters.set(id, res);
          child.send({ type: 'stats', id });
          setTimeout(() => statsWaiters.delete(id) && res(null), 2000).unref();
        });
      },
      async stop() {
        if (handle.exited !== null) return;
        const done = new Promise((res) => child.once('exit', res));
        try {
          child.send({ type: 'stop' });
        } catch {
          child.kill('SIGKILL');
        }
        const t = setTimeout(() => child.kill('SIGKILL'), 12_000);
        await done;
        clearTimeout(t);
      },
    };
    child.on('message', (msg) => {
      if (msg?.type === 'ready') {
        handle.port = msg.port;
        resolve(handle);
      } else if (msg?.type === 'stats') {
        statsWaiters.get(msg.id)?.(msg.stats);
        statsWaiters.delete(msg.id);
      }
    });
    child.on('exit', (code, signal) => {
      handle.exited = { code, signal };
      if (handle.port === 0) reject(new Error(`proxy child exited before listening (${code ?? signal}): ${stderr}`));
    });
  });
}

/** Open file descriptors of a process, with the TCP state of each socket (from /proc/net/tcp*). */
export function fdSnapshot(pid) {
  let names;
  try {
    names = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return { count: -1, sockets: [] };
  }
  const inodes = [];
  const links = [];
  for (const n of names) {
    try {
      const link = readlinkSync(`/proc/${pid}/fd/${n}`);
      links.push(`${n}:${link}`);
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (m) inodes.push(m[1]);
    } catch {
      // closed meanwhile
    }
  }
  const states = new Map();
  const NAMES = { '01': 'ESTABLISHED', '02': 'SYN_SENT', '06': 'TIME_WAIT', '07': 'CLOSE', '08': 'CLOSE_WAIT', '09': 'LAST_ACK', '0A': 'LISTEN', '04': 'FIN_WAIT1', '05': 'FIN_WAIT2', '0B': 'CLOSING' };
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    try {
      for (const line of readFileSync(file, 'latin1').split('\n').slice(1)) {
        const f = line.trim().split(/\s+/);
        if (f.length > 9) states.set(f[9], NAMES[f[3]] ?? f[3]);
      }
    } catch {
      // no such table
    }
  }
  return { count: names.length, links, sockets: inodes.map((i) => states.get(i) ?? 'other') };
}

export function rssKiB(pid) {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m ? Number(m[1]) : -1;
  } catch {
    return -1;
  }
}

// ---- the shared record of what clients sent ------------------------------------------------

/**
 * One run's state: the request records by id and the violations found. A violation is
 * `{ caseIndex, kind, detail, bytes }` (bytes: what the client sent, or what reached the upstream).
 */
export class FuzzRun {
  constructor(seed) {
    this.seed = seed;
    this.records = new Map();
    this.cases = new Map();
    this.violations = [];
  }

  record(rec) {
    this.records.set(rec.id, rec);
  }

  /** `where`: 'client' when `bytes` are what the client sent, 'upstream' when what reached it. */
  violation(caseIndex, kind, detail, bytes, where = 'client', mutation = '') {
    if (this.violations.length >= 500) return;
    this.violations.push({ caseIndex, kind, detail, bytes: bytes === undefined ? undefined : showBytes(bytes), where, mutation });
  }
}

/** Bytes as a JS string literal, shortened in the middle past 3 KiB. */
export function showBytes(b) {
  const s = Buffer.isBuffer(b) ? b.toString('latin1') : String(b);
  const cut = s.length > 3072 ? `${s.slice(0, 2048)}…(${s.length - 3072} bytes)…${s.slice(-1024)}` : s;
  return JSON.stringify(cut);
}

// ---- a byte-logging upstream with a strict HTTP/1.1 parser ---------------------------------

const TCHAR = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const BAD_VALUE_CHAR = /[\x00-\x08\x0a-\x1f\x7f]/;

/**
 * Parses one request from `buf` (a Buffer) as RFC 9112 says a sender must write it. Returns null
 * when more bytes are needed, `{ error }` for anything malformed, else `{ req, used }`.
 */
export function parseStrictRequest(buf) {
  const end = buf.indexOf('\r\n\r\n');
  if (end === -1) return buf.length > 1 << 20 ? { error: 'request head over 1 MiB without an end' } : null;
  const head = buf.latin1Slice(0, end);
  const lines = head.split('\r\n');
  const m = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP\/1\.1$/.exec(lines[0]);
  if (!m) return { error: `bad request line ${JSON.stringify(lines[0].slice(0, 200))}` };
  const headers = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    if (line.includes('\r') || line.includes('\n')) return { error: `bare CR or LF in ${JSON.stringify(line.slice(0, 200))}` };
    const colon = line.indexOf(':');
    if (colon <= 0) return { error: `bad field line ${JSON.stringify(line.slice(0, 200))}` };
    const name = line.slice(0, colon);
    if (!TCHAR.test(name)) return { error: `bad field name ${JSON.stringify(name.slice(0, 200))}` };
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
    if (BAD_VALUE_CHAR.test(value)) return { error: `control character in field ${name}: ${JSON.stringify(value.slice(0, 200))}` };
    headers.push([name.toLowerCase(), value]);
  }
  const all = (n) => headers.filter(([k]) => k === n).map(([, v]) => v);
  if (all('host').length !== 1) return { error: `${all('host').length} Host fields` };
  const te = all('transfer-encoding');
  const cl = all('content-length');
  const upgrade = all('upgrade').join(',').toLowerCase();
  const req = { method: m[1], target: m[2], headers, all, body: Buffer.alloc(0), websocket: upgrade.includes('websocket'), declaredBody: false };
  let at = end + 4;
  if (te.length > 0 && cl.length > 0) return { error: 'both Transfer-Encoding and Content-Length' };
  if (te.length > 0) {
    if (te.join(',').toLowerCase().trim() !== 'chunked') return { error: `Transfer-Encoding ${JSON.stringify(te)}` };
    req.declaredBody = true;
    if (req.websocket) return { req, used: at };
    const chunks = [];
    for (;;) {
      const eol = buf.indexOf('\r\n', at);
      if (eol === -1) return buf.length - at > 4096 ? { error: 'chunk-size line too long' } : null;
      const line = buf.latin1Slice(at, eol);
      const sm = /^([0-9a-fA-F]{1,15})(;[^\r\n]*)?$/.exec(line);
      if (!sm) return { error: `bad chunk-size line ${JSON.stringify(line.slice(0, 100))}` };
      const size = parseInt(sm[1], 16);
      at = eol + 2;
      if (size === 0) {
        const tEnd = buf.indexOf('\r\n', at);
        if (tEnd === -1) return null;
        if (tEnd !== at) {
          const tailEnd = buf.indexOf('\r\n\r\n', at);
          if (tailEnd === -1) return null;
          for (const tl of buf.latin1Slice(at, tailEnd).split('\r\n')) {
            const c = tl.indexOf(':');
            if (c <= 0 || !TCHAR.test(tl.slice(0, c)) || BAD_VALUE_CHAR.test(tl.slice(c + 1))) return { error: `bad trailer ${JSON.stringify(tl.slice(0, 100))}` };
          }
          at = tailEnd + 4;
        } else at += 2;
        req.body = Buffer.concat(chunks);
        return { req, used: at };
      }
      if (buf.length < at + size + 2) return null;
      chunks.push(buf.subarray(at, at + size));
      if (buf[at + size] !== 13 || buf[at + size + 1] !== 10) return { error: 'chunk data not followed by CRLF' };
      at += size + 2;
    }
  }
  if (cl.length > 1) return { error: `${cl.length} Content-Length fields` };
  if (cl.length === 1) {
    if (!/^\d{1,15}$/.test(cl[0])) return { error: `Content-Length ${JSON.stringify(cl[0])}` };
    const n = Number(cl[0]);
    if (n > 0) req.declaredBody = true;
    if (req.websocket) return { req, used: at };
    if (buf.length < at + n) return null;
    req.body = Buffer.from(buf.subarray(at, at + n));
    at += n;
  }
  return { req, used: at };
}

function idVariant(id) {
  let h = 0;
  for (let i = 0; i < id.length; i++) h = (Math.imul(h, 31) + id.charCodeAt(i)) >>> 0;
  return h % 5;
}

/** The answer the upstreams give for `id`: its body names the id. */
export function answerBody(id) {
  return `id=${id}\n`;
}

/**
 * A raw TCP upstream that parses what arrives strictly, checks every complete request against
 * `run.records`, and answers. `run` may be swapped between rounds (`upstream.run = ...`).
 */
export async function startFuzzUpstream(run) {
  const sockets = new Set();
  const up = { run, sockets, port: 0, requests: 0, server: null, close: null };
  const server = net.createServer({ allowHalfOpen: false }, (socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    const st = { buf: Buffer.alloc(0), tunnel: false, dead: false, log: Buffer.alloc(0) };
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    socket.on('data', (chunk) => {
      if (st.dead) return;
      if (st.tunnel) {
        socket.write(chunk);
        return;
      }
      st.log = st.log.length > 16384 ? Buffer.concat([st.log.subarray(-8192), chunk]) : Buffer.concat([st.log, chunk]);
      st.buf = st.buf.length === 0 ? chunk : Buffer.concat([st.buf, chunk]);
      for (;;) {
        const res = parseStrictRequest(st.buf);
        if (res === null) return;
        if (res.error !== undefined) {
          up.run.violation(-1, 'malformed request reached the upstream', res.error, st.log, 'upstream');
          st.dead = true;
          socket.destroy();
          return;
        }
        st.buf = st.buf.subarray(res.used);
        up.requests++;
        const close = checkUpstreamRequest(up, res.req, st.log);
        if (close === 'tunnel') {
          answer(socket, res.req, false);
          st.tunnel = true;
          if (st.buf.length > 0) socket.write(st.buf);
          st.buf = Buffer.alloc(0);
          return;
        }
        answer(socket, res.req, close);
        if (close) {
          st.dead = true;
          socket.end();
          return;
        }
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  up.server = server;
  up.port = server.address().port;
  up.dropConnections = () => {
    for (const s of sockets) s.destroy();
  };
  up.close = async () => {
    up.dropConnections();
    await new Promise((r) => server.close(r));
  };
  return up;
}

/** Checks one complete request; returns true when the answer should close, 'tunnel' for a 101. */
function checkUpstreamRequest(up, req, log) {
  const records = up.run.records;
  const ids = req.all('x-fuzz-id');
  req.id = ids.length === 1 ? ids[0] : null;
  const mutationOf = records.get(req.id)?.mutation ?? '';
  const run = { violation: (ci, kind, detail, bytes) => up.run.violation(ci, kind, detail, bytes, 'upstream', mutationOf) };
  if (ids.length !== 1) {
    run.violation(-1, 'upstream got a request without exactly one x-fuzz-id (smuggled or merged request)', `${req.method} ${req.target} ids=${JSON.stringify(ids)}`, log);
    return true;
  }
  const rec = records.get(req.id);
  if (rec === undefined) {
    run.violation(-1, 'upstream got an id no client generated', `${req.method} ${req.target} id=${req.id}`, log);
    return true;
  }
  const ci = rec.caseIndex;
  if (rec.expect === INNER) {
    run.violation(ci, 'smuggled request: an id from inside another request\'s body reached the upstream as a request', `${req.method} ${req.target} id=${req.id}`, log);
    return true;
  }
  if (rec.expect === REJECT) {
    run.violation(ci, 'a request that must be refused reached the upstream whole', `${rec.why}: ${req.method} ${req.target} id=${req.id}`, log);
  }
  if (rec.seenUpstream) run.violation(ci, 'request delivered twice', `id=${req.id}`, log);
  rec.seenUpstream = true;
  if (rec.expect !== SHADOW && rec.expect !== REJECT) {
    const body = req.body.toString('latin1');
    if (req.method !== rec.method || req.target !== rec.path || body !== rec.body) {
      run.violation(
        ci,
        'upstream request differs from what the client sent',
        `sent ${rec.method} ${rec.path} body(${rec.body.length})=${JSON.stringify(rec.body.slice(0, 120))}; got ${req.method} ${req.target} body(${body.length})=${JSON.stringify(body.slice(0, 120))}`,
        log,
      );
    }
    for (const name of rec.banned ?? []) {
      if (req.all(name).length > 0) run.violation(ci, 'a field the client named in Connection reached the upstream', name, log);
    }
  }
  const via = req.all('via').join(',');
  const viaSelf = (via.match(/cmux-proxy-/g) ?? []).length;
  const xff = req.all('x-forwarded-for');
  if (viaSelf !== 1 || xff.length !== 1 || xff[0].split(',').length !== 1 || xff[0].trim() !== '127.0.0.1') {
    run.violation(ci, 'proxy forwarding fields not present exactly once', `via=${JSON.stringify(via)} x-forwarded-for=${JSON.stringify(xff)} id=${req.id}`, log);
  }
  if (req.websocket && rec.websocket) return 'tunnel';
  return idVariant(req.id) === 4;
}

function answer(socket, req, close) {
  if (socket.destroyed) return;
  socket.cork();
  answerNow(socket, req, close);
  socket.uncork();
}

function answerNow(socket, req, close) {
  const id = req.id ?? 'none';
  if (req.websocket && id !== 'none') {
    const key = req.all('sec-websocket-key')[0] ?? '';
    const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\nx-fuzz-id: ${id}\r\n\r\ntunnel:${id}\n`);
    return;
  }
  const body = answerBody(id);
  const variant = idVariant(id);
  const conn = close ? 'connection: close\r\n' : '';
  if (req.method === 'HEAD') {
    socket.write(`HTTP/1.1 200 OK\r\nx-fuzz-id: ${id}\r\ncontent-length: ${body.length}\r\n${conn}\r\n`);
  } else if (variant === 1 || variant === 2) {
    const half = body.length >> 1;
    socket.write(`HTTP/1.1 200 OK\r\nx-fuzz-id: ${id}\r\ntransfer-encoding: chunked\r\n${conn}\r\n`);
    socket.write(`${half.toString(16)}\r\n${body.slice(0, half)}\r\n${(body.length - half).toString(16)}\r\n${body.slice(half)}\r\n0\r\n\r\n`);
  } else {
    socket.write(`HTTP/1.1 200 OK\r\nx-fuzz-id: ${id}\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\n${conn}\r\n${body}`);
  }
  if (variant === 3 && !close) {
    // A naive upstream: a second, unasked-for response in the same write. It must never be
    // taken for the answer to the next request that reuses this socket (another client's).
    socket.write(`HTTP/1.1 200 OK\r\nx-fuzz-id: ${id}\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
  }
}

/** A raw echo server (CONNECT target): echoes, and ends when the client ends. */
export async function startEchoServer() {
  const sockets = new Set();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    s.on('data', (c) => s.write(c));
    s.on('end', () => s.end());
  });
  server.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  return {
    port: server.address().port,
    sockets,
    dropConnections() {
      for (const s of sockets) s.destroy();
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

// ---- HTTP/1.1 case generation --------------------------------------------------------------

const METHODS_BODY = ['POST', 'PUT', 'PATCH'];
const METHODS_NOBODY = ['GET', 'GET', 'GET', 'DELETE', 'OPTIONS'];

/**
 * Mutations of one request. Each gets the request parts and returns the expectation (and may
 * add inner ids, banned fields, or mark the rest of the connection as ambiguous).
 * `applies(p)` says whether it fits the request's framing.
 */
const H1_MUTATIONS = [
  { name: 'benign-duplicate-field', applies: () => true, run: (p) => (p.headers.push(['X-Dup', 'a'], ['X-Dup', 'b']), FORWARD) },
  {
    name: 'connection-names-custom-field',
    applies: () => true,
    run: (p) => {
      p.headers.push(['Connection', 'X-Secret'], ['X-Secret', 'must-not-pass']);
      p.banned.push('x-secret');
      return FORWARD;
    },
  },
  {
    name: 'connection-names-framing-field',
    applies: (p) => p.framing !== 'none',
    run: (p, r) => {
      const target = p.framing === 'cl' ? r.pick(['Content-Length', 'content-length', 'Content-Length, X-A', 'close, Content-Length']) : r.pick(['Transfer-Encoding', 'transfer-encoding, X-A']);
      p.headers.push(['Connection', target]);
      if (r.chance(0.7)) p.smuggleInBody = true;
      p.why = `Connection: ${target}`;
      return EITHER;
    },
  },
  { name: 'connection-names-host', applies: () => true, run: (p, r) => (p.headers.push(['Connection', r.pick(['Host', 'host, keep-alive'])]), EITHER) },
  { name: 'obs-fold', applies: () => true, run: (p) => (p.headers.push(['X-Folded', 'a\r\n b']), (p.why = 'obs-fold'), REJECT) },
  { name: 'bare-cr-in-value', applies: () => true, run: (p) => (p.headers.push(['X-Cr', 'a\rb']), (p.why = 'bare CR'), REJECT) },
  { name: 'bare-lf-line-end', applies: () => true, run: (p) => (p.headers.push(['X-Lf', 'a\nX-Next: b']), EITHER) },
  { name: 'nul-in-value', applies: () => true, run: (p) => (p.headers.push(['X-Nul', 'a\x00b']), EITHER) },
  { name: 'space-before-colon', applies: () => true, run: (p, r) => (p.rawLines.push(r.pick(['X-Sp : a', 'Host : other', 'Transfer-Encoding : chunked'])), (p.why = 'space before colon'), REJECT) },
  { name: 'huge-value', applies: () => true, run: (p, r, ctx) => (p.headers.push(['X-Huge', 'h'.repeat(ctx.maxHeaderSize + r.int(2000))]), (p.why = 'head over maxHeaderSize'), REJECT) },
  { name: 'large-value-fits', applies: () => true, run: (p, r, ctx) => (p.headers.push(['X-Large', 'l'.repeat(r.int(ctx.maxHeaderSize >> 1))]), FORWARD) },
  { name: 'duplicate-content-length-same', applies: (p) => p.framing === 'cl', run: (p) => (p.headers.push(['Content-Length', String(Buffer.byteLength(p.body, 'latin1'))]), EITHER) },
  {
    name: 'duplicate-content-length-differs',
    applies: (p) => p.framing === 'cl',
    run: (p) => (p.headers.push(['Content-Length', String(Buffer.byteLength(p.body, 'latin1') + 7)]), (p.why = 'two Content-Length values'), REJECT),
  },
  {
    name: 'content-length-and-chunked',
    applies: (p) => p.framing === 'chunked',
    run: (p, r) => {
      p.headers.splice(r.int(p.headers.length + 1), 0, ['Content-Length', String(r.int(60) + 1)]);
      p.smuggleInBody = true;
      p.why = 'Content-Length with Transfer-Encoding';
      return REJECT;
    },
  },
  {
    name: 'transfer-encoding-variant',
    applies: (p) => p.framing === 'chunked',
    run: (p, r) => {
      const v = r.pick(['xchunked', 'chunked, identity', 'identity', 'chunked;q=1', 'gzip', '\x0bchunked']);
      p.teValue = v;
      p.why = `Transfer-Encoding: ${JSON.stringify(v)}`;
      p.ambiguous = true;
      return REJECT;
    },
  },
  { name: 'transfer-encoding-twice', applies: (p) => p.framing === 'chunked', run: (p) => ((p.teValue = 'chunked, chunked'), (p.ambiguous = true), EITHER) },
  { name: 'transfer-encoding-obs-fold', applies: (p) => p.framing === 'chunked', run: (p) => ((p.teValue = '\r\n chunked'), (p.why = 'obs-fold in Transfer-Encoding'), (p.ambiguous = true), REJECT) },
  {
    name: 'content-length-syntax',
    applies: (p) => p.framing === 'cl',
    run: (p, r) => {
      const n = Buffer.byteLength(p.body, 'latin1');
      p.clValue = r.pick([`+${n}`, `0x${n.toString(16)}`, `-${n}`, `${n}.0`, `${n}e0`, `${n} ${n}`, `${n}a`]);
      p.why = `Content-Length: ${p.clValue}`;
      p.ambiguous = true;
      return REJECT;
    },
  },
  { name: 'content-length-list-same', applies: (p) => p.framing === 'cl', run: (p) => ((p.clValue = `${Buffer.byteLength(p.body, 'latin1')}, ${Buffer.byteLength(p.body, 'latin1')}`), EITHER) },
  { name: 'bad-field-name', applies: () => true, run: (p, r) => (p.rawLines.push(r.pick(['X A: 1', 'X\x01A: 1', '(x): 1', ': empty', 'X-\x7f: 1'])), (p.why = 'invalid field name'), REJECT) },
  { name: 'two-hosts', applies: () => true, run: (p) => (p.headers.push(['Host', 'other.test']), (p.why = 'two Host fields'), REJECT) },
  { name: 'no-host', applies: () => true, run: (p) => ((p.noHost = true), (p.why = 'HTTP/1.1 without Host'), REJECT) },
  {
    name: 'absolute-form',
    applies: () => true,
    run: (p) => {
      p.target = `http://fuzz.test${p.path}`;
      return FORWARD;
    },
  },
  { name: 'absolute-form-userinfo', applies: () => true, run: (p) => ((p.target = `http://user:pw@fuzz.test${p.path}`), (p.why = 'userinfo in absolute-form'), REJECT) },
  {
    name: 'routing-header-twice',
    applies: () => true,
    run: (p, r, ctx) => {
      p.headers.push(['X-Cmux-Port-Internal', String(ctx.upstreamPort2)]);
      p.why = 'X-Cmux-Port-Internal given twice';
      return REJECT;
    },
  },
  {
    name: 'routing-port-syntax',
    applies: () => true,
    run: (p, r, ctx) => {
      const port = ctx.upstreamPort;
      p.portValue = r.pick([`+${port}`, `0x${port.toString(16)}`, `${port}.0`, `${port}e0`, `0${port}`, ` ${port} `]);
      if (p.portValue === ` ${port} ` || p.portValue === `0${port}`) return EITHER;
      p.why = `X-Cmux-Port-Internal: ${p.portValue}`;
      return REJECT;
    },
  },
  { name: 'lower-case-method', applies: (p) => p.framing === 'none', run: (p) => ((p.methodOverride = p.method.toLowerCase()), EITHER) },
  { name: 'expect-100-continue', applies: (p) => p.framing !== 'none', run: (p) => (p.headers.push(['Expect', '100-continue']), FORWARD) },
  { name: 'chunk-extensions', applies: (p) => p.framing === 'chunked', run: (p, r) => ((p.chunkExt = r.pick([';a=b', ';a', ';a=b;c=d', ' ;a=b'])), p.chunkExt.startsWith(' ') ? EITHER : FORWARD) },
  { name: 'chunk-extension-quoted', applies: (p) => p.framing === 'chunked', run: (p) => ((p.chunkExt = ';a="q s;\\"x"'), EITHER) },
  { name: 'chunk-size-leading-zeros', applies: (p) => p.framing === 'chunked', run: (p) => ((p.chunkSize = (n) => `000${n.toString(16)}`), EITHER) },
  { name: 'chunk-size-upper-hex', applies: (p) => p.framing === 'chunked', run: (p) => ((p.chunkSize = (n) => n.toString(16).toUpperCase()), FORWARD) },
  {
    name: 'chunk-size-invalid',
    applies: (p) => p.framing === 'chunked',
    run: (p, r) => {
      const form = r.pick([(n) => `${n.toString(16)}x`, (n) => `-${n.toString(16)}`, (n) => `0x${n.toString(16)}`, (n) => ` ${n.toString(16)}`, (n) => `${n.toString(16)}\x00`, (n) => `+${n.toString(16)}`]);
      p.chunkSize = form;
      p.ambiguous = true;
      p.why = `chunk size ${JSON.stringify(form(10))}`;
      return REJECT;
    },
  },
  {
    name: 'chunk-size-overflow',
    applies: (p) => p.framing === 'chunked',
    run: (p, r) => {
      p.chunkSize = r.pick([(n) => `1${'0'.repeat(16)}${n.toString(16)}`, () => 'ffffffffffffffffff', () => '10000000000000005']);
      p.ambiguous = true;
      p.why = 'chunk size overflows 64 bits';
      return REJECT;
    },
  },
  { name: 'chunk-size-too-big', applies: (p) => p.framing === 'chunked' && p.body.length > 0, run: (p, r) => {
      const more = 1 + r.pick([0, 5, 40]);
      p.chunkSize = (n) => (n + more).toString(16);
      p.ambiguous = true;
      return SHADOW;
    },
  },
  {
    name: 'chunk-size-too-small',
    applies: (p) => p.framing === 'chunked' && p.body.length > 2,
    run: (p) => ((p.chunkSize = (n) => Math.max(0, n - 2).toString(16)), (p.ambiguous = true), (p.why = 'chunk data longer than its size'), REJECT),
  },
  { name: 'chunk-data-without-crlf', applies: (p) => p.framing === 'chunked' && p.body.length > 0, run: (p) => ((p.chunkNoCrlf = true), (p.ambiguous = true), (p.why = 'chunk data without CRLF'), REJECT) },
  { name: 'trailer-fields', applies: (p) => p.framing === 'chunked', run: (p, r) => ((p.trailers = r.pick(['X-T: 1\r\n', 'X-T: 1\r\nX-U: 2\r\n', 'Server-Timing: a;dur=1\r\n'])), FORWARD) },
  { name: 'trailer-malformed', applies: (p) => p.framing === 'chunked', run: (p, r) => ((p.trailers = r.pick(['X-T : 1\r\n', 'X-T: a\r\n b\r\n', 'bad trailer\r\n'])), (p.ambiguous = true), (p.why = 'malformed trailer'), REJECT) },
  { name: 'content-length-too-big', applies: (p) => p.framing === 'cl', run: (p) => ((p.clValue = String(Buffer.byteLength(p.body, 'latin1') + 25)), (p.ambiguous = true), SHADOW) },
  {
    name: 'content-length-too-small',
    applies: (p) => p.framing === 'cl' && p.body.length > 3,
    run: (p) => {
      const n = p.body.length >> 1;
      p.clValue = String(n);
      p.sentBody = p.body;
      p.body = p.body.slice(0, n);
      p.ambiguous = true;
      return EITHER;
    },
  },
  { name: 'http-1.0-keep-alive', applies: (p) => p.framing !== 'chunked', run: (p) => ((p.version = '1.0'), p.headers.push(['Connection', 'keep-alive']), (p.closesAfter = true), EITHER) },
  { name: 'http-2.0-request-line', applies: () => true, run: (p) => ((p.version = '2.0'), (p.why = 'HTTP/2.0 request line'), (p.ambiguous = true), REJECT) },
];

/** One request of an HTTP/1.1 case: its bytes and its record(s). */
function genH1Request(r, ctx, caseIndex, k, { mutate, last }) {
  const id = `f${caseIndex}x${k}`;
  const framingRoll = r.next();
  const hasBody = framingRoll < 0.55;
  const method = hasBody ? r.pick(METHODS_BODY) : r.chance(0.1) && !mutate ? 'HEAD' : r.pick(METHODS_NOBODY);
  const framing = hasBody ? (r.chance(0.5) ? 'cl' : 'chunked') : 'none';
  const path = `/p/${id}${r.chance(0.5) ? `?q=${text(r, r.int(20), TOKEN)}&%41=%2F` : ''}`;
  const bodyLen = hasBody ? (r.chance(0.1) ? r.range(2000, 20000) : r.int(200)) : 0;
  const p = {
    id,
    method,
    path,
    target: path,
    version: '1.1',
    framing,
    body: text(r, bodyLen),
    headers: [
      ['Host', r.pick(['fuzz.test', 'fuzz.test:80', 'Fuzz.Test'])],
      ['X-Cmux-Port-Internal', String(ctx.upstreamPort)],
      ['x-fuzz-id', id],
    ],
    rawLines: [],
    banned: [],
    inner: [],
    why: '',
  };
  for (let i = r.int(4); i > 0; i--) p.headers.splice(r.int(p.headers.length + 1), 0, [`X-R${i}`, text(r, r.int(30))]);
  let expect = FORWARD;
  let mutation = 'none';
  if (mutate) {
    const options = H1_MUTATIONS.filter((m) => m.applies(p));
    const m = r.pick(options);
    mutation = m.name;
    expect = m.run(p, r, ctx);
  }
  // A smuggling attempt: the body is itself a complete request with an id of its own.
  if (p.smuggleInBody) {
    const innerId = `f${caseIndex}i${k}`;
    p.inner.push(innerId);
    const inner = `GET /smuggled/${innerId} HTTP/1.1\r\nHost: fuzz.test\r\nX-Cmux-Port-Internal: ${ctx.upstreamPort}\r\nx-fuzz-id: ${innerId}\r\n\r\n`;
    p.body = framing === 'chunked' ? inner : inner + p.body.slice(0, 10);
  }
  // Bytes
  const lines = [`${p.methodOverride ?? method} ${p.target} HTTP/${p.version}`];
  for (const [n, v] of p.headers) {
    if (p.noHost && n === 'Host') continue;
    if (n === 'X-Cmux-Port-Internal' && p.portValue !== undefined && v === String(ctx.upstreamPort)) lines.push(`${n}: ${p.portValue}`);
    else lines.push(`${n}: ${v}`);
  }
  lines.push(...p.rawLines);
  const sentBody = p.sentBody ?? p.body;
  let bodyBytes = '';
  if (framing === 'cl') {
    lines.push(`Content-Length: ${p.clValue ?? Buffer.byteLength(sentBody, 'latin1')}`);
    bodyBytes = sentBody;
  } else if (framing === 'chunked') {
    lines.push(`Transfer-Encoding: ${p.teValue ?? 'chunked'}`);
    const size = p.chunkSize ?? ((n) => n.toString(16));
    const ext = p.chunkExt ?? '';
    let at = 0;
    while (at < sentBody.length) {
      const n = Math.min(sentBody.length - at, 1 + r.int(r.chance(0.3) ? 8 : 4000));
      bodyBytes += `${size(n)}${ext}\r\n${sentBody.slice(at, at + n)}${p.chunkNoCrlf ? '' : '\r\n'}`;
      at += n;
    }
    bodyBytes += `0${ext}\r\n${p.trailers ?? ''}\r\n`;
  }
  if (last !== undefined) lines.push(...last(p));
  const bytes = `${lines.join('\r\n')}\r\n\r\n${bodyBytes}`;
  const rec = { id, caseIndex, expect, method, path: p.path, body: p.body, banned: p.banned, why: p.why || mutation, mutation, h1: true };
  return { bytes, rec, inner: p.inner, ambiguous: p.ambiguous === true || p.closesAfter === true, p };
}

/** An HTTP/1.1 case: a connection with one or more (pipelined) requests, or a tunnel. */
function genH1Case(r, ctx, caseIndex) {
  const kindRoll = r.next();
  if (kindRoll < 0.07) return genConnectCase(r, ctx, caseIndex);
  if (kindRoll < 0.1) {
    const garbage = r.pick([text(r, 1 + r.int(200), '\x00\x01\r\n abc:/\x7f\xff'), `GET /${caseIndex}\r\n\r\n`, `\r\n\r\nGET / HTTP/1.1\r\n`, 'PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n']);
    return { kind: 'h1', caseIndex, requests: [], records: [], writes: split(r, Buffer.from(garbage, 'latin1')), tunnel: null };
  }
  const upgradeAlone = r.chance(0.06);
  const n = upgradeAlone ? 0 : 1 + (r.chance(0.5) ? r.int(5) : 0);
  const requests = [];
  let state = FORWARD; // what the position in the connection still allows
  let bytes = '';
  for (let k = 0; k < n; k++) {
    const g = genH1Request(r, ctx, caseIndex, k, { mutate: r.chance(0.55) });
    if (state === EITHER && g.rec.expect === FORWARD) g.rec.expect = EITHER;
    if (state === SHADOW && g.rec.expect !== REJECT) g.rec.expect = SHADOW;
    if (state === SHADOW && g.rec.expect === REJECT) g.rec.expect = SHADOW;
    requests.push(g);
    bytes += g.bytes;
    if (g.ambiguous || g.rec.expect === REJECT || g.rec.expect === SHADOW) state = SHADOW;
    else if (g.rec.expect === EITHER && state === FORWARD) state = EITHER;
  }
  let tunnel = null;
  if (upgradeAlone || r.chance(0.15)) {
    // An upgrade as the last request: everything after its head belongs to the tunnel.
    const k = n;
    const kind = r.pick(['websocket', 'websocket', 'websocket-with-body', 'h2c', 'h2c-with-body']);
    const g = genUpgradeRequest(r, ctx, caseIndex, k, kind);
    if (state !== FORWARD && g.rec.expect === FORWARD) g.rec.expect = state === EITHER ? EITHER : SHADOW;
    if (state === SHADOW) g.rec.expect = SHADOW;
    if (g.rec.websocket && g.rec.expect === FORWARD && requests.length > 0) {
      // A WebSocket upgrade read while earlier requests are still in flight ends the connection
      // after them (the proxy does not queue a tunnel behind pipelined requests; a server may
      // close between requests, RFC 9112 §9.3): neither it nor the requests queued before it
      // have to be answered then.
      g.rec.expect = EITHER;
      for (const q of requests.slice(1)) if (q.rec.expect === FORWARD) q.rec.expect = EITHER;
    }
    requests.push(g);
    bytes += g.bytes;
    if (g.tunnel) {
      tunnel = g.tunnel;
      tunnel.expect = g.rec.expect;
      if (g.tunnel.early) bytes += g.tunnel.early;
    }
  }
  const records = [];
  for (const g of requests) {
    records.push(g.rec);
    for (const innerId of g.inner) records.push({ id: innerId, caseIndex, expect: INNER, why: 'inner' });
  }
  return { kind: 'h1', caseIndex, requests: requests.map((g) => g.rec), records, writes: split(r, Buffer.from(bytes, 'latin1')), tunnel };
}

function genUpgradeRequest(r, ctx, caseIndex, k, kind) {
  const id = `f${caseIndex}x${k}`;
  const withBody = kind.endsWith('with-body');
  const chunked = withBody && r.chance(0.5);
  const body = withBody ? text(r, r.chance(0.2) ? r.range(70000, 200000) : 1 + r.int(300)) : '';
  const lines = [`${withBody ? 'POST' : 'GET'} /up/${id} HTTP/1.1`, 'Host: fuzz.test', `X-Cmux-Port-Internal: ${ctx.upstreamPort}`, `x-fuzz-id: ${id}`];
  if (kind.startsWith('websocket')) {
    lines.push('Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${Buffer.from(text(r, 16)).toString('base64')}`, 'Sec-WebSocket-Version: 13');
  } else {
    lines.push('Upgrade: h2c', 'Connection: Upgrade, HTTP2-Settings', 'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA');
  }
  let bodyBytes = '';
  if (withBody) {
    if (chunked) {
      lines.push('Transfer-Encoding: chunked');
      for (let at = 0; at < body.length; at += 16384) {
        const piece = body.slice(at, at + 16384);
        bodyBytes += `${piece.length.toString(16)}\r\n${piece}\r\n`;
      }
      bodyBytes += '0\r\n\r\n';
    } else {
      lines.push(`Content-Length: ${body.length}`);
      bodyBytes = body;
    }
  }
  const bytes = `${lines.join('\r\n')}\r\n\r\n${bodyBytes}`;
  const websocket = kind.startsWith('websocket');
  // Only a WebSocket upgrade is a tunnel; a WebSocket upgrade with a body is refused; any other
  // Upgrade is an ordinary request whose whole body must reach the upstream.
  const expect = websocket ? (withBody ? REJECT : FORWARD) : FORWARD;
  const rec = { id, caseIndex, expect, method: withBody ? 'POST' : 'GET', path: `/up/${id}`, body, banned: websocket ? [] : ['http2-settings', 'upgrade'], why: `upgrade ${kind}`, mutation: `upgrade-${kind}`, websocket, h1: true };
  const tunnel = websocket && !withBody ? { kind: 'websocket', id, early: r.chance(0.5) ? `early:${id}\n` : '', post: `post:${id}\n` } : null;
  return { bytes, rec, inner: [], ambiguous: websocket, tunnel };
}

function genConnectCase(r, ctx, caseIndex) {
  const bad = r.chance(0.3);
  const port = ctx.echoPort;
  const authority = bad ? r.pick([`127.0.0.1:+${port}`, `127.0.0.1:0x${port.toString(16)}`, `127.0.0.1:${port}e0`, `127.0.0.1:${port}.0`]) : `127.0.0.1:${port}`;
  const early = r.chance(0.5) ? `early-${caseIndex}-${text(r, r.int(40), TOKEN)}\n` : '';
  const halfClose = early !== '' && r.chance(0.4);
  const bytes = `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n${early}`;
  return {
    kind: 'h1',
    caseIndex,
    requests: [],
    records: [],
    writes: split(r, Buffer.from(bytes, 'latin1')),
    tunnel: { kind: 'connect', expect: bad ? REJECT : FORWARD, early, post: halfClose ? '' : `post-${caseIndex}\n`, halfClose, why: bad ? `CONNECT ${authority}` : '' },
  };
}

/** Splits bytes at random boundaries: pieces written one by one with short random pauses. */
function split(r, buf) {
  if (buf.length < 2 || r.chance(0.4)) return [buf];
  const cuts = new Set();
  for (let i = r.range(1, 6); i > 0; i--) cuts.add(1 + r.int(buf.length - 1));
  const points = [0, ...[...cuts].sort((a, b) => a - b), buf.length];
  const out = [];
  for (let i = 0; i + 1 < points.length; i++) out.push(buf.subarray(points[i], points[i + 1]));
  return out;
}

// ---- HTTP/1.1 client side: parsing what comes back ------------------------------------------

/**
 * Parses the proxy's answers: `{ responses: [{ status, headers, id, body, complete }], tunnel:
 * Buffer | null, error }`. `isHead(id)` says whether a response answers a HEAD.
 */
export function parseResponses(buf, isHead, connectFirst, closed) {
  const responses = [];
  let at = 0;
  while (at < buf.length) {
    const end = buf.indexOf('\r\n\r\n', at);
    if (end === -1) {
      if (closed) return { responses, tunnel: null, error: `incomplete response head at the close: ${showBytes(buf.subarray(at, at + 300))}` };
      break;
    }
    const lines = buf.latin1Slice(at, end).split('\r\n');
    const m = /^HTTP\/1\.1 (\d{3}) [^\r\n]*$/.exec(lines[0]);
    if (!m) return { responses, tunnel: null, error: `not a status line: ${showBytes(lines[0].slice(0, 200))}` };
    const status = Number(m[1]);
    const headers = new Map();
    for (const l of lines.slice(1)) {
      const c = l.indexOf(':');
      const k = l.slice(0, c).toLowerCase();
      headers.set(k, [...(headers.get(k) ?? []), l.slice(c + 1).trim()]);
    }
    const one = (k) => headers.get(k)?.[0];
    const id = one('x-fuzz-id') ?? null;
    at = end + 4;
    const res = { status, headers, id, body: '', complete: false };
    responses.push(res);
    if (status === 101 || (connectFirst && responses.length === 1 && status >= 200 && status < 300)) {
      res.complete = true;
      return { responses, tunnel: buf.subarray(at), error: null };
    }
    if (status >= 100 && status < 200) {
      res.complete = true;
      res.interim = true;
      continue;
    }
    if ((id !== null && isHead(id)) || status === 204 || status === 304) {
      res.complete = true;
      continue;
    }
    const te = one('transfer-encoding');
    const cl = one('content-length');
    if (te !== undefined) {
      if (te.toLowerCase() !== 'chunked') return { responses, tunnel: null, error: `response Transfer-Encoding ${te}` };
      let body = '';
      let p = at;
      let done = false;
      for (;;) {
        const eol = buf.indexOf('\r\n', p);
        if (eol === -1) break;
        const size = parseInt(buf.latin1Slice(p, eol), 16);
        if (!Number.isFinite(size)) return { responses, tunnel: null, error: `bad chunk in response: ${showBytes(buf.subarray(p, p + 40))}` };
        if (size === 0) {
          const tail = buf.indexOf('\r\n\r\n', eol);
          if (buf[eol + 2] === 13 && buf[eol + 3] === 10) {
            p = eol + 4;
            done = true;
          } else if (tail !== -1) {
            p = tail + 4;
            done = true;
          }
          break;
        }
        if (buf.length < eol + 2 + size + 2) break;
        body += buf.latin1Slice(eol + 2, eol + 2 + size);
        p = eol + 2 + size + 2;
      }
      res.body = body;
      if (!done) return { responses, tunnel: null, error: closed ? 'chunked response cut short at the close' : null, pending: true };
      res.complete = true;
      at = p;
    } else if (cl !== undefined) {
      const n = Number(cl);
      if (buf.length < at + n) {
        res.body = buf.latin1Slice(at);
        return { responses, tunnel: null, error: closed ? 'response shorter than its Content-Length at the close' : null, pending: true };
      }
      res.body = buf.latin1Slice(at, at + n);
      res.complete = true;
      at += n;
    } else {
      res.body = buf.latin1Slice(at);
      res.complete = closed;
      return { responses, tunnel: null, error: null, pending: !closed };
    }
  }
  return { responses, tunnel: null, error: null };
}

const PROXY_STATUSES = new Set([400, 404, 408, 413, 414, 417, 431, 501, 502, 503, 504, 505, 508]);

/** The mutations in a case, for grouping violations. */
function caseTags(c) {
  const tags = c.requests.map((q) => q.mutation).filter((m) => m !== 'none' && m !== 'h2-valid' && m !== 'h2-rst');
  if (c.tunnel) tags.push(`tunnel-${c.tunnel.kind}${c.tunnel.halfClose ? '-half-close' : ''}${c.tunnel.early ? '-early-data' : ''}`);
  if (c.fatal) tags.push(`frame:${c.fatal}`);
  return [...new Set(tags)].join(' ') || 'none';
}

/** Checks a proxy-made answer: short text, no client input echoed, no Node-internal code. */
function checkProxyAnswer(run, c, status, body, ids, bytes) {
  if (!PROXY_STATUSES.has(status)) run.violation(c.caseIndex, 'unexpected status from the proxy', `status ${status} body ${JSON.stringify(body.slice(0, 200))}`, bytes);
  if (body.length > 300 || /ERR_|H2_|NGHTTP2|Error:|at [A-Za-z]+ \(/.test(body) || ids.some((id) => body.includes(id)) || body.includes('fuzz.test')) {
    run.violation(c.caseIndex, 'proxy answer shows client input or a Node-internal code', `status ${status}: ${JSON.stringify(body.slice(0, 300))}`, bytes);
  }
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

async function runH1Case(run, ctx, c) {
  const all = Buffer.concat(c.writes);
  const ids = c.requests.map((q) => q.id);
  const byId = new Map(c.requests.map((q, i) => [q.id, { rec: q, index: i }]));
  const isHead = (id) => byId.get(id)?.rec.method === 'HEAD';
  const socket = net.connect({ port: ctx.proxyPort, host: '127.0.0.1', allowHalfOpen: true });
  socket.setNoDelay(true);
  let buf = Buffer.alloc(0);
  let closed = false;
  let lastData = Date.now();
  socket.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    lastData = Date.now();
  });
  socket.on('error', () => {});
  // A FIN from the proxy ends the exchange for the client too (the socket allows half-open only
  // so that a client half-close can be tested).
  socket.on('end', () => (closed = true));
  socket.on('close', () => (closed = true));
  const connected = await new Promise((res) => {
    socket.once('connect', () => res(true));
    socket.once('error', () => res(false));
  });
  if (!connected) {
    run.violation(c.caseIndex, 'cannot connect to the proxy', '', all);
    return;
  }
  for (const piece of c.writes) {
    if (closed || socket.destroyed) break;
    socket.write(piece);
    if (c.writes.length > 1) await sleep(c.caseIndex % 3);
  }
  const tunnel = c.tunnel;
  if (tunnel?.halfClose) socket.end();
  // The first requests, up to the first that is not FORWARD, must all be answered.
  let mustAnswer = 0;
  while (mustAnswer < c.requests.length && c.requests[mustAnswer].expect === FORWARD) mustAnswer++;
  const tunnelExpected = () => (tunnel.kind === 'websocket' ? `tunnel:${tunnel.id}\n${tunnel.early}${tunnel.post}` : `${tunnel.early}${tunnel.post}`);
  const start = Date.now();
  let postSent = false;
  let parsed;
  for (;;) {
    parsed = parseResponses(buf, isHead, tunnel?.kind === 'connect', closed);
    const finals = parsed.responses.filter((x) => x.complete && !x.interim);
    if (parsed.tunnel !== null && tunnel !== null && !postSent && !closed) {
      postSent = true;
      if (tunnel.post) socket.write(tunnel.post);
    }
    const now = Date.now();
    if (closed) break;
    if (parsed.error) break;
    if (tunnel !== null && parsed.tunnel !== null && parsed.tunnel.length >= tunnelExpected().length) break;
    const answered = finals.filter((x) => x.id !== null).map((x) => byId.get(x.id)?.index ?? -1);
    const prefixDone = answered.filter((i) => i >= 0 && i < mustAnswer).length >= mustAnswer && (tunnel === null || tunnel.expect !== FORWARD || parsed.tunnel !== null);
    if (tunnel === null && finals.length >= c.requests.length && c.requests.length > 0) break;
    if (prefixDone && now - lastData >= QUIET_MS && (tunnel === null || tunnel.expect !== FORWARD)) break;
    if (now - start >= CASE_TIMEOUT_MS) break;
    await sleep(15);
  }
  socket.destroy();
  // ---- verdict
  if (parsed.error) run.violation(c.caseIndex, 'malformed response stream to the client', parsed.error, all);
  let lastIndex = -1;
  const answeredIds = new Set();
  for (const res of parsed.responses) {
    if (!res.complete || res.interim) continue;
    if (res.id === null) {
      if (!(tunnel?.kind === 'connect' && res === parsed.responses[0] && res.status === 200)) checkProxyAnswer(run, c, res.status, res.body, ids, all);
      continue;
    }
    const entry = byId.get(res.id);
    if (entry === undefined || entry.rec.expect === INNER) {
      run.violation(c.caseIndex, 'a client got the answer to a request it did not send', `got x-fuzz-id ${res.id}; this connection sent ${JSON.stringify(ids)}`, all);
      continue;
    }
    if (entry.index <= lastIndex) run.violation(c.caseIndex, 'answers out of order or duplicated', `id ${res.id} after index ${lastIndex}`, all);
    lastIndex = entry.index;
    answeredIds.add(res.id);
    if (res.status === 200 && entry.rec.method !== 'HEAD' && res.body !== answerBody(res.id)) {
      run.violation(c.caseIndex, 'answer body corrupted', `id ${res.id}: ${JSON.stringify(res.body.slice(0, 200))}`, all);
    }
  }
  for (let i = 0; i < mustAnswer; i++) {
    const q = c.requests[i];
    if (q.websocket) continue;
    if (!answeredIds.has(q.id)) {
      const got = parsed.responses.map((x) => `${x.status}${x.id ? `(${x.id})` : ''}`).join(' ');
      run.violation(c.caseIndex, 'a valid request was not answered by the upstream', `id ${q.id} (${q.mutation}); client got [${got}]${closed ? ', connection closed' : ', no close'}`, all, 'client', caseTags(c));
    }
  }
  if (tunnel !== null) {
    const first = parsed.responses.find((x) => !x.interim);
    if (tunnel.expect === FORWARD) {
      const want = tunnelExpected();
      const got = parsed.tunnel?.toString('latin1') ?? '';
      if (parsed.tunnel === null) run.violation(c.caseIndex, `${tunnel.kind} tunnel not opened`, `first answer ${first?.status ?? 'none'}`, all, 'client', caseTags(c));
      else if (got !== want) run.violation(c.caseIndex, `${tunnel.kind} tunnel bytes lost or changed`, `want ${JSON.stringify(want)} got ${JSON.stringify(got.slice(0, 300))}${tunnel.halfClose ? ' (client half-closed after the early data)' : ''}`, all, 'client', caseTags(c));
    } else if (tunnel.expect === REJECT && parsed.tunnel !== null && (tunnel.kind === 'connect' || first?.status === 101)) {
      run.violation(c.caseIndex, 'a tunnel that must be refused was opened', tunnel.why, all, 'client', 'connect-port-syntax');
    }
  }
}

// ---- HTTP/2 cases ----------------------------------------------------------------------------

function h2RequestHeaders(ctx, id, method, path, extra = []) {
  return [[':method', method], [':scheme', 'http'], [':authority', 'fuzz.test'], [':path', path], ['x-cmux-port-internal', String(ctx.upstreamPort)], ['x-fuzz-id', id], ...extra];
}

/** Bad request header lists (RFC 9113 §8.2-8.3): each must be refused, never forwarded. */
const H2_BAD_HEADERS = [
  ['scheme-not-http', (h) => set(h, ':scheme', 'foo')],
  ['scheme-absolute-path', (h) => (set(h, ':scheme', 'foo'), set(h, ':path', 'http://admin.internal/secret'))],
  ['path-not-origin-form', (h) => set(h, ':path', 'evil')],
  ['path-asterisk-get', (h) => set(h, ':path', '*')],
  ['path-empty', (h) => set(h, ':path', '')],
  ['path-missing', (h) => h.splice(h.findIndex(([n]) => n === ':path'), 1)],
  ['method-missing', (h) => h.splice(h.findIndex(([n]) => n === ':method'), 1)],
  ['method-lower-case', (h) => set(h, ':method', 'head')],
  ['authority-userinfo', (h) => set(h, ':authority', 'user:pw@fuzz.test')],
  ['upper-case-name', (h) => h.push(['X-Upper', '1'])],
  ['connection-specific', (h) => h.push(['connection', 'keep-alive'])],
  ['transfer-encoding', (h) => h.push(['transfer-encoding', 'chunked'])],
  ['te-not-trailers', (h) => h.push(['te', 'gzip'])],
  ['duplicate-pseudo', (h) => h.splice(1, 0, [':method', 'POST'])],
  ['pseudo-after-regular', (h) => h.push([':status', '200'])],
  ['unknown-pseudo', (h) => h.push([':foo', 'bar'])],
  ['routing-header-twice', (h, ctx) => h.push(['x-cmux-port-internal', String(ctx.upstreamPort2)])],
  ['routing-port-syntax', (h, ctx) => set(h, 'x-cmux-port-internal', `+${ctx.upstreamPort}`)],
  ['header-value-with-crlf', (h) => h.push(['x-crlf', 'a\r\nx-injected: 1'])],
  ['header-value-with-nul', (h) => h.push(['x-nul', 'a\x00b'])],
  ['header-value-with-bare-cr', (h) => h.push(['x-cr', 'a\rx-injected: 1'])],
  ['host-disagrees', (h) => h.push(['host', 'other.test'])],
];

function set(h, name, value) {
  const i = h.findIndex(([n]) => n === name);
  if (i === -1) h.push([name, value]);
  else h[i] = [name, value];
}

/** A connection-level error frame (RFC 9113 §5.4.1): the proxy answers GOAWAY and closes. */
const H2_FATAL = [
  ['ping-3-bytes', () => frame(FRAME.PING, 0, 0, Buffer.from('abc'))],
  ['settings-bad-length', () => frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(5))],
  ['settings-on-stream', () => frame(FRAME.SETTINGS, 0, 1, Buffer.alloc(0))],
  ['settings-enable-push-2', () => settingsFrame({ 2: 2 })],
  ['settings-window-too-big', () => settingsFrame({ 4: 0x80000000 })],
  ['data-on-idle-stream', (s) => dataFrame(s + 200, 'x')],
  ['continuation-without-headers', (s) => continuationFrame(s, [['x-a', '1']], { endHeaders: true })],
  ['bad-hpack', (s, r) => headersFrame(s, Buffer.from(text(r, 8 + r.int(30), '\xff\xfe\x80\x7f\x3f\x00'), 'latin1'), { endStream: true })],
  ['window-update-zero', () => windowUpdateFrame(0, 0)],
  ['even-stream-id', (s) => headersFrame(s + 1, [[':method', 'GET']], { endStream: true })],
  ['frame-too-large', () => frame(FRAME.DATA, 0, 1, Buffer.alloc(16385))],
  ['goaway-from-client', () => goawayFrame(0, 0)],
  ['rst-on-idle-stream', (s) => rstStreamFrame(s + 100, 8)],
  ['headers-stream-0', () => headersFrame(0, [[':method', 'GET']], { endStream: true })],
  ['random-bytes', (s, r) => Buffer.from(text(r, 9 + r.int(40), '\x00\x01\x04\x06\x08\xff\x7f'), 'latin1')],
];

/** Frames that are not errors and must not disturb requests. */
const H2_HARMLESS = [
  ['ping', () => pingFrame(Buffer.from('12345678'))],
  ['settings', () => settingsFrame({ 4: 1 << 20, 6: 65536 })],
  ['window-update', () => windowUpdateFrame(0, 1000)],
  ['unknown-frame-type', () => frame(0x42, 0xff, 0, Buffer.from('ignored'))],
  ['priority', (s) => frame(FRAME.PRIORITY, 0, s, Buffer.from([0, 0, 0, 0, 16]))],
];

function genH2Case(r, ctx, caseIndex) {
  const actions = [];
  const requests = [];
  let streamId = 1;
  let fatal = false;
  // The test client does not track flow control: all DATA of a case fits the connection's
  // initial 65,535-byte window (RFC 9113 §6.9.2).
  let dataBudget = 60_000;
  // Cancelled streams per connection stay under the proxy's rapid-reset budget.
  let cancelBudget = 60;
  const n = 1 + r.int(7);
  let k = 0;
  const newId = () => `f${caseIndex}x${k++}`;
  for (let a = 0; a < n; a++) {
    const roll = r.next();
    if (roll < 0.4) {
      // A valid request, possibly with a body, a split header block, padding.
      const id = newId();
      const hasBody = r.chance(0.5);
      const method = hasBody ? r.pick(['POST', 'PUT']) : r.pick(['GET', 'DELETE', 'OPTIONS']);
      const path = `/h2/${id}${r.chance(0.3) ? '?a=b' : ''}`;
      const body = hasBody ? text(r, Math.min(dataBudget, r.chance(0.15) ? r.range(2000, 40000) : r.int(300))) : '';
      dataBudget -= body.length;
      const extra = [];
      if (hasBody && r.chance(0.5)) extra.push(['content-length', String(body.length)]);
      if (r.chance(0.3)) extra.push(['cookie', 'a=1'], ['cookie', 'b=2']);
      if (r.chance(0.2)) extra.push(['te', 'trailers']);
      const block = encodeHeaders(h2RequestHeaders(ctx, id, method, path, extra));
      const frames = [];
      const endOnHeaders = !hasBody;
      if (r.chance(0.25) && block.length > 4) {
        const cut = 1 + r.int(block.length - 1);
        frames.push(frame(FRAME.HEADERS, endOnHeaders ? FLAG.END_STREAM : 0, streamId, block.subarray(0, cut)));
        frames.push(frame(FRAME.CONTINUATION, FLAG.END_HEADERS, streamId, block.subarray(cut)));
      } else if (r.chance(0.2)) {
        const pad = r.int(30);
        frames.push(frame(FRAME.HEADERS, FLAG.PADDED | FLAG.END_HEADERS | (endOnHeaders ? FLAG.END_STREAM : 0), streamId, Buffer.concat([Buffer.from([pad]), block, Buffer.alloc(pad)])));
      } else {
        frames.push(headersFrame(streamId, block, { endStream: endOnHeaders }));
      }
      if (hasBody) {
        let at = 0;
        const buf = Buffer.from(body, 'latin1');
        while (at < buf.length) {
          const len = Math.min(buf.length - at, 1 + r.int(16384));
          frames.push(dataFrame(streamId, buf.subarray(at, at + len)));
          at += len;
        }
        frames.push(dataFrame(streamId, Buffer.alloc(0), { endStream: true }));
      }
      requests.push({ id, caseIndex, expect: FORWARD, method, path, body, streamId, why: 'h2 request', mutation: 'h2-valid' });
      actions.push(Buffer.concat(frames));
      streamId += 2;
    } else if (roll < 0.6) {
      const id = newId();
      const [name, mutate] = r.pick(H2_BAD_HEADERS);
      const h = h2RequestHeaders(ctx, id, 'GET', `/h2bad/${id}`);
      mutate(h, ctx);
      // nghttp2 drops a regular field whose value has CR, LF or NUL and passes the rest of the
      // request on (RFC 9113 §8.2.1 says to treat it as malformed): acceptable as long as the
      // field, or what it tried to inject, never reaches the upstream.
      const dropsField = name.startsWith('header-value-with-');
      const banned = dropsField ? ['x-crlf', 'x-nul', 'x-cr', 'x-injected'] : [];
      requests.push({ id, caseIndex, expect: dropsField ? EITHER : REJECT, method: 'GET', path: `/h2bad/${id}`, body: '', banned, streamId, why: `h2 ${name}`, mutation: `h2-${name}` });
      actions.push(headersFrame(streamId, h, { endStream: true }));
      streamId += 2;
    } else if (roll < 0.7) {
      // DATA beyond or short of content-length, or a body abandoned with RST_STREAM.
      const id = newId();
      const variant = r.pick(['beyond', 'short', 'abort']);
      const body = text(r, 10 + r.int(100));
      dataBudget -= body.length;
      const extra = variant === 'abort' ? [] : [['content-length', String(variant === 'beyond' ? body.length - 5 : body.length + 5)]];
      const frames = [headersFrame(streamId, h2RequestHeaders(ctx, id, 'POST', `/h2cl/${id}`, extra))];
      frames.push(dataFrame(streamId, body, { endStream: variant !== 'abort' }));
      if (variant === 'abort') frames.push(rstStreamFrame(streamId, 8));
      requests.push({ id, caseIndex, expect: REJECT, method: 'POST', path: `/h2cl/${id}`, body, streamId, why: `h2 body ${variant} of content-length`, mutation: `h2-body-${variant}` });
      actions.push(Buffer.concat(frames));
      streamId += 2;
    } else if (roll < 0.78) {
      // Rapid open-and-cancel: whole requests, cancelled at once.
      const frames = [];
      const n = Math.min(cancelBudget, r.range(5, 40));
      cancelBudget -= n;
      for (let i = n; i > 0; i--) {
        const id = newId();
        frames.push(headersFrame(streamId, h2RequestHeaders(ctx, id, 'GET', `/h2rst/${id}`), { endStream: true }), rstStreamFrame(streamId, 8));
        requests.push({ id, caseIndex, expect: EITHER, method: 'GET', path: `/h2rst/${id}`, body: '', streamId, why: 'h2 cancelled', mutation: 'h2-rst', cancelled: true });
        streamId += 2;
      }
      actions.push(Buffer.concat(frames));
    } else if (roll < 0.88) {
      const [, make] = r.pick(H2_HARMLESS);
      actions.push(make(streamId, r));
    } else {
      const [name, make] = r.pick(H2_FATAL);
      actions.push(make(streamId, r));
      fatal = fatal ? `${fatal}+${name}` : name;
    }
  }
  if (fatal) for (const q of requests) if (q.expect === FORWARD) q.expect = EITHER;
  // Writes: the preface is sent by H2RawClient; actions go in one or several writes.
  const together = r.chance(0.5);
  return { kind: 'h2', caseIndex, requests, records: requests, actions, together, fatal, writes: actions };
}

async function runH2Case(run, ctx, c) {
  const all = Buffer.concat(c.actions);
  let client;
  try {
    client = await H2RawClient.connect(ctx.proxyPort);
    // A header block the test's HPACK decoder cannot read is reported below, not thrown.
    client.decomp.on('error', (err) => run.violation(c.caseIndex, 'undecodable HPACK from the proxy', String(err?.message)));
  } catch {
    run.violation(c.caseIndex, 'cannot connect to the proxy', '', all);
    return;
  }
  if (c.together) client.send(all);
  else {
    for (const a of c.actions) {
      if (!client.send(a)) break;
      await sleep(1);
    }
  }
  const must = c.requests.filter((q) => q.expect === FORWARD);
  const ended = (sid) => client.frames.some((f) => f.streamId === sid && (f.type === FRAME.RST_STREAM || ((f.type === FRAME.DATA || f.type === FRAME.HEADERS) && f.flags & FLAG.END_STREAM)));
  const start = Date.now();
  let quietSince = Date.now();
  let lastCount = 0;
  for (;;) {
    const now = Date.now();
    if (client.frames.length !== lastCount) {
      lastCount = client.frames.length;
      quietSince = now;
    }
    if (client.closed) break;
    const goaway = client.frames.some((f) => f.type === FRAME.GOAWAY);
    // Without an error frame, the case is over once every stream it opened has ended; after
    // one, once the GOAWAY came (or nothing more for a while).
    if (!c.fatal && c.requests.every((q) => q.cancelled || ended(q.streamId))) break;
    if (must.every((q) => ended(q.streamId)) && now - quietSince >= (c.fatal && !goaway ? QUIET_MS * 2 : QUIET_MS)) break;
    if (goaway && now - quietSince >= 100) break;
    if (now - start >= CASE_TIMEOUT_MS) break;
    await sleep(15);
  }
  client.close();
  const byStream = new Map(c.requests.map((q) => [q.streamId, q]));
  const ids = c.requests.map((q) => q.id);
  for (const f of client.frames) {
    if (f.type !== FRAME.HEADERS || !f.headers) continue;
    const q = byStream.get(f.streamId);
    const idHeader = f.headers.find(([n]) => n === 'x-fuzz-id')?.[1];
    if (idHeader !== undefined && idHeader !== q?.id) {
      run.violation(c.caseIndex, 'an HTTP/2 stream got the answer to another request', `stream ${f.streamId} (${q?.id}) got x-fuzz-id ${idHeader}`, all);
    }
  }
  for (const q of c.requests) {
    const mine = client.frames.filter((f) => f.streamId === q.streamId);
    const head = mine.find((f) => f.type === FRAME.HEADERS && f.headers && f.headers.some(([n, v]) => n === ':status' && !v.startsWith('1')));
    const status = head ? Number(head.headers.find(([n]) => n === ':status')[1]) : undefined;
    const body = Buffer.concat(mine.filter((f) => f.type === FRAME.DATA).map((f) => f.payload)).toString('latin1');
    const hasId = head?.headers.some(([n]) => n === 'x-fuzz-id');
    if (status !== undefined && !hasId) checkProxyAnswer(run, c, status, body, ids, all);
    if (q.expect === FORWARD) {
      const rst = mine.find((f) => f.type === FRAME.RST_STREAM);
      const endedOk = mine.some((f) => (f.type === FRAME.DATA || f.type === FRAME.HEADERS) && f.flags & FLAG.END_STREAM);
      if (status !== 200 || !hasId || !endedOk || body !== answerBody(q.id)) {
        run.violation(
          c.caseIndex,
          'a valid HTTP/2 request was not answered by the upstream',
          `stream ${q.streamId} id ${q.id}: status ${status} rst ${rst?.errorCode} ended ${endedOk} body ${JSON.stringify(body.slice(0, 100))}${client.frames.find((f) => f.type === FRAME.GOAWAY) ? ' (GOAWAY seen)' : ''}`,
          all,
        );
      }
    } else if (status === 200 && hasId && body !== answerBody(q.id) && !mine.some((f) => f.type === FRAME.RST_STREAM) && !cutShort(mine, body, answerBody(q.id))) {
      run.violation(c.caseIndex, 'answer body corrupted', `stream ${q.streamId}: ${JSON.stringify(body.slice(0, 100))}`, all);
    }
  }
}

/**
 * A stream whose connection ended (a connection error's GOAWAY, a close) before its END_STREAM,
 * with a body that is a true prefix of the answer: the client sees an incomplete answer, not a
 * corrupted one.
 */
function cutShort(frames, body, expected) {
  const ended = frames.some((f) => (f.type === FRAME.DATA || f.type === FRAME.HEADERS) && f.flags & FLAG.END_STREAM);
  return !ended && expected.startsWith(body);
}

// ---- the run ---------------------------------------------------------------------------------

/** Generates case `i` of `seed` (the same bytes every time). */
export function generateCase(seed, i, ctx) {
  const r = rng(caseSeed(seed, i));
  return r.chance(0.3) ? genH2Case(r, ctx, i) : genH1Case(r, ctx, i);
}

/** A printable description of a case: its kind, requests with expectations, and bytes. */
export function describeCase(c) {
  const reqs = c.requests.map((q) => `${q.id}:${q.expect}:${q.mutation}`).join(', ');
  const tun = c.tunnel ? ` tunnel=${c.tunnel.kind}:${c.tunnel.expect}${c.tunnel.halfClose ? ':half-close' : ''}` : '';
  return `case ${c.caseIndex} (${c.kind}${c.kind === 'h2' ? `, ${c.together ? 'one write' : 'frame by frame'}` : `, ${c.writes.length} write(s)`}) [${reqs}]${tun}`;
}

/**
 * Runs `cases` cases (or until `seconds` pass) against a fresh proxy child, `concurrency` at a
 * time, then the end checks. Resolves `{ seed, ran, violations, end }`; never throws for a
 * violation. `only` runs a single case index.
 */
export async function runFuzz({ seed, cases = 400, seconds = 8, concurrency = 8, only, proxyOptions = {} }) {
  const run = new FuzzRun(seed);
  const maxHeaderSize = 8192;
  const up = await startFuzzUpstream(run);
  const up2 = await startFuzzUpstream(run);
  const echo = await startEchoServer();
  // drainTimeoutMs bounds stop() when a hole left exchanges hanging.
  const proxy = await startProxyChild({ maxHeaderSize, drainTimeoutMs: 1000, ...proxyOptions });
  const ctx = { proxyPort: proxy.port, upstreamPort: up.port, upstreamPort2: up2.port, echoPort: echo.port, maxHeaderSize };
  let crashed = null;
  proxy.child.on('exit', (code, signal) => (crashed = { code, signal }));
  const inFlight = new Set();
  let ran = 0;
  const end = { fdBaseline: 0, fdAfter: 0, rssBaselineKiB: 0, rssAfterKiB: 0, served: false, stats: null, timeCapped: false, sockets: [] };
  try {
    // Baseline: one clean request warms the pool and the code, then every upstream socket is dropped.
    const warm = await cleanRequest(ctx, run, 'warm');
    if (!warm) run.violation(-1, 'the proxy did not serve a normal request before the run', '');
    up.dropConnections();
    await sleep(300);
    const base = fdSnapshot(proxy.pid);
    end.fdBaseline = base.count;
    end.rssBaselineKiB = rssKiB(proxy.pid);
    const indexes = only !== undefined ? [only] : Array.from({ length: cases }, (_, i) => i);
    const deadline = Date.now() + seconds * 1000;
    let next = 0;
    const worker = async () => {
      while (next < indexes.length && crashed === null) {
        if (Date.now() >= deadline) {
          end.timeCapped = true;
          return;
        }
        const c = generateCase(seed, indexes[next++], ctx);
        run.cases.set(c.caseIndex, c);
        for (const rec of c.records) run.record(rec);
        inFlight.add(c.caseIndex);
        const t0 = Date.now();
        if (c.kind === 'h2') await runH2Case(run, ctx, c);
        else await runH1Case(run, ctx, c);
        c.ms = Date.now() - t0;
        inFlight.delete(c.caseIndex);
        ran++;
      }
    };
    const tCases = Date.now();
    await Promise.all(Array.from({ length: only !== undefined ? 1 : concurrency }, worker));
    end.casesMs = Date.now() - tCases;
    if (crashed !== null) {
      run.violation(-1, 'the proxy process died', `exit ${JSON.stringify(crashed)} while cases ${[...inFlight].join(', ')} ran; stderr: ${proxy.stderr().slice(-2000)}`);
    } else {
      // Requests still travelling through the proxy land now.
      await sleep(300);
      end.served = await cleanRequest(ctx, run, 'final');
      if (!end.served) run.violation(-1, 'the proxy did not serve a normal request after the run', '');
      up.dropConnections();
      up2.dropConnections();
      echo.dropConnections();
      // A connection closing after a last answer may linger up to 5 s (the proxy's flush cap);
      // anything left past that is a leak.
      const settleBy = Date.now() + FD_SETTLE_MS;
      let snap = fdSnapshot(proxy.pid);
      while (snap.count > end.fdBaseline && Date.now() < settleBy) {
        await sleep(100);
        snap = fdSnapshot(proxy.pid);
      }
      end.fdAfter = snap.count;
      end.sockets = snap.sockets;
      end.rssAfterKiB = rssKiB(proxy.pid);
      end.stats = await proxy.stats();
      if (snap.count > end.fdBaseline) {
        const states = {};
        for (const s of snap.sockets) states[s] = (states[s] ?? 0) + 1;
        const extra = snap.links.filter((l) => !base.links.includes(l)).slice(0, 10);
        run.violation(-1, `proxy file descriptors not back to baseline within ${FD_SETTLE_MS / 1000} s`, `baseline ${end.fdBaseline}, now ${snap.count}; new fds ${JSON.stringify(extra)}; sockets by TCP state ${JSON.stringify(states)}; stats ${JSON.stringify(pick(end.stats, ['activeConnections', 'http2Connections', 'tunnelsOpen', 'upstreamSocketsActive', 'upstreamSocketsIdle', 'websocketConnections']))}`);
      }
      if (end.rssAfterKiB > end.rssBaselineKiB + 64 * 1024) {
        run.violation(-1, 'proxy RSS not back near baseline', `baseline ${end.rssBaselineKiB} KiB, now ${end.rssAfterKiB} KiB`);
      }
    }
  } finally {
    await proxy.stop();
    await up.close();
    await up2.close();
    await echo.close();
  }
  return { seed, ran, violations: run.violations, end, run };
}

function pick(o, keys) {
  if (!o) return o;
  const out = {};
  for (const k of keys) out[k] = o[k];
  return out;
}

/** A plain GET through the proxy; true when its own answer came back. */
async function cleanRequest(ctx, run, tag) {
  const id = `${tag}${run.seed}`;
  run.record({ id, caseIndex: -1, expect: FORWARD, method: 'GET', path: `/${tag}`, body: '', banned: [] });
  const socket = net.connect({ port: ctx.proxyPort, host: '127.0.0.1' });
  socket.on('error', () => {});
  let buf = Buffer.alloc(0);
  socket.on('data', (d) => (buf = Buffer.concat([buf, d])));
  socket.write(`GET /${tag} HTTP/1.1\r\nHost: fuzz.test\r\nX-Cmux-Port-Internal: ${ctx.upstreamPort}\r\nx-fuzz-id: ${id}\r\n\r\n`);
  const until = Date.now() + 3000;
  let ok = false;
  while (Date.now() < until) {
    const p = parseResponses(buf, () => false, false, false);
    if (p.responses.some((x) => x.complete && x.id === id && x.status === 200 && x.body === answerBody(id))) {
      ok = true;
      break;
    }
    await sleep(20);
  }
  socket.destroy();
  return ok;
}

/** A readable report of a run's violations: kinds, counts, and each case's bytes once. */
export function formatViolations(result, { max = 12 } = {}) {
  const { seed, violations, run } = result;
  if (violations.length === 0) return `seed ${seed}: no violation`;
  const groups = new Map();
  for (const v of violations) {
    const c = run.cases.get(v.caseIndex);
    const tag = v.mutation || (c === undefined ? '' : caseTags(c));
    const key = `${v.kind}${tag ? ` [${tag}]` : ''}`;
    const g = groups.get(key);
    if (g === undefined) groups.set(key, { n: 1, first: v, cases: [v.caseIndex] });
    else {
      g.n++;
      if (g.cases.length < 8 && !g.cases.includes(v.caseIndex)) g.cases.push(v.caseIndex);
    }
  }
  const lines = [`seed ${seed}: ${violations.length} violation(s) in ${groups.size} group(s) (kind [mutation]: count, cases)`];
  for (const [k, g] of groups) lines.push(`  ${g.n} x ${k}: cases ${g.cases.join(', ')}`);
  const shownCases = new Set();
  for (const g of [...groups.values()].slice(0, max)) {
    const v = g.first;
    lines.push('');
    lines.push(`- ${v.kind}${v.caseIndex >= 0 ? ` [case ${v.caseIndex}]` : ''}: ${v.detail}`);
    const c = run.cases.get(v.caseIndex);
    if (c !== undefined && !shownCases.has(v.caseIndex)) {
      shownCases.add(v.caseIndex);
      lines.push(`  ${describeCase(c)}`);
      lines.push(`  client bytes: ${showBytes(Buffer.concat(c.writes))}`);
      lines.push(`  reproduce: npm run fuzz -- --seed ${seed} --case ${v.caseIndex}`);
    }
    if (v.bytes !== undefined && v.where === 'upstream') lines.push(`  bytes the upstream connection received: ${v.bytes}`);
    else if (v.bytes !== undefined && c === undefined) lines.push(`  bytes: ${v.bytes}`);
  }
  return lines.join('\n');
}
