import type http2 from 'node:http2';
import type net from 'node:net';
import { BODY_CHUNKED, BODY_LENGTH, BODY_NONE, EX_FINISHED, EX_RESPONSE_EMPTY, Exchange, type ClientSide } from '../exchange.js';
import { emptyFacts, responseHeadersH2, scanRequestHeaders, trailersH2 } from '../headers.js';
import type { ProxyCore } from '../proxy-core.js';
import { hostName } from '../route/host-patterns.js';
import type { UpstreamConn } from '../upstream/h1-pool.js';
import { startExtendedConnect } from './extended-connect.js';
import type { StreamHandle } from '../h1/parser.js';
import { isReportedProtocolError } from './protocol-error.js';
import { http2 as loadHttp2 } from '../builtins.js';
import {
  HTTP2_HEADER_CONTENT_LENGTH,
  HTTP2_HEADER_CONTENT_TYPE,
  HTTP2_HEADER_STATUS,
  NGHTTP2_ENHANCE_YOUR_CALM,
  NGHTTP2_SETTINGS_TIMEOUT,
  NGHTTP2_FLAG_END_STREAM,
  NGHTTP2_NO_ERROR,
  NGHTTP2_REFUSED_STREAM,
  NGHTTP2_PROTOCOL_ERROR,
  NGHTTP2_INTERNAL_ERROR,
  NGHTTP2_FLOW_CONTROL_ERROR,
  NGHTTP2_STREAM_CLOSED,
  NGHTTP2_FRAME_SIZE_ERROR,
  NGHTTP2_COMPRESSION_ERROR,
} from './constants.js';
import { H2_CONNECTION_WINDOW, H2_STREAM_WINDOW } from './windows.js';
import { StreamWindowFit, type AckWatch } from './stream-window.js';
import { flushRequestBody, requestBodyPiece } from './request-body.js';
import { H2StreamState } from './stream-state.js';
import { HELD_BODY_MEMORY_MAX, requestMemoryHeld } from './held-bodies.js';
import { watchStreamTables } from './stream-tables.js';
import { releaseTimerOnClose } from './session-timeout.js';
import { ChurnSet } from '../churn-set.js';


const kEx = Symbol('cmux.h2.exchange');
/** The session state a stream counts in (its `streams`), until the stream closes. */
const kCounted = Symbol('cmux.h2.counted');
const kSession = Symbol('cmux.h2.session');

type ProxyStream = http2.ServerHttp2Stream & { [kEx]?: Exchange; [kCounted]?: SessionState | undefined };

/** Hooks the server gives the HTTP/2 sessions. */
export interface H2Host {
  readonly core: ProxyCore;
  sessionOpened(session: http2.ServerHttp2Session): void;
  sessionClosed(session: http2.ServerHttp2Session): void;
}

type TrackedSession = http2.ServerHttp2Session & { [kSession]?: SessionState };

interface SessionState {
  ping: NodeJS.Timeout | null;
  tls: boolean;
  /** Streams the client abandoned in the current one-second window (rapid-reset guard). */
  resets: number;
  resetWindowStart: number;
  /** Protocol errors Node reported in the current one-second window (see destroyUnlessStreamError). */
  protocolErrors: number;
  protocolErrorWindowStart: number;
  readonly core: ProxyCore;
  /** Bounds how long a session that is going away may linger. */
  closeTimer: NodeJS.Timeout | null;
  /** The stream handle the native session reads from (TCP, or the TLS wrap over it); null when unknown. */
  handle: StreamHandle | null;
  /** The TCP handle under it (the same object without TLS): its write queue is the wire's. */
  wire: StreamHandle | null;
  /** The client socket itself (Node's `session.socket` is a proxy that refuses destroy()). */
  socket: net.Socket | null;
  /** Streams open now (exchanges, WebSockets, tunnels): a session with any is not idle. */
  streams: number;
  /** Narrows the client's stream window while many streams are open (see stream-window.ts). */
  readonly windows: StreamWindowFit<TrackedSession>;
  /** The last client stream that reached the proxy ('stream' event). */
  lastStreamId: number;
  /** The highest client stream id looked at: one that reached the proxy, or one counted in `refused`. */
  accountedId: number;
  /** Client streams nghttp2 processed that never reached the proxy, in the current window (see noteRefused). */
  refused: number;
  refusedWindowStart: number;
  /** `lastProcStreamID` at the previous look (see lookForRefusals). */
  lastProcessed: number;
}

/**
 * Once a session is going away (the client sent GOAWAY, or we closed it), nghttp2 stops asking
 * for input, so Node stops reading its socket and never sees the client's FIN: streams left
 * open would hold the connection forever. They get this long, then the session is destroyed.
 */
const GOAWAY_GRACE_MS = 5_000;

/**
 * Client-abandoned streams per second past which a session is closed with
 * GOAWAY(ENHANCE_YOUR_CALM) (CVE-2023-44487, "rapid reset"). nghttp2's own limit answers
 * GOAWAY but leaves the session open and unread, holding a connection slot.
 */
const MAX_RESETS_PER_SECOND = 200;

/**
 * After a connection error (RFC 9113 §5.4.1: a PING or SETTINGS of the wrong length, DATA on an
 * idle stream, CONTINUATION without HEADERS, an HPACK error...) nghttp2 queues GOAWAY and, once it
 * is sent, wants no more input; Node then stops reading the socket and tells JavaScript nothing
 * (no 'error', no 'goaway', no 'close'). The client's FIN is never read, so the socket would sit
 * in CLOSE-WAIT holding a connection slot until the idle timeout. RFC 9113 §5.4.1 says the
 * endpoint closes the connection after that GOAWAY, so the proxy finds such sessions itself:
 * every DEAD_PROBE_MS it asks each session's handle to start reading. libuv answers EALREADY
 * while a session reads; 0 means Node had stopped it. Node also pauses reading while a write is
 * in flight (backpressure), so a probe only counts when nothing is queued on the wire, and only
 * a second look one loop turn later (the first one stops reading again, as Node wanted) marks the
 * session dead: its GOAWAY has been flushed, and it is destroyed.
 */
const DEAD_PROBE_MS = 250;

/** Sessions the dead-session probe watches (those with a known stream handle). */
const probed = new ChurnSet<TrackedSession>();
let probeTimer: NodeJS.Timeout | null = null;

const NO_BODY_STATUS = (status: number): boolean => status === 204 || status === 304;

/**
 * The HTTP/2 side of exchanges: one stateless object shared by every stream (per-stream
 * state lives in the exchange), so no closure is made per request.
 */
const h2ClientSide: ClientSide = {
  respond(ex, status, _statusMessage, raw) {
    const state = ex.clientState as H2StreamState;
    const stream = state.stream;
    const headers = responseHeadersH2(raw, status, ex.responseFacts);
    const endStream = ex.method === 'HEAD' || NO_BODY_STATUS(status) || (ex.flags & EX_RESPONSE_EMPTY) !== 0;
    // Trailers can follow any h2c upstream body, and a chunked HTTP/1.1 one (announced by
    // `Trailer` or not); the stream then ends with them, or with an empty DATA frame if none came.
    const waitForTrailers = !endStream && (ex.h2 !== null || !ex.responseFacts.contentLength);
    ex.core.stats.countStatus(status);
    // Listened to only by the streams that ask for it (most responses have a Content-Length).
    if (waitForTrailers) stream.on('wantTrailers', streamOnWantTrailers);
    try {
      stream.respond(headers, { endStream, waitForTrailers });
    } catch (err) {
      // Invalid header values from the upstream, or a stream the client already reset.
      if (!stream.destroyed && !stream.headersSent) {
        ex.core.countUpstreamFailure('BAD_RESPONSE');
        respondError(stream, 502, 'upstream request error: BAD_RESPONSE');
      }
      ex.abort();
      void err;
    }
  },
  interim(ex, status, _statusMessage, raw) {
    const stream = (ex.clientState as H2StreamState).stream;
    if (stream.destroyed || stream.headersSent) return;
    try {
      stream.additionalHeaders(responseHeadersH2(raw, status, ex.responseFacts));
    } catch {
      // interim answers are advisory
    }
  },
  writeBody(ex, chunk, lease, last) {
    const state = ex.clientState as H2StreamState;
    const stream = state.stream;
    if (stream.destroyed || stream.writableEnded) {
      lease?.release();
      return true;
    }
    if (lease === null && last !== true && state.batchChunk(chunk)) return !state.batchFull || state.flushBatched();
    // A chunk that cannot wait goes behind those that did (the same stream's queue: its write
    // then reports the backpressure of both).
    state.flushBatched();
    let ok: boolean;
    if (lease === null) ok = stream.write(chunk);
    else {
      // nghttp2 sends from the chunk itself, maybe much later (flow control): released by the
      // write's callback, once the DATA frames carrying it are written.
      lease.holder = stream;
      ok = stream.write(chunk, lease.release);
    }
    // The exchange then waits for 'drain' to read its upstream on.
    state.written(ok);
    // The body's last bytes: ended in the same callback as the write, Node shuts the stream's
    // writable side before nghttp2 takes the data, and the last DATA frame carries END_STREAM.
    // Ended later (with the upstream's message end, after Node has run its ticks between llhttp's
    // callbacks), the stream would need an empty DATA frame and another write cycle to end.
    if (last === true) stream.end();
    return ok;
  },
  end(ex, trailers) {
    const state = ex.clientState as H2StreamState;
    state.flushBatched();
    state.trailers = trailers;
    if (!state.stream.destroyed && !state.stream.writableEnded) state.stream.end();
  },
  fail(ex, status, code, message) {
    const stats = ex.core.stats;
    stats.proxyErrorResponses++;
    stats.countStatus(status);
    if (ex.core.log.debugEnabled) ex.core.log.debug(`h2 ${ex.method} ${ex.path} -> ${status} ${code}`);
    respondError((ex.clientState as H2StreamState).stream, status, message, ex.answerHeaders);
  },
  reset(ex) {
    const stream = (ex.clientState as H2StreamState).stream;
    resetStream(stream);
  },
  pauseRequest(ex) {
    (ex.clientState as H2StreamState).stream.pause();
  },
  resumeRequest(ex) {
    (ex.clientState as H2StreamState).stream.resume();
  },
  upgraded(_ex: Exchange, conn: UpstreamConn) {
    // HTTP/2 requests never ask for an HTTP/1.1 upgrade (RFC 9113 §8.6); extended CONNECT has its own path.
    conn.socket.destroy();
  },
  done(ex) {
    // A request body paused for a queue or backpressure must flow (to nowhere) once the
    // exchange is over, or the stream — and its flow-control window — never completes.
    const stream = (ex.clientState as H2StreamState).stream;
    if (!stream.destroyed && stream.isPaused()) stream.resume();
  },
  readBatch() {
    return null;
  },
};

export function respondError(stream: http2.ServerHttp2Stream, status: number, message: string, extra: readonly string[] | null = null): void {
  if (stream.destroyed || stream.closed) return;
  if (stream.headersSent) {
    resetStream(stream);
    return;
  }
  try {
    const headers: http2.OutgoingHttpHeaders = {
      [HTTP2_HEADER_STATUS]: status,
      [HTTP2_HEADER_CONTENT_TYPE]: 'text/plain; charset=utf-8',
      [HTTP2_HEADER_CONTENT_LENGTH]: Buffer.byteLength(message),
    };
    if (extra !== null) for (let i = 0; i < extra.length; i += 2) headers[extra[i]!] = extra[i + 1]!;
    stream.respond(headers);
    stream.end(message);
  } catch {
    resetStream(stream);
  }
}

const RESET_ERROR = Object.assign(new Error('upstream failed after the response started'), { code: 'CMUX_UPSTREAM_FAILED' });

/**
 * RST_STREAM(INTERNAL_ERROR) without END_STREAM first. `stream.close(code)` ends the writable
 * side before resetting when it is still open (Node 20), so the client would see a clean end.
 */
export function resetStream(stream: http2.ServerHttp2Stream): void {
  if (!stream.destroyed) stream.destroy(RESET_ERROR);
}

function streamOnData(this: ProxyStream, chunk: Buffer): void {
  const ex = this[kEx];
  if (ex !== undefined) requestBodyPiece(ex, chunk);
}

function streamOnEnd(this: ProxyStream): void {
  const ex = this[kEx];
  if (ex === undefined) return;
  // Node ends the readable side on RST_STREAM too (NO_ERROR included), after marking the stream
  // closed; a real END_STREAM leaves it open for our response. An abandoned request must not
  // reach the upstream as a complete-looking body.
  if (this.closed) {
    abandoned(this);
    // Node may then wait for a 'finish' that never comes (a reset racing our response's end).
    if (!this.destroyed) this.destroy();
    return;
  }
  flushRequestBody(ex);
  ex.requestEnd((ex.clientState as H2StreamState).requestTrailers);
}

/** The client's trailing HEADERS (Node emits them before 'end'). */
function streamOnTrailers(this: ProxyStream, _headers: http2.IncomingHttpHeaders, _flags: number, raw: string[]): void {
  const ex = this[kEx];
  if (ex !== undefined) (ex.clientState as H2StreamState).requestTrailers = raw;
}

/** The client reset the stream while our writes were pending: Node emits no 'close' then. */
function streamOnAborted(this: ProxyStream): void {
  abandoned(this);
  if (!this.destroyed) this.destroy();
}

function streamOnDrain(this: ProxyStream): void {
  this[kEx]?.clientDrained();
}

/** Every stream's one 'close' listener: it no longer counts in its session, and an exchange still running is abandoned. */
function streamOnClose(this: ProxyStream): void {
  const counted = this[kCounted];
  if (counted !== undefined) {
    this[kCounted] = undefined;
    counted.streams--;
    counted.windows.fit(counted.streams, counted.core.options.http2MaxConcurrentStreams);
  }
  abandoned(this);
}

/**
 * The client gave up on a stream before its exchange finished (reset, or the session went):
 * tear the exchange down and count it against the session's rapid-reset budget.
 */
function abandoned(stream: ProxyStream): void {
  const ex = stream[kEx];
  if (ex === undefined || (ex.flags & EX_FINISHED) !== 0) return;
  ex.abort();
  const session = (ex.clientState as H2StreamState).session as TrackedSession | undefined;
  const state = session?.[kSession];
  if (session === undefined || state === undefined || session.destroyed) return;
  const now = Date.now();
  if (now - state.resetWindowStart > 1000) {
    state.resetWindowStart = now;
    state.resets = 0;
  }
  if (++state.resets > MAX_RESETS_PER_SECOND) {
    ex.core.log.warn(`HTTP/2 client ${session.socket?.remoteAddress ?? ''} reset more than ${MAX_RESETS_PER_SECOND} streams in a second: closing the session`);
    session.goaway(NGHTTP2_ENHANCE_YOUR_CALM);
    destroySession(session);
  }
}

function streamOnError(this: ProxyStream): void {
  // 'close' follows and tears the exchange down.
}

function streamOnWantTrailers(this: ProxyStream): void {
  const ex = this[kEx];
  const trailers = ex === undefined ? null : (ex.clientState as H2StreamState).trailers;
  try {
    this.sendTrailers(trailers === null ? {} : trailersH2(trailers, false));
  } catch {
    resetStream(this);
  }
}

/** The proxy's `http2.Server` (never listening; the sniffer hands it sockets). */
export function createH2Server(host: H2Host): http2.Http2Server {
  const { core } = host;
  const options = core.options;
  const server = loadHttp2().createServer({
    settings: {
      enableConnectProtocol: options.enableWebsockets,
      // Each open stream may hold an upstream socket or tunnel: this bounds what one client
      // connection can take. nghttp2 refuses streams past it (RFC 9113 §5.1.2: REFUSED_STREAM
      // until the client acknowledged the setting, PROTOCOL_ERROR after).
      maxConcurrentStreams: options.http2MaxConcurrentStreams,
      maxHeaderListSize: options.maxHeaderSize * 2,
      initialWindowSize: H2_STREAM_WINDOW,
    },
    maxSessionMemory: options.http2MaxSessionMemoryMb,
    maxHeaderListPairs: options.maxHeadersCount + 8,
  });
  server.on('session', (session: TrackedSession) => {
    session.setLocalWindowSize(H2_CONNECTION_WINDOW);
    const socket = session.socket as net.Socket & { encrypted?: boolean };
    const state: SessionState = {
      ping: null,
      tls: socket.encrypted === true,
      resets: 0,
      resetWindowStart: 0,
      protocolErrors: 0,
      protocolErrorWindowStart: 0,
      core,
      closeTimer: null,
      handle: null,
      wire: null,
      socket: handingOver,
      streams: 0,
      windows: new StreamWindowFit(session, clientAckWatch),
      lastStreamId: 0,
      accountedId: 0,
      refused: 0,
      refusedWindowStart: 0,
      lastProcessed: 0,
    };
    session[kSession] = state;
    // Node answers a client's GOAWAY(NO_ERROR) by calling close() from inside nghttp2's frame
    // callback; if the same read then holds a new stream and a connection error (a 3-byte PING),
    // nghttp2 aborts the whole process (Node 20: assertion `iframe->state == NGHTTP2_IB_IGN_ALL`).
    // close() runs once nghttp2 has returned instead.
    sessionClose ??= session.close;
    session.close = closeAfterCallbacks;
    // A stream error nghttp2 reports costs that stream only; on a connection error Node
    // destroys the session with no code (GOAWAY(INTERNAL_ERROR)): the code the RFC names goes instead.
    sessionDestroy ??= session.destroy;
    session.destroy = destroyUnlessStreamError;
    host.sessionOpened(session);
    watchStreamTables(session);
    watchForDeath(session, state);
    session.on('error', sessionOnError);
    session.on('goaway', sessionOnGoaway);
    session.on('stream', sessionOnStream);
    session.on('close', function sessionClosed(this: TrackedSession) {
      const s = this[kSession];
      if (s?.ping) clearInterval(s.ping);
      if (s?.closeTimer) clearTimeout(s.closeTimer);
      s?.windows.dispose();
      probed.delete(this);
      host.sessionClosed(this);
    });
    if (options.keepaliveMs > 0) {
      state.ping = setInterval(pingSession, options.keepaliveMs, session);
      state.ping.unref();
    }
    if (options.clientIdleTimeoutMs > 0) {
      session.on('timeout', sessionOnTimeout);
      session.setTimeout(options.clientIdleTimeoutMs);
      releaseTimerOnClose(session);
    }
  });
  server.on('stream', (stream: ProxyStream, headers: http2.IncomingHttpHeaders, flags: number, raw: string[]) => {
    onStream(core, stream, headers, flags, raw);
  });
  server.on('sessionError', () => {});
  return server;
}

/** The socket serveH2() is handing the server ('session' is emitted while it does). */
let handingOver: net.Socket | null = null;

/** Hands a client connection (TCP, or TLS with ALPN h2) to the proxy's HTTP/2 server. */
export function serveH2(server: http2.Http2Server, socket: net.Socket): void {
  handingOver = socket;
  try {
    server.emit('connection', socket);
  } finally {
    handingOver = null;
  }
}

/** Node's own `Http2Session#close` (the class is not exported: taken from the first session). */
let sessionClose: ((this: http2.ServerHttp2Session, callback?: () => void) => void) | null = null;

function closeAfterCallbacks(this: http2.ServerHttp2Session, callback?: () => void): void {
  setImmediate(closeSessionNow, this, callback);
}

/** Node's own `Http2Session#destroy`. */
let sessionDestroy: ((this: http2.ServerHttp2Session, error?: Error, code?: number) => void) | null = null;

function destroyWithRfcCode(this: http2.ServerHttp2Session, error?: Error, code?: number): void {
  if (code === undefined && error instanceof Error) {
    const err = error as NodeJS.ErrnoException;
    if (err.code === 'ERR_HTTP2_ERROR' && typeof err.errno === 'number') code = rfcCodeForNghttp2Error(err.errno);
  }
  sessionDestroy!.call(this, error, code);
}

/**
 * The RFC 9113 §7 error code for an nghttp2 library error (`errno` of Node's ERR_HTTP2_ERROR),
 * for the GOAWAY of a session destroyed over it. nghttp2's own mapping
 * (get_error_code_from_lib_error_code) plus the errors nghttp2 reports without a GOAWAY of its own.
 */
function rfcCodeForNghttp2Error(errno: number): number {
  switch (errno) {
    case -505: // NGHTTP2_ERR_PROTO
    case -531: // NGHTTP2_ERR_HTTP_HEADER
    case -532: // NGHTTP2_ERR_HTTP_MESSAGING
    case -536: // NGHTTP2_ERR_SETTINGS_EXPECTED: the first frame was not SETTINGS
    case -903: // NGHTTP2_ERR_BAD_CLIENT_MAGIC: invalid connection preface (RFC 9113 §3.4)
      return NGHTTP2_PROTOCOL_ERROR;
    case -524: // NGHTTP2_ERR_FLOW_CONTROL
      return NGHTTP2_FLOW_CONTROL_ERROR;
    case -510: // NGHTTP2_ERR_STREAM_CLOSED
      return NGHTTP2_STREAM_CLOSED;
    case -522: // NGHTTP2_ERR_FRAME_SIZE_ERROR
      return NGHTTP2_FRAME_SIZE_ERROR;
    case -533: // NGHTTP2_ERR_REFUSED_STREAM
      return NGHTTP2_REFUSED_STREAM;
    case -523: // NGHTTP2_ERR_HEADER_COMP
      return NGHTTP2_COMPRESSION_ERROR;
    case -537: // NGHTTP2_ERR_TOO_MANY_SETTINGS
    case -904: // NGHTTP2_ERR_FLOODED
    case -905: // NGHTTP2_ERR_TOO_MANY_CONTINUATIONS
      return NGHTTP2_ENHANCE_YOUR_CALM;
    default:
      return NGHTTP2_INTERNAL_ERROR;
  }
}

function closeSessionNow(session: http2.ServerHttp2Session, callback: (() => void) | undefined): void {
  if (!session.destroyed) sessionClose!.call(session, callback);
}

/**
 * A stream error must cost that stream only (RFC 9113 §5.4.2); see protocol-error.ts for how
 * Node 22+ turns one into a session-wide GOAWAY(INTERNAL_ERROR), and may then hand DATA of a
 * later frame in the same read to a stream it has torn down (Node 22.23: process abort,
 * `onread->IsFunction()`). That destroy is skipped, as on Node 20: for a stream error the
 * RST_STREAM is already queued and the session goes on; for a connection error nghttp2 has
 * already queued GOAWAY with the RFC's code and stopped reading, and the dead-session probe
 * closes the connection once that GOAWAY is flushed.
 */
function destroyUnlessStreamError(this: TrackedSession, error?: Error, code?: number): void {
  if (isReportedProtocolError(error)) {
    // Each report costs an Error and a call into JavaScript, and an unsolicited PING ACK (17
    // bytes) makes one: past a bound the client is flooding, not erring.
    const state = this[kSession];
    if (state === undefined || this.destroyed) return;
    const now = Date.now();
    if (now - state.protocolErrorWindowStart > 1000) {
      state.protocolErrorWindowStart = now;
      state.protocolErrors = 0;
    }
    // Closed once nghttp2 has returned (never from inside its read loop).
    if (++state.protocolErrors === MAX_PROTOCOL_ERRORS_PER_SECOND + 1) setImmediate(calmDown, this);
    return;
  }
  destroyWithRfcCode.call(this, error, code);
}

/**
 * Protocol errors Node may report per second on a client session (stream errors the client
 * caused, unsolicited PING ACKs) past which it is closed with GOAWAY(ENHANCE_YOUR_CALM).
 */
const MAX_PROTOCOL_ERRORS_PER_SECOND = 100;

function calmDown(session: TrackedSession): void {
  const state = session[kSession];
  if (state === undefined || session.destroyed) return;
  state.core.log.warn(`HTTP/2 client ${session.socket?.remoteAddress ?? ''} caused more than ${MAX_PROTOCOL_ERRORS_PER_SECOND} protocol errors in a second: closing the session`);
  session.goaway(NGHTTP2_ENHANCE_YOUR_CALM);
  destroySession(session);
}

type HandleOwner = { _handle?: StreamHandle | null; _parent?: HandleOwner | null };

function isStreamHandle(h: StreamHandle | null | undefined): h is StreamHandle {
  return h != null && typeof h.readStart === 'function' && typeof h.readStop === 'function';
}

function watchForDeath(session: TrackedSession, state: SessionState): void {
  // `session.socket` is Node's proxy of the socket; plain property reads reach the socket.
  const socket = session.socket as unknown as HandleOwner;
  const handle = socket._handle;
  if (!isStreamHandle(handle)) return;
  const parent = socket._parent?._handle;
  state.handle = handle;
  state.wire = isStreamHandle(parent) ? parent : handle;
  probed.add(session);
  if (probeTimer === null) {
    probeTimer = setInterval(probeSessions, DEAD_PROBE_MS);
    probeTimer.unref();
  }
}

function probeSessions(): void {
  for (const session of probed) {
    if (session.destroyed || session[kSession] === undefined) {
      probed.delete(session);
      continue;
    }
    // Only a session holding streams can be out of room (their memory, or their count), or hold
    // too much of their request bodies.
    if (session[kSession]!.streams > 0 && !session.destroyed) {
      if (closeIfHoldingTooMuch(session)) continue;
      if (!session.closed) lookForRefusals(session, session[kSession]!);
    }
    if (!stoppedReading(session[kSession]!)) continue;
    // Leave it as Node left it and look again once the loop has turned: a write callback
    // already due may be about to resume reading.
    session[kSession]!.handle!.readStop();
    suspects.push(session);
    if (confirmTimer === null) confirmTimer = setTimeout(confirmSuspects, DEAD_CONFIRM_MS);
  }
  if (probed.size === 0 && probeTimer !== null) {
    clearInterval(probeTimer);
    probeTimer = null;
  }
}

/**
 * A client whose streams make the proxy hold more of their bodies than a session may (see
 * held-bodies.ts: tiny DATA frames, the old windows filled while it holds back its
 * acknowledgement of a narrower one, answers in tiny pieces it does not read) loses the session:
 * GOAWAY(ENHANCE_YOUR_CALM), then destroyed.
 * True when it did.
 */
function closeIfHoldingTooMuch(session: TrackedSession): boolean {
  const held = requestMemoryHeld(session, exchangeOfStream);
  if (held === null || held <= HELD_BODY_MEMORY_MAX) return false;
  session[kSession]?.core.log.warn(
    `HTTP/2 client ${session.socket?.remoteAddress ?? ''} makes the proxy hold ${(held / 1048576).toFixed(1)} MiB of its streams' bodies: closing the session`,
  );
  try {
    session.goaway(NGHTTP2_ENHANCE_YOUR_CALM);
  } catch {
    // the session is already going
  }
  destroySession(session);
  return true;
}

function exchangeOfStream(stream: http2.Http2Stream): Exchange | undefined {
  return (stream as ProxyStream)[kEx];
}

/**
 * Node refuses a new client stream with RST_STREAM(ENHANCE_YOUR_CALM) when its session has no
 * room for it (the session's memory over `http2MaxSessionMemoryMb`, or as many streams as
 * SETTINGS_MAX_CONCURRENT_STREAMS still held), and tells JavaScript nothing. Such a session
 * refuses every new stream for as long as its streams hold that room (a client that stopped
 * reading the responses can make that forever), while a client keeps sending requests on it:
 * browsers open a new connection only after a GOAWAY. The streams nghttp2 processed
 * (`lastProcStreamID`) but the proxy never saw are those refused ones (and any nghttp2 reset as
 * malformed); past REFUSED_STREAMS_LIMIT in REFUSED_WINDOW_MS the session is closed with
 * GOAWAY(NO_ERROR) naming the last stream the proxy saw: running streams finish (within
 * GOAWAY_GRACE_MS) and the client retries the others on a new connection.
 */
const REFUSED_STREAMS_LIMIT = 4;
const REFUSED_WINDOW_MS = 10_000;

function lookForRefusals(session: TrackedSession, state: SessionState): void {
  let processed: number;
  try {
    processed = session.state.lastProcStreamID ?? 0;
  } catch {
    return;
  }
  // Even ids are the proxy's own (it pushes none). The newest stream may still be arriving (a
  // header block split over reads): it counts at the next look if the proxy has not seen it by then.
  const upTo = processed === state.lastProcessed ? processed : processed - 2;
  state.lastProcessed = processed;
  if (upTo <= state.accountedId) return;
  const missed = (upTo - state.accountedId + 1) >>> 1;
  state.accountedId = upTo;
  noteRefused(session, state, missed);
}

function noteRefused(session: TrackedSession, state: SessionState, count: number): void {
  if (count <= 0 || session.closed || session.destroyed) return;
  const now = Date.now();
  if (now - state.refusedWindowStart > REFUSED_WINDOW_MS) {
    state.refusedWindowStart = now;
    state.refused = 0;
  }
  state.refused += count;
  if (state.refused < REFUSED_STREAMS_LIMIT) return;
  // Closed once nghttp2 has returned (never from inside its read loop).
  setImmediate(closeRefusing, session);
}

function closeRefusing(session: TrackedSession): void {
  const state = session[kSession];
  // closeTimer: already going away (this close, an earlier one, or the client's GOAWAY).
  if (state === undefined || state.closeTimer !== null || session.closed || session.destroyed) return;
  state.core.stats.http2RefusingSessionsClosed++;
  state.core.log.warn(
    `HTTP/2 client ${session.socket?.remoteAddress ?? ''}: ${state.refused} new streams refused before the proxy saw them (${state.streams} streams open, session memory or stream limit reached): closing the session with GOAWAY`,
  );
  // The first GOAWAY names the last stream the proxy saw; close()'s own GOAWAY cannot raise it
  // (nghttp2 keeps the lowest last-stream-id sent).
  if (state.lastStreamId > 0) session.goaway(NGHTTP2_NO_ERROR, state.lastStreamId);
  session.close();
  boundGoingAway(session);
}

/** Sessions one probe found stopped, to be looked at again after DEAD_CONFIRM_MS. */
let suspects: TrackedSession[] = [];
let confirmTimer: NodeJS.Timeout | null = null;
const DEAD_CONFIRM_MS = 10;

function confirmSuspects(): void {
  const batch = suspects;
  suspects = [];
  confirmTimer = null;
  for (const session of batch) {
    if (session.destroyed || session[kSession] === undefined || !stoppedReading(session[kSession]!)) continue;
    // Stopped twice with nothing queued on the wire: nghttp2 wants no more input and its GOAWAY
    // has been flushed (RFC 9113 §5.4.1: the connection is closed after it). The probe started
    // reading again: stop it before anything is read into a session that takes no more input.
    session[kSession]!.handle!.readStop();
    probed.delete(session);
    session.destroy();
  }
}

/**
 * True when the session's handle had stopped reading while nothing waits on the wire (the
 * probe's readStart() then started it again). False while reading (EALREADY) or writing.
 */
function stoppedReading(state: SessionState): boolean {
  const handle = state.handle!;
  if (handle.writeQueueSize > 0 || state.wire!.writeQueueSize > 0) return false;
  return handle.readStart() === 0;
}

function writesStuck(state: SessionState): boolean {
  const wire = state.wire;
  if (wire !== null) return wire.writeQueueSize > 0;
  const socket = state.socket;
  return socket !== null && socket.writableLength > 0;
}

function sessionOnError(this: http2.ServerHttp2Session): void {
  // The session closes; its streams' 'close' events tear their exchanges down.
}

function sessionOnTimeout(this: TrackedSession): void {
  // No frames either way for clientIdleTimeoutMs. With streams open the session is idle only
  // when its writes are stuck (a client that stopped reading); otherwise it is waiting for
  // upstreams, whose own deadlines apply.
  const state = this[kSession];
  if (state !== undefined && state.streams > 0 && !writesStuck(state)) {
    // Node does not arm a timer that fired again: look again one period later.
    this.setTimeout(state.core.options.clientIdleTimeoutMs);
    return;
  }
  // Idle: close gracefully (GOAWAY, running streams finish).
  if (state !== undefined) state.core.stats.clientIdleTimeouts++;
  this.close();
  boundGoingAway(this);
}

/**
 * Every stream that reached the proxy, also one the client reset in the same read (its
 * `stream.session` is already gone when the server's 'stream' event runs). Client stream ids
 * rise by 2: ids skipped since the last one looked at are streams the session refused (or
 * nghttp2 reset) before the proxy saw them (see lookForRefusals).
 */
function sessionOnStream(this: TrackedSession, stream: http2.ServerHttp2Stream): void {
  const state = this[kSession];
  const id = stream.id;
  if (state === undefined || id === undefined) return;
  // Ids below a connection's first stream are never refusals: nothing held the session's room
  // yet. RFC 7540 clients (nghttp, older Firefox) open idle streams 3-11 with PRIORITY frames, as
  // anchors of their dependency tree, and send their first request on 13 (Node 22 and 24 tell
  // JavaScript nothing of PRIORITY frames; Node 20 calls into it for each one while a 'priority'
  // listener exists, at ~5x the cost of nghttp2's own work for the frame: none is listened to).
  if (state.lastStreamId !== 0 && id > state.accountedId + 2) noteRefused(this, state, (id - state.accountedId - 1) >>> 1);
  if (id > state.accountedId) state.accountedId = id;
  state.lastStreamId = id;
}

/** A client left a change of its stream window unacknowledged (see stream-window.ts): GOAWAY(SETTINGS_TIMEOUT). */
function settingsNotAcknowledged(session: TrackedSession): void {
  session[kSession]?.core.log.warn(`HTTP/2 client ${session.socket?.remoteAddress ?? ''} did not acknowledge SETTINGS: closing the session`);
  session.goaway(NGHTTP2_SETTINGS_TIMEOUT);
  destroySession(session);
}

/** How a client's session is watched while it has not acknowledged a change of its stream window. */
const clientAckWatch: AckWatch<TrackedSession> = { narrowingWaits: closeIfHoldingTooMuch, overdue: settingsNotAcknowledged };

function sessionOnGoaway(this: TrackedSession): void {
  boundGoingAway(this);
}

/** A session going away is destroyed after GOAWAY_GRACE_MS if still open. */
export function boundGoingAway(session: TrackedSession): void {
  const state = session[kSession];
  if (state === undefined || state.closeTimer !== null || session.destroyed) return;
  state.closeTimer = setTimeout(destroySession, GOAWAY_GRACE_MS, session);
  state.closeTimer.unref();
}

/**
 * Destroys a session and makes sure its socket goes too. Node's destroy() lets the socket go only
 * once the write in flight completes (then it ends the socket and waits for that as well): a
 * client that opened its flow-control windows and stopped reading never lets either complete,
 * and would keep the connection, its slot and its descriptor forever. Its socket is destroyed
 * after SOCKET_RELEASE_MS unless it closed by then.
 */
function destroySession(session: TrackedSession): void {
  const socket = session[kSession]?.socket ?? null;
  if (!session.destroyed) session.destroy();
  if (socket !== null && !socket.destroyed) setTimeout(releaseSocket, SOCKET_RELEASE_MS, socket).unref();
}

/** How long a destroyed session's socket may take to close by itself (its GOAWAY is flushed meanwhile). */
const SOCKET_RELEASE_MS = 1_000;

function releaseSocket(socket: net.Socket): void {
  if (!socket.destroyed) socket.destroy();
}

function pingSession(session: TrackedSession): void {
  if (session.closed || session.destroyed) return;
  try {
    session.ping(pingAnswered);
  } catch {
    // too many outstanding pings: the peer is not answering
    destroySession(session);
  }
}

function pingAnswered(this: unknown, err: Error | null): void {
  void err; // a failed ping means the session is already going away
}

function onStream(core: ProxyCore, stream: ProxyStream, headers: http2.IncomingHttpHeaders, flags: number, raw: string[]): void {
  const stats = core.stats;
  stats.totalRequests++;
  stats.http2Requests++;
  const session = stream.session as TrackedSession | undefined;
  const sessionState = session?.[kSession];
  const tls = sessionState?.tls === true;
  if (tls) stats.tlsRequests++;
  stream.on('error', streamOnError);
  if (sessionState !== undefined) {
    sessionState.streams++;
    stream[kCounted] = sessionState;
    sessionState.windows.fit(sessionState.streams, core.options.http2MaxConcurrentStreams);
  }
  stream.on('close', streamOnClose);
  if (core.draining) {
    stream.close(NGHTTP2_REFUSED_STREAM);
    return;
  }
  const method = headers[':method'] ?? 'GET';
  const authority = headers[':authority'];
  const hostHeader = headers['host'];
  const malformed = checkPseudoHeaders(method, headers[':scheme'], headers[':path'], authority, hostHeader);
  if (malformed !== null) {
    stats.proxyErrorResponses++;
    stats.countStatus(400);
    respondError(stream, 400, malformed);
    return;
  }
  if (authority !== undefined && hostHeader !== undefined && hostName(authority) !== hostName(hostHeader)) {
    // RFC 9113 §8.3.1: Host and :authority must agree; routing must not see two answers.
    stats.proxyErrorResponses++;
    stats.countStatus(400);
    respondError(stream, 400, 'Host and :authority disagree');
    return;
  }
  const host = authority ?? hostHeader;
  const facts = emptyFacts();
  scanRequestHeaders(raw, core.viaToken, facts);
  const clientAddress = session?.socket?.remoteAddress ?? '';
  if (method === 'CONNECT') {
    startExtendedConnect(core, stream, headers, raw, facts, clientAddress, tls);
    return;
  }
  const path = headers[':path'] ?? '/';
  const ended = (flags & NGHTTP2_FLAG_END_STREAM) !== 0;
  const bodyMode = ended ? BODY_NONE : facts.contentLength !== undefined ? BODY_LENGTH : BODY_CHUNKED;
  const ex = new Exchange(core, h2ClientSide, method, path, raw, facts, host, clientAddress, tls ? 'https' : 'http', '2', bodyMode);
  const state = new H2StreamState(stream, session, streamOnDrain);
  ex.clientState = state;
  ex.out = state;
  stream[kEx] = ex;
  stream.on('aborted', streamOnAborted);
  if (ended) {
    ex.requestEnd(null);
  } else {
    stream.on('data', streamOnData);
    stream.on('trailers', streamOnTrailers);
    stream.on('end', streamOnEnd);
  }
  // Dispatch after the frames read with this HEADERS are processed: a stream reset in the same
  // read (rapid reset) is then already closed and never costs an upstream connection.
  // One immediate per event-loop turn serves every stream opened in it.
  toDispatch.push(ex);
  if (toDispatch.length === 1) setImmediate(dispatchStreams);
}

/**
 * RFC 9113 §8.3.1 checks nghttp2 leaves to the application (it skips its own `:path` checks when
 * `:scheme` is neither http nor https). Returns the 400 body for a malformed request, or null.
 * The messages never repeat the client's values.
 */
function checkPseudoHeaders(
  method: string,
  scheme: string | undefined,
  path: string | undefined,
  authority: string | undefined,
  host: string | undefined,
): string | null {
  // Plain CONNECT has neither (nghttp2 enforces that); everything else, extended CONNECT
  // included (RFC 8441 §4), has both.
  if (scheme !== undefined && scheme !== 'http' && scheme !== 'https') return 'invalid :scheme';
  if (path !== undefined) {
    // origin-form; asterisk-form only for OPTIONS (RFC 9113 §8.3.1, RFC 9110 §7.1). An
    // absolute URI or a bare word here would reach the upstream's request line as given.
    if (path.charCodeAt(0) !== 0x2f /* / */ && !(path === '*' && method === 'OPTIONS')) return 'invalid :path';
  }
  // RFC 9113 §8.3.1: ":authority MUST NOT include the deprecated userinfo subcomponent";
  // RFC 9110 §4.2.4 forbids it in http(s) URIs, so Host gets the same rule.
  if (authority !== undefined && authority.indexOf('@') !== -1) return 'userinfo in :authority';
  if (host !== undefined && host.indexOf('@') !== -1) return 'userinfo in host';
  if (!isExactMethod(method)) return 'invalid :method';
  return null;
}

/**
 * Methods are case-sensitive (RFC 9110 §9.1): `head` is not HEAD. A case variant of a standard
 * method is refused: the proxy frames responses by the exact name (no body for HEAD) while an
 * upstream that compares without case would frame them otherwise, and a pooled connection would
 * then read one response's body as the next response. Other extension methods pass.
 */
const STANDARD_METHODS: ReadonlySet<string> = new Set(['GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'CONNECT', 'TRACE']);

function isExactMethod(method: string): boolean {
  return STANDARD_METHODS.has(method) || !STANDARD_METHODS.has(method.toUpperCase());
}

let toDispatch: Exchange[] = [];

function dispatchStreams(): void {
  const batch = toDispatch;
  toDispatch = [];
  for (const ex of batch) if ((ex.flags & EX_FINISHED) === 0) ex.core.dispatch(ex);
}
