import { acceptedContentLength } from '../headers.js';
import type net from 'node:net';
import { DeadlineSweep, type Expirable } from '../deadlines.js';
import { FdBudget } from '../fd-budget.js';
import type { TurnWriter } from '../direct-write.js';
import { ALPN_HTTP1, poolKey, readyEvent, upstreamErrorCode, type UpstreamConnector } from './connect.js';
import type { Target } from '../route/target.js';
import type { StatsCounters, PoolStats } from '../stats.js';
import {
  Parser,
  RESPONSE,
  parserResource,
  kLenientNone,
  kOnBody,
  kOnHeaders,
  kOnHeadersComplete,
  kOnMessageComplete,
  closeParserLater,
  isParseError,
  consumeSocket,
  releaseHandle,
  resumeSocket,
  startReading,
  stopReading,
  type HTTPParser,
  type ParseError,
  type StreamHandle,
} from '../h1/parser.js';
import { LEND_MIN, PARKING, ReadRing, copyRead, useReadBuffers, type BodyLease, type ReadBuffer } from './read-buffers.js';

/** What an upstream connection reports to the exchange using it. */
export interface UpstreamUser {
  /** The socket is connected (or reused) and now belongs to this user. */
  onUpstreamReady(conn: UpstreamConn): void;
  /** Connecting failed, or the socket failed while this user held it. */
  onUpstreamFailure(conn: UpstreamConn | null, code: string): void;
  /** Returns 1 to tell llhttp the response has no body (HEAD). */
  onResponseHead(conn: UpstreamConn, status: number, statusMessage: string, raw: string[], upgrade: boolean, keepAlive: boolean): number;
  /**
   * A piece of the response body. With a `lease`, `chunk` is a slice of a read buffer the
   * socket reads into again once `lease.release()` is called (see read-buffers.ts).
   */
  onResponseBody(chunk: Buffer, lease: BodyLease | null): void;
  onResponseEnd(conn: UpstreamConn, trailers: string[] | null): void;
  onUpstreamDrain(): void;
  /** Bytes after an upgrade (101) response head, already read from the upstream. */
  onUpgradeData(conn: UpstreamConn, rest: Buffer): void;
  /** Where the response goes, told when one upstream read starts and ends (to batch writes). */
  readonly out: ReadBatch | null;
  /** A socket being connected for this user (set and cleared by the pool). */
  connecting: UpstreamConn | null;
  /** The client's Host: the server name (SNI) of a new TLS connection. */
  readonly host: string | undefined;
}

/**
 * A client side that batches what one upstream read produces (head and body) into one write:
 * a corked socket, or an HTTP/1.1 session that holds the response head for the body.
 */
export interface ReadBatch {
  beginBatch(): void;
  /** The read is through: what it produced is written. False: the client is not taking it (wait for 'drain'). */
  endBatch(): boolean;
}

export const PHASE_CONNECTING = 0;
export const PHASE_IDLE = 1;
export const PHASE_WAITING_HEAD = 2;
export const PHASE_STREAMING = 3;
export const PHASE_UPGRADED = 4;

const kUpstream = Symbol('cmux.upstream');
/** On a tunnel's upstream socket: the pool entry whose slot it holds until it closes. */
const kSlot = Symbol('cmux.upstream.slot');

type SlotSocket = net.Socket & { [kSlot]?: PoolEntry | undefined };

/**
 * A tunnel (CONNECT, WebSocket) asking for a socket to its upstream within
 * `maxSocketsPerUpstream`. `socket` is a connection being opened (the user adds its listeners
 * and owns it; its slot is freed when it closes), or null when there is none to have.
 */
export interface TunnelUser {
  /** `code` says why there is no socket: SOCKET_LIMIT (no slot in time) or FD_LIMIT. */
  onTunnelSocket(socket: net.Socket | null, code: string): void;
}

/** A tunnel waiting for a slot, with the timer that bounds the wait. */
interface TunnelWaiter {
  user: TunnelUser;
  /** The client's Host (SNI for a TLS target). */
  host: string | undefined;
  timer: NodeJS.Timeout;
}

/** Where a response that completed in the current read stands (`UpstreamConn.ending`). */
const END_NONE = 0;
/** A final response completed in this read; llhttp may still have bytes of it to go through. */
const END_IN_READ = 1;
/** ...and its exchange gave the socket back: the pool takes it once the read is consumed. */
const END_RELEASE = 2;

/** What the upstream did wrong when it sent bytes nobody asked for (in `upstreamErrors`). */
const UNEXPECTED_RESPONSE = 'UNEXPECTED_RESPONSE';

type UpstreamSocket = net.Socket & { [kUpstream]: UpstreamConn };
type ResponseParser = HTTPParser & { conn: UpstreamConn };

/** One keep-alive socket to an upstream, with its own llhttp response parser. */
export class UpstreamConn implements Expirable, TurnWriter {
  readonly socket: UpstreamSocket;
  readonly parser: ResponseParser;
  readonly entry: PoolEntry;
  user: UpstreamUser | null = null;
  phase = PHASE_CONNECTING;
  /** Responses completed on this socket; > 0 means a reused socket. */
  responses = 0;
  /** A request head waiting for the end of the event-loop turn (see writeInTurn). */
  turnSlot = -1;
  /** Upstream's `Keep-Alive: timeout`, in ms (0: none given). */
  keepAliveMs = 0;
  /** Set by the response head: the upstream will keep the socket open. */
  keepAlive = false;
  /** kOnHeaders accumulation (heads with > 32 fields, and trailers). */
  pendingHeaders: string[] | null = null;
  headComplete = false;
  /** Any response byte received for the current exchange. */
  responseBytes = false;
  errorCode: string | undefined;
  /** Response-head deadline while waiting, idle deadline while pooled (DeadlineSweep). */
  deadline = 0;
  /** Held by the DeadlineSweep's set (managed by the sweep). */
  inSweep = false;
  /** The handle llhttp reads from directly once connected (no 'data' events then). */
  handle: StreamHandle | null = null;
  /** The client side batching while llhttp works through one read (head and body in one write). */
  corked: ReadBatch | null = null;
  /** END_NONE, END_IN_READ or END_RELEASE: a release waits for the end of the read. */
  ending = END_NONE;
  /**
   * Content-Length body bytes of the current response not yet relayed (-1: no such body). Once
   * the read that carried the head is through llhttp, the rest of such a body is read by the
   * socket's stream and relayed as the socket's own read buffers (`raw`), not llhttp's copies.
   */
  bodyLeft = -1;
  /** The rest of the body is relayed outside llhttp (see takeBody). */
  raw = false;
  /**
   * Set once the socket's handle reads into caller buffers (see read-buffers.ts): a body's ring
   * while one is relayed, the shared PARKING buffer otherwise. llhttp then never consumes the
   * handle again; it parses the copies the stream emits.
   */
  reads: ReadRing | null = null;
  /** False once the socket turned out to have no such read path (TLS): not tried again. */
  lendable = true;
  readonly maxHeaderSize: number;
  private paused = false;

  constructor(entry: PoolEntry, socket: net.Socket, maxHeaderSize: number) {
    this.entry = entry;
    this.maxHeaderSize = maxHeaderSize;
    this.socket = socket as UpstreamSocket;
    this.socket[kUpstream] = this;
    const parser = new Parser() as ResponseParser;
    parser.initialize(RESPONSE, parserResource(this), maxHeaderSize, kLenientNone);
    parser.conn = this;
    parser[kOnHeaders] = parserOnHeaders;
    parser[kOnHeadersComplete] = parserOnHeadersComplete;
    parser[kOnBody] = parserOnBody;
    parser[kOnMessageComplete] = parserOnMessageComplete;
    this.parser = parser;
  }

  expire(): void {
    if (this.phase === PHASE_WAITING_HEAD) {
      this.errorCode = 'RESPONSE_TIMEOUT';
      this.socket.destroy();
    } else if (this.phase === PHASE_IDLE) {
      this.socket.destroy();
    }
  }

  /** Client backpressure: stop reading the upstream. */
  pauseReading(): void {
    if (this.paused) return;
    this.paused = true;
    stopReading(this.socket, this.handle);
  }

  isPaused(): boolean {
    return this.paused;
  }

  resumeReading(): void {
    if (!this.paused) return;
    this.paused = false;
    // Not consuming (a body taken from llhttp): paused at the stream, which a handle stopped
    // while consuming does not restart by itself.
    if (this.handle === null) resumeSocket(this.socket);
    else startReading(this.socket, this.handle);
  }

  /** Lets llhttp read the socket's handle directly (as node:http's server does). */
  consume(): void {
    if (this.reads !== null) return;
    const handle = consumeSocket(this.parser, this.socket, parserOnExecute);
    if (handle !== null) this.handle = handle;
  }

  /** Gives reading back to the socket's stream (tunnels). */
  unconsume(): void {
    const handle = this.handle;
    if (handle === null) return;
    this.handle = null;
    releaseHandle(this.parser, handle);
    if (this.paused) {
      this.paused = false;
      this.socket.pause();
    }
  }

  /** Prepares for the next exchange's response. */
  beginExchange(user: UpstreamUser): void {
    this.user = user;
    // No message-begin callback while a response is expected: one C++ -> JS call less per response.
    this.parser[Parser.kOnMessageBegin] = null;
    this.headComplete = false;
    this.responseBytes = false;
    this.pendingHeaders = null;
    this.bodyLeft = -1;
  }
}

/**
 * The Content-Length of a response head llhttp accepted (it refuses duplicates, lists, signs and
 * a Content-Length beside Transfer-Encoding), or -1 when there is none or it is chunked.
 */
function bodyLength(raw: readonly string[]): number {
  let length = -1;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 14 && name.toLowerCase() === 'content-length') {
      length = acceptedContentLength(raw[i + 1]!);
      if (length === -1) return -1;
    } else if (name.length === 17 && name.toLowerCase() === 'transfer-encoding') {
      return -1;
    }
  }
  return length;
}

function parserOnMessageBegin(this: ResponseParser): void {
  const conn = this.conn;
  if (conn.user === null) {
    // A response nobody asked for: bytes after the last response, on an idle socket or in the
    // very read that completed it (a body sent for HEAD, a second response in the same write,
    // a Content-Length shorter than the body). The upstream broke framing (RFC 9112 §6.3).
    conn.entry.pool.discard(conn);
  }
}

function parserOnHeaders(this: ResponseParser, headers: string[]): void {
  const conn = this.conn;
  conn.pendingHeaders = conn.pendingHeaders === null ? headers : conn.pendingHeaders.concat(headers);
}

function parserOnHeadersComplete(
  this: ResponseParser,
  _major: number,
  _minor: number,
  headers: string[] | undefined,
  _method: number,
  _url: string | undefined,
  status: number,
  statusMessage: string,
  upgrade: boolean,
  keepAlive: boolean,
): number {
  const conn = this.conn;
  let raw = headers;
  if (raw === undefined) {
    raw = conn.pendingHeaders ?? [];
    conn.pendingHeaders = null;
  }
  const user = conn.user;
  if (user === null) return 0;
  if (status >= 200 || status === 101) {
    conn.headComplete = true;
    conn.keepAlive = keepAlive;
    conn.phase = PHASE_STREAMING;
  }
  batchRead(conn, user);
  const skipBody = user.onResponseHead(conn, status, statusMessage, raw, upgrade, keepAlive);
  // A final response with a Content-Length body (HEAD, 204 and 304 have none): its bytes after
  // this read bypass llhttp (takeBody). Bodies of other framings stay with llhttp.
  if (skipBody === 0 && conn.phase === PHASE_STREAMING && conn.user === user && status !== 204 && status !== 304) {
    conn.bodyLeft = bodyLength(raw);
  }
  return skipBody;
}

function parserOnBody(this: ResponseParser, chunk: Buffer): void {
  const conn = this.conn;
  if (conn.bodyLeft > 0) conn.bodyLeft -= chunk.length;
  const user = conn.user;
  if (user === null) return;
  // A chunked body's read may hold thousands of chunks.
  batchRead(conn, user);
  user.onResponseBody(chunk, null);
}

/**
 * Consuming: everything the read llhttp is parsing produces for the client (a head, body
 * pieces) leaves in one write, uncorked in parserOnExecute once llhttp is through the read.
 */
function batchRead(conn: UpstreamConn, user: UpstreamUser): void {
  const out = user.out;
  if (conn.handle !== null && out !== null && conn.corked === null) {
    out.beginBatch();
    conn.corked = out;
  }
}

/**
 * The read that carried a Content-Length response head is through llhttp and body bytes are
 * still to come: llhttp gives the socket back (as for an upgrade) and the rest of the body is
 * relayed from the socket's own reads, counted down to the last byte (rawBody). A plain socket's
 * handle reads those into reused buffers lent to the client writes (onLentRead); a TLS socket's
 * come as its stream's 'data' Buffers. The parser's state is dropped; a fresh one takes the next
 * response.
 */
function takeBody(conn: UpstreamConn): void {
  conn.raw = true;
  const handle = conn.handle;
  if (handle !== null) {
    conn.handle = null;
    releaseHandle(conn.parser, handle);
  }
  if (conn.reads === null && conn.lendable) {
    const ring = new ReadRing();
    const socket = conn.socket;
    // Node asks for the next buffer without a receiver: one function per socket, made once.
    if (useReadBuffers(socket, ring.first().buf, onLentRead, () => nextLentRead(socket))) conn.reads = ring;
    else {
      conn.lendable = false;
      ring.retire();
    }
  }
  // Client backpressure holds from here at the stream (the handle may be stopped already).
  if (handle !== null && conn.isPaused()) conn.socket.pause();
}

/**
 * A read of a socket whose handle reads into caller buffers (`this` is the socket). A body
 * being relayed takes the read as it is, lent with its buffer when it is long enough; anything
 * else (heads, other bodies, bytes on an idle or tunnelled socket) leaves as a copy through the
 * stream, as Node's own read path would hand it out.
 */
function onLentRead(this: net.Socket, nread: number, buf: Buffer): boolean {
  const conn = (this as Partial<UpstreamSocket>)[kUpstream];
  if (conn !== undefined && conn.raw && this.readableLength === 0) {
    const lent = conn.reads === null ? null : conn.reads.current;
    if (lent !== null && lent.buf === buf && nread >= LEND_MIN) rawBody(conn, buf.subarray(0, nread), lent);
    else rawBody(conn, copyRead(buf, nread), null);
    return true;
  }
  if (conn !== undefined && conn.user !== null && conn.phase !== PHASE_UPGRADED && this.readableFlowing === true && this.readableLength === 0) {
    // A read for an exchange (a response head, usually with the body's first bytes), nothing
    // queued before it: llhttp parses it where it lies, as the stream's 'data' would have.
    // Nothing keeps the bytes past the parse (heads become strings, llhttp copies body pieces,
    // the bytes after an upgrade are copied), so this read need not be copied out first.
    parseRead(conn, buf.subarray(0, nread), true);
    return true;
  }
  return this.push(copyRead(buf, nread));
}

/** Where the socket's next read goes: see ReadRing.next. */
function nextLentRead(socket: net.Socket): Buffer {
  const conn = (socket as Partial<UpstreamSocket>)[kUpstream];
  const reads = conn === undefined ? null : conn.reads;
  if (reads === null) return PARKING;
  if (!conn!.raw || socket.destroyed) {
    reads.retire();
    return PARKING;
  }
  return reads.next();
}

/** Hands a body piece to the exchange; a lent buffer is released at once when nobody takes it. */
function relay(conn: UpstreamConn, chunk: Buffer, lent: ReadBuffer | null): void {
  const user = conn.user;
  if (lent === null) user?.onResponseBody(chunk, null);
  else if (user === null) lent.lend().release();
  else user.onResponseBody(chunk, lent.lend());
}

/** A read of a body taken from llhttp: exactly `bodyLeft` bytes belong to the response. */
function rawBody(conn: UpstreamConn, chunk: Buffer, lent: ReadBuffer | null): void {
  const left = conn.bodyLeft;
  conn.responseBytes = true;
  if (chunk.length < left) {
    conn.bodyLeft = left - chunk.length;
    relay(conn, chunk, lent);
    return;
  }
  // 0 while the last piece is relayed: the exchange's client may end its response with it.
  conn.bodyLeft = 0;
  relay(conn, chunk.length === left ? chunk : chunk.subarray(0, left), lent);
  conn.bodyLeft = -1;
  conn.raw = false;
  const parser = conn.parser;
  parser.initialize(RESPONSE, parserResource(conn), conn.maxHeaderSize, kLenientNone);
  // As at a message's end in llhttp: a release waits for the end of this read, and any byte
  // after the body (in this read, or buffered by the stream) discards the socket.
  conn.ending = END_IN_READ;
  parser[Parser.kOnMessageBegin] = parserOnMessageBegin;
  conn.user?.onResponseEnd(conn, null);
  const socket = conn.socket;
  if (chunk.length > left || socket.readableLength > 0) conn.entry.pool.discard(conn);
  else if (!socket.destroyed) conn.consume();
  endOfRead(conn);
}

function parserOnMessageComplete(this: ResponseParser): void {
  const conn = this.conn;
  // Interim (1xx) responses complete as messages of their own; the final one follows.
  // A 101 completes too, just before llhttp stops for the upgrade: the tunnel takes over.
  if (!conn.headComplete || conn.phase === PHASE_UPGRADED) return;
  const trailers = conn.pendingHeaders;
  conn.pendingHeaders = null;
  // llhttp goes on with the rest of this read once this returns. Whatever follows in it belongs
  // to no request: the socket may serve the next exchange only after llhttp is through the read
  // (see UpstreamPool.release), and a message starting in it means the socket is discarded.
  conn.ending = END_IN_READ;
  conn.bodyLeft = -1;
  this[Parser.kOnMessageBegin] = parserOnMessageBegin;
  conn.user?.onResponseEnd(conn, trailers);
}

/** llhttp refused a read: the response is malformed, or bytes after a complete one are. */
function parseFailed(conn: UpstreamConn): void {
  if (conn.ending === END_NONE) {
    conn.errorCode = 'BAD_RESPONSE';
    conn.socket.destroy();
    return;
  }
  conn.entry.pool.discard(conn);
  endOfRead(conn);
}

/** The read that completed a response is consumed: release the socket if it was given back. */
function endOfRead(conn: UpstreamConn): void {
  const ending = conn.ending;
  conn.ending = END_NONE;
  if (ending !== END_RELEASE) return;
  conn.entry.releasing--;
  if (!conn.socket.destroyed) conn.entry.pool.release(conn);
}

function parserOnExecute(this: ResponseParser, ret: number | ParseError): void {
  const conn = this.conn;
  const corked = conn.corked;
  if (corked !== null) {
    conn.corked = null;
    if (!corked.endBatch()) conn.pauseReading();
  }
  const socket = conn.socket;
  // No 'data' events when consuming: keep the inactivity timer honest by hand.
  (socket as unknown as { _unrefTimer(): void })._unrefTimer();
  conn.responseBytes = true;
  if (isParseError(ret)) {
    parseFailed(conn);
    return;
  }
  if (conn.ending !== END_NONE) endOfRead(conn);
  else if (conn.bodyLeft > 0 && conn.user !== null) takeBody(conn);
  if (conn.phase === PHASE_UPGRADED && conn.user !== null) {
    const chunk = this.getCurrentBuffer();
    conn.unconsume();
    conn.user.onUpgradeData(conn, ret < chunk.length ? chunk.subarray(ret) : EMPTY);
  }
}

function socketOnConnect(this: UpstreamSocket): void {
  const conn = this[kUpstream];
  const pool = conn.entry.pool;
  if (conn.user !== null) conn.user.connecting = null;
  // From here on the socket timeout is plain inactivity; phase deadlines live in the sweep.
  this.setTimeout(pool.idleTimeoutMs);
  this.setNoDelay(true);
  if (pool.keepaliveMs > 0) this.setKeepAlive(true, pool.keepaliveMs);
  conn.phase = PHASE_WAITING_HEAD;
  conn.consume();
  const user = conn.user;
  if (user !== null) user.onUpstreamReady(conn);
}

function socketOnData(this: UpstreamSocket, chunk: Buffer): void {
  const conn = this[kUpstream];
  if (conn.raw) {
    rawBody(conn, chunk, null);
    return;
  }
  parseRead(conn, chunk, false);
}

/**
 * A read that is not a raw body's, through llhttp. `borrowed`: the bytes lie in a buffer the
 * socket reads into again (PARKING), so whatever outlives this call is copied.
 */
function parseRead(conn: UpstreamConn, chunk: Buffer, borrowed: boolean): void {
  if (conn.user === null) {
    // Bytes on an idle socket: the upstream broke framing. Never reuse it.
    conn.entry.pool.discard(conn);
    return;
  }
  conn.responseBytes = true;
  // Everything this read produces for the client (head and body) leaves in one write.
  const out = conn.user.out;
  if (out !== null) out.beginBatch();
  const ret = conn.parser.execute(chunk);
  if (out !== null && !out.endBatch()) conn.pauseReading();
  if (isParseError(ret)) {
    parseFailed(conn);
    return;
  }
  if (conn.ending !== END_NONE) endOfRead(conn);
  else if (conn.bodyLeft > 0 && conn.user !== null) takeBody(conn);
  if (conn.phase === PHASE_UPGRADED && conn.user !== null) {
    const rest = ret < chunk.length ? chunk.subarray(ret) : EMPTY;
    conn.user.onUpgradeData(conn, borrowed && rest.length > 0 ? Buffer.from(rest) : rest);
  }
}

const EMPTY = Buffer.alloc(0);

function socketOnEnd(this: UpstreamSocket): void {
  const conn = this[kUpstream];
  if (conn.phase === PHASE_UPGRADED) return;
  if (conn.raw) {
    // The Content-Length body taken from llhttp is short: the client must see a cut.
    conn.errorCode ??= 'UPSTREAM_TRUNCATED';
    return;
  }
  // A close-delimited body ends here; an incomplete one makes finish() fail (HPE_INVALID_EOF_STATE).
  if (conn.user !== null && conn.headComplete) {
    const ret = conn.parser.finish();
    if (isParseError(ret)) conn.errorCode = 'UPSTREAM_TRUNCATED';
  }
}

function socketOnError(this: UpstreamSocket, err: NodeJS.ErrnoException): void {
  const conn = this[kUpstream];
  if (err.code === 'EMFILE' || err.code === 'ENFILE') conn.entry.pool.fds.exhausted();
  conn.errorCode ??= upstreamErrorCode(this, err, 'UPSTREAM_ERROR');
}

function socketOnTimeout(this: UpstreamSocket): void {
  const conn = this[kUpstream];
  switch (conn.phase) {
    case PHASE_CONNECTING:
      conn.errorCode = 'CONNECT_TIMEOUT';
      break;
    case PHASE_WAITING_HEAD:
      conn.errorCode = 'RESPONSE_TIMEOUT';
      break;
    case PHASE_IDLE:
      break;
    default:
      conn.errorCode = 'IDLE_TIMEOUT';
  }
  this.destroy();
}

function socketOnDrain(this: UpstreamSocket): void {
  this[kUpstream].user?.onUpstreamDrain();
}

function socketOnClose(this: UpstreamSocket): void {
  const conn = this[kUpstream];
  conn.entry.pool.forget(conn);
  // The handle is closed: its read buffers can serve other sockets once released.
  conn.reads?.retire();
  if (conn.handle !== null) {
    releaseHandle(conn.parser, conn.handle);
    conn.handle = null;
  }
  closeParserLater(conn.parser);
  const user = conn.user;
  conn.user = null;
  if (user !== null && user.connecting === conn) user.connecting = null;
  if (user !== null) user.onUpstreamFailure(conn, conn.errorCode ?? (conn.responseBytes ? 'UPSTREAM_CLOSED' : 'ECONNRESET'));
}

function slotSocketOnClose(this: SlotSocket): void {
  const entry = this[kSlot];
  if (entry === undefined) return;
  this[kSlot] = undefined;
  entry.pool.releaseSlot(entry);
}

function tunnelWaitExpired(pool: UpstreamPool, entry: PoolEntry, user: TunnelUser): void {
  pool.tunnelWaitExpired(entry, user);
}

function slotWaitExpired(pool: UpstreamPool, entry: PoolEntry, user: UpstreamUser): void {
  pool.slotWaitExpired(entry, user);
}

/** Sockets and waiters for one upstream address. */
class PoolEntry {
  readonly pool: UpstreamPool;
  readonly target: Target;
  /** Key in the pool's entries (poolKey: per server name for a TLS target). */
  readonly key: string;
  readonly idle: UpstreamConn[] = [];
  readonly waiters: UpstreamUser[] = [];
  /** The timers of waiters whose wait is bounded (WebSocket upgrades: a tunnel once open). */
  readonly waitTimers = new Map<UpstreamUser, NodeJS.Timeout>();
  /** Tunnels waiting for a slot (served after exchanges: a tunnel may hold its slot for hours). */
  readonly tunnelWaiters: TunnelWaiter[] = [];
  /** Sockets open to this upstream: pooled ones (busy or idle) and tunnels. */
  total = 0;
  /** Sockets given back in the middle of a read (END_RELEASE): free once the read is consumed. */
  releasing = 0;
  constructor(pool: UpstreamPool, target: Target, key: string) {
    this.pool = pool;
    this.target = target;
    this.key = key;
  }
}
export type { PoolEntry };

export interface PoolConfig {
  /** Opens the sockets (TCP, unix, TLS). */
  connector: UpstreamConnector;
  /** TCP connect, plus the TLS handshake for a TLS target -> CONNECT_TIMEOUT. */
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  keepaliveMs: number;
  maxSockets: number;
  maxIdleSockets: number;
  maxHeaderSize: number;
}

/**
 * Keep-alive HTTP/1.1 sockets per upstream: LIFO idle stack (the warmest socket first), a bound
 * on sockets per upstream with a FIFO of waiters, idle sockets closed after the idle timeout or
 * just before the upstream's own `Keep-Alive: timeout` would close them.
 */
export class UpstreamPool {
  private readonly entries = new Map<string, PoolEntry>();
  private readonly stats: StatsCounters;
  readonly keepaliveMs: number;
  readonly idleTimeoutMs: number;
  readonly deadlines = new DeadlineSweep(250);
  /** Descriptors: upstream sockets are counted here, client sockets by the server. */
  readonly fds = new FdBudget();
  private readonly config: PoolConfig;
  private closed = false;

  constructor(config: PoolConfig, stats: StatsCounters) {
    this.config = config;
    this.stats = stats;
    this.keepaliveMs = config.keepaliveMs;
    this.idleTimeoutMs = config.idleTimeoutMs;
  }

  /** The request is on its way: the response head must come within `timeoutMs`. */
  awaitHead(conn: UpstreamConn, timeoutMs: number): void {
    this.deadlines.arm(conn, timeoutMs);
  }

  /** The head came (or the exchange is over): no head deadline any more. */
  headArrived(conn: UpstreamConn): void {
    this.deadlines.disarm(conn);
  }

  private entryFor(target: Target, host: string | undefined): PoolEntry {
    const key = poolKey(target, host);
    let entry = this.entries.get(key);
    if (entry === undefined) {
      entry = new PoolEntry(this, target, key);
      this.entries.set(key, entry);
    }
    return entry;
  }

  /**
   * Gives `user` a ready socket now (reused), later (new or after waiting), or a failure. With
   * `boundedWait` (a WebSocket upgrade, which holds its socket as a tunnel for as long as it stays
   * open, so slots may not free up for hours) a user that waits for a slot gets SOCKET_LIMIT
   * after the connect timeout, as a CONNECT tunnel does.
   */
  acquire(target: Target, user: UpstreamUser, boundedWait = false): void {
    const entry = this.entryFor(target, user.host);
    const idle = entry.idle.pop();
    if (idle !== undefined) {
      this.stats.upstreamSocketsReused++;
      this.deadlines.disarm(idle);
      idle.phase = PHASE_WAITING_HEAD;
      idle.beginExchange(user);
      user.onUpstreamReady(idle);
      return;
    }
    // A socket being released at the end of the current read serves the next user (a
    // pipelined request dispatched from inside that read) rather than a new connection.
    if (entry.total >= this.config.maxSockets || entry.releasing > 0) {
      entry.waiters.push(user);
      if (boundedWait) entry.waitTimers.set(user, setTimeout(slotWaitExpired, this.config.connectTimeoutMs, this, entry, user));
      return;
    }
    this.connect(entry, user);
  }

  /** A fresh socket even when idle ones exist (retries after a stale reused socket). */
  acquireFresh(target: Target, user: UpstreamUser): void {
    const entry = this.entryFor(target, user.host);
    this.connect(entry, user);
  }

  /**
   * Withdraws a user that no longer wants a socket (client went away): out of the waiters, and a
   * socket still connecting for it is closed, so a burst of cancelled requests (HTTP/2 rapid
   * reset) does not turn into upstream connections.
   */
  cancel(target: Target, user: UpstreamUser): void {
    const connecting = user.connecting;
    if (connecting !== null) {
      user.connecting = null;
      this.destroy(connecting);
      return;
    }
    const entry = this.entries.get(poolKey(target, user.host));
    if (entry === undefined) return;
    const at = entry.waiters.indexOf(user);
    if (at !== -1) entry.waiters.splice(at, 1);
    this.stopWaitTimer(entry, user);
  }

  /** A waiter with a bounded wait got no slot in time. */
  slotWaitExpired(entry: PoolEntry, user: UpstreamUser): void {
    entry.waitTimers.delete(user);
    const at = entry.waiters.indexOf(user);
    if (at === -1) return;
    entry.waiters.splice(at, 1);
    this.dropIfUnused(entry);
    user.onUpstreamFailure(null, 'SOCKET_LIMIT');
  }

  /** Next waiter in line for a socket, its wait timer (if any) stopped. */
  private nextWaiter(entry: PoolEntry): UpstreamUser | undefined {
    const waiter = entry.waiters.shift();
    if (waiter !== undefined && entry.waitTimers.size !== 0) this.stopWaitTimer(entry, waiter);
    return waiter;
  }

  private stopWaitTimer(entry: PoolEntry, user: UpstreamUser): void {
    const timer = entry.waitTimers.get(user);
    if (timer === undefined) return;
    clearTimeout(timer);
    entry.waitTimers.delete(user);
  }

  /** A new socket to the entry's upstream, counted in its slots and the descriptor budget; null past the budget. */
  private openSocket(entry: PoolEntry, host: string | undefined): net.Socket | null {
    if (!this.fds.upstreamAllowed()) return null;
    const socket = this.config.connector.connect(entry.target, host, ALPN_HTTP1);
    this.stats.upstreamSocketsCreated++;
    entry.total++;
    this.fds.upstream++;
    return socket;
  }

  private connect(entry: PoolEntry, user: UpstreamUser): void {
    const socket = this.openSocket(entry, user.host);
    if (socket === null) {
      user.onUpstreamFailure(null, 'FD_LIMIT');
      this.dropIfUnused(entry);
      return;
    }
    const conn = new UpstreamConn(entry, socket, this.config.maxHeaderSize);
    conn.beginExchange(user);
    user.connecting = conn;
    // A TLS upstream is ready once its handshake is through: the connect timeout covers both.
    socket.setTimeout(this.config.connectTimeoutMs);
    socket.on(readyEvent(entry.target), socketOnConnect);
    socket.on('data', socketOnData);
    socket.on('end', socketOnEnd);
    socket.on('error', socketOnError);
    socket.on('timeout', socketOnTimeout);
    socket.on('drain', socketOnDrain);
    socket.on('close', socketOnClose);
  }

  /**
   * Returns a socket after a clean exchange; it serves a waiter or goes idle. Called from inside
   * llhttp's message-complete callback, it only marks the socket: the rest of that read is
   * parsed first (with no user, so any byte of another message discards the socket) and the
   * socket is taken back after it (endOfRead).
   */
  release(conn: UpstreamConn): void {
    this.deadlines.disarm(conn);
    conn.user = null;
    const entry = conn.entry;
    if (conn.ending === END_IN_READ) {
      conn.ending = END_RELEASE;
      entry.releasing++;
      return;
    }
    conn.responses++;
    const waiter = this.nextWaiter(entry);
    if (waiter !== undefined) {
      this.stats.upstreamSocketsReused++;
      conn.phase = PHASE_WAITING_HEAD;
      conn.beginExchange(waiter);
      waiter.onUpstreamReady(conn);
      return;
    }
    if (this.closed || entry.idle.length >= this.config.maxIdleSockets || entry.tunnelWaiters.length > 0) {
      this.destroy(conn);
      return;
    }
    // Close before the upstream's own keep-alive timeout can race a reuse: 1 s margin, as Node's
    // Agent, plus the sweep's granularity.
    let idleMs = this.config.idleTimeoutMs;
    if (conn.keepAliveMs > 0) idleMs = Math.min(idleMs, conn.keepAliveMs - 1250);
    if (idleMs <= 0) {
      this.destroy(conn);
      return;
    }
    conn.phase = PHASE_IDLE;
    // Idle: a response starting now was never asked for (see parserOnMessageBegin).
    conn.parser[Parser.kOnMessageBegin] = parserOnMessageBegin;
    this.deadlines.arm(conn, idleMs);
    entry.idle.push(conn);
  }

  /** Closes a socket whose upstream sent bytes nobody asked for; counted in `upstreamErrors`. */
  discard(conn: UpstreamConn): void {
    if (conn.errorCode === undefined) {
      conn.errorCode = UNEXPECTED_RESPONSE;
      this.stats.countUpstreamError(UNEXPECTED_RESPONSE);
    }
    this.destroy(conn);
  }

  /** Closes a socket that must not be reused; the exchange holding it lets go first. */
  destroy(conn: UpstreamConn): void {
    this.deadlines.disarm(conn);
    conn.user = null;
    conn.socket.destroy();
  }

  /**
   * Hands a socket over to a tunnel (after a 101): the pool's listeners come off, its slot is
   * freed, and the parser is released. The caller owns the socket from here on.
   */
  detach(conn: UpstreamConn): void {
    const socket = conn.socket;
    socket.removeListener(readyEvent(conn.entry.target), socketOnConnect);
    socket.removeListener('data', socketOnData);
    socket.removeListener('end', socketOnEnd);
    socket.removeListener('error', socketOnError);
    socket.removeListener('timeout', socketOnTimeout);
    socket.removeListener('drain', socketOnDrain);
    socket.removeListener('close', socketOnClose);
    socket.setTimeout(0);
    this.deadlines.disarm(conn);
    conn.user = null;
    conn.unconsume();
    closeParserLater(conn.parser);
    // The socket keeps counting against maxSocketsPerUpstream until the tunnel closes it.
    this.holdSlot(socket, conn.entry);
    // The tunnel owns the socket now; the pool's per-socket state can go.
    (socket as net.Socket & { [kUpstream]?: UpstreamConn })[kUpstream] = undefined;
  }

  /**
   * Opens a tunnel's upstream socket within `maxSocketsPerUpstream`: at once when a slot is
   * free, else once one frees up (an idle pooled socket is closed to make room). A tunnel that
   * gets no slot within the connect timeout gets `onTunnelSocket(null)`.
   */
  openTunnel(target: Target, user: TunnelUser, host?: string): void {
    const entry = this.entryFor(target, host);
    if (entry.total < this.config.maxSockets) {
      this.startTunnel(entry, user, host);
      return;
    }
    const timer = setTimeout(tunnelWaitExpired, this.config.connectTimeoutMs, this, entry, user);
    entry.tunnelWaiters.push({ user, host, timer });
    // Idle sockets hold slots too: give one up (its close frees the slot, see forget()).
    const idle = entry.idle.shift();
    if (idle !== undefined) this.destroy(idle);
  }

  /** A tunnel that no longer wants a socket (its client went away while it waited). */
  cancelTunnel(target: Target, user: TunnelUser): void {
    if (!target.tls) {
      const entry = this.entries.get(target.key);
      if (entry !== undefined) this.dropTunnelWaiter(entry, user);
      return;
    }
    // A TLS target has an entry per server name; the tunnel waits in one of them.
    for (const entry of this.entries.values()) if (entry.target.key === target.key && this.dropTunnelWaiter(entry, user)) return;
  }

  private dropTunnelWaiter(entry: PoolEntry, user: TunnelUser): boolean {
    const at = entry.tunnelWaiters.findIndex((w) => w.user === user);
    if (at === -1) return false;
    clearTimeout(entry.tunnelWaiters[at]!.timer);
    entry.tunnelWaiters.splice(at, 1);
    this.dropIfUnused(entry);
    return true;
  }

  tunnelWaitExpired(entry: PoolEntry, user: TunnelUser): void {
    const at = entry.tunnelWaiters.findIndex((w) => w.user === user);
    if (at === -1) return;
    entry.tunnelWaiters.splice(at, 1);
    this.dropIfUnused(entry);
    user.onTunnelSocket(null, 'SOCKET_LIMIT');
  }

  private startTunnel(entry: PoolEntry, user: TunnelUser, host: string | undefined): void {
    const socket = this.openSocket(entry, host);
    if (socket === null) {
      this.dropIfUnused(entry);
      user.onTunnelSocket(null, 'FD_LIMIT');
      return;
    }
    this.holdSlot(socket, entry);
    user.onTunnelSocket(socket, '');
  }

  private holdSlot(socket: net.Socket, entry: PoolEntry): void {
    (socket as SlotSocket)[kSlot] = entry;
    socket.on('close', slotSocketOnClose);
  }

  /** A tunnel's socket closed: its slot goes to a waiting exchange, else a waiting tunnel. */
  releaseSlot(entry: PoolEntry): void {
    entry.total--;
    this.fds.upstream--;
    this.slotFreed(entry);
  }

  private slotFreed(entry: PoolEntry): void {
    const waiter = this.nextWaiter(entry);
    if (waiter !== undefined) {
      if (this.closed) waiter.onUpstreamFailure(null, 'PROXY_STOPPING');
      else this.connect(entry, waiter);
    } else {
      const tunnel = entry.tunnelWaiters.shift();
      if (tunnel !== undefined) {
        clearTimeout(tunnel.timer);
        if (this.closed) tunnel.user.onTunnelSocket(null, 'PROXY_STOPPING');
        else this.startTunnel(entry, tunnel.user, tunnel.host);
      }
    }
    this.dropIfUnused(entry);
  }

  private dropIfUnused(entry: PoolEntry): void {
    if (entry.total === 0 && entry.waiters.length === 0 && entry.tunnelWaiters.length === 0 && this.entries.get(entry.key) === entry) {
      this.entries.delete(entry.key);
    }
  }

  /** Called once per socket when it closes (or is detached). */
  forget(conn: UpstreamConn): void {
    this.deadlines.disarm(conn);
    const entry = conn.entry;
    entry.total--;
    this.fds.upstream--;
    if (conn.ending === END_RELEASE) entry.releasing--;
    conn.ending = END_NONE;
    const at = entry.idle.indexOf(conn);
    if (at !== -1) entry.idle.splice(at, 1);
    // A slot freed: a waiter may connect.
    this.slotFreed(entry);
  }

  counts(): Pick<PoolStats, 'upstreamSocketsActive' | 'upstreamSocketsIdle' | 'upstreamWaiters'> {
    let active = 0;
    let idle = 0;
    let waiters = 0;
    for (const entry of this.entries.values()) {
      active += entry.total - entry.idle.length;
      idle += entry.idle.length;
      waiters += entry.waiters.length + entry.tunnelWaiters.length;
    }
    return { upstreamSocketsActive: active, upstreamSocketsIdle: idle, upstreamWaiters: waiters };
  }

  /** Closes idle sockets now; busy ones close when their exchange ends. */
  closeIdle(): void {
    for (const entry of this.entries.values()) {
      for (const conn of entry.idle.splice(0)) conn.socket.destroy();
    }
  }

  close(): void {
    this.closed = true;
    this.deadlines.stop();
    for (const entry of this.entries.values()) {
      for (const conn of entry.idle.splice(0)) conn.socket.destroy();
      for (const timer of entry.waitTimers.values()) clearTimeout(timer);
      entry.waitTimers.clear();
      for (const waiter of entry.waiters.splice(0)) waiter.onUpstreamFailure(null, 'PROXY_STOPPING');
      for (const tunnel of entry.tunnelWaiters.splice(0)) {
        clearTimeout(tunnel.timer);
        tunnel.user.onTunnelSocket(null, 'PROXY_STOPPING');
      }
    }
  }

  reopen(): void {
    this.closed = false;
  }
}
