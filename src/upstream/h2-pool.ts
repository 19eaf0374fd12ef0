import type net from 'node:net';
import type http2 from 'node:http2';
import { http2 as loadHttp2 } from '../builtins.js';
import { NGHTTP2_CANCEL, NGHTTP2_FLAG_END_STREAM, NGHTTP2_REFUSED_STREAM } from '../h2/constants.js';
import { keepSessionOnStreamError } from '../h2/protocol-error.js';
import { H2_CONNECTION_WINDOW, H2_STREAM_WINDOW } from '../h2/windows.js';
import { StreamWindowFit } from '../h2/stream-window.js';
import { trailersH2 } from '../headers.js';
import { ALPN_H2, poolKey, upstreamErrorCode, type UpstreamConnector } from './connect.js';
import type { DeadlineSweep, Expirable } from '../deadlines.js';
import type { Target } from '../route/target.js';
import type { StatsCounters } from '../stats.js';
import type { FdBudget } from '../fd-budget.js';
import type { BodyLease } from './read-buffers.js';
import { watchStreamTables } from '../h2/stream-tables.js';
import { releaseTimerOnClose } from '../h2/session-timeout.js';


/** What an h2c upstream stream reports to the exchange using it. */
export interface H2UpstreamUser {
  /** Request headers for the upstream (lower-case names, pseudo-headers set). */
  h2Headers(): http2.OutgoingHttpHeaders;
  /** True when the request has no body (END_STREAM on HEADERS). */
  readonly h2EndStream: boolean;
  /** The client's Host: the server name (SNI) of a new TLS session. */
  readonly host: string | undefined;
  h2Started(req: H2UpstreamRequest): void;
  /** `endStream`: the response HEADERS ended the stream (no body; a trailers-only answer). */
  h2Response(status: number, raw: string[], endStream: boolean): void;
  h2Body(chunk: Buffer): void;
  h2End(trailers: string[] | null): void;
  /** `replayable`: the upstream provably did not process the stream (REFUSED_STREAM / GOAWAY). */
  h2Failure(code: string, replayable: boolean): void;
  h2Drain(): void;
}

/**
 * The upstream code for an error from Node's http2 layer. Socket errors keep their errno code
 * (ECONNREFUSED, ECONNRESET...: the documented codes, some of which say nothing was delivered);
 * Node's own codes (ERR_HTTP2_ERROR, ERR_HTTP2_SESSION_ERROR, ERR_HTTP2_STREAM_ERROR...) are
 * internals a client must never see and become `fallback`.
 */
export function h2UpstreamCode(err: NodeJS.ErrnoException | null | undefined, fallback: string): string {
  const code = err?.code;
  if (typeof code !== 'string' || code.length < 2 || code.charCodeAt(0) !== 0x45 /* E */) return fallback;
  for (let i = 1; i < code.length; i++) {
    const c = code.charCodeAt(i);
    if (c < 0x41 || c > 0x5a) return fallback; // errno names are E + capitals only
  }
  return code;
}

const kReq = Symbol('cmux.h2up.request');
type UpStream = http2.ClientHttp2Stream & { [kReq]?: H2UpstreamRequest };

/**
 * One request on an upstream HTTP/2 session. Its deadline (in the pool's sweep) is the response
 * head's until a final head arrives, then the longest silence tolerated mid-response, re-armed by
 * every DATA chunk either way; on expiry the stream is reset and the exchange fails with
 * RESPONSE_TIMEOUT or IDLE_TIMEOUT while the session serves on.
 */
export class H2UpstreamRequest implements Expirable {
  readonly session: UpSession;
  readonly stream: UpStream;
  user: H2UpstreamUser | null;
  responded = false;
  private trailers: string[] | null = null;
  /** Request trailers to send when the body ends (null: none). */
  private requestTrailers: string[] | null = null;
  /** The errno code of the error the stream was destroyed with, if any. */
  errorCode: string | null = null;
  deadline = 0;
  inSweep = false;

  constructor(session: UpSession, user: H2UpstreamUser) {
    this.session = session;
    this.user = user;
    // A request with a body may end with trailers, known only at its end: Node then asks for them
    // ('wantTrailers'); none to send ends the stream with an empty DATA frame.
    const endStream = user.h2EndStream;
    const stream = session.session.request(user.h2Headers(), { endStream, waitForTrailers: !endStream }) as UpStream;
    this.stream = stream;
    stream[kReq] = this;
    const pool = session.pool;
    pool.deadlines.arm(this, pool.responseTimeoutMs);
    stream.on('response', upStreamOnResponse);
    stream.on('data', upStreamOnData);
    stream.on('trailers', upStreamOnTrailers);
    stream.on('end', upStreamOnEnd);
    stream.on('drain', upStreamOnDrain);
    stream.on('error', upStreamOnError);
    stream.on('close', upStreamOnClose);
    if (!endStream) stream.on('wantTrailers', upStreamOnWantTrailers);
  }

  /**
   * A piece of the request body. A `lease` (a lent read buffer's, see read-buffers.ts) is
   * released by the write's callback, once the DATA frames carrying the chunk are written.
   */
  write(chunk: Buffer, lease: BodyLease | null): boolean {
    if (this.stream.destroyed) {
      lease?.release();
      return true;
    }
    // Request body going out mid-response is traffic too (as on an HTTP/1.1 socket).
    if (this.responded) this.session.pool.deadlines.arm(this, this.session.pool.idleTimeoutMs);
    if (lease === null) return this.stream.write(chunk);
    lease.holder = this.stream;
    return this.stream.write(chunk, lease.release);
  }

  /** The request body is complete; `trailers` (raw, filtered here) follow it. */
  end(trailers: string[] | null): void {
    this.requestTrailers = trailers;
    if (!this.stream.destroyed && !this.stream.writableEnded) this.stream.end();
  }

  sendRequestTrailers(): void {
    const trailers = this.requestTrailers;
    this.requestTrailers = null;
    try {
      this.stream.sendTrailers(trailers === null ? {} : trailersH2(trailers, true));
    } catch {
      // A value Node will not send: the upstream must not see a complete-looking request.
      if (!this.stream.destroyed) this.stream.close(NGHTTP2_CANCEL);
    }
  }

  pause(): void {
    this.stream.pause();
  }

  resume(): void {
    this.stream.resume();
  }

  /** The client went away: reset the upstream stream. */
  cancel(): void {
    this.user = null;
    this.session.pool.deadlines.disarm(this);
    if (!this.stream.destroyed) this.stream.close(NGHTTP2_CANCEL);
  }

  /** The sweep: no response head in time, or silence mid-response. Resets the stream only. */
  expire(): void {
    const user = this.user;
    this.user = null;
    if (!this.stream.destroyed) this.stream.close(NGHTTP2_CANCEL);
    // The upstream may have seen the request: never replayed.
    user?.h2Failure(this.responded ? 'IDLE_TIMEOUT' : 'RESPONSE_TIMEOUT', false);
  }

  onResponse(headers: http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader, raw: string[], endStream: boolean): void {
    const status = Number(headers[':status']);
    if (status >= 100 && status < 200) return;
    this.responded = true;
    this.session.pool.deadlines.arm(this, this.session.pool.idleTimeoutMs);
    this.user?.h2Response(status, raw, endStream);
  }

  onData(chunk: Buffer): void {
    const user = this.user;
    if (user === null) return;
    this.session.pool.deadlines.arm(this, this.session.pool.idleTimeoutMs);
    user.h2Body(chunk);
  }

  onTrailers(raw: string[]): void {
    this.trailers = raw;
  }

  onEnd(): void {
    // Node also ends the readable side of a stream the upstream reset with RST_STREAM(NO_ERROR)
    // or (CANCEL). With no response head that is never a response, and a stream closed with an
    // error code is not a complete one: 'close' reports both. (A normal END_STREAM may also
    // come after the stream has closed, its data still buffered, so `closed` alone says nothing;
    // a reset with NO_ERROR mid-body looks like the end of the body.)
    if (!this.responded || (this.stream.rstCode ?? 0) !== 0) return;
    const user = this.user;
    this.user = null;
    this.session.pool.deadlines.disarm(this);
    user?.h2End(this.trailers);
  }

  onClose(): void {
    this.session.pool.deadlines.disarm(this);
    this.session.streamClosed(this);
    const user = this.user;
    if (user === null) return;
    this.user = null;
    const code = this.stream.rstCode ?? 0;
    // RFC 9113 §8.7: REFUSED_STREAM (and streams above a GOAWAY's last id) were not processed.
    const replayable = !this.responded && (code === NGHTTP2_REFUSED_STREAM || this.session.goneAway);
    // A socket error (ECONNRESET...) says more than the RST code nghttp2 makes up for it. The
    // RST code itself is not shown: UPSTREAM_RESET is the documented code for a reset stream.
    user.h2Failure(this.errorCode ?? (this.responded || code !== 0 ? 'UPSTREAM_RESET' : 'UPSTREAM_CLOSED'), replayable);
  }
}

function upStreamOnResponse(this: UpStream, headers: http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader, flags: number, raw: string[]): void {
  this[kReq]?.onResponse(headers, raw ?? flatten(headers), (flags & NGHTTP2_FLAG_END_STREAM) !== 0);
}
function upStreamOnWantTrailers(this: UpStream): void {
  this[kReq]?.sendRequestTrailers();
}
function upStreamOnData(this: UpStream, chunk: Buffer): void {
  this[kReq]?.onData(chunk);
}
function upStreamOnTrailers(this: UpStream, headers: http2.IncomingHttpHeaders, _flags: number, raw: string[]): void {
  this[kReq]?.onTrailers(raw ?? flatten(headers));
}
function upStreamOnEnd(this: UpStream): void {
  this[kReq]?.onEnd();
}
function upStreamOnDrain(this: UpStream): void {
  this[kReq]?.user?.h2Drain();
}
function upStreamOnError(this: UpStream, err: NodeJS.ErrnoException): void {
  // 'close' follows with rstCode set.
  const req = this[kReq];
  if (req !== undefined) {
    const code = h2UpstreamCode(err, '');
    if (code !== '') req.errorCode = code;
  }
}
function upStreamOnClose(this: UpStream): void {
  this[kReq]?.onClose();
}

function flatten(headers: http2.IncomingHttpHeaders): string[] {
  const raw: string[] = [];
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) raw.push(name, v);
    else raw.push(name, String(value));
  }
  return raw;
}

/**
 * One h2c session to an upstream and its running streams. Until the peer's SETTINGS arrive its
 * deadline (in the pool's sweep) is the connect timeout: TCP connect plus SETTINGS exchange.
 */
class UpSession implements Expirable {
  readonly pool: H2UpstreamPool;
  readonly entry: H2Entry;
  readonly session: http2.ClientHttp2Session;
  /**
   * The connection under the session (Node's `session.socket` is a proxy that refuses destroy());
   * also tells a failed TLS handshake from other errors.
   */
  private socket: net.Socket | null = null;
  active = 0;
  /** Peer's SETTINGS_MAX_CONCURRENT_STREAMS once known (RFC 9113 §6.5.2: unlimited until then; we assume 100). */
  maxStreams = 100;
  ready = false;
  goneAway = false;
  closed = false;
  deadline = 0;
  inSweep = false;
  private ping: NodeJS.Timeout | null = null;
  /** Narrows the upstream's stream window while many streams are open (see stream-window.ts). */
  private readonly windows: StreamWindowFit<http2.ClientHttp2Session>;

  constructor(pool: H2UpstreamPool, entry: H2Entry, host: string | undefined) {
    this.pool = pool;
    this.entry = entry;
    const target = entry.target;
    // Over TLS the session starts once the handshake is through (node:http2 waits for
    // 'secureConnect'); the connect deadline below covers it.
    const session = loadHttp2().connect(target.tls ? `https://${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}` : `http://${target.key}`, {
      createConnection: () => (this.socket = pool.connector.connect(target, host, ALPN_H2)),
      // A proxy may hold many streams from slow clients: node:http2's 10 MB default is too small.
      maxSessionMemory: 64,
      settings:
        pool.maxHeaderListSize === undefined
          ? { initialWindowSize: H2_STREAM_WINDOW }
          : { initialWindowSize: H2_STREAM_WINDOW, maxHeaderListSize: pool.maxHeaderListSize },
    });
    this.session = session;
    // An upstream is left to acknowledge in its own time (see stream-window.ts).
    this.windows = new StreamWindowFit(session, null);
    watchStreamTables(session);
    session.once('connect', setConnectionWindow);
    // One malformed response stream must not cost the other streams on this session.
    keepSessionOnStreamError(session);
    pool.deadlines.arm(this, pool.connectTimeoutMs);
    session.on('remoteSettings', (settings) => {
      this.ready = true;
      pool.deadlines.disarm(this);
      if (settings.maxConcurrentStreams !== undefined) this.maxStreams = Math.max(1, Math.min(settings.maxConcurrentStreams, 1000));
      pool.serveWaiters(entry);
    });
    session.on('goaway', () => {
      // Retired: no new streams here; running ones finish (unprocessed ones come back as replayable).
      this.goneAway = true;
      pool.serveWaiters(entry);
      if (this.active === 0) session.close();
    });
    session.on('error', (err: NodeJS.ErrnoException) => {
      // Not an h2c server, or a protocol error on its side: BAD_RESPONSE. A failed TLS
      // handshake: UPSTREAM_TLS_CERT or UPSTREAM_TLS_HANDSHAKE.
      const tlsCode = this.entry.target.tls ? upstreamErrorCode(this.ready ? null : this.socket, err, '') : '';
      this.failWaiters(tlsCode.startsWith('UPSTREAM_TLS_') ? tlsCode : h2UpstreamCode(err, 'BAD_RESPONSE'));
    });
    session.on('close', () => this.onClose());
    // One listener for the session's life: setTimeout(ms, callback) would add one per call.
    session.on('timeout', this.closeIfIdle);
    session.setTimeout(pool.idleTimeoutMs);
    releaseTimerOnClose(session);
    if (pool.keepaliveMs > 0) {
      this.ping = setInterval(pingUpstream, pool.keepaliveMs, this);
      this.ping.unref();
    }
    pool.stats.upstreamSocketsCreated++;
    if (pool.fds !== null) pool.fds.upstream++;
  }

  /** The sweep: no SETTINGS from the upstream within the connect timeout. Nothing was sent. */
  expire(): void {
    if (this.ready || this.closed) return;
    this.failWaiters('CONNECT_TIMEOUT');
    this.session.destroy();
  }

  get usable(): boolean {
    return !this.goneAway && !this.closed && !this.session.destroyed && this.active < this.maxStreams;
  }

  /** Session timeout: close when no stream is open (a stream outliving the timeout re-arms it below). */
  private readonly closeIfIdle = (): void => {
    if (this.active === 0) this.session.close();
  };

  /** `active` changed: the stream window follows (see stream-window.ts). */
  streamsChanged(): void {
    this.windows.fit(this.active, this.maxStreams);
  }

  streamClosed(_req: H2UpstreamRequest): void {
    this.active--;
    this.streamsChanged();
    if (this.goneAway && this.active === 0) this.session.close();
    else {
      // The session's inactivity timer fires once; if a long stream (SSE, long poll) held the
      // session through it, idleness is counted again from this stream's end.
      if (this.active === 0 && !this.session.destroyed) this.session.setTimeout(this.pool.idleTimeoutMs);
      this.pool.serveWaiters(this.entry);
    }
  }

  private failWaiters(code: string): void {
    // Connecting failed (nothing was sent): the waiters of this upstream get the error, unless
    // another session can still take them.
    if (!this.ready) this.pool.failWaiters(this.entry, this, code);
  }

  private onClose(): void {
    this.closed = true;
    this.windows.dispose();
    this.pool.deadlines.disarm(this);
    if (this.pool.fds !== null) this.pool.fds.upstream--;
    if (this.ping !== null) clearInterval(this.ping);
    this.pool.sessionClosed(this);
  }

  pingNow(): void {
    if (this.session.destroyed || this.closed) return;
    try {
      this.session.ping((err) => {
        if (err && !this.session.destroyed) this.destroy(SOCKET_RELEASE_MS);
      });
    } catch {
      this.destroy(SOCKET_RELEASE_MS);
    }
  }

  /**
   * Destroys the session and makes sure its socket goes too, after `releaseMs` at most. Node's
   * destroy() lets the socket go only once the write in flight completes: an upstream that opened
   * its windows and stopped reading would keep it (and its descriptor) forever.
   */
  destroy(releaseMs: number): void {
    if (!this.session.destroyed) this.session.destroy();
    const socket = this.socket;
    if (socket === null || socket.destroyed) return;
    if (releaseMs === 0) socket.destroy();
    else setTimeout(releaseSocket, releaseMs, socket).unref();
  }
}

function pingUpstream(s: UpSession): void {
  s.pingNow();
}

/** How long a destroyed session's socket may take to close by itself. */
const SOCKET_RELEASE_MS = 1_000;

function releaseSocket(socket: net.Socket): void {
  if (!socket.destroyed) socket.destroy();
}

interface H2Entry {
  target: Target;
  /** Key in the pool's entries (poolKey: per server name for a TLS target). */
  key: string;
  sessions: UpSession[];
  waiters: H2UpstreamUser[];
}

export interface H2PoolConfig {
  /** Opens the connections (TCP, unix, TLS with ALPN h2). */
  connector: UpstreamConnector;
  /** TCP connect plus the peer's SETTINGS -> CONNECT_TIMEOUT. */
  connectTimeoutMs: number;
  /** Stream opened -> final response head -> RESPONSE_TIMEOUT. */
  responseTimeoutMs: number;
  /** Idle sessions close; also the longest silence mid-response -> IDLE_TIMEOUT. */
  idleTimeoutMs: number;
  keepaliveMs: number;
  maxSessions: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE toward upstreams: larger response heads or trailers reset their stream. */
  maxHeaderListSize?: number;
}

/**
 * HTTP/2 sessions to h2c upstreams, pooled by hand (node:http2 has no client pool): per origin a list of sessions; a
 * session is busy when its streams reach the peer's SETTINGS_MAX_CONCURRENT_STREAMS and another
 * opens (up to `maxSessions`, then requests wait); GOAWAY retires a session; idle sessions
 * close; PING finds dead ones; a crashed upstream leaves no session behind.
 */
export class H2UpstreamPool {
  private readonly entries = new Map<string, H2Entry>();
  readonly stats: StatsCounters;
  readonly connectTimeoutMs: number;
  readonly responseTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly keepaliveMs: number;
  private readonly maxSessions: number;
  readonly maxHeaderListSize: number | undefined;
  /** The process's descriptor budget, shared with the HTTP/1.1 pool (null: not counted). */
  readonly fds: FdBudget | null;
  /** Session connect and stream deadlines: the sweep of the HTTP/1.1 pool's phase deadlines. */
  readonly deadlines: DeadlineSweep;
  readonly connector: UpstreamConnector;

  constructor(config: H2PoolConfig, stats: StatsCounters, deadlines: DeadlineSweep, fds: FdBudget | null = null) {
    this.stats = stats;
    this.fds = fds;
    this.connector = config.connector;
    this.deadlines = deadlines;
    this.connectTimeoutMs = config.connectTimeoutMs;
    this.responseTimeoutMs = config.responseTimeoutMs;
    this.idleTimeoutMs = config.idleTimeoutMs;
    this.keepaliveMs = config.keepaliveMs;
    this.maxSessions = config.maxSessions;
    this.maxHeaderListSize = config.maxHeaderListSize;
  }

  request(target: Target, user: H2UpstreamUser): void {
    const key = poolKey(target, user.host);
    let entry = this.entries.get(key);
    if (entry === undefined) {
      entry = { target, key, sessions: [], waiters: [] };
      this.entries.set(key, entry);
    }
    entry.waiters.push(user);
    this.serveWaiters(entry);
  }

  cancel(target: Target, user: H2UpstreamUser): void {
    const entry = this.entries.get(poolKey(target, user.host));
    if (entry === undefined) return;
    const at = entry.waiters.indexOf(user);
    if (at !== -1) entry.waiters.splice(at, 1);
  }

  serveWaiters(entry: H2Entry): void {
    while (entry.waiters.length > 0) {
      let session: UpSession | undefined;
      for (const s of entry.sessions) {
        if (s.ready && s.usable && (session === undefined || s.active < session.active)) session = s;
      }
      if (session === undefined) {
        // Open another session unless one is still connecting or the bound is reached.
        const connecting = entry.sessions.some((s) => !s.ready && !s.closed);
        const live = entry.sessions.filter((s) => !s.closed && !s.goneAway).length;
        if (!connecting && live < this.maxSessions) {
          if (this.fds === null || this.fds.upstreamAllowed()) entry.sessions.push(new UpSession(this, entry, entry.waiters[0]!.host));
          else if (live === 0) {
            // No descriptor to spare for a session and none open: the waiters get the proxy's 503
            // (the last descriptors are kept for clients), nothing was sent.
            for (const waiter of entry.waiters.splice(0)) waiter.h2Failure('FD_LIMIT', false);
          }
        }
        return;
      }
      const user = entry.waiters.shift()!;
      session.active++;
      let req: H2UpstreamRequest;
      try {
        req = new H2UpstreamRequest(session, user);
      } catch (err) {
        // Back to the count the window was last fitted to: nothing to change.
        session.active--;
        // Node refused to build the request (a header it will not send, or the session just
        // went); nothing was sent. Its ERR_HTTP2_* code is not shown.
        void err;
        user.h2Failure(session.session.destroyed || session.session.closed ? 'UPSTREAM_CLOSED' : 'BAD_REQUEST_HEADERS', false);
        continue;
      }
      session.streamsChanged();
      user.h2Started(req);
    }
  }

  failWaiters(entry: H2Entry, failed: UpSession, code: string): void {
    const others = entry.sessions.some((s) => s !== failed && !s.closed && s.ready && !s.goneAway);
    if (others) return;
    for (const user of entry.waiters.splice(0)) user.h2Failure(code, false);
  }

  sessionClosed(s: UpSession): void {
    const entry = s.entry;
    const at = entry.sessions.indexOf(s);
    if (at !== -1) entry.sessions.splice(at, 1);
    if (entry.sessions.length === 0 && entry.waiters.length === 0) {
      this.entries.delete(entry.key);
      return;
    }
    this.serveWaiters(entry);
  }

  counts(): { sessions: number; streams: number; waiters: number } {
    let sessions = 0;
    let streams = 0;
    let waiters = 0;
    for (const entry of this.entries.values()) {
      sessions += entry.sessions.length;
      for (const s of entry.sessions) streams += s.active;
      waiters += entry.waiters.length;
    }
    return { sessions, streams, waiters };
  }

  close(): void {
    for (const entry of this.entries.values()) {
      for (const user of entry.waiters.splice(0)) user.h2Failure('PROXY_STOPPING', false);
      for (const s of entry.sessions.slice()) s.destroy(0);
    }
  }

  closeIdle(): void {
    for (const entry of this.entries.values()) for (const s of entry.sessions.slice()) if (s.active === 0) s.session.close();
  }
}

function setConnectionWindow(this: http2.ClientHttp2Session): void {
  if (!this.destroyed) this.setLocalWindowSize(H2_CONNECTION_WINDOW);
}

/**
 * Asks an upstream whether it speaks h2c with prior knowledge: resolves true when it answers
 * the preface with SETTINGS, false when it closes or errors first (an HTTP/1.1 server answers
 * 400 and closes). Bounded by `timeoutMs`.
 */
export function probeH2c(connector: UpstreamConnector, target: Target, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    let done = false;
    const session = loadHttp2().connect(`http://${target.key}`, {
      createConnection: () => connector.connect(target, undefined, ALPN_H2),
    });
    const finish = (answer: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      session.destroy();
      resolve(answer);
    };
    const timer = setTimeout(finish, timeoutMs, false);
    session.on('remoteSettings', () => finish(true));
    session.on('error', () => finish(false));
    session.on('close', () => finish(false));
  });
}
