import net from 'node:net';
import {
  BODY_CHUNKED,
  BODY_LENGTH,
  BODY_NONE,
  EX_CLIENT_CLOSE,
  EX_FINISHED,
  EX_REQUEST_ENDED,
  EX_UPGRADE,
  Exchange,
  type ClientSide,
} from '../exchange.js';
import {
  RESPONSE_400_BAD_REQUEST,
  RESPONSE_408_TIMEOUT,
  RESPONSE_414_URI_TOO_LONG,
  RESPONSE_431_HEADERS_TOO_LARGE,
  ErrorCodes,
  errorResponse,
} from '../errors.js';
import { acceptedContentLength, emptyFacts, filterResponseHeadersH1, scanRequestHeaders, trailerLines } from '../headers.js';
import type { DeadlineSweep, Expirable } from '../deadlines.js';
import type { ProxyCore } from '../proxy-core.js';
import { isRouteError } from '../route/router.js';
import { TUNNEL_KIND_CONNECT, TUNNEL_KIND_WEBSOCKET } from '../observe.js';
import { requestEnd, requestRoute, upstreamConnect, websocketClose, websocketOpen } from '../diagnostics.js';
import { TUNNEL_CONNECT, TUNNEL_WEBSOCKET, Tunnel, configureTunnelSocket } from '../tunnel.js';
import type { ReadBatch, TunnelUser, UpstreamConn } from '../upstream/h1-pool.js';
import { LEND_MIN, PARKING, READ_BUFFER_SIZE, ReadRing, copyRead, useReadBuffers, type BodyLease, type ReadBuffer } from '../upstream/read-buffers.js';
import {
  METHODS,
  parserResource,
  Parser,
  REQUEST,
  closeParserLater,
  isParseError,
  kLenientNone,
  kOnBody,
  kOnHeaders,
  kOnHeadersComplete,
  kOnMessageComplete,
  consumeSocket,
  releaseHandle,
  resumeSocket,
  startReading,
  stopReading,
  type HTTPParser,
  type ParseError,
  type StreamHandle,
} from './parser.js';
import { ChunkedScan, SCAN_MORE, SCAN_TOO_LARGE } from './chunked.js';
import { flushTurnWrite, writeBacklogged, writeInTurn, type TurnWriter } from '../direct-write.js';

const kOnMessageBegin = Parser.kOnMessageBegin;
const HTTP_SLASH = Buffer.from(' HTTP/', 'latin1');
const kH1 = Symbol('cmux.h1');

type ClientSocket = net.Socket & { [kH1]: H1Connection };
type RequestParser = HTTPParser & { conn: H1Connection };

/** Response framing toward the client, kept in `exchange.clientState`. */
const FRAME_PASS = 0; // Content-Length given, or no body: bytes pass as they are
const FRAME_CHUNKED = 1;
const FRAME_CLOSE = 2; // HTTP/1.0 client, length unknown: the close ends the body

// Connection flags
const C_CLOSE_AFTER = 1; // close once the current response is written
const C_CLOSED = 2;
const C_BROKEN = 4; // the parser hit bad input; answer it once nothing is in flight
const C_UPGRADING = 8; // the parser stopped at an upgrade/CONNECT head
const C_TUNNEL = 16; // the socket belongs to a tunnel now
const C_HEAD_PENDING = 32; // a request head is being received (header timeout armed)
const C_NO_MORE = 64; // no more requests are taken: later bytes are ignored (RFC 9112 §9.6)
const C_SEEN_DATA = 128;
const C_IN_BATCH = 256; // an upstream read for this connection's response is being parsed
const C_SOCKET_CORKED = 512; // ... and the socket is corked until it ends
const C_LINE_DONE = 1024; // the request line of a head still being received has ended (414 vs 431)
const C_IGNORING = 2048; // what the client sends is read and dropped
const C_NOT_UPGRADING = 4096; // llhttp stops after a request it takes for an upgrade the proxy does not make
const C_CLIENT_ENDED = 8192; // the client half-closed while its upgrade or CONNECT was being set up
const C_CLOSE_DELIMITED = 16384; // the response being written ends with the close: nothing may follow it
const C_CHUNK_PAUSED = 1 << 20; // llhttp was paused right after a chunked request's head
const C_CHUNK_RAW = 1 << 21; // a chunked request body goes on past the read: the socket's reads go to its scan
const C_WAIT_DRAIN = 1 << 22; // an answer is done and the client reads slower: what follows waits for 'drain'

/** One digit of a chunk size: fed to llhttp after a chunked head so that it checks the head's framing. */
const CHUNK_SIZE_PROBE = Buffer.from('0', 'latin1');

/** scanChunked: the body ended and nothing after it is read (the connection's last request). */
const CHUNK_LAST = -100;

/** llhttp's HPE_PAUSED: returned from kOnHeadersComplete, it stops `execute` right after the head. */
const HPE_PAUSED = 21;

/**
 * Pipelined requests queued behind the one being answered. One read can hold over a thousand
 * small GETs; past this many the connection takes no more requests: those queued are answered,
 * then it closes, and the client retries the rest on a new connection (RFC 9112 §9.3.2).
 */
const PIPELINE_MAX = 32;

/** Up to this size, a body that comes in the same upstream read as its head joins it in one string write. */
const JOIN_BODY_MAX = 4096;
/** Chunks of a chunked answer up to this size are batched per upstream read (see writeBody). */
const BATCHED_CHUNK_MAX = 1024;
/** Batched chunk text written at once past this length (the socket's high-water mark): backpressure holds. */
const BATCHED_TEXT_MAX = 16 * 1024;

/**
 * A Content-Length request body with at least this much left after the read that carried its
 * head is read into reused buffers (takeBody); a shorter rest stays with llhttp.
 */
const RAW_BODY_MIN = READ_BUFFER_SIZE;

// Reasons the client socket is paused
const P_BACKPRESSURE = 1;
const P_PIPELINE = 2;
const P_UPGRADE = 4;
const P_DRAIN = 8; // answers wait for the client to read: nothing more is read or started

/** Hooks the server gives each session. */
export interface SessionHost {
  readonly core: ProxyCore;
  h1Closed(conn: H1Connection): void;
  /** A client connection became a tunnel (WebSocket or CONNECT) until it closes. */
  tunnelOpened(socket: net.Socket): void;
  /** Request-head deadlines of every connection, on one coarse sweep (no timer per request). */
  headTimer: DeadlineSweep;
}

/** One HTTP/1.x client connection, parsed by llhttp, its exchanges answered in order. */
export class H1Connection implements ClientSide, Expirable, TunnelUser, TurnWriter {
  readonly socket: ClientSocket;
  readonly host: SessionHost;
  readonly core: ProxyCore;
  readonly parser: RequestParser;
  readonly clientAddress: string;
  readonly proto: 'http' | 'https';
  readonly tls: boolean;
  flags = 0;
  pauses = 0;
  /** The exchange whose response is being produced. */
  current: Exchange | null = null;
  /** Pipelined exchanges waiting for `current` to finish. */
  pending: Exchange[] | null = null;
  /** The exchange whose request is being parsed. */
  parsing: Exchange | null = null;
  pendingHeaders: string[] | null = null;
  /** The request target when llhttp delivers it with header batches (heads of > 32 fields). */
  pendingUrl = '';
  /** A response head held for the body bytes of the same upstream read (see respond). */
  private heldHead: string | null = null;
  /** Small chunks of the upstream read being parsed, framed, waiting to be written as one (see writeBody). */
  private batchedChunks = '';
  /** Responses waiting for the end of the event-loop turn (see writeInTurn). */
  turnSlot = -1;
  /** Request-head deadline (DeadlineSweep). */
  deadline = 0;
  /** Held by the DeadlineSweep's set (managed by the sweep). */
  inSweep = false;
  parseError: ParseError | null = null;
  brokenStatus = 400;
  /** Request body pieces of the read being parsed, sent when llhttp is through it (onBody). */
  private bodyPiece: Buffer | null = null;
  private bodyPieces: Buffer[] | null = null;
  /** The chunked request body being read (llhttp reads heads only, see ChunkedScan) and its exchange. */
  private chunkScan: ChunkedScan | null = null;
  private chunkEx: Exchange | null = null;
  /** The part of the read llhttp parsed last (it is resumed after each chunked head). */
  private execBuf: Buffer | null = null;
  /** Bytes the client sent after an upgrade/CONNECT head. */
  upgradeRest: Buffer | null = null;
  /** The socket handle llhttp reads from directly, when consuming (no 'data' events then). */
  private handle: StreamHandle | null = null;
  /**
   * Content-Length body bytes of the request being parsed not yet relayed (-1: no such body, or
   * one llhttp relays). Once the read that carried the head is through llhttp, the rest of a long
   * one is read by the socket into reused buffers lent to the upstream writes (`raw`), counted
   * down to the last byte (rawBody), not copied piece by piece by llhttp.
   */
  bodyLeft = -1;
  /** The rest of the request body is relayed outside llhttp (see takeBody). */
  raw = false;
  /**
   * Set once the socket's handle reads into caller buffers (see read-buffers.ts): a body's ring
   * while one is relayed, the shared PARKING buffer otherwise. llhttp then never consumes the
   * handle again; it parses the copies the stream emits.
   */
  reads: ReadRing | null = null;
  /** A plain TCP socket not yet found without a caller-buffer read path. */
  private lendable: boolean;

  constructor(host: SessionHost, socket: net.Socket, tls: boolean) {
    this.host = host;
    this.core = host.core;
    this.socket = socket as ClientSocket;
    this.socket[kH1] = this;
    this.tls = tls;
    this.lendable = !tls;
    this.proto = tls ? 'https' : 'http';
    this.clientAddress = socket.remoteAddress ?? '';
    const parser = new Parser() as RequestParser;
    parser.initialize(REQUEST, parserResource(this), this.core.options.maxHeaderSize, kLenientNone);
    parser.conn = this;
    // Message begin matters only while no head deadline runs: set once a head is complete,
    // cleared again whenever the next head's deadline is armed.
    parser[kOnMessageBegin] = null;
    parser[kOnHeaders] = parserOnHeaders;
    parser[kOnHeadersComplete] = parserOnHeadersComplete;
    parser[kOnBody] = parserOnBody;
    parser[kOnMessageComplete] = parserOnMessageComplete;
    this.parser = parser;
    socket.setNoDelay(true);
    const { keepaliveMs, clientIdleTimeoutMs } = this.core.options;
    if (keepaliveMs > 0) socket.setKeepAlive(true, keepaliveMs);
    socket.setTimeout(clientIdleTimeoutMs);
    // A client's FIN ends its requests, not the answers it waits for (RFC 9112 §9.6): the
    // proxy closes its side itself once they are written.
    (socket as { allowHalfOpen: boolean }).allowHalfOpen = true;
    socket.on('end', socketOnEnd);
    socket.on('data', socketOnData);
    socket.on('drain', socketOnDrain);
    socket.on('timeout', socketOnTimeout);
    socket.on('error', socketOnError);
    socket.on('close', socketOnClose);
    this.flags |= C_HEAD_PENDING;
    host.headTimer.arm(this, this.core.options.requestHeadersTimeoutMs);
  }

  /**
   * Feeds bytes read before this session took the socket (sniffing), then lets llhttp read
   * the socket's handle directly, as `node:http` does: no stream machinery per read.
   */
  feed(chunk: Buffer): void {
    this.onData(chunk);
    this.consumeReads();
  }

  /**
   * Lets llhttp read the socket's handle directly from now on: a net.Socket's TCP handle, or a
   * TLSSocket's TLS handle (decrypted records, as `node:https` reads them). Whatever the stream
   * has buffered already still arrives as 'data'.
   */
  consumeReads(): void {
    if ((this.flags & (C_BROKEN | C_CLOSED | C_TUNNEL | C_NO_MORE | C_UPGRADING)) !== 0 || this.socket.destroyed) return;
    if (this.reads !== null || this.raw) return;
    const handle = consumeSocket(this.parser, this.socket, parserOnExecute);
    if (handle === null) return;
    this.handle = handle;
    if (this.pauses !== 0) stopReading(this.socket, handle);
  }

  /** Hands reading back to the socket's stream (tunnels, closing). */
  private unconsume(): void {
    const handle = this.handle;
    if (handle === null) return;
    this.handle = null;
    releaseHandle(this.parser, handle);
    if (this.pauses === 0) startReading(this.socket, handle);
  }

  /** llhttp consumed a read from the handle (`ret`: bytes parsed, or the parse error). */
  onExecuted(ret: number | ParseError): void {
    // No 'data' events when consuming: keep the idle timer honest by hand (as node:http does).
    (this.socket as unknown as { _unrefTimer(): void })._unrefTimer();
    if ((this.flags & (C_BROKEN | C_CLOSED | C_TUNNEL | C_IGNORING)) !== 0) {
      this.bodyPiece = this.bodyPieces = null;
      if ((this.flags & C_CHUNK_PAUSED) !== 0) this.dropChunked();
      return;
    }
    this.afterExecute(ret, null);
  }

  // ---- parsing --------------------------------------------------------------------------

  onData(chunk: Buffer): void {
    if ((this.flags & (C_BROKEN | C_CLOSED | C_TUNNEL | C_NO_MORE)) !== 0) return;
    if ((this.flags & C_SEEN_DATA) === 0) {
      this.flags |= C_SEEN_DATA;
      // llhttp waits for header lines after an HTTP/0.9 request line; refuse it at once.
      const eol = chunk.indexOf(10);
      if (eol !== -1 && chunk.lastIndexOf(HTTP_SLASH, eol) === -1) {
        this.broken(400, null);
        return;
      }
    }
    this.afterExecute(this.parser.execute(chunk), chunk);
  }

  private afterExecute(ret: number | ParseError, data: Buffer | null): void {
    if ((this.flags & C_CHUNK_PAUSED) !== 0) {
      const last = this.chunkedRead(ret, data ?? this.parser.getCurrentBuffer());
      if (last === null) return;
      ret = last;
      data = this.execBuf;
      this.execBuf = null;
    }
    if (this.bodyPiece !== null) {
      // A parse error means the body is corrupt: nothing more of it goes upstream.
      if (isParseError(ret)) this.bodyPiece = this.bodyPieces = null;
      else this.flushBody();
    }
    // Bytes after a request that asked to close are not a request (RFC 9112 §9.6), nor are
    // those past the pipelining bound: ignore them.
    if ((this.flags & C_NO_MORE) !== 0 || (isParseError(ret) && ret.code === 'HPE_CLOSED_CONNECTION')) {
      this.ignoreRest();
      return;
    }
    if (isParseError(ret)) {
      const chunk = data ?? this.parser.getCurrentBuffer();
      this.broken(ret.code === 'HPE_HEADER_OVERFLOW' ? this.overflowStatus(chunk, ret) : 400, ret);
      return;
    }
    if (this.bodyLeft >= RAW_BODY_MIN && this.parsing !== null && (this.flags & (C_BROKEN | C_CLOSED | C_NO_MORE | C_UPGRADING)) === 0) {
      // llhttp took every byte of this read as body: the rest of it bypasses llhttp.
      this.takeBody();
      return;
    }
    if ((this.flags & (C_HEAD_PENDING | C_LINE_DONE)) === C_HEAD_PENDING && this.parsing === null) {
      // A head spans reads (the common head completes within one and never gets here): remember
      // whether its request line ended, so an oversized header later is 431, not 414.
      if ((data ?? this.parser.getCurrentBuffer()).indexOf(10) !== -1) this.flags |= C_LINE_DONE;
    }
    if ((this.flags & C_NOT_UPGRADING) !== 0 && this.parsing === null) {
      // llhttp stopped after a request with an `Upgrade` the proxy forwards as an ordinary one
      // (h2c, ...), and until another head completes Node's binding reports no parse error: bad
      // bytes after it would go unanswered. That request is the connection's last (it was
      // answered with `connection: close`); what follows is dropped.
      this.flags &= ~C_NOT_UPGRADING;
      this.ignoreRest();
      return;
    }
    if ((this.flags & C_UPGRADING) !== 0 && (this.flags & C_TUNNEL) === 0) {
      // llhttp stopped after the upgrade/CONNECT head: the rest is tunnel data.
      const chunk = data ?? this.parser.getCurrentBuffer();
      this.unconsume();
      const rest = ret < chunk.length ? chunk.subarray(ret) : null;
      if (rest !== null) this.upgradeRest = this.upgradeRest === null ? rest : Buffer.concat([this.upgradeRest, rest]);
      this.pause(P_UPGRADE);
    }
  }

  /**
   * The read that carried a Content-Length request head is through llhttp and a long rest of its
   * body is still to come: llhttp gives the socket back (as for an upgrade) and the socket's
   * handle reads the rest into reused buffers lent to the upstream writes (clientOnLentRead).
   * llhttp's state is dropped once the body is whole (rawBody); a fresh one takes what follows.
   * A socket with no such read path stays with llhttp, for good.
   */
  private takeBody(): void {
    if (this.reads === null) {
      if (!this.lendable) return;
      const handle = this.handle;
      if (handle !== null) {
        this.handle = null;
        releaseHandle(this.parser, handle);
      }
      const ring = new ReadRing();
      const socket = this.socket;
      // Node asks for the next buffer without a receiver: one function per connection, made once.
      if (!useReadBuffers(socket, ring.first().buf, clientOnLentRead, () => nextClientRead(socket))) {
        ring.retire();
        this.lendable = false;
        if (handle !== null) this.consumeReads();
        return;
      }
      this.reads = ring;
      // While consumed, pauses acted at the handle only, and the stream may still be paused from
      // before (a pause while the first bytes were fed): from now on the stream and the handle
      // both follow `pauses`.
      if (this.pauses !== 0) stopReadBuffers(socket);
      else resumeSocket(socket);
    }
    this.raw = true;
  }

  /** A read of a body taken from llhttp: exactly `bodyLeft` bytes belong to the request. */
  rawBody(chunk: Buffer, lent: ReadBuffer | null): void {
    if ((this.flags & C_CHUNK_RAW) !== 0) {
      this.rawChunked(chunk, lent);
      return;
    }
    const left = this.bodyLeft;
    const ex = this.parsing;
    if (chunk.length < left) {
      this.bodyLeft = left - chunk.length;
      if (ex !== null) ex.requestBody(chunk, lent === null ? null : lent.lend());
      return;
    }
    if (ex !== null) ex.requestBody(chunk.length === left ? chunk : chunk.subarray(0, left), lent === null ? null : lent.lend());
    this.bodyLeft = -1;
    this.raw = false;
    // llhttp was left in the body: a fresh state parses what follows, as after a message's end.
    this.resetParser();
    const closing = ex !== null && (ex.flags & EX_CLIENT_CLOSE) !== 0;
    this.onMessageComplete();
    if (closing) {
      // As llhttp after a message that asked to close: nothing more is a request.
      this.ignoreRest();
      return;
    }
    // A request pipelined in the same read goes to llhttp as a copy: the read buffer is reused.
    if (chunk.length > left) this.onData(lent === null ? chunk.subarray(left) : Buffer.from(chunk.subarray(left)));
  }

  private ignoreRest(): void {
    if ((this.flags & C_IGNORING) !== 0) return;
    this.flags |= C_NO_MORE | C_IGNORING;
    this.unconsume();
    this.socket.on('data', discard);
  }

  private overflowStatus(chunk: Buffer, err: ParseError): number {
    // Over the limit before the request line ended: 414, else 431 (RFC 9112 §3).
    return this.parsing === null &&
      (this.flags & (C_HEAD_PENDING | C_LINE_DONE)) === C_HEAD_PENDING &&
      chunk.subarray(0, err.bytesParsed).indexOf(10) === -1
      ? 414
      : 431;
  }

  /** Bad input: answer once nothing is in flight, then close. */
  broken(status: number, err: ParseError | null): void {
    if ((this.flags & C_BROKEN) !== 0) return;
    this.flags |= C_BROKEN;
    this.brokenStatus = status;
    this.parseError = err;
    this.core.stats.parseErrors++;
    if (this.core.log.debugEnabled) this.core.log.debug(`h1 ${this.clientAddress}: bad request (${err?.code ?? status}) -> ${status}`);
    const parsing = this.parsing;
    if (parsing !== null && parsing !== this.current && (parsing.flags & EX_FINISHED) === 0) {
      this.dropPipelined(parsing);
    } else if (parsing !== null && parsing === this.current && (parsing.flags & EX_REQUEST_ENDED) === 0) {
      // Its body is corrupt (bad chunking): the upstream must not get a complete-looking request.
      parsing.abort();
      this.current = null;
    }
    this.parsing = null;
    if (this.current === null) this.sendBrokenAndClose();
  }

  /** A pipelined request that never started (bad or cut short): out of the queue, unanswered. */
  private dropPipelined(ex: Exchange): void {
    ex.discard();
    const at = this.pending?.indexOf(ex) ?? -1;
    if (at !== -1) this.pending!.splice(at, 1);
  }

  private sendBrokenAndClose(): void {
    const status = this.brokenStatus;
    const answer =
      status === 414
        ? RESPONSE_414_URI_TOO_LONG
        : status === 431
          ? RESPONSE_431_HEADERS_TOO_LARGE
          : status === 408
            ? RESPONSE_408_TIMEOUT
            : RESPONSE_400_BAD_REQUEST;
    this.core.stats.proxyErrorResponses++;
    this.core.stats.countStatus(status);
    this.closeWith(answer);
  }

  /** Writes a last answer and closes after it is flushed (the client gets to read it). */
  closeWith(data: Buffer | string): void {
    // Once: a second end() would destroy the socket with what the first left queued.
    if ((this.flags & C_CLOSED) !== 0 || this.socket.writableEnded) return;
    this.flushHeldHead();
    // A 'drain' that comes now has nothing to start.
    this.flags = (this.flags | C_CLOSE_AFTER) & ~C_WAIT_DRAIN;
    this.host.headTimer.disarm(this);
    const socket = this.socket;
    this.unconsume();
    // What the client still sends is dropped: no body read goes upstream any more.
    this.raw = false;
    this.flags &= ~C_CHUNK_RAW;
    socket.removeListener('data', socketOnData);
    // Keep reading (and dropping) what the client still sends, so the close is a FIN, not a RST.
    socket.on('data', discard);
    this.pauses = 0;
    // Reading may have been stopped at the handle (pipelining, backpressure): start it again,
    // or the client's close would only be seen when the linger timer fires.
    resumeSocket(socket);
    // What waits for the turn goes first: end() would otherwise overtake it.
    flushTurnWrite(this);
    socket.end(data);
    socket.setTimeout(5_000);
  }

  /** Closes the connection now, after the responses already complete (those waiting for the turn). */
  destroySocket(): void {
    flushTurnWrite(this);
    this.socket.destroy();
  }

  expire(): void {
    this.headersTimedOut();
  }

  headersTimedOut(): void {
    if ((this.flags & (C_CLOSED | C_TUNNEL)) !== 0) return;
    this.core.stats.requestHeadersTimeouts++;
    this.flags &= ~C_HEAD_PENDING;
    if (this.current !== null || this.parsing !== null) {
      this.broken(408, null);
      return;
    }
    // Nothing was ever asked on this connection (or it is between requests): a quiet 408.
    this.flags |= C_BROKEN;
    this.brokenStatus = 408;
    this.sendBrokenAndClose();
  }

  onHeadersComplete(
    major: number,
    minor: number,
    headers: string[] | undefined,
    methodIndex: number,
    url: string | undefined,
    upgrade: boolean,
    keepAlive: boolean,
  ): number {
    const core = this.core;
    const stats = core.stats;
    // llhttp's own flag: it stops after such a request whatever the proxy makes of it.
    const llhttpUpgrade = upgrade;
    let raw = headers;
    if (raw === undefined) {
      raw = this.pendingHeaders ?? [];
      this.pendingHeaders = null;
    }
    if (url === undefined) {
      url = this.pendingUrl;
      this.pendingUrl = '';
    }
    this.flags &= ~(C_HEAD_PENDING | C_LINE_DONE);
    this.host.headTimer.disarm(this);
    // A pipelined request may begin before this one is answered: its head needs a deadline then.
    this.parser[kOnMessageBegin] = parserOnMessageBegin;
    stats.totalRequests++;
    stats.http1Requests++;
    if (this.tls) stats.tlsRequests++;
    if ((this.flags & (C_BROKEN | C_NO_MORE)) !== 0) return 0;
    if ((this.flags & C_CLOSE_AFTER) !== 0) {
      // The connection closes after the answer being written (a refusal with the request's body
      // unread, `connection: close`, a drain): nothing read after it will be answered, so it is
      // not forwarded either (a request sent upstream whose answer the client never sees).
      this.flags |= C_NO_MORE;
      this.parsing = null;
      return 0;
    }
    if (this.answering() && this.pending !== null && this.pending.length >= PIPELINE_MAX) {
      // This head and everything after it go unanswered; the connection closes after the queue.
      this.flags |= C_NO_MORE;
      this.parsing = null;
      return 0;
    }
    // llhttp accepts HTTP/0.9 and HTTP/2.0 request lines; a proxy must not forward either.
    if (major !== 1 || minor > 1) {
      this.broken(400, null);
      return 0;
    }
    if (raw.length / 2 > core.options.maxHeadersCount) {
      this.broken(431, null);
      return 0;
    }
    const method = METHODS[methodIndex] ?? 'GET';
    // llhttp counts only the target, names and values against maxHeaderSize; the limit is on the
    // whole head as sent (request line, fields, line ends), so a head of exactly maxHeaderSize
    // bytes passes and one byte more does not.
    const lineBytes = method.length + url.length + REQUEST_LINE_OVERHEAD;
    const maxHeaderSize = core.options.maxHeaderSize;
    if (lineBytes + fieldBytes(raw) > maxHeaderSize) {
      this.broken(lineBytes > maxHeaderSize ? 414 : 431, null);
      return 0;
    }
    const facts = emptyFacts();
    scanRequestHeaders(raw, core.viaToken, facts);
    if (facts.hostCount > 1 || (minor === 1 && facts.hostCount === 0)) {
      // RFC 9112 §3.2: exactly one Host in HTTP/1.1.
      this.broken(400, null);
      return 0;
    }
    let path = url;
    let host = facts.host;
    if (method === 'CONNECT') {
      host = url;
    } else if (url.charCodeAt(0) !== 47 /* / */ && url !== '*') {
      // Absolute form: its authority replaces Host (RFC 9112 §3.2.2); the upstream gets origin-form.
      const parsed = splitAbsoluteForm(url);
      if (parsed === null) {
        this.broken(400, null);
        return 0;
      }
      host = parsed.authority;
      path = parsed.path;
    }
    const bodyMode = facts.chunked ? BODY_CHUNKED : facts.contentLength !== undefined && facts.contentLength !== '0' ? BODY_LENGTH : BODY_NONE;
    const ex = new Exchange(core, this, method, path, raw, facts, host, this.clientAddress, this.proto, minor === 0 ? '1.0' : '1.1', bodyMode);
    if (!keepAlive || (minor === 0 && facts.chunked)) {
      // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing; it is
      // answered, and the connection closes after it whatever its `Connection` asks.
      ex.flags |= EX_CLIENT_CLOSE;
    }
    this.parsing = ex;
    if (upgrade && method !== 'CONNECT' && !facts.upgradeWebsocket) {
      // Only WebSocket upgrades are tunnelled. Any other `Upgrade` (h2c from `curl --http2`, ...)
      // is dropped as a hop-by-hop field and the request forwarded whole, body included.
      upgrade = false;
      this.flags |= C_NOT_UPGRADING;
      ex.flags |= EX_CLIENT_CLOSE;
    } else if (upgrade && method !== 'CONNECT' && bodyMode !== BODY_NONE) {
      // A WebSocket handshake has no body (RFC 6455 §4.1); with one, where the tunnel starts
      // would be the proxy's guess.
      this.parsing = null;
      this.broken(400, null);
      return 0;
    }
    if (upgrade && this.answering()) {
      // A WebSocket upgrade or CONNECT read behind other requests (or behind answers the client
      // has still to read): what follows its head is not HTTP. It goes unanswered like a head
      // past the pipelining bound; the requests read before it are still answered, the last of
      // them closing the connection.
      this.parsing = null;
      this.flags |= C_NO_MORE;
      return 0;
    }
    if (upgrade) {
      this.flags |= C_UPGRADING;
      if (method !== 'CONNECT') ex.flags |= EX_UPGRADE;
      ex.flags |= EX_REQUEST_ENDED;
      this.parser[kOnMessageComplete] = parserOnMessageComplete;
    } else if (bodyMode === BODY_NONE) {
      // Nothing follows the head (llhttp completes the message right after it): the request
      // is whole now, and llhttp need not call back into JS for its end.
      ex.flags |= EX_REQUEST_ENDED;
      this.parsing = null;
      this.parser[kOnMessageComplete] = null;
    } else {
      this.parser[kOnMessageComplete] = parserOnMessageComplete;
      // The exchange being answered, with a Content-Length body: a long rest of it may bypass
      // llhttp once this read is through (takeBody). Pipelined bodies stay with llhttp.
      if (bodyMode === BODY_LENGTH && this.lendable && this.current === null && (this.flags & C_NOT_UPGRADING) === 0) {
        this.bodyLeft = acceptedContentLength(facts.contentLength!);
      }
    }
    if (!this.answering()) {
      this.current = ex;
      this.startExchange(ex);
    } else {
      // Behind the one being answered, or behind answers the client has still to read (a
      // request read in the same read as one the proxy answered itself): drained() starts it.
      (this.pending ??= []).push(ex);
      this.pause(P_PIPELINE);
    }
    if (bodyMode === BODY_CHUNKED && !llhttpUpgrade && (this.flags & (C_BROKEN | C_CLOSED)) === 0) {
      // llhttp stops right after this head, so the session knows where the body starts in the
      // read; it goes on with kOnBody off (chunkedRead).
      this.flags |= C_CHUNK_PAUSED;
      return HPE_PAUSED;
    }
    return 0;
  }

  private startExchange(ex: Exchange): void {
    if ((ex.flags & EX_UPGRADE) !== 0) {
      if (!this.core.options.enableWebsockets) {
        ex.reject(501, ErrorCodes.WEBSOCKETS_DISABLED, 'websockets disabled');
        return;
      }
      this.core.stats.websocketsUpgradeTotal++;
    }
    if (ex.method === 'CONNECT') {
      this.startConnectTunnel(ex);
      return;
    }
    this.core.dispatch(ex);
  }

  /**
   * llhttp calls back once per chunk of a chunked body: a read of 1-byte chunks makes thousands.
   * The pieces of one read are collected and go upstream as one write when llhttp is through
   * the read (or at the message's end), whatever the chunk count.
   */
  onBody(chunk: Buffer): void {
    if (this.bodyLeft > 0) this.bodyLeft -= chunk.length;
    if (this.parsing === null) return;
    const first = this.bodyPiece;
    if (first === null) this.bodyPiece = chunk;
    else if (this.bodyPieces === null) this.bodyPieces = [first, chunk];
    else this.bodyPieces.push(chunk);
  }

  /** Sends the body pieces of the read being parsed (see onBody). */
  private flushBody(): void {
    const piece = this.bodyPiece;
    if (piece === null) return;
    const pieces = this.bodyPieces;
    this.bodyPiece = null;
    this.bodyPieces = null;
    const ex = this.parsing;
    if (ex !== null) ex.requestBody(pieces === null ? piece : Buffer.concat(pieces));
  }

  onMessageComplete(): void {
    this.bodyLeft = -1;
    const ex = this.parsing;
    if (ex === null) return;
    this.flushBody();
    this.parsing = null;
    const trailers = this.pendingHeaders;
    // Every per-message field starts empty for the next message.
    this.pendingHeaders = null;
    this.pendingUrl = '';
    if ((ex.flags & EX_UPGRADE) === 0 && ex.method !== 'CONNECT') ex.requestEnd(trailers);
  }

  /**
   * The chunked request heads of a read llhttp has parsed: llhttp paused right after each
   * (`HPE_PAUSED` at its body's offset) and the body is the scan's alone. A body that ends within
   * the read is followed by a fresh llhttp state for the rest of it; one that goes on makes the
   * socket's reads come to rawChunked. Returns the result of the last execute (`execBuf` is its
   * part of the read), or null when nothing more of the read is for llhttp.
   */
  private chunkedRead(ret: number | ParseError, buf: Buffer): number | ParseError | null {
    while ((this.flags & C_CHUNK_PAUSED) !== 0 && isParseError(ret) && ret.code === 'HPE_PAUSED') {
      this.flags &= ~C_CHUNK_PAUSED;
      if ((this.flags & (C_BROKEN | C_CLOSED | C_TUNNEL | C_IGNORING)) !== 0) return null;
      this.chunkEx = this.parsing;
      const options = this.core.options;
      (this.chunkScan ??= new ChunkedScan(options.maxHeaderSize, options.maxHeadersCount)).reset();
      const body = buf.subarray(ret.bytesParsed);
      // llhttp decides after the head callback whether the request is chunked at all
      // (`Transfer-Encoding: chunked;q=1` or `gzip` alone is refused): one byte of a chunk
      // size, not the client's, makes it decide. Its state is dropped at the body's end.
      const parser = this.parser;
      parser.resume();
      const probe = parser.execute(CHUNK_SIZE_PROBE);
      if (isParseError(probe)) {
        this.dropChunked();
        ret = probe;
        break;
      }
      const at = this.scanChunked(body);
      if (at === SCAN_MORE) {
        // The body goes on: the socket's reads come to the scan as they are, not through llhttp
        // (into reused buffers when the socket can read into them, else through its stream).
        this.flags |= C_CHUNK_RAW;
        if (this.lendable) this.takeBody();
        if (!this.raw) {
          this.raw = true;
          if (this.reads === null) this.unconsume();
        }
        return null;
      }
      if (at < 0) return null;
      buf = body.subarray(at);
      ret = buf.length === 0 ? 0 : this.parser.execute(buf);
    }
    this.execBuf = buf;
    return ret;
  }

  /**
   * A read of a chunked body that went on past the read that carried its head. A read into a
   * reused buffer (`lent`) is scanned in place: its data goes upstream as slices of it, lent to
   * the upstream writes, not copied out.
   */
  private rawChunked(chunk: Buffer, lent: ReadBuffer | null): void {
    const at = this.scanChunked(chunk, lent);
    if (at < 0) return;
    // The socket goes on reading through its stream: later heads reach llhttp as its 'data'
    // (a copy of what follows in a reused buffer, which is read into again).
    if (at < chunk.length) this.onData(lent !== null ? Buffer.from(chunk.subarray(at)) : chunk.subarray(at));
  }

  /**
   * Scans `buf` for the chunked body being read and sends its data upstream. Where the message
   * ends, the request ends and a fresh llhttp state takes what follows, as after any message:
   * returns the offset past that end. Negative when no more of `buf` is for llhttp: SCAN_MORE,
   * the framing refused (the request aborted, the client answered 400 or 431), or the request
   * was the connection's last (it asked to close, or the pipelining bound was reached).
   */
  private scanChunked(buf: Buffer, lent: ReadBuffer | null = null): number {
    const scan = this.chunkScan!;
    const at = scan.scan(buf, buf.length, lent !== null);
    const ex = this.chunkEx;
    if (at < 0 && at !== SCAN_MORE) {
      this.dropChunked();
      this.broken(at === SCAN_TOO_LARGE ? 431 : 400, null);
      return at;
    }
    if (lent === null) {
      const data = scan.take();
      if (ex !== null && data !== null) ex.requestBody(data);
    } else {
      // Each piece holds the buffer until its write is done (the exchange releases what it copies or drops).
      const pieces = scan.takeInPlace();
      if (ex !== null && pieces !== null) for (let i = 0; i < pieces.length; i++) ex.requestBody(pieces[i]!, lent.lend());
    }
    if (at === SCAN_MORE) return at;
    const trailers = scan.takeTrailers();
    const closeAsked = scan.closeAsked;
    this.dropChunked();
    if (this.parsing === ex) this.parsing = null;
    this.resetParser();
    const last = closeAsked || (ex !== null && (ex.flags & EX_CLIENT_CLOSE) !== 0);
    if (ex !== null && (ex.flags & EX_UPGRADE) === 0) ex.requestEnd(trailers);
    if ((this.flags & (C_CLOSED | C_BROKEN)) !== 0) return CHUNK_LAST;
    if (last || (this.flags & C_NO_MORE) !== 0) {
      // As llhttp after a message that asked to close: nothing more is a request.
      this.ignoreRest();
      return CHUNK_LAST;
    }
    return at;
  }

  /** A fresh llhttp state for what follows a body llhttp did not read to its end (raw bodies). */
  private resetParser(): void {
    this.parser.initialize(REQUEST, parserResource(this), this.core.options.maxHeaderSize, kLenientNone);
  }

  private dropChunked(): void {
    this.flags &= ~(C_CHUNK_PAUSED | C_CHUNK_RAW);
    this.raw = false;
    this.chunkEx = null;
    this.chunkScan?.reset();
  }

  // ---- flow control -------------------------------------------------------------------

  pause(reason: number): void {
    if (this.pauses === 0) {
      if (this.reads !== null) stopReadBuffers(this.socket);
      else stopReading(this.socket, this.handle);
    }
    this.pauses |= reason;
  }

  unpause(reason: number): void {
    if ((this.pauses & reason) === 0) return;
    this.pauses &= ~reason;
    if (this.pauses === 0 && (this.flags & C_CLOSED) === 0) {
      // A socket llhttp does not consume may have been stopped at its handle while it was.
      if (this.reads !== null || this.handle === null) resumeSocket(this.socket);
      else startReading(this.socket, this.handle);
    }
  }

  readBatch(): ReadBatch {
    return this;
  }

  /** An upstream read for the current response starts: what it produces leaves in one write. */
  beginBatch(): void {
    this.flags |= C_IN_BATCH;
  }

  endBatch(): boolean {
    this.flags &= ~C_IN_BATCH;
    this.flushHeldHead();
    const taken = this.flushBatchedChunks();
    if ((this.flags & C_SOCKET_CORKED) !== 0) {
      this.flags &= ~C_SOCKET_CORKED;
      this.socket.uncork();
    }
    return taken;
  }

  private flushHeldHead(): void {
    const head = this.heldHead;
    if (head === null) return;
    this.heldHead = null;
    if (!this.socket.destroyed) writeInTurn(this, head);
  }

  pauseRequest(): void {
    this.pause(P_BACKPRESSURE);
  }

  resumeRequest(): void {
    this.unpause(P_BACKPRESSURE);
  }

  // ---- ClientSide: responses ----------------------------------------------------------

  private willKeepAlive(ex: Exchange): boolean {
    return (
      (ex.flags & EX_CLIENT_CLOSE) === 0 &&
      !this.core.draining &&
      (this.flags & (C_CLOSE_AFTER | C_UPGRADING)) === 0 &&
      // After bad input, the pipelining bound or an upgrade head read behind other requests, the
      // requests queued before it are still answered; the last of them closes the connection.
      ((this.flags & (C_BROKEN | C_NO_MORE)) === 0 || (this.pending !== null && this.pending.length > 0)) &&
      ((ex.flags & EX_REQUEST_ENDED) !== 0 || ex.bodyMode === BODY_NONE)
    );
  }

  respond(ex: Exchange, status: number, statusMessage: string, raw: string[]): void {
    const facts = ex.responseFacts;
    let head = `HTTP/1.1 ${status} ${statusMessage}\r\n${filterResponseHeadersH1(raw, false, facts, status === 204)}`;
    let framing = FRAME_PASS;
    const noBody = ex.method === 'HEAD' || status === 204 || status === 304;
    if (!noBody && !facts.contentLength) {
      if (ex.clientVersion === '1.0') framing = FRAME_CLOSE;
      else {
        framing = FRAME_CHUNKED;
        head += 'transfer-encoding: chunked\r\n';
      }
    }
    ex.clientState = framing;
    if (framing === FRAME_CLOSE) this.flags |= C_CLOSE_DELIMITED;
    if (framing === FRAME_CLOSE || !this.willKeepAlive(ex)) {
      this.flags |= C_CLOSE_AFTER;
      head += 'connection: close\r\n\r\n';
    } else {
      head += ex.clientVersion === '1.0' ? 'connection: keep-alive\r\n\r\n' : '\r\n';
    }
    this.core.stats.countStatus(status);
    if ((this.flags & C_IN_BATCH) === 0 || noBody) {
      writeInTurn(this, head);
    } else if (framing === FRAME_PASS) {
      // The body usually follows in the same read: head and body then go as one string.
      this.heldHead = head;
    } else {
      if ((this.flags & C_SOCKET_CORKED) === 0) {
        this.flags |= C_SOCKET_CORKED;
        this.socket.cork();
      }
      this.socket.write(head, 'latin1');
    }
  }

  interim(ex: Exchange, status: number, statusMessage: string, raw: string[]): void {
    if (ex.clientVersion === '1.0') return; // RFC 9110 §15.2: no 1xx to HTTP/1.0 clients
    this.socket.write(`HTTP/1.1 ${status} ${statusMessage}\r\n${filterResponseHeadersH1(raw, false, ex.responseFacts, true)}\r\n`, 'latin1');
  }

  writeBody(ex: Exchange, chunk: Buffer, lease: BodyLease | null): boolean {
    const socket = this.socket;
    if (socket.destroyed) {
      lease?.release();
      return true;
    }
    // A lent chunk is released by its write's callback: until then the socket may still read it.
    if (lease !== null) lease.holder = socket;
    const done = lease === null ? undefined : lease.release;
    const head = this.heldHead;
    if (head !== null) {
      this.heldHead = null;
      if (chunk.length <= JOIN_BODY_MAX) {
        if (done === undefined) return writeInTurn(this, head + chunk.toString('latin1'));
        return socket.write(head + chunk.toString('latin1'), 'latin1', done);
      }
      socket.cork();
      socket.write(head, 'latin1');
      const ok = socket.write(chunk, done);
      socket.uncork();
      return ok;
    }
    if (ex.clientState !== FRAME_CHUNKED) return socket.write(chunk, done);
    if ((this.flags & C_IN_BATCH) !== 0 && chunk.length <= BATCHED_CHUNK_MAX && done === undefined) {
      // A small chunk of an upstream read being parsed joins the read's others in one string,
      // written once the read is through (endBatch) or past BATCHED_TEXT_MAX: an answer of
      // 1-byte chunks cost three writes per byte (Node's Writable, then writev, per piece).
      this.batchedChunks += `${chunk.length.toString(16)}\r\n${chunk.toString('latin1')}\r\n`;
      return this.batchedChunks.length < BATCHED_TEXT_MAX || this.flushBatchedChunks();
    }
    this.flushBatchedChunks();
    socket.cork();
    socket.write(`${chunk.length.toString(16)}\r\n`, 'latin1');
    socket.write(chunk, done);
    const ok = socket.write('\r\n', 'latin1');
    socket.uncork();
    return ok;
  }

  /** Writes the small chunks batched from the current upstream read (see writeBody); false: wait for 'drain'. */
  private flushBatchedChunks(): boolean {
    const text = this.batchedChunks;
    if (text.length === 0) return true;
    this.batchedChunks = '';
    return this.socket.destroyed || this.socket.write(text, 'latin1');
  }

  end(ex: Exchange, trailers: string[] | null): void {
    this.flushHeldHead();
    this.flushBatchedChunks();
    if (ex.clientState === FRAME_CHUNKED && !this.socket.destroyed) {
      writeInTurn(this, trailers === null ? '0\r\n\r\n' : `0\r\n${trailerLines(trailers, false)}\r\n`);
    }
  }

  fail(ex: Exchange, status: number, code: string, message: string): void {
    const stats = this.core.stats;
    stats.proxyErrorResponses++;
    stats.countStatus(status);
    if (this.core.log.debugEnabled) this.core.log.debug(`h1 ${ex.method} ${ex.path} -> ${status} ${code}`);
    if ((this.flags & C_CLOSED) !== 0) return;
    this.flushHeldHead();
    const keepAlive = this.willKeepAlive(ex);
    if (!keepAlive || (ex.flags & EX_UPGRADE) !== 0 || ex.method === 'CONNECT') {
      this.flags |= C_CLOSE_AFTER;
      this.socket.write(errorResponse(status, message, false, ex.answerHeaders), 'latin1');
    } else {
      this.socket.write(errorResponse(status, message, true, ex.answerHeaders), 'latin1');
    }
  }

  reset(): void {
    // HTTP/1.1 has no per-response reset: closing without the final chunk (or short of
    // Content-Length) is how the client learns the body is incomplete.
    this.heldHead = null;
    this.batchedChunks = '';
    this.destroySocket();
  }

  upgraded(ex: Exchange, conn: UpstreamConn, status: number, statusMessage: string, raw: string[], rest: Buffer): void {
    const socket = this.socket;
    this.core.stats.countStatus(status);
    this.flags |= C_TUNNEL;
    this.current = null;
    this.detach();
    socket.write(`HTTP/1.1 ${status} ${statusMessage}\r\n${filterResponseHeadersH1(raw, true, ex.responseFacts, true)}\r\n`, 'latin1');
    if (rest.length > 0) socket.write(rest);
    const upstream = conn.socket;
    const early = this.upgradeRest;
    this.sendEarlyData(upstream);
    const tunnel = this.openTunnel(upstream, TUNNEL_WEBSOCKET, ex);
    tunnel.forwardedEarly(false, rest);
    tunnel.forwardedEarly(true, early);
  }

  /** What the client sent after its upgrade or CONNECT head, and its FIN if it came already. */
  private sendEarlyData(upstream: net.Socket): void {
    const early = this.upgradeRest;
    this.upgradeRest = null;
    if (early !== null) upstream.write(early);
    if ((this.flags & C_CLIENT_ENDED) !== 0) upstream.end();
  }

  private openTunnel(upstream: net.Socket, kind: number, ex: Exchange): Tunnel {
    // The tunnel writes and ends the socket through its stream: nothing may wait for the turn.
    flushTurnWrite(this);
    const { keepaliveMs } = this.core.options;
    configureTunnelSocket(this.socket, keepaliveMs);
    configureTunnelSocket(upstream, keepaliveMs);
    // Before the splice: the tunnel adopts the socket's one 'close' listener this leaves.
    this.host.tunnelOpened(this.socket);
    const tunnel = new Tunnel(this.socket, upstream, kind, this.core.stats, this.core.websockets, undefined, true);
    const observer = this.core.observer;
    if (observer !== null) {
      tunnel.record = observer.tunnelOpened(kind === TUNNEL_WEBSOCKET ? TUNNEL_KIND_WEBSOCKET : TUNNEL_KIND_CONNECT, ex.t0, observer.tunnelInfo(ex));
    }
    if (kind === TUNNEL_WEBSOCKET && websocketOpen.hasSubscribers) websocketOpen.publish({ request: ex.diagRequest(), target: ex.target!.key });
    if (requestEnd.hasSubscribers || websocketClose.hasSubscribers) {
      tunnel.diag = ex.diagRequest();
      tunnel.diagStatus = ex.status;
    }
    this.socket.resume();
    upstream.resume();
    return tunnel;
  }

  /** Removes this session's listeners: the socket now belongs to a tunnel. */
  private detach(): void {
    const socket = this.socket;
    this.host.headTimer.disarm(this);
    this.unconsume();
    this.pauses = 0;
    socket.removeListener('end', socketOnEnd);
    socket.removeListener('data', socketOnData);
    socket.removeListener('drain', socketOnDrain);
    socket.removeListener('timeout', socketOnTimeout);
    socket.removeListener('error', socketOnError);
    socket.removeListener('close', socketOnClose);
    this.host.h1Closed(this);
    closeParserLater(this.parser);
    // Nothing on the socket calls back into this session any more: let it go (a tunnel may
    // live for hours). Assigned, not deleted, so the socket keeps its shape.
    (socket as net.Socket & { [kH1]?: H1Connection })[kH1] = undefined;
  }

  /** CONNECT host:port -> the routed target, 200, then splice. */
  private startConnectTunnel(ex: Exchange): void {
    const core = this.core;
    const limited = core.rateLimited(ex.clientAddress);
    if (limited !== null) {
      ex.answerHeaders = limited;
      ex.reject(429, ErrorCodes.TOO_MANY_REQUESTS, 'too many requests');
      return;
    }
    const target = core.connectTarget(ex.facts, ex.host ?? '');
    if (isRouteError(target)) {
      ex.reject(target.status, target.code, target.message);
      return;
    }
    ex.target = target;
    if (requestRoute.hasSubscribers) requestRoute.publish({ request: ex.diagRequest(), target: target.key, route: 'connect' });
    // The tunnel's socket counts against maxSocketsPerUpstream like any upstream socket.
    core.pool.openTunnel(target, this);
  }

  /** The pool's answer for this connection's CONNECT: a socket being opened, or no slot in time. */
  onTunnelSocket(upstream: net.Socket | null, code: string): void {
    const ex = this.current;
    if (upstream === null) {
      if (ex !== null && (ex.flags & EX_FINISHED) === 0 && ex.method === 'CONNECT') ex.failUpstream(code);
      return;
    }
    if ((this.flags & C_CLOSED) !== 0 || ex === null || (ex.flags & EX_FINISHED) !== 0) {
      upstream.destroy();
      return;
    }
    ex.clientState = upstream;
    upstream.setTimeout(this.core.options.upstreamConnectTimeoutMs);
    upstream.on('connect', connectTunnelOnConnect);
    upstream.on('error', connectTunnelOnError);
    upstream.on('timeout', connectTunnelOnTimeout);
    (upstream as net.Socket & { [kH1]?: H1Connection })[kH1] = this;
  }

  connectTunnelReady(upstream: net.Socket): void {
    upstream.removeListener('connect', connectTunnelOnConnect);
    upstream.removeListener('error', connectTunnelOnError);
    upstream.removeListener('timeout', connectTunnelOnTimeout);
    (upstream as net.Socket & { [kH1]?: H1Connection })[kH1] = undefined;
    const ex = this.current;
    if ((this.flags & C_CLOSED) !== 0 || ex === null) {
      upstream.destroy();
      return;
    }
    ex.flags |= EX_FINISHED;
    ex.status = 200;
    if (ex.span !== null) ex.endSpan();
    if (upstreamConnect.hasSubscribers) upstreamConnect.publish({ request: ex.diagRequest(), target: ex.target!.key, protocol: 'tcp', reused: false });
    this.core.stats.countStatus(200);
    this.flags |= C_TUNNEL;
    this.current = null;
    this.detach();
    this.socket.write('HTTP/1.1 200 Connection Established\r\n\r\n', 'latin1');
    this.sendEarlyData(upstream);
    this.openTunnel(upstream, TUNNEL_CONNECT, ex);
  }

  connectTunnelFailed(upstream: net.Socket, code: string): void {
    upstream.destroy();
    const ex = this.current;
    if (ex === null || (ex.flags & EX_FINISHED) !== 0) return;
    ex.failUpstream(code);
  }

  done(ex: Exchange): void {
    if (ex !== this.current) return;
    this.current = null;
    if ((this.flags & C_CLOSED) !== 0) return;
    this.flushHeldHead();
    // The exchange may have paused reading for its body (queued while the upstream connected,
    // or upstream backpressure) and then failed: its pause ends with it.
    this.unpause(P_BACKPRESSURE);
    this.afterAnswer();
  }

  /**
   * What follows a finished answer: the close it asked for, the next queued request, or reading
   * on. A client that reads its answers slower than they come (writes wait for 'drain') gets
   * nothing more started and nothing more read until it catches up: else a client pipelining
   * requests it never reads the answers to would have every answer held in the proxy's memory.
   */
  private afterAnswer(): void {
    if ((this.flags & C_CLOSE_AFTER) !== 0) {
      // The answer to bad input read behind this request follows it, unless the response ends
      // with the close (HTTP/1.0, no length): then anything more would read as its body.
      if ((this.flags & (C_BROKEN | C_CLOSE_DELIMITED)) === C_BROKEN) this.sendBrokenAndClose();
      else this.closeWith('');
      return;
    }
    if ((this.flags & C_UPGRADING) !== 0) {
      // After a refused upgrade head nothing more is HTTP.
      this.closeWith('');
      return;
    }
    if (writeBacklogged(this.socket)) {
      this.flags |= C_WAIT_DRAIN;
      this.pause(P_DRAIN);
      return;
    }
    const next = this.pending?.shift();
    if (next !== undefined) {
      this.current = next;
      // The last queued request reads on only for a body still to come. One already whole keeps
      // the socket paused until it is answered: requests pipelined meanwhile are then read and
      // parsed together in one read, not one read each as they trickle in.
      if (this.pending!.length === 0 && (this.flags & C_NO_MORE) === 0 && (next.flags & EX_REQUEST_ENDED) === 0) this.unpause(P_PIPELINE);
      this.startExchange(next);
      return;
    }
    // Requests queued before bad input were answered: now the answer to the bad input.
    if ((this.flags & C_BROKEN) !== 0) {
      this.sendBrokenAndClose();
      return;
    }
    // Past the pipelining bound or after the client's FIN (C_IGNORING implies C_NO_MORE).
    if ((this.flags & C_IGNORING) !== 0 && this.parsing === null) {
      this.closeWith('');
      return;
    }
    this.unpause(P_PIPELINE);
    if (this.parsing === null) {
      this.flags |= C_HEAD_PENDING;
      this.parser[kOnMessageBegin] = null;
      this.host.headTimer.arm(this, this.core.options.requestHeadersTimeoutMs);
    }
  }

  /**
   * Whether a request read now goes behind others: one is being answered, or answers wait for
   * the client to read them (C_WAIT_DRAIN; drained() goes on).
   */
  private answering(): boolean {
    return this.current !== null || (this.flags & C_WAIT_DRAIN) !== 0;
  }

  /** The client read what was written: the answer that waited for it goes on. */
  drained(): void {
    if ((this.flags & (C_WAIT_DRAIN | C_CLOSED)) !== C_WAIT_DRAIN || this.current !== null) return;
    this.flags &= ~C_WAIT_DRAIN;
    this.unpause(P_DRAIN);
    this.afterAnswer();
  }

  /** `stop()`: close now if idle, else after the current response. */
  drain(): void {
    if ((this.flags & (C_CLOSED | C_TUNNEL)) !== 0) return;
    if (this.current === null && this.parsing === null) this.closeWith('');
    else this.flags |= C_CLOSE_AFTER;
  }

  onClose(): void {
    this.flags |= C_CLOSED;
    this.raw = false;
    // The handle is closed: its read buffers can serve other sockets once released.
    this.reads?.retire();
    this.host.headTimer.disarm(this);
    const ex = this.current;
    this.current = null;
    if (ex !== null && (ex.flags & EX_FINISHED) === 0) {
      if (ex.method === 'CONNECT' && ex.clientState instanceof net.Socket) ex.clientState.destroy();
      else if (ex.method === 'CONNECT' && ex.target !== null) this.core.pool.cancelTunnel(ex.target, this);
      ex.abort();
    }
    const pending = this.pending;
    this.pending = null;
    if (pending !== null) for (const p of pending) p.discard();
    if (this.handle !== null) {
      releaseHandle(this.parser, this.handle);
      this.handle = null;
    }
    closeParserLater(this.parser);
    this.host.h1Closed(this);
  }

  /** The client sent FIN. */
  onEnd(): void {
    const flags = this.flags;
    if ((flags & (C_CLOSED | C_TUNNEL)) !== 0) return;
    if (this.raw) {
      // Short of its Content-Length: the upstream must not get a complete-looking request.
      this.destroySocket();
      return;
    }
    if ((flags & C_UPGRADING) !== 0) {
      // `CONNECT ... \r\n\r\n<early data>` then FIN: the early data goes upstream, then the FIN.
      const ex = this.current;
      if (ex === null || ((ex.flags & EX_UPGRADE) === 0 && ex.method !== 'CONNECT')) {
        this.destroySocket();
        return;
      }
      this.flags |= C_CLIENT_ENDED;
      if ((ex.flags & EX_UPGRADE) !== 0) {
        // The upgrade head is upstream already: the rest follows it now. Still queued for a
        // socket: the client gave up waiting. Connecting: the rest goes with the head's answer.
        if (ex.conn !== null) this.sendEarlyData(ex.conn.socket);
        else if (ex.connecting === null) this.destroySocket();
      }
      return;
    }
    if ((flags & (C_BROKEN | C_CLOSE_AFTER | C_IGNORING)) === 0 && isParseError(this.parser.finish())) {
      // A request cut short (head or body) must not reach the upstream as if whole. One that
      // never started is dropped and those before it are still answered; one whose body was
      // already going upstream is aborted with the connection.
      const parsing = this.parsing;
      if (this.current === null || parsing === this.current) {
        this.destroySocket();
        return;
      }
      if (parsing !== null) {
        this.dropPipelined(parsing);
        this.parsing = null;
      }
    }
    this.flags |= C_NO_MORE | C_IGNORING;
    if (this.current === null && (flags & C_CLOSE_AFTER) === 0) this.closeWith('');
  }

  onTimeout(): void {
    // Idle: nothing in flight and nothing received for clientIdleTimeoutMs.
    if (this.current === null && this.parsing === null) {
      this.core.stats.clientIdleTimeouts++;
      this.destroySocket();
    }
  }
}

function discard(): void {}

/** `<method> <target> HTTP/1.1\r\n` beyond the method and target, plus the head's final CRLF. */
const REQUEST_LINE_OVERHEAD = 1 + 1 + 8 + 2 + 2;

/** Bytes of the header lines as sent in canonical form (`name: value\r\n` each). */
function fieldBytes(raw: readonly string[]): number {
  let bytes = 0;
  for (let i = 0; i < raw.length; i++) bytes += raw[i]!.length;
  return bytes + raw.length * 2;
}


function splitAbsoluteForm(url: string): { authority: string; path: string } | null {
  const scheme = url.indexOf('://');
  if (scheme === -1) return null;
  const s = url.slice(0, scheme).toLowerCase();
  if (s !== 'http' && s !== 'https' && s !== 'ws' && s !== 'wss') return null;
  const rest = url.slice(scheme + 3);
  let end = rest.length;
  for (let i = 0; i < rest.length; i++) {
    const c = rest.charCodeAt(i);
    if (c === 47 || c === 63 || c === 35) {
      end = i;
      break;
    }
  }
  const authority = rest.slice(0, end);
  if (authority === '' || authority.includes('@')) return null;
  let path = rest.slice(end);
  if (path === '' || path.charCodeAt(0) !== 47) path = `/${path}`;
  return { authority, path };
}

// ---- module-level listeners (no closure per connection or request) ------------------------

function parserOnMessageBegin(this: RequestParser): void {
  const conn = this.conn;
  if ((conn.flags & C_HEAD_PENDING) === 0) {
    conn.flags |= C_HEAD_PENDING;
    this[kOnMessageBegin] = null;
    conn.host.headTimer.arm(conn, conn.core.options.requestHeadersTimeoutMs);
  }
}

function parserOnHeaders(this: RequestParser, headers: string[], url: string | undefined): void {
  const conn = this.conn;
  // Trailers come with the request's URL again (the binding keeps it until the next message
  // begins): only a head still being received adds to the target, or the next request's
  // target would start with this one's.
  if (url && conn.parsing === null) conn.pendingUrl += url;
  conn.pendingHeaders = conn.pendingHeaders === null ? headers : conn.pendingHeaders.concat(headers);
  if (conn.pendingHeaders.length / 2 > conn.core.options.maxHeadersCount) {
    conn.pendingHeaders = null;
    conn.broken(431, null);
  }
}

function parserOnHeadersComplete(
  this: RequestParser,
  major: number,
  minor: number,
  headers: string[] | undefined,
  method: number,
  url: string | undefined,
  _status: number,
  _statusMessage: string,
  upgrade: boolean,
  keepAlive: boolean,
): number {
  return this.conn.onHeadersComplete(major, minor, headers, method, url, upgrade, keepAlive);
}

function parserOnBody(this: RequestParser, chunk: Buffer): void {
  this.conn.onBody(chunk);
}

function parserOnMessageComplete(this: RequestParser): void {
  this.conn.onMessageComplete();
}

function socketOnEnd(this: ClientSocket): void {
  this[kH1].onEnd();
}

function socketOnData(this: ClientSocket, chunk: Buffer): void {
  const conn = this[kH1];
  if (conn.raw) conn.rawBody(chunk, null);
  else conn.onData(chunk);
}

/**
 * A read of a client socket whose handle reads into caller buffers (`this` is the socket). A
 * request body being relayed takes the read as it is, lent with its buffer when it is long
 * enough; anything else (heads, other bodies, a tunnel's bytes) leaves as a copy through the
 * stream, as Node's own read path would hand it out.
 */
function clientOnLentRead(this: net.Socket, nread: number, buf: Buffer): boolean {
  const conn = (this as net.Socket & { [kH1]?: H1Connection })[kH1];
  if (conn !== undefined && conn.raw && this.readableLength === 0) {
    const lent = conn.reads === null ? null : conn.reads.current;
    if (lent !== null && lent.buf === buf && nread >= LEND_MIN) conn.rawBody(buf.subarray(0, nread), lent);
    else conn.rawBody(copyRead(buf, nread), null);
    return true;
  }
  return this.push(copyRead(buf, nread));
}

/** Where the client socket's next read goes: see ReadRing.next. */
function nextClientRead(socket: net.Socket): Buffer {
  const conn = (socket as net.Socket & { [kH1]?: H1Connection })[kH1];
  const reads = conn === undefined ? null : conn.reads;
  if (reads === null) return PARKING;
  if (!conn!.raw || socket.destroyed) {
    reads.retire();
    return PARKING;
  }
  return reads.next();
}

/** Stops a socket that reads into caller buffers: at its handle (body reads) and its stream. */
function stopReadBuffers(socket: net.Socket): void {
  socket.pause();
  const handle = (socket as unknown as { _handle?: StreamHandle | null })._handle;
  if (handle !== null && handle !== undefined) stopReading(socket, handle);
}

function parserOnExecute(this: RequestParser, ret: number | ParseError): void {
  this.conn.onExecuted(ret);
}

function socketOnDrain(this: ClientSocket): void {
  const conn = this[kH1];
  const ex = conn.current;
  if (ex !== null) ex.clientDrained();
  else conn.drained();
}

function socketOnTimeout(this: ClientSocket): void {
  const conn = this[kH1];
  if ((conn.flags & C_CLOSE_AFTER) !== 0 && conn.current === null) {
    this.destroy();
    return;
  }
  conn.onTimeout();
}

function socketOnError(this: ClientSocket): void {
  // 'close' follows; the exchange is torn down there.
}

function socketOnClose(this: ClientSocket): void {
  this[kH1].onClose();
}

function connectTunnelOnConnect(this: net.Socket & { [kH1]: H1Connection }): void {
  this[kH1].connectTunnelReady(this);
}

function connectTunnelOnError(this: net.Socket & { [kH1]: H1Connection }, err: NodeJS.ErrnoException): void {
  this[kH1].connectTunnelFailed(this, err.code ?? 'UPSTREAM_ERROR');
}

function connectTunnelOnTimeout(this: net.Socket & { [kH1]: H1Connection }): void {
  this[kH1].connectTunnelFailed(this, 'CONNECT_TIMEOUT');
}
