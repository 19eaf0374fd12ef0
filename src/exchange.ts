import type http2 from 'node:http2';
import type { ProxyCore, Routable } from './proxy-core.js';
import type { RequestHeadFacts, ResponseHeadFacts } from './headers.js';
import { trailerLines } from './headers.js';
import { upstreamFailureAnswer } from './errors.js';
import { http } from './builtins.js';
import type { Target } from './route/target.js';
import { PHASE_UPGRADED, type ReadBatch, type UpstreamConn, type UpstreamUser } from './upstream/h1-pool.js';
import { HELD_PIECE_COST, readableHeld, writableHeld } from './held-memory.js';
import type { H2UpstreamRequest, H2UpstreamUser } from './upstream/h2-pool.js';
import type { BodyLease } from './upstream/read-buffers.js';
import type { Span } from './tracing.js';
import { diagnosticsRequest, publishEnd, requestEnd, requestError, requestStart, responseHeaders, upstreamConnect, type DiagnosticsRequest } from './diagnostics.js';
import { OUTCOME_FAILED, OUTCOME_NEUTRAL, OUTCOME_OK, holdMemberUntilClose, type GroupMember } from './upstream/group.js';
import { writeInTurn, writeLatin1 } from './direct-write.js';

export const BODY_NONE = 0;
export const BODY_LENGTH = 1;
export const BODY_CHUNKED = 2;

const CRLF = Buffer.from('\r\n', 'latin1');
const LAST_CHUNK = '0\r\n\r\n';
/**
 * Interim (1xx) answers relayed per request. They are not flow-controlled toward the client (an
 * HTTP/2 client's go through nghttp2's queue, past any window) and the upstream's response
 * deadline waits for the final answer: an upstream writing 103s without end would fill the
 * proxy's memory as fast as it writes. A 100 Continue and a few 103 Early Hints fit well under
 * this; past it the upstream is a bad one (502 BAD_RESPONSE, its socket closed).
 */
const INTERIM_MAX = 16;

/** Methods that may be replayed on a fresh socket when a reused one dies before any byte back (RFC 9110 §9.2.2). */
const RETRYABLE_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** Failures where the connection to the upstream never opened: nothing reached it, another member may serve. */
const NOT_CONNECTED: ReadonlySet<string> = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'ENOENT', 'CONNECT_TIMEOUT']);

/** Failures that say nothing about the upstream's health (the proxy's own limits). */
const NEUTRAL_FAILURES: ReadonlySet<string> = new Set(['SOCKET_LIMIT', 'FD_LIMIT', 'EMFILE', 'ENFILE', 'PROXY_STOPPING', 'CLIENT_ABORT']);

/**
 * The client end of an exchange: an HTTP/1 connection or an HTTP/2 stream. It owns response
 * framing toward its client and request body flow control.
 */
export interface ClientSide {
  respond(ex: Exchange, status: number, statusMessage: string, raw: string[]): void;
  interim(ex: Exchange, status: number, statusMessage: string, raw: string[]): void;
  /**
   * A piece of the response body. A `lease` must be released exactly once, when nothing queued
   * for the client reads `chunk` any more (see BodyLease); its holder is set to what queued it.
   */
  writeBody(ex: Exchange, chunk: Buffer, lease: BodyLease | null, last?: boolean): boolean;
  end(ex: Exchange, trailers: string[] | null): void;
  /** A response the proxy makes itself (nothing was sent to the client yet). */
  fail(ex: Exchange, status: number, code: string, message: string): void;
  /** The upstream failed after the response started: reset, never a complete-looking body. */
  reset(ex: Exchange): void;
  pauseRequest(ex: Exchange): void;
  resumeRequest(ex: Exchange): void;
  /** The upstream accepted an upgrade (101); `rest` is what it sent after its head. */
  upgraded(ex: Exchange, conn: UpstreamConn, status: number, statusMessage: string, raw: string[], rest: Buffer): void;
  /** The exchange is over (response ended or failed); the client may go on. */
  done(ex: Exchange): void;
  /** Batches the writes of one upstream read (HTTP/1.1 clients), or null. */
  readBatch(): ReadBatch | null;
}

export const EX_RESPONSE_STARTED = 1;
export const EX_REQUEST_ENDED = 2;
export const EX_FINISHED = 4;
export const EX_RETRIED = 8;
export const EX_HEAD_SENT = 16;
export const EX_UPGRADE = 32;
export const EX_WAITING_SOCKET = 64;
/** The client asked to close after this exchange (Connection: close, or HTTP/1.0 without keep-alive). */
export const EX_CLIENT_CLOSE = 128;
/** Some request body went to the upstream (a replay would lose it). */
export const EX_BODY_SENT = 256;
/** The upstream's response head ended its stream (h2c: no body, a trailers-only answer). */
export const EX_RESPONSE_EMPTY = 512;

/**
 * One request/response through the proxy to an HTTP/1.1 upstream. Fixed shape; the client side
 * and the upstream socket reach it through `client` and `conn.user`.
 */
export class Exchange implements UpstreamUser, H2UpstreamUser, Routable {
  readonly core: ProxyCore;
  readonly client: ClientSide;
  method: string;
  /** Origin-form target sent upstream. */
  path: string;
  readonly raw: string[];
  readonly facts: RequestHeadFacts;
  /** Host (or :authority / absolute-form authority) used for routing and forwarding. */
  host: string | undefined;
  readonly clientAddress: string;
  readonly proto: 'http' | 'https';
  readonly clientVersion: string;
  bodyMode: number;
  flags = 0;
  target: Target | null = null;
  conn: UpstreamConn | null = null;
  connecting: UpstreamConn | null = null;
  /** The upstream stream when the target speaks h2c. */
  h2: H2UpstreamRequest | null = null;
  /** Request body that arrived before the upstream socket was ready. */
  private queued: Buffer[] | null = null;
  /** Interim (1xx) answers relayed so far (INTERIM_MAX). */
  private interims = 0;
  private requestTrailers: string[] | null = null;
  head = '';
  status = 0;
  /**
   * Batches the client writes of one upstream read, else null: an HTTP/1.1 client's session
   * (from `readBatch()`), or an HTTP/2 stream's state (set by the HTTP/2 side with its state).
   */
  out: ReadBatch | null;
  /** Free slot for the client side's own per-exchange state. */
  clientState: unknown = undefined;
  readonly responseFacts: ResponseHeadFacts = { contentLength: false, keepAliveTimeoutSec: 0 };
  /** performance.now() when the head arrived; read only while an observer is set (else 0). */
  readonly t0: number;
  /** performance.now() when an upstream socket was asked for (observer only). */
  private tUpstream = 0;
  /** Request and response body bytes relayed. */
  bytesIn = 0;
  bytesOut = 0;
  /** Served on a pooled upstream socket that had answered before. */
  reused = false;
  /** Why it ended early (an error code, CLIENT_ABORT), else ''. */
  errorCode = '';
  /** `X-Request-Id`: the client's when valid, else made by the proxy; sent upstream. */
  readonly requestId: string;
  /** What the diagnostics channels say about this request (built on first publish). */
  private diag: DiagnosticsRequest | null = null;
  /** The OpenTelemetry server span (null: no tracer provider, or `@opentelemetry/api` absent). */
  span: Span | null = null;
  /** The route-group upstream serving this exchange (see ProxyCore.startGroup), else null. */
  member: GroupMember | null = null;
  /** Group members that refused this exchange's connection (tried before the current one). */
  private tried: GroupMember[] | null = null;
  /** Extra fields of a proxy-made answer (name/value pairs: `Retry-After`, `RateLimit`), else null. */
  answerHeaders: string[] | null = null;
  /** Routed by the `routes` table (the access log's `route: "routes"`). */
  grouped = false;

  constructor(
    core: ProxyCore,
    client: ClientSide,
    method: string,
    path: string,
    raw: string[],
    facts: RequestHeadFacts,
    host: string | undefined,
    clientAddress: string,
    proto: 'http' | 'https',
    clientVersion: string,
    bodyMode: number,
  ) {
    this.core = core;
    this.client = client;
    this.method = method;
    this.path = path;
    this.raw = raw;
    this.facts = facts;
    this.host = host;
    this.clientAddress = clientAddress;
    this.proto = proto;
    this.clientVersion = clientVersion;
    this.bodyMode = bodyMode;
    this.out = client.readBatch();
    this.requestId = core.requestIdFor(facts);
    this.t0 = core.observer === null ? 0 : performance.now();
    const tracing = core.tracing;
    if (tracing !== null) this.span = tracing.start(this);
    if (requestStart.hasSubscribers) requestStart.publish({ request: this.diagRequest() });
  }

  diagRequest(): DiagnosticsRequest {
    return (this.diag ??= diagnosticsRequest(this.requestId, this.method, this.host, this.path, this.clientVersion, this.proto === 'https', this.clientAddress));
  }

  /** The single end of every exchange that does not become a tunnel: feeds the observer and the channels. */
  private ended(): void {
    const member = this.member;
    if (member !== null) {
      this.member = null;
      member.group.finish(member, this.outcome());
    }
    const observer = this.core.observer;
    if (observer !== null) observer.exchangeEnd(this);
    if (requestEnd.hasSubscribers || requestError.hasSubscribers) publishEnd(this.diagRequest(), this.status, this.errorCode, this.bytesIn, this.bytesOut);
    if (this.span !== null) this.endSpan();
  }

  /** Ends the OpenTelemetry span (the exchange ended, or became a WebSocket or tunnel). */
  endSpan(): void {
    const span = this.span;
    if (span === null) return;
    this.span = null;
    this.core.tracing!.end(span, this.status, this.errorCode);
  }

  /** A pipelined request dropped before it started (malformed, cut short, or its client left). */
  discard(): void {
    this.flags |= EX_FINISHED;
    if (this.span !== null) this.endSpan();
    if (requestEnd.hasSubscribers || requestError.hasSubscribers) publishEnd(this.diagRequest(), 0, 'CLIENT_ABORT', this.bytesIn, this.bytesOut);
  }

  /**
   * What this exchange says about its group member's health: a failure is an upstream failure
   * answered by the proxy (502/504) before any response; a response is a success.
   */
  private outcome(): number {
    const code = this.errorCode;
    if (code === '') return this.status > 0 ? OUTCOME_OK : OUTCOME_NEUTRAL;
    if (NEUTRAL_FAILURES.has(code) || code.startsWith('CMUX_')) return OUTCOME_NEUTRAL;
    return (this.flags & EX_RESPONSE_STARTED) === 0 ? OUTCOME_FAILED : OUTCOME_NEUTRAL;
  }

  get finished(): boolean {
    return (this.flags & EX_FINISHED) !== 0;
  }

  reject(status: number, code: string, message: string): void {
    if (this.finished) return;
    this.flags |= EX_FINISHED;
    this.status = status;
    this.errorCode = code;
    this.client.fail(this, status, code, message);
    this.client.done(this);
    this.ended();
  }

  /** Routed: ask the pool for a socket (or an h2c stream when the target speaks HTTP/2). */
  start(target: Target): void {
    if (this.finished) return;
    this.target = target;
    if ((this.flags & EX_UPGRADE) === 0) {
      const protocol = this.core.upstreamProtocolFor(target);
      if (protocol === 'h2c') {
        this.flags |= EX_WAITING_SOCKET;
        this.core.h2pool.request(target, this);
        return;
      }
      if (protocol === undefined) {
        // `auto` and not known yet: ask the upstream once, then go on.
        this.core.probeProtocol(target, this.host).then(() => this.start(target), () => this.start(target));
        return;
      }
    }
    this.head = this.core.buildHead(this, target);
    this.flags |= EX_WAITING_SOCKET;
    if (this.core.observer !== null) this.tUpstream = performance.now();
    this.core.pool.acquire(target, this, (this.flags & EX_UPGRADE) !== 0);
  }

  // ---- h2c upstreams -------------------------------------------------------------------

  get h2EndStream(): boolean {
    return this.bodyMode === BODY_NONE;
  }

  h2Headers(): http2.OutgoingHttpHeaders {
    return this.core.buildH2Headers(this, this.target!);
  }

  h2Started(req: H2UpstreamRequest): void {
    this.flags &= ~EX_WAITING_SOCKET;
    if (this.finished) {
      req.cancel();
      return;
    }
    this.h2 = req;
    this.flags |= EX_HEAD_SENT;
    if (upstreamConnect.hasSubscribers) upstreamConnect.publish({ request: this.diagRequest(), target: this.target!.key, protocol: 'h2c', reused: false });
    const queued = this.queued;
    this.queued = null;
    if (queued !== null) {
      this.flags |= EX_BODY_SENT;
      for (const chunk of queued) req.write(chunk, null);
    }
    if ((this.flags & EX_REQUEST_ENDED) !== 0 && this.bodyMode !== BODY_NONE) req.end(this.requestTrailers);
    if (queued !== null) this.client.resumeRequest(this);
  }

  h2Response(status: number, raw: string[], endStream: boolean): void {
    if (this.finished) return;
    if (status < 200 || status > 599) {
      // nghttp2 only checks that :status has three digits: 000-099 arrive here as final
      // responses, 600-999 too. None is a status code (RFC 9110 §15).
      const h2 = this.h2;
      this.h2 = null;
      h2?.cancel();
      this.failUpstream('BAD_RESPONSE');
      return;
    }
    this.status = status;
    this.flags |= endStream ? EX_RESPONSE_STARTED | EX_RESPONSE_EMPTY : EX_RESPONSE_STARTED;
    const headers = withoutPseudo(raw);
    if (responseHeaders.hasSubscribers) responseHeaders.publish({ request: this.diagRequest(), status, headers });
    this.client.respond(this, status, http().STATUS_CODES[status] ?? 'Unknown', headers);
  }

  h2Body(chunk: Buffer): void {
    if (this.finished) return;
    this.bytesOut += chunk.length;
    if (!this.client.writeBody(this, chunk, null)) this.h2?.pause();
  }

  h2End(trailers: string[] | null): void {
    if (this.finished) return;
    this.flags |= EX_FINISHED;
    this.h2 = null;
    this.client.end(this, trailers === null ? null : withoutPseudo(trailers));
    this.client.done(this);
    this.ended();
  }

  h2Drain(): void {
    this.client.resumeRequest(this);
  }

  h2Failure(code: string, replayable: boolean): void {
    if (this.finished) return;
    this.h2 = null;
    this.flags &= ~EX_WAITING_SOCKET;
    const core = this.core;
    if (
      this.member !== null &&
      (this.flags & (EX_HEAD_SENT | EX_BODY_SENT | EX_RESPONSE_STARTED)) === 0 &&
      NOT_CONNECTED.has(code) &&
      RETRYABLE_METHODS.has(this.method) &&
      this.moveToNext(code)
    ) {
      // The h2c session to this group member never opened: nothing was sent.
      return;
    }
    if (replayable && (this.flags & (EX_RETRIED | EX_BODY_SENT | EX_RESPONSE_STARTED)) === 0) {
      // RFC 9113 §8.7: the upstream did not process this stream (GOAWAY / REFUSED_STREAM): replay once.
      this.flags = (this.flags | EX_RETRIED | EX_WAITING_SOCKET) & ~EX_HEAD_SENT;
      core.stats.upstreamRetries++;
      core.h2pool.request(this.target!, this);
      return;
    }
    this.failUpstream(code);
  }

  /** The upstream failed for good: 502/504 before the response started, a reset after. */
  failUpstream(code: string): void {
    this.flags |= EX_FINISHED;
    this.errorCode = code;
    const core = this.core;
    core.countUpstreamFailure(code);
    if ((this.flags & EX_RESPONSE_STARTED) === 0) {
      const { status, message } = upstreamFailureAnswer(code);
      this.status = status;
      this.client.fail(this, status, code, message);
    } else {
      core.stats.responsesReset++;
      this.client.reset(this);
    }
    this.client.done(this);
    this.ended();
  }

  onUpstreamReady(conn: UpstreamConn): void {
    this.flags &= ~EX_WAITING_SOCKET;
    if (this.finished) {
      this.core.pool.release(conn);
      return;
    }
    this.conn = conn;
    this.reused = conn.responses > 0;
    const observer = this.core.observer;
    if (observer !== null && conn.responses === 0 && this.tUpstream !== 0) observer.upstreamConnected(this.tUpstream);
    if (upstreamConnect.hasSubscribers) upstreamConnect.publish({ request: this.diagRequest(), target: this.target!.key, protocol: 'http1', reused: this.reused });
    this.core.pool.awaitHead(conn, this.core.options.upstreamResponseTimeoutMs);
    const socket = conn.socket;
    const queued = this.queued;
    this.queued = null;
    this.flags |= EX_HEAD_SENT;
    if (queued === null && (this.bodyMode === BODY_NONE || (this.flags & EX_REQUEST_ENDED) === 0)) {
      // Only the head goes now (the common GET): one plain write, with the turn's others. An
      // upgrade's goes at once: what the client sends after it, and its FIN, follow through the
      // socket's stream.
      if ((this.flags & EX_UPGRADE) === 0) writeInTurn(conn, this.head);
      else writeLatin1(socket, this.head);
      return;
    }
    socket.cork();
    socket.write(this.head, 'latin1');
    if (queued !== null) for (const chunk of queued) this.writeFramed(chunk);
    if ((this.flags & EX_REQUEST_ENDED) !== 0) this.writeRequestEnd();
    socket.uncork();
    if (queued !== null) this.client.resumeRequest(this);
  }

  private writeFramed(chunk: Buffer, done?: () => void): boolean {
    const socket = this.conn!.socket;
    if (this.bodyMode !== BODY_CHUNKED) return socket.write(chunk, done);
    socket.cork();
    socket.write(`${chunk.length.toString(16)}\r\n`, 'latin1');
    socket.write(chunk, done);
    const ok = socket.write(CRLF);
    socket.uncork();
    return ok;
  }

  /**
   * The request's end toward an HTTP/1.1 upstream. Trailers travel only in a chunked body: a
   * request sent with its Content-Length (an HTTP/2 client's) has no place for them, and they are
   * dropped (RFC 9110 §6.5.1 lets a recipient discard trailers).
   */
  private writeRequestEnd(): void {
    if (this.bodyMode !== BODY_CHUNKED) return;
    const trailers = this.requestTrailers;
    this.conn!.socket.write(trailers === null ? LAST_CHUNK : `0\r\n${trailerLines(trailers, true)}\r\n`, 'latin1');
  }

  /**
   * A piece of the request body from the client. Returns false when the client should pause.
   * With a `lease`, `chunk` is a slice of a read buffer the client socket reads into again once
   * `lease.release()` is called: released by the upstream write's callback (see read-buffers.ts).
   */
  requestBody(chunk: Buffer, lease: BodyLease | null = null): boolean {
    if (this.finished || chunk.length === 0) {
      lease?.release();
      return true;
    }
    this.bytesIn += chunk.length;
    if ((this.flags & EX_HEAD_SENT) === 0) {
      // Queued until the upstream is ready (maybe a retry on another): a copy, not the lent buffer.
      if (lease !== null) {
        chunk = Buffer.from(chunk);
        lease.release();
      }
      (this.queued ??= []).push(chunk);
      this.client.pauseRequest(this);
      return false;
    }
    this.flags |= EX_BODY_SENT;
    const h2 = this.h2;
    if (h2 !== null) {
      if (h2.write(chunk, lease)) return true;
      this.client.pauseRequest(this);
      return false;
    }
    if (lease !== null) {
      // The chunk's write's callback releases it (in a chunked body, between its size line and
      // CRLF). A write the kernel took whole leaves nothing queued (writableLength 0): the
      // upstream is drained and the client is read on; the buffer is released on the next tick.
      const socket = this.conn!.socket;
      lease.holder = socket;
      if (this.writeFramed(chunk, lease.release) || socket.writableLength === 0) return true;
    } else if (this.writeFramed(chunk)) return true;
    this.client.pauseRequest(this);
    return false;
  }

  /**
   * Pieces of the request body received in one turn (an HTTP/2 client's DATA frames), written
   * together: corked into one writev to an HTTP/1.1 upstream, and one chunk in a chunked body.
   * Anywhere else (an HTTP/2 upstream, none yet, a finished exchange) they go one by one.
   */
  requestBodyPieces(pieces: Buffer[]): boolean {
    const conn = this.conn;
    if (pieces.length === 1 || conn === null || this.h2 !== null || (this.flags & EX_HEAD_SENT) === 0 || this.finished) {
      let ok = true;
      for (const piece of pieces) if (!this.requestBody(piece)) ok = false;
      return ok;
    }
    let length = 0;
    for (const piece of pieces) length += piece.length;
    if (length === 0) return true;
    this.bytesIn += length;
    this.flags |= EX_BODY_SENT;
    const socket = conn.socket;
    const chunked = this.bodyMode === BODY_CHUNKED;
    socket.cork();
    if (chunked) socket.write(`${length.toString(16)}\r\n`, 'latin1');
    let ok = true;
    for (const piece of pieces) if (piece.length > 0) ok = socket.write(piece);
    if (chunked) ok = socket.write(CRLF);
    socket.uncork();
    // Corked, the pieces count against the high-water mark together; written whole, nothing waits.
    if (ok || socket.writableLength === 0) return true;
    this.client.pauseRequest(this);
    return false;
  }

  /**
   * Memory this exchange holds of its bodies on the way (bytes, and HELD_PIECE_COST a piece): its
   * request body queued until the upstream is ready, or written and not yet taken by it (the
   * socket's or the HTTP/2 stream's queue); and an HTTP/2 upstream's answer read into its stream
   * while it waits for the client: Node hands a paused stream every DATA frame the window lets
   * in, one Buffer each (1-byte frames within the 1 MiB window: 16 streams held 1.4 GiB).
   */
  heldRequestMemory(): number {
    let held = 0;
    const queued = this.queued;
    if (queued !== null) for (const piece of queued) held += piece.length + HELD_PIECE_COST;
    if (this.h2 !== null) held += writableHeld(this.h2.stream) + readableHeld(this.h2.stream);
    else if (this.conn !== null) held += writableHeld(this.conn.socket);
    return held;
  }

  requestEnd(trailers: string[] | null): void {
    this.flags |= EX_REQUEST_ENDED;
    this.requestTrailers = trailers;
    if (this.finished || (this.flags & EX_HEAD_SENT) === 0) return;
    if (this.h2 !== null) {
      if (this.bodyMode !== BODY_NONE) this.h2.end(trailers);
      return;
    }
    this.writeRequestEnd();
  }

  onUpstreamDrain(): void {
    this.client.resumeRequest(this);
  }

  onResponseHead(conn: UpstreamConn, status: number, statusMessage: string, raw: string[], upgrade: boolean, keepAlive: boolean): number {
    if (this.finished) return 0;
    // llhttp takes any three digits: 000-099 and 600-999 are no status code (RFC 9110 §15).
    // Relayed, a "0" would even pass as an interim answer and its body as the next response.
    if (status < 100 || status > 599) return this.badResponse(conn);
    if (status < 200 && status !== 101) {
      if (++this.interims > INTERIM_MAX) return this.badResponse(conn);
      this.client.interim(this, status, statusMessage, raw);
      return 0;
    }
    this.core.pool.headArrived(conn);
    if (status === 101) {
      // A switch nobody asked for (RFC 9110 §15.2.2: only in answer to an Upgrade request);
      // llhttp stops at it as at any 101, so nothing else of it would ever reach the client.
      if ((this.flags & EX_UPGRADE) === 0 || !upgrade) return this.badResponse(conn);
      this.status = status;
      this.flags |= EX_RESPONSE_STARTED;
      if (responseHeaders.hasSubscribers) responseHeaders.publish({ request: this.diagRequest(), status, headers: raw });
      conn.phase = PHASE_UPGRADED;
      this.upgradeHead = { statusMessage, raw };
      return 0;
    }
    void keepAlive;
    this.status = status;
    this.flags |= EX_RESPONSE_STARTED;
    if (responseHeaders.hasSubscribers) responseHeaders.publish({ request: this.diagRequest(), status, headers: raw });
    this.client.respond(this, status, statusMessage, raw);
    if (this.responseFacts.keepAliveTimeoutSec > 0) conn.keepAliveMs = this.responseFacts.keepAliveTimeoutSec * 1000;
    return this.method === 'HEAD' ? 1 : 0;
  }

  private upgradeHead: { statusMessage: string; raw: string[] } | null = null;

  /** A response head the proxy cannot relay: the socket goes, the client gets a 502 now. */
  private badResponse(conn: UpstreamConn): number {
    conn.errorCode = 'BAD_RESPONSE';
    this.conn = null;
    this.core.pool.destroy(conn);
    this.failUpstream('BAD_RESPONSE');
    return 0;
  }

  onUpgradeData(conn: UpstreamConn, rest: Buffer): void {
    const head = this.upgradeHead;
    if (head === null || this.finished) return;
    this.upgradeHead = null;
    this.flags |= EX_FINISHED;
    this.conn = null;
    if (this.span !== null) this.endSpan();
    this.core.pool.detach(conn);
    const member = this.member;
    if (member !== null) {
      // A WebSocket counts in its upstream's load until it closes.
      this.member = null;
      holdMemberUntilClose(conn.socket, member);
    }
    this.client.upgraded(this, conn, this.status, head.statusMessage, head.raw, rest);
  }

  onResponseBody(chunk: Buffer, lease: BodyLease | null): void {
    if (this.finished) {
      lease?.release();
      return;
    }
    this.bytesOut += chunk.length;
    // A Content-Length body's last bytes (its end follows in this same read): `last` lets an
    // HTTP/2 client end its stream with them.
    const conn = this.conn;
    if (!this.client.writeBody(this, chunk, lease, conn !== null && conn.bodyLeft === 0)) conn?.pauseReading();
  }

  /** The client drained what we wrote: let the upstream flow again. */
  clientDrained(): void {
    if (this.h2 !== null) {
      this.h2.resume();
      return;
    }
    const conn = this.conn;
    if (conn !== null) conn.resumeReading();
  }

  onResponseEnd(conn: UpstreamConn, trailers: string[] | null): void {
    if (this.finished) return;
    this.flags |= EX_FINISHED;
    this.conn = null;
    this.client.end(this, trailers);
    // Reuse only after a clean exchange: response complete, request fully sent, upstream willing.
    // A refused upgrade's socket is never reused: the upstream saw an Upgrade request on it.
    if (conn.keepAlive && (this.flags & (EX_REQUEST_ENDED | EX_UPGRADE)) === EX_REQUEST_ENDED && conn.errorCode === undefined) {
      conn.resumeReading();
      this.core.pool.release(conn);
    } else {
      this.core.pool.destroy(conn);
    }
    this.client.done(this);
    this.ended();
  }

  onUpstreamFailure(conn: UpstreamConn | null, code: string): void {
    if (this.finished) return;
    this.conn = null;
    this.flags &= ~EX_WAITING_SOCKET;
    const core = this.core;
    if (this.member !== null && this.nextMember(conn, code)) return;
    if (
      (this.flags & EX_RESPONSE_STARTED) === 0 &&
      conn !== null &&
      conn.responses > 0 &&
      !conn.responseBytes &&
      (this.flags & EX_RETRIED) === 0 &&
      this.bodyMode === BODY_NONE &&
      RETRYABLE_METHODS.has(this.method) &&
      code !== 'RESPONSE_TIMEOUT'
    ) {
      // A reused keep-alive socket closed before answering: the upstream's idle close raced our
      // reuse and nothing was processed. Replay once on a fresh socket.
      this.flags = (this.flags | EX_RETRIED) & ~EX_HEAD_SENT;
      core.stats.upstreamRetries++;
      this.flags |= EX_WAITING_SOCKET;
      core.pool.acquireFresh(this.target!, this);
      return;
    }
    this.failUpstream(code);
  }

  /**
   * A group member refused the connection (nothing of the request reached it), or reset a fresh
   * one before answering: an idempotent request moves to the next available member, each member
   * tried once. False when it cannot.
   */
  private nextMember(conn: UpstreamConn | null, code: string): boolean {
    if (
      conn === null ||
      conn.responses > 0 ||
      conn.responseBytes ||
      // A fresh connection reset before any answer (an upstream closing its listener resets
      // what waits in its accept queue): a bodyless idempotent request may go again
      // (RFC 9110 §9.2.2), as nginx's `proxy_next_upstream error` does.
      !(NOT_CONNECTED.has(code) || (code === 'ECONNRESET' && this.bodyMode === BODY_NONE)) ||
      (this.flags & (EX_RESPONSE_STARTED | EX_BODY_SENT)) !== 0 ||
      !RETRYABLE_METHODS.has(this.method)
    ) {
      return false;
    }
    return this.moveToNext(code);
  }

  /** Gives up on the current member (a failure) and starts on the next untried available one. */
  private moveToNext(code: string): boolean {
    const member = this.member!;
    const group = member.group;
    const tried = (this.tried ??= []);
    tried.push(member);
    group.finish(member, OUTCOME_FAILED);
    this.member = null;
    const next = group.pick(this.clientAddress, this.raw, tried);
    if (next === null) return false;
    this.member = next;
    const stats = this.core.stats;
    stats.countUpstreamError(code);
    stats.upstreamRetries++;
    this.flags &= ~(EX_HEAD_SENT | EX_WAITING_SOCKET);
    this.start(next.target);
    return true;
  }

  /** The client went away (or the proxy is tearing the exchange down). Idempotent. */
  abort(): void {
    if (this.finished) return;
    this.flags |= EX_FINISHED;
    this.errorCode = 'CLIENT_ABORT';
    this.core.stats.clientAborts++;
    const conn = this.conn;
    this.conn = null;
    this.queued = null;
    const h2 = this.h2;
    this.h2 = null;
    if (h2 !== null) h2.cancel();
    else if (conn !== null) this.core.pool.destroy(conn);
    else if ((this.flags & EX_WAITING_SOCKET) !== 0 && this.target !== null) {
      this.core.pool.cancel(this.target, this);
      this.core.h2pool.cancel(this.target, this);
    }
    this.ended();
  }
}

function withoutPseudo(raw: string[]): string[] {
  if (raw.length === 0 || (raw[0]!.charCodeAt(0) !== 58 && !raw.some(isPseudoName))) return raw;
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.charCodeAt(0) !== 58) out.push(raw[i]!, raw[i + 1]!);
  return out;
}

function isPseudoName(value: string, index: number): boolean {
  return index % 2 === 0 && value.charCodeAt(0) === 58;
}
