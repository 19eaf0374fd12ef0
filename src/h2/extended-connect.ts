import type http2 from 'node:http2';
import type net from 'node:net';
import { buildUpstreamRequestHead, responseHeadersH2, type RequestHeadFacts, type ResponseHeadFacts } from '../headers.js';
import type { ProxyCore, Routable } from '../proxy-core.js';
import { isRouteError } from '../route/router.js';
import type { Target } from '../route/target.js';
import { upstreamFailureAnswer } from '../errors.js';
import { crypto } from '../builtins.js';
import { HTTP2_HEADER_STATUS } from './constants.js';
import type { TunnelUser } from '../upstream/h1-pool.js';
import { readyEvent, upstreamErrorCode } from '../upstream/connect.js';
import { TUNNEL_CONNECT, TUNNEL_WEBSOCKET, Tunnel, configureTunnelSocket } from '../tunnel.js';
import { TUNNEL_KIND_CONNECT, TUNNEL_KIND_WEBSOCKET, routeKind, type TunnelInfo } from '../observe.js';
import {
  diagnosticsRequest,
  publishEnd,
  requestEnd,
  requestError,
  requestStart,
  responseHeaders,
  upstreamConnect,
  websocketClose,
  websocketOpen,
  type DiagnosticsRequest,
} from '../diagnostics.js';
import {
  parserResource,
  Parser,
  RESPONSE,
  closeParserLater,
  isParseError,
  kLenientNone,
  kOnBody,
  kOnHeaders,
  kOnHeadersComplete,
  kOnMessageComplete,
  type HTTPParser,
} from '../h1/parser.js';
import { resetStream, respondError } from './session.js';
import { readableHeld } from '../held-memory.js';
import { OUTCOME_NEUTRAL, holdMemberUntilClose, type GroupMember } from '../upstream/group.js';

const WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

const kBridge = Symbol('cmux.h2.bridge');
type BridgeSocket = net.Socket & { [kBridge]: WebSocketBridge | ConnectTunnel };
type BridgeStream = http2.ServerHttp2Stream & { [kBridge]?: WebSocketBridge | ConnectTunnel };
type BridgeParser = HTTPParser & { bridge: WebSocketBridge };

/**
 * HTTP/2 CONNECT: RFC 8441 extended CONNECT with `:protocol websocket` is bridged to
 * an HTTP/1.1 Upgrade on the upstream (the proxy makes the Sec-WebSocket-Key and checks the
 * Accept), then the stream and the upstream socket are spliced raw. Plain CONNECT opens a
 * tunnel to the routed target.
 */
export function startExtendedConnect(
  core: ProxyCore,
  stream: http2.ServerHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  raw: string[],
  facts: RequestHeadFacts,
  clientAddress: string,
  tls: boolean,
): void {
  const protocol = headers[':protocol'];
  const stats = core.stats;
  if (protocol === undefined) {
    const authority = headers[':authority'] ?? '';
    const limited = core.rateLimited(clientAddress);
    if (limited !== null) {
      answer(core, stream, 429, 'too many requests', limited);
      return;
    }
    const target = core.connectTarget(facts, authority);
    if (isRouteError(target)) {
      answer(core, stream, target.status, target.message);
      return;
    }
    new ConnectTunnel(core, stream as BridgeStream, target, core.requestIdFor(facts));
    return;
  }
  if (protocol !== 'websocket') {
    // The value is the client's: never echoed.
    answer(core, stream, 501, 'unsupported :protocol');
    return;
  }
  if (!core.options.enableWebsockets) {
    answer(core, stream, 501, 'websockets disabled');
    return;
  }
  stats.websocketsExtendedConnectTotal++;
  const bridge = new WebSocketBridge(core, stream as BridgeStream, headers, raw, facts, clientAddress, tls);
  core.dispatch(bridge);
}

function answer(core: ProxyCore, stream: http2.ServerHttp2Stream, status: number, message: string, extra: readonly string[] | null = null): void {
  core.stats.proxyErrorResponses++;
  core.stats.countStatus(status);
  respondError(stream, status, message, extra);
}

function upstreamFailure(core: ProxyCore, stream: http2.ServerHttp2Stream, code: string): void {
  core.countUpstreamFailure(code);
  const { status, message } = upstreamFailureAnswer(code);
  answer(core, stream, status, message);
}

/** One RFC 8441 WebSocket: h2 stream <-> HTTP/1.1 Upgrade on a fresh upstream socket. */
class WebSocketBridge implements Routable, TunnelUser {
  readonly core: ProxyCore;
  readonly stream: BridgeStream;
  readonly facts: RequestHeadFacts;
  readonly host: string | undefined;
  readonly raw: string[];
  readonly path: string;
  readonly method = 'CONNECT';
  readonly clientAddress: string;
  /** The route-group upstream: counted in its load until the upstream socket closes. */
  member: GroupMember | null = null;
  answerHeaders: string[] | null = null;
  grouped = false;
  private readonly tls: boolean;
  private readonly key = crypto().randomBytes(16).toString('base64');
  private socket: BridgeSocket | null = null;
  private target: Target | null = null;
  private parser: BridgeParser | null = null;
  private pendingHeaders: string[] | null = null;
  /** 0 routing/connecting, 1 waiting for the upstream's answer, 2 relaying a non-101 answer, 3 spliced, 4 over */
  private phase = 0;
  private readonly responseFacts: ResponseHeadFacts = { contentLength: false, keepAliveTimeoutSec: 0 };
  /** performance.now() at the request head (observer only, else 0). */
  readonly t0: number;
  readonly requestId: string;
  /** The status the client got (or is getting), for the diagnostics channels. */
  private status = 0;
  private diag: DiagnosticsRequest | null = null;
  /** `request:end` published (or nobody subscribed when it ended). */
  private diagEnded = false;

  constructor(core: ProxyCore, stream: BridgeStream, headers: http2.IncomingHttpHeaders, raw: string[], facts: RequestHeadFacts, clientAddress: string, tls: boolean) {
    this.core = core;
    this.stream = stream;
    this.facts = facts;
    this.host = headers[':authority'] ?? headers['host'];
    this.raw = raw;
    this.path = headers[':path'] ?? '/';
    this.clientAddress = clientAddress;
    this.tls = tls;
    this.t0 = core.observer === null ? 0 : performance.now();
    this.requestId = core.requestIdFor(facts);
    stream[kBridge] = this;
    stream.on('close', bridgeStreamOnClose);
    if (requestStart.hasSubscribers) requestStart.publish({ request: this.diagRequest() });
  }

  diagRequest(): DiagnosticsRequest {
    return (this.diag ??= diagnosticsRequest(this.requestId, this.method, this.host, this.path, '2', this.tls, this.clientAddress));
  }

  /** Over before it became a WebSocket: `request:error` (when `code` is set) and `request:end`. */
  private diagEnd(status: number, code: string): void {
    if (this.diagEnded) return;
    this.diagEnded = true;
    if (requestEnd.hasSubscribers || requestError.hasSubscribers) publishEnd(this.diagRequest(), status, code, 0, 0);
  }

  get finished(): boolean {
    return this.phase >= 3;
  }

  reject(status: number, code: string, message: string): void {
    if (this.phase >= 3) return;
    this.phase = 4;
    answer(this.core, this.stream, status, message, this.answerHeaders);
    this.diagEnd(status, code);
  }

  start(target: Target): void {
    if (this.phase !== 0 || this.stream.destroyed) {
      this.releaseMember();
      return;
    }
    this.target = target;
    // The upstream socket counts against maxSocketsPerUpstream like any other.
    this.core.pool.openTunnel(target, this, this.host);
  }

  /** The member's load, given back when no upstream socket will hold it. */
  private releaseMember(): void {
    const member = this.member;
    if (member === null) return;
    this.member = null;
    member.group.finish(member, OUTCOME_NEUTRAL);
  }

  onTunnelSocket(upstream: net.Socket | null, code: string): void {
    const member = this.member;
    if (member !== null) {
      this.member = null;
      if (upstream === null) member.group.finish(member, OUTCOME_NEUTRAL);
      else holdMemberUntilClose(upstream, member);
    }
    if (upstream === null) {
      if (this.phase === 0) {
        this.phase = 4;
        upstreamFailure(this.core, this.stream, code);
      }
      return;
    }
    if (this.phase !== 0 || this.stream.destroyed) {
      upstream.destroy();
      return;
    }
    const socket = upstream as BridgeSocket;
    socket[kBridge] = this;
    this.socket = socket;
    // Over TLS the upgrade request goes once the handshake is through: the connect timeout covers both.
    socket.setTimeout(this.core.options.upstreamConnectTimeoutMs);
    socket.on(readyEvent(this.target!), bridgeSocketOnConnect);
    socket.on('error', bridgeSocketOnError);
    socket.on('timeout', bridgeSocketOnTimeout);
    socket.on('data', bridgeSocketOnData);
    socket.on('close', bridgeSocketOnClose);
  }

  connected(): void {
    const socket = this.socket!;
    const options = this.core.options;
    socket.setTimeout(options.upstreamResponseTimeoutMs);
    this.phase = 1;
    const raw = this.raw.slice();
    raw.push('upgrade', 'websocket', 'sec-websocket-key', this.key);
    if (!raw.some((name, i) => i % 2 === 0 && name === 'sec-websocket-version')) raw.push('sec-websocket-version', '13');
    const host = this.core.forwardHost(this, this.target!);
    const head = buildUpstreamRequestHead('GET', this.path, raw, this.facts.connectionTokens, {
      host,
      forwardedHost: this.host ?? host,
      clientAddress: this.clientAddress,
      proto: this.tls ? 'https' : 'http',
      viaEntry: this.core.viaEntryH2,
      upgrade: true,
      chunked: false,
      requestId: this.requestId,
    });
    if (upstreamConnect.hasSubscribers) upstreamConnect.publish({ request: this.diagRequest(), target: this.target!.key, protocol: 'http1', reused: false });
    const parser = new Parser() as BridgeParser;
    parser.initialize(RESPONSE, parserResource(this), options.maxHeaderSize, kLenientNone);
    parser.bridge = this;
    parser[kOnHeaders] = bridgeParserOnHeaders;
    parser[kOnHeadersComplete] = bridgeParserOnHeadersComplete;
    parser[kOnBody] = bridgeParserOnBody;
    parser[kOnMessageComplete] = bridgeParserOnMessageComplete;
    this.parser = parser;
    socket.write(head, 'latin1');
  }

  /** Connected and the upgrade request sent (a timeout now means no answer, not no connection). */
  connectedOnce(): boolean {
    return this.phase >= 1;
  }

  onData(chunk: Buffer): void {
    const parser = this.parser;
    if (parser === null || this.phase >= 3) return;
    const ret = parser.execute(chunk);
    if (isParseError(ret)) {
      this.fail('BAD_RESPONSE');
      return;
    }
    if (this.phase === 3) {
      // llhttp stopped after the 101 head: the rest is WebSocket data.
      this.splice(ret < chunk.length ? chunk.subarray(ret) : null);
    }
  }

  onHeaders(headers: string[]): void {
    this.pendingHeaders = this.pendingHeaders === null ? headers : this.pendingHeaders.concat(headers);
  }

  onHeadersComplete(headers: string[] | undefined, status: number, upgrade: boolean): number {
    const raw = headers ?? this.pendingHeaders ?? [];
    this.pendingHeaders = null;
    if (status < 200 && status !== 101) return 0;
    const stream = this.stream;
    if (status === 101) {
      const accept = headerValue(raw, 'sec-websocket-accept');
      const expected = crypto().createHash('sha1').update(this.key + WEBSOCKET_GUID).digest('base64');
      if (!upgrade || accept !== expected) {
        this.fail('BAD_HANDSHAKE');
        return 0;
      }
      const out = responseHeadersH2(raw, 200, this.responseFacts);
      delete out['sec-websocket-accept'];
      out[HTTP2_HEADER_STATUS] = 200;
      try {
        stream.respond(out);
      } catch {
        this.fail('BAD_RESPONSE');
        return 0;
      }
      this.core.stats.countStatus(200);
      this.status = 200;
      if (responseHeaders.hasSubscribers) responseHeaders.publish({ request: this.diagRequest(), status, headers: raw });
      this.phase = 3;
      return 0;
    }
    if (status < 300) {
      // A 2xx to extended CONNECT means the tunnel is open (RFC 8441 §5): an upstream that
      // answered the upgrade with 200 and a body refused it, and its body must not arrive as
      // WebSocket data.
      this.fail('BAD_HANDSHAKE');
      return 0;
    }
    // Refused (403, 404, ...): relay the answer as a normal response.
    this.phase = 2;
    this.status = status;
    if (responseHeaders.hasSubscribers) responseHeaders.publish({ request: this.diagRequest(), status, headers: raw });
    this.core.stats.countStatus(status);
    try {
      stream.respond(responseHeadersH2(raw, status, this.responseFacts));
    } catch {
      this.fail('BAD_RESPONSE');
    }
    return 0;
  }

  /**
   * A piece of a refused upgrade's answer (phase 2). It goes to the client at the client's pace:
   * while the stream holds more than it wants, the upstream socket is paused (an upstream that
   * streamed a never-ending refusal to a client with no window made the proxy hold 1 GiB in 5 s).
   */
  onBody(chunk: Buffer): void {
    if (this.phase !== 2 || this.stream.destroyed) return;
    const socket = this.socket;
    if (!this.stream.write(chunk) && socket !== null && !socket.isPaused()) {
      socket.pause();
      this.stream.once('drain', bridgeStreamOnDrain);
    }
  }

  /** The client took the refusal's answer so far: read the upstream on. */
  relayDrained(): void {
    const socket = this.socket;
    if (this.phase === 2 && socket !== null && !socket.destroyed) socket.resume();
  }

  /** What a refusal's answer holds on its way (read while the socket is paused), in memory. */
  heldInRelay(): number {
    const socket = this.socket;
    return this.phase === 2 && socket !== null && !socket.destroyed ? readableHeld(socket) : 0;
  }

  onMessageComplete(): void {
    if (this.phase !== 2) return;
    this.phase = 4;
    if (!this.stream.destroyed) this.stream.end();
    this.socket?.destroy();
    this.diagEnd(this.status, '');
  }

  private splice(rest: Buffer | null): void {
    const socket = this.socket!;
    socket.removeListener('data', bridgeSocketOnData);
    socket.removeListener('error', bridgeSocketOnError);
    socket.removeListener('timeout', bridgeSocketOnTimeout);
    socket.removeListener('close', bridgeSocketOnClose);
    this.stream.removeListener('close', bridgeStreamOnClose);
    if (this.parser !== null) closeParserLater(this.parser);
    this.parser = null;
    configureTunnelSocket(socket, this.core.options.keepaliveMs);
    if (rest !== null && rest.length > 0) this.stream.write(rest);
    const tunnel = new Tunnel(this.stream, socket, TUNNEL_WEBSOCKET, this.core.stats, this.core.websockets);
    tunnel.forwardedEarly(false, rest);
    const observer = this.core.observer;
    if (observer !== null) {
      const info: TunnelInfo | null =
        observer.accessLog === null
          ? null
          : {
              client: this.clientAddress,
              clientVersion: '2',
              tls: this.tls,
              method: 'CONNECT',
              host: this.host,
              path: this.path,
              route: routeKind(this.core, 'GET', this.facts, this.target, this.grouped),
              target: this.target,
              status: 200,
              requestId: this.requestId,
            };
      tunnel.record = observer.tunnelOpened(TUNNEL_KIND_WEBSOCKET, this.t0, info);
    }
    if (websocketOpen.hasSubscribers) websocketOpen.publish({ request: this.diagRequest(), target: this.target!.key });
    if (requestEnd.hasSubscribers || websocketClose.hasSubscribers) {
      tunnel.diag = this.diagRequest();
      tunnel.diagStatus = 200;
    }
    // From here on the tunnel publishes its end.
    this.diagEnded = true;
  }

  fail(code: string): void {
    if (this.phase >= 3 && this.phase !== 2) {
      this.socket?.destroy();
      return;
    }
    const relaying = this.phase === 2;
    this.phase = 4;
    this.socket?.destroy();
    if (this.parser !== null) closeParserLater(this.parser);
    this.parser = null;
    if (relaying) {
      this.core.stats.responsesReset++;
      resetStream(this.stream);
      this.diagEnd(this.status, code);
      return;
    }
    upstreamFailure(this.core, this.stream, code);
    this.diagEnd(upstreamFailureAnswer(code).status, code);
  }

  streamClosed(): void {
    if (this.phase >= 3 && this.phase !== 2) return;
    if (this.socket === null && this.target !== null) this.core.pool.cancelTunnel(this.target, this);
    this.releaseMember();
    this.phase = 4;
    this.socket?.destroy();
    if (this.parser !== null) closeParserLater(this.parser);
    this.parser = null;
    this.diagEnd(this.status, 'CLIENT_ABORT');
  }
}

function headerValue(raw: string[], lowerName: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === lowerName) return raw[i + 1];
  return undefined;
}

function bridgeParserOnHeaders(this: BridgeParser, headers: string[]): void {
  this.bridge.onHeaders(headers);
}

function bridgeParserOnHeadersComplete(
  this: BridgeParser,
  _major: number,
  _minor: number,
  headers: string[] | undefined,
  _method: number,
  _url: string,
  status: number,
  _statusMessage: string,
  upgrade: boolean,
): number {
  return this.bridge.onHeadersComplete(headers, status, upgrade);
}

function bridgeParserOnBody(this: BridgeParser, chunk: Buffer): void {
  this.bridge.onBody(chunk);
}

function bridgeParserOnMessageComplete(this: BridgeParser): void {
  this.bridge.onMessageComplete();
}

function bridgeSocketOnConnect(this: BridgeSocket): void {
  const owner = this[kBridge];
  owner.connected();
}

function bridgeSocketOnData(this: BridgeSocket, chunk: Buffer): void {
  (this[kBridge] as WebSocketBridge).onData(chunk);
}

function bridgeSocketOnError(this: BridgeSocket, err: NodeJS.ErrnoException): void {
  this[kBridge].fail(upstreamErrorCode(this, err, 'UPSTREAM_ERROR'));
}

function bridgeSocketOnTimeout(this: BridgeSocket): void {
  const owner = this[kBridge];
  owner.fail(owner instanceof WebSocketBridge && owner.connectedOnce() ? 'RESPONSE_TIMEOUT' : 'CONNECT_TIMEOUT');
}

function bridgeSocketOnClose(this: BridgeSocket): void {
  // Closed before the handshake finished (or while relaying a refusal).
  this[kBridge].fail(this.bytesRead > 0 ? 'UPSTREAM_CLOSED' : 'ECONNRESET');
}

function bridgeStreamOnClose(this: BridgeStream): void {
  this[kBridge]?.streamClosed();
}

function bridgeStreamOnDrain(this: BridgeStream): void {
  const bridge = this[kBridge];
  if (bridge instanceof WebSocketBridge) bridge.relayDrained();
}

/** What an extended CONNECT stream's refused upgrade holds of its answer (0 for any other stream). */
export function heldInRefusal(stream: http2.Http2Stream): number {
  const bridge = (stream as BridgeStream)[kBridge];
  return bridge instanceof WebSocketBridge ? bridge.heldInRelay() : 0;
}

/** Plain HTTP/2 CONNECT: a stream spliced to a TCP connection to the routed target. */
class ConnectTunnel implements TunnelUser {
  readonly core: ProxyCore;
  readonly stream: BridgeStream;
  private readonly target: Target;
  private socket: BridgeSocket | null = null;
  private done = false;
  /** performance.now() at the request head (observer only, else 0). */
  readonly t0: number;
  readonly requestId: string;

  constructor(core: ProxyCore, stream: BridgeStream, target: Target, requestId: string) {
    this.core = core;
    this.requestId = requestId;
    this.t0 = core.observer === null ? 0 : performance.now();
    this.stream = stream;
    this.target = target;
    stream[kBridge] = this;
    stream.on('close', bridgeStreamOnClose);
    // The tunnel's socket counts against maxSocketsPerUpstream like any upstream socket.
    core.pool.openTunnel(target, this);
  }

  onTunnelSocket(upstream: net.Socket | null, code: string): void {
    if (upstream === null) {
      if (!this.done) {
        this.done = true;
        upstreamFailure(this.core, this.stream, code);
      }
      return;
    }
    if (this.done) {
      upstream.destroy();
      return;
    }
    const socket = upstream as BridgeSocket;
    socket[kBridge] = this;
    this.socket = socket;
    const core = this.core;
    socket.setTimeout(core.options.upstreamConnectTimeoutMs);
    socket.on('connect', bridgeSocketOnConnect);
    socket.on('error', bridgeSocketOnError);
    socket.on('timeout', bridgeSocketOnTimeout);
    socket.on('close', bridgeSocketOnClose);
  }

  connected(): void {
    if (this.done) return;
    this.done = true;
    const socket = this.socket!;
    socket.removeListener('error', bridgeSocketOnError);
    socket.removeListener('timeout', bridgeSocketOnTimeout);
    socket.removeListener('close', bridgeSocketOnClose);
    this.stream.removeListener('close', bridgeStreamOnClose);
    try {
      this.stream.respond({ [HTTP2_HEADER_STATUS]: 200 });
    } catch {
      socket.destroy();
      return;
    }
    this.core.stats.countStatus(200);
    configureTunnelSocket(socket, this.core.options.keepaliveMs);
    const tunnel = new Tunnel(this.stream, socket, TUNNEL_CONNECT, this.core.stats);
    const observer = this.core.observer;
    if (observer !== null) {
      const info: TunnelInfo | null =
        observer.accessLog === null
          ? null
          : {
              client: this.stream.session?.socket?.remoteAddress ?? '',
              clientVersion: '2',
              tls: (this.stream.session?.socket as { encrypted?: boolean } | undefined)?.encrypted === true,
              method: 'CONNECT',
              host: this.target.key,
              path: '',
              route: 'connect',
              target: this.target,
              status: 200,
              requestId: this.requestId,
            };
      tunnel.record = observer.tunnelOpened(TUNNEL_KIND_CONNECT, this.t0, info);
    }
  }

  fail(code: string): void {
    if (this.done) return;
    this.done = true;
    this.socket?.destroy();
    upstreamFailure(this.core, this.stream, code);
  }

  streamClosed(): void {
    if (this.done) return;
    this.done = true;
    if (this.socket === null) this.core.pool.cancelTunnel(this.target, this);
    else this.socket.destroy();
  }
}

