import { BODY_CHUNKED, EX_UPGRADE, type Exchange } from './exchange.js';
import { ErrorCodes } from './errors.js';
import { buildUpstreamH2Headers, buildUpstreamRequestHead, validRequestId, type ForwardContext, type RequestHeadFacts } from './headers.js';
import type { Logger } from './log.js';
import { routeKind, type Observer } from './observe.js';
import { requestRoute, type DiagnosticsRequest } from './diagnostics.js';
import { traceparentOf, type Tracing } from './tracing.js';
import type { ResolvedOptions } from './options.js';
import { parsePort } from './route/host-patterns.js';
import { CachedPortResolver, RESOLVER_TIMEOUT, type ResolverAnswer } from './route/port-resolver.js';
import {
  ERR_CONTAINER_NOT_FOUND,
  ERR_LOOP,
  ERR_NO_ROUTE,
  ERR_RESOLVER_FAILED,
  LOCAL_HOST,
  isContainerRoute,
  isGroupRoute,
  isRouteError,
  route,
  routeError,
  type RouteError,
} from './route/router.js';
import { pinnedTcpTarget, socketTarget, tcpTarget, tlsTarget, type Target } from './route/target.js';
import type { GroupStats, StatsCounters } from './stats.js';
import { OUTCOME_NEUTRAL, RouteTable, type GroupMember, type UpstreamGroup } from './upstream/group.js';
import { UpstreamConnector } from './upstream/connect.js';
import { OptionError, validateRoutes, type FallbackOption } from './options.js';
import { RateLimiter } from './rate-limit.js';
import { readFileSync } from 'node:fs';
import { UpstreamPool } from './upstream/h1-pool.js';
import { H2UpstreamPool, probeH2c } from './upstream/h2-pool.js';
import { LRUCache } from 'lru-cache';
import type http2 from 'node:http2';
import type { Tunnel } from './tunnel.js';
import { ChurnSet } from './churn-set.js';

/** A request being routed: an exchange, a WebSocket bridge or a tunnel. */
export interface Routable {
  readonly method: string;
  readonly path: string;
  readonly requestId: string;
  readonly facts: RequestHeadFacts;
  readonly host: string | undefined;
  readonly finished: boolean;
  /** What the diagnostics channels say about it (made on first call). */
  diagRequest(): DiagnosticsRequest;
  readonly clientAddress: string;
  readonly raw: string[];
  /** The route-group upstream serving it (load and passive health), else null. */
  member: GroupMember | null;
  /** Extra fields of the proxy-made answer (name/value pairs), else null. */
  answerHeaders: string[] | null;
  /** Set when the `routes` table routed it. */
  grouped: boolean;
  start(target: Target): void;
  /** Answers with a proxy-made error and ends. */
  reject(status: number, code: string, message: string): void;
}

function refuse(req: Routable, err: RouteError): void {
  req.reject(err.status, err.code, err.message);
}

const ERR_CONNECT_NO_ROUTE = routeError(400, ErrorCodes.NO_ROUTE, 'CONNECT needs X-Cmux-Port-Internal or a routable authority');

const ERR_RESOLVER_TIMEOUT = routeError(504, ErrorCodes.RESOLVER_TIMEOUT, 'container port resolver timed out');

/**
 * A route to the private port of the `fallback.handler` server. That server trusts the
 * forwarding headers it gets (the proxy sets them); a CONNECT tunnel to it would let a client
 * write its own, and a routed request would reach it past the fallback rule.
 */
const ERR_PRIVATE_PORT = routeError(400, ErrorCodes.INVALID_PORT, "invalid port: reserved for the proxy's fallback handler");
const ERR_ADMIN_PORT = routeError(400, ErrorCodes.INVALID_PORT, "invalid port: reserved for the proxy's admin listener");

const ERR_NO_HEALTHY_UPSTREAM = routeError(503, ErrorCodes.NO_HEALTHY_UPSTREAM, 'no healthy upstream');

const ERR_TOO_MANY_REQUESTS = routeError(429, ErrorCodes.TOO_MANY_REQUESTS, 'too many requests');

const ERR_CONNECT_BAD_AUTHORITY = routeError(400, ErrorCodes.BAD_REQUEST, 'CONNECT needs host:port with a decimal port 1-65535');

const ERR_INVALID_SCHEME = routeError(400, ErrorCodes.BAD_REQUEST, 'invalid X-Cmux-Upstream-Scheme: expected http or https');

/** The PEM text of `upstreamCa`, read once when the proxy is made (a bad file is a bad option). */
function readCa(path: string | undefined): string | undefined {
  if (path === undefined) return undefined;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    throw new OptionError('upstreamCa', path, 'a readable PEM file of CA certificates');
  }
  if (!text.includes('-----BEGIN CERTIFICATE-----')) throw new OptionError('upstreamCa', path, 'a PEM file of CA certificates');
  return text;
}

/**
 * `host:port` of a CONNECT target (RFC 9110 §9.3.6, authority-form: the port is required), or
 * null. The port is decimal digits only (RFC 3986 §3.2.3): `Number()` would read `0x50`, `+80`,
 * `1e3`, `80.0` and ` 80` as ports and route where the client did not name.
 */
export function splitAuthority(authority: string): { host: string; port: number } | null {
  const colon = authority.lastIndexOf(':');
  if (colon <= 0) return null;
  const port = parsePort(authority.slice(colon + 1));
  if (port === 0) return null;
  let host = authority.slice(0, colon).toLowerCase();
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return host === '' ? null : { host, port };
}

/** `Via` entries naming this instance beyond this many mean a loop (answered 508). */
const MAX_VIA_SELF = 3;

/**
 * What every session handler shares: options, stats, the upstream pool, routing with the
 * resolver and fallback, loop detection and the forwarded head.
 */
export class ProxyCore {
  readonly options: ResolvedOptions;
  readonly stats: StatsCounters;
  readonly log: Logger & { readonly debugEnabled: boolean };
  readonly pool: UpstreamPool;
  readonly h2pool: H2UpstreamPool;
  /** Opens upstream connections (TLS with the certificate rules of the options). */
  readonly connector: UpstreamConnector;
  /** `auto`: what each upstream speaks, learned once per TTL. */
  private readonly protocols: LRUCache<string, 'h2c' | 'http1'> | null;
  private readonly probes = new Map<string, Promise<void>>();
  readonly resolver: CachedPortResolver | undefined;
  /** This instance's pseudonym in `Via` (RFC 9110 §7.6.3). */
  readonly viaToken: string;
  readonly viaEntryH1: string;
  readonly viaEntryH2: string;
  /** Set once listening: the bound address, for loop detection. */
  listenAddress = '';
  listenPort = 0;
  /** Set while the admin listener is up: its address, never reachable through routing (0: none). */
  adminAddress = '';
  adminPort = 0;
  /** Where unrouted requests go (the fallback's port, socket, or private handler server). */
  fallbackTarget: Target | null = null;
  /** True from `stop()` on: keep-alive ends after the current exchange. */
  draining = false;
  /** Open WebSocket tunnels (HTTP/1.1 Upgrade and RFC 8441), for the close frames at `stop()`. */
  readonly websockets = new ChurnSet<Tunnel>();
  /**
   * The `routes` option compiled, or null without routes. Swapped whole by `updateRoutes()`:
   * an exchange holds its member (and so its old group) until it ends.
   */
  routeTable: RouteTable | null = null;
  /** The `rateLimit` option: per-client token buckets for every request, or null. */
  readonly rateLimiter: RateLimiter | null;
  /** Set when metrics or the access log are on; null keeps every hook to one check. */
  observer: Observer | null = null;
  /** Set at start when `@opentelemetry/api` can be loaded; null keeps every hook to one check. */
  tracing: Tracing | null = null;
  /** Request ids the proxy makes: a per-process random prefix and a counter. */
  private readonly requestIdPrefix: string;
  private requestCounter = 0;
  /** The fallback is the embedding app's handler, served on a private port (`fallbackTarget`). */
  private readonly handlerFallback: boolean;

  constructor(options: ResolvedOptions, stats: StatsCounters, log: Logger & { readonly debugEnabled: boolean }, resolver: CachedPortResolver | undefined) {
    this.options = options;
    this.stats = stats;
    this.log = log;
    this.resolver = resolver;
    // Marks this instance's own Via entries for loop detection; not a secret, so Math.random
    // (node:crypto stays unloaded, see builtins.ts).
    this.viaToken = `cmux-proxy-${((Math.random() * 0x1_0000_0000) >>> 0).toString(16).padStart(8, '0')}`;
    this.viaEntryH1 = `1.1 ${this.viaToken}`;
    this.viaEntryH2 = `2 ${this.viaToken}`;
    // Unique enough to tell processes apart in one log; not a secret (no node:crypto).
    this.requestIdPrefix = `${((Math.random() * 0x1_0000_0000) >>> 0).toString(16).padStart(8, '0')}${((Math.random() * 0x1_0000) >>> 0).toString(16).padStart(4, '0')}-`;
    this.connector = new UpstreamConnector({
      rejectUnauthorized: options.upstreamTlsRejectUnauthorized,
      insecureLoopback: options.upstreamTlsInsecureLoopback,
      ca: readCa(options.upstreamCa),
    });
    this.pool = new UpstreamPool(
      {
        connector: this.connector,
        connectTimeoutMs: options.upstreamConnectTimeoutMs,
        idleTimeoutMs: options.upstreamIdleTimeoutMs,
        keepaliveMs: options.keepaliveMs,
        maxSockets: options.maxSocketsPerUpstream,
        maxIdleSockets: options.maxIdleSocketsPerUpstream,
        maxHeaderSize: options.maxHeaderSize,
      },
      stats,
    );
    this.h2pool = new H2UpstreamPool(
      {
        connector: this.connector,
        connectTimeoutMs: options.upstreamConnectTimeoutMs,
        responseTimeoutMs: options.upstreamResponseTimeoutMs,
        idleTimeoutMs: options.upstreamIdleTimeoutMs,
        keepaliveMs: options.keepaliveMs,
        maxSessions: options.maxSessionsPerUpstream,
        // The same bound as for client heads and trailers (HTTP/2 counts 32 bytes per field more).
        maxHeaderListSize: options.maxHeaderSize * 2,
      },
      stats,
      this.pool.deadlines,
      this.pool.fds,
    );
    this.protocols =
      options.upstreamProtocol === 'auto' ? new LRUCache({ max: 10_000, ttl: Math.max(1, options.upstreamProtocolCacheTtlMs) }) : null;
    this.rateLimiter = options.rateLimit === undefined ? null : new RateLimiter(options.rateLimit, 'proxy');
    if (options.routes.length > 0) this.routeTable = new RouteTable(options.routes, this);
    const fallback = options.fallback;
    this.handlerFallback = fallback !== undefined && 'handler' in fallback;
    if (fallback !== undefined) {
      if ('socketPath' in fallback) this.fallbackTarget = socketTarget(fallback.socketPath);
      else if ('port' in fallback) {
        const target = pinnedTcpTarget(fallback.host ?? LOCAL_HOST, fallback.port);
        this.fallbackTarget = (fallback as Extract<FallbackOption, { port: number }>).tls === true ? tlsTarget(target) : target;
      }
    }
  }

  /** Routes a request and starts it, or answers it with the routing error (first matching rule wins). */
  dispatch(req: Routable): void {
    if (req.facts.viaSelfCount > MAX_VIA_SELF) return this.refuse(req, ERR_LOOP);
    const tooMany = this.rateLimited(req.clientAddress);
    if (tooMany !== null) {
      req.answerHeaders = tooMany;
      return this.refuse(req, ERR_TOO_MANY_REQUESTS);
    }
    const r = route(
      this.options,
      { portHeader: req.facts.portHeader, workspaceHeader: req.facts.workspaceHeader, host: req.host, repeated: req.facts.repeatedRouting, path: req.path },
      this.resolver !== undefined,
      this.routeTable,
    );
    if (r === null) {
      const fallback = this.fallbackTarget;
      if (fallback === null) return this.refuse(req, ERR_NO_ROUTE);
      this.go(req, fallback);
      return;
    }
    if (isRouteError(r)) return this.refuse(req, r);
    if (isGroupRoute(r)) return this.startGroup(req, r);
    if (isContainerRoute(r)) {
      const resolver = this.resolver!;
      const cached = resolver.peek(r.container, r.port);
      if (cached !== undefined) {
        this.startResolved(req, cached);
        return;
      }
      // Bounded like a connect: no other timer watches a request while it waits here (the
      // head timer is off, the idle timer skips busy connections).
      resolver.resolve(r.container, r.port, this.options.upstreamConnectTimeoutMs).then(
        (answer) => this.startResolved(req, answer),
        (err: unknown) => {
          const timedOut = (err as NodeJS.ErrnoException | null)?.code === RESOLVER_TIMEOUT;
          this.log.warn(`container port resolver failed for ${r.container}:${r.port}: ${(err as Error)?.message ?? String(err)}`);
          if (!req.finished) this.refuse(req, timedOut ? ERR_RESOLVER_TIMEOUT : ERR_RESOLVER_FAILED);
        },
      );
      return;
    }
    if (this.isSelf(r)) return this.refuse(req, ERR_LOOP);
    if (this.handlerFallback && this.isPrivateFallback(r)) return this.refuse(req, ERR_PRIVATE_PORT);
    if (this.isAdmin(r)) return this.refuse(req, ERR_ADMIN_PORT);
    this.goSchemed(req, r);
  }

  /**
   * Starts a routed request over TLS or cleartext: `X-Cmux-Upstream-Scheme` (with header routing
   * on) decides for the request, else `upstreamTls`. Only how the proxy speaks to the address
   * routing chose changes, never the address.
   */
  private goSchemed(req: Routable, target: Target): void {
    const scheme = req.facts.schemeHeader;
    if (scheme !== undefined && this.options.headerRoutingEnabled) {
      const value = scheme.trim().toLowerCase();
      if (value === 'https') return this.go(req, tlsTarget(target));
      if (value !== 'http') return this.refuse(req, ERR_INVALID_SCHEME);
      return this.go(req, target);
    }
    this.go(req, this.options.upstreamTls ? tlsTarget(target) : target);
  }

  /** A route with an upstream group: the balancer's pick, or `503 no healthy upstream` at once. */
  private startGroup(req: Routable, group: UpstreamGroup): void {
    if (req.finished) return;
    const tooMany = this.rateLimited(req.clientAddress, group.rateLimiter);
    if (tooMany !== null) {
      req.answerHeaders = tooMany;
      return this.refuse(req, ERR_TOO_MANY_REQUESTS);
    }
    const member = group.pick(req.clientAddress, req.raw, null);
    if (member === null) {
      this.stats.noHealthyUpstream++;
      req.answerHeaders = ['retry-after', String(group.retryAfterSeconds())];
      return this.refuse(req, ERR_NO_HEALTHY_UPSTREAM);
    }
    const target = member.target;
    if (this.isSelf(target) || (this.handlerFallback && this.isPrivateFallback(target))) {
      group.finish(member, OUTCOME_NEUTRAL);
      return this.refuse(req, this.isSelf(target) ? ERR_LOOP : ERR_PRIVATE_PORT);
    }
    req.member = member;
    req.grouped = true;
    if (this.log.debugEnabled) this.logRoute(req, `${target.key} (route ${group.label})`);
    req.start(target);
  }

  /**
   * Replaces the route table (validated like the option; throws an OptionError). Exchanges
   * already routed finish on the upstreams they have; new ones use the new table.
   */
  updateRoutes(routes: unknown, running: boolean): void {
    const resolved = validateRoutes(routes);
    const old = this.routeTable;
    const table = resolved.length > 0 ? new RouteTable(resolved, this, old) : null;
    this.routeTable = table;
    old?.stopChecks();
    if (running) table?.startChecks();
  }

  groupStats(): GroupStats {
    const table = this.routeTable;
    if (table === null) return { routeUpstreamsUnavailable: 0, routeUpstreams: [] };
    const list = table.stats();
    let unavailable = 0;
    for (const u of list) if (u.state === 'open' || !u.healthy) unavailable++;
    return { routeUpstreamsUnavailable: unavailable, routeUpstreams: list };
  }

  /**
   * Takes a token for `client` from `limiter` (by default the `rateLimit` buckets, which a plain
   * CONNECT counts against like any request): null when allowed (or no limiter), else the fields
   * of the 429, counted in `rateLimited`.
   */
  rateLimited(client: string, limiter: RateLimiter | null = this.rateLimiter): string[] | null {
    if (limiter === null) return null;
    const wait = limiter.take(client);
    if (wait === 0) return null;
    this.stats.rateLimited++;
    return limiter.answerHeaders(wait);
  }

  /** A routing decision: started toward `target`. */
  private go(req: Routable, target: Target): void {
    if (this.log.debugEnabled) this.logRoute(req, `${target.key} (${routeKind(this, 'GET', req.facts, target)})`);
    if (requestRoute.hasSubscribers) requestRoute.publish({ request: req.diagRequest(), target: target.key, route: routeKind(this, 'GET', req.facts, target) });
    req.start(target);
  }

  /** A routing decision: answered with a routing error. */
  private refuse(req: Routable, err: RouteError): void {
    if (this.log.debugEnabled) this.logRoute(req, `${err.status} ${err.code}`);
    refuse(req, err);
  }

  /** One debug line per routing decision (`--log-level debug`); client values are JSON-quoted. */
  private logRoute(req: Routable, outcome: string): void {
    const f = req.facts;
    let via = '';
    if (f.portHeader !== undefined) via += ` port-header=${JSON.stringify(f.portHeader)}`;
    if (f.workspaceHeader !== undefined) via += ` workspace=${JSON.stringify(f.workspaceHeader)}`;
    this.log.debug(`route ${req.method} host=${JSON.stringify(req.host ?? '')} path=${JSON.stringify(req.path)}${via} -> ${outcome} id=${req.requestId}`);
  }

  private startResolved(req: Routable, answer: ResolverAnswer): void {
    if (req.finished) return;
    if (answer === null) return this.refuse(req, ERR_CONTAINER_NOT_FOUND);
    const target = typeof answer === 'number' ? tcpTarget(LOCAL_HOST, answer) : tcpTarget(answer.host, answer.port);
    if (this.isSelf(target)) return this.refuse(req, ERR_LOOP);
    if (this.handlerFallback && this.isPrivateFallback(target)) return this.refuse(req, ERR_PRIVATE_PORT);
    if (this.isAdmin(target)) return this.refuse(req, ERR_ADMIN_PORT);
    this.goSchemed(req, target);
  }

  /**
   * Where a plain `CONNECT host:port` goes: the routing headers or a Host pattern in
   * the authority, else the authority itself when it names this machine's loopback.
   */
  connectTarget(facts: RequestHeadFacts, authority: string): Target | RouteError {
    const target = this.connectRoute(facts, authority);
    if (this.log.debugEnabled) {
      const outcome = isRouteError(target) ? `${target.status} ${target.code}` : `${target.key} (connect)`;
      this.log.debug(`route CONNECT authority=${JSON.stringify(authority)} -> ${outcome}`);
    }
    return target;
  }

  private connectRoute(facts: RequestHeadFacts, authority: string): Target | RouteError {
    const parsed = splitAuthority(authority);
    if (parsed === null) return ERR_CONNECT_BAD_AUTHORITY;
    const r = route(
      this.options,
      { portHeader: facts.portHeader, workspaceHeader: facts.workspaceHeader, host: authority, repeated: facts.repeatedRouting, path: '' },
      false,
    );
    let target: Target | RouteError | null = r !== null && !isContainerRoute(r) && !isGroupRoute(r) ? r : null;
    if (target === null && (parsed.host === 'localhost' || parsed.host === LOCAL_HOST)) target = tcpTarget(LOCAL_HOST, parsed.port);
    if (target === null) return ERR_CONNECT_NO_ROUTE;
    if (isRouteError(target)) return target;
    if (this.isSelf(target)) return ERR_LOOP;
    if (this.handlerFallback && this.isPrivateFallback(target)) return ERR_PRIVATE_PORT;
    if (this.isAdmin(target)) return ERR_ADMIN_PORT;
    return target;
  }

  /**
   * A target that reaches the fallback handler's private server (bound to 127.0.0.1) other than
   * through the fallback rule.
   */
  private isPrivateFallback(target: Target): boolean {
    const fallback = this.fallbackTarget;
    if (fallback === null || target.port !== fallback.port || target.socketPath !== undefined) return false;
    const host = target.host;
    return host === fallback.host || host === 'localhost';
  }

  /** A target that is this proxy's own listening socket would loop forever. */
  isSelf(target: Target): boolean {
    return target.socketPath === undefined && target.port === this.listenPort && reachesBound(target.host, this.listenAddress);
  }

  /**
   * A target that is the admin listener: its endpoints are the operator's (they serve on their
   * own address), never something a client of the proxied port reaches.
   */
  private isAdmin(target: Target): boolean {
    return target.port === this.adminPort && target.socketPath === undefined && reachesBound(target.host, this.adminAddress);
  }


  /** The Host the upstream gets: the override, the client's (preserveHost), or the target's. */
  forwardHost(req: Routable, target: Target): string {
    const override = req.facts.hostOverride;
    if (override !== undefined && override.trim() !== '') return override.trim();
    if (this.options.preserveHost && req.host !== undefined && req.host !== '') return req.host;
    return target.socketPath !== undefined ? 'localhost' : target.key;
  }

  /** The client's `X-Request-Id` when valid (see validRequestId), else a new one. */
  requestIdFor(facts: RequestHeadFacts): string {
    const given = facts.requestId;
    return validRequestId(given) ? given : this.nextRequestId();
  }

  nextRequestId(): string {
    return this.requestIdPrefix + (++this.requestCounter).toString(36);
  }

  viaEntryFor(ex: Exchange): string {
    return ex.clientVersion === '2' ? this.viaEntryH2 : ex.clientVersion === '1.0' ? `1.0 ${this.viaToken}` : this.viaEntryH1;
  }

  buildHead(ex: Exchange, target: Target): string {
    const ctx = this.forwardContext(ex, target, (ex.flags & EX_UPGRADE) !== 0, ex.bodyMode === BODY_CHUNKED);
    return buildUpstreamRequestHead(ex.method, ex.path, ex.raw, ex.facts.connectionTokens, ctx);
  }

  private forwardContext(ex: Exchange, target: Target, upgrade: boolean, chunked: boolean): ForwardContext {
    const host = this.forwardHost(ex, target);
    return {
      host,
      forwardedHost: ex.host ?? host,
      clientAddress: ex.clientAddress,
      proto: ex.proto,
      viaEntry: this.viaEntryFor(ex),
      upgrade,
      chunked,
      requestId: ex.requestId,
      traceparent: ex.span === null ? undefined : traceparentOf(ex.span),
    };
  }

  /** 'h2c' or 'http1' for this target, or undefined when `auto` has not learned it yet. */
  upstreamProtocolFor(target: Target): 'h2c' | 'http1' | undefined {
    const configured = this.options.upstreamProtocol;
    if (configured !== 'auto') return configured;
    // The embedding app's fallback handler is an HTTP/1.1 server of ours.
    if (target === this.fallbackTarget && this.options.fallback !== undefined && 'handler' in this.options.fallback) return 'http1';
    return this.protocols!.get(target.key);
  }

  /** Tries h2c prior knowledge once per target (concurrent callers share the probe). */
  probeProtocol(target: Target, host: string | undefined): Promise<void> {
    let probe = this.probes.get(target.key);
    if (probe === undefined) {
      // Over TLS, ALPN answers the question in the handshake: `h2` or `http/1.1`.
      const timeout = this.options.upstreamConnectTimeoutMs;
      const asked = target.tls ? this.connector.probeAlpn(target, host, timeout) : probeH2c(this.connector, target, timeout);
      probe = asked.then((h2) => {
        this.protocols!.set(target.key, h2 ? 'h2c' : 'http1');
        this.probes.delete(target.key);
        if (this.log.debugEnabled) this.log.debug(`upstream ${target.key} speaks ${h2 ? (target.tls ? 'h2' : 'h2c') : 'http1'}`);
      });
      this.probes.set(target.key, probe);
    }
    return probe;
  }

  /** Request headers for an h2c upstream (RFC 9113 §8.2.2: no connection-specific fields). */
  buildH2Headers(ex: Exchange, target: Target): http2.OutgoingHttpHeaders {
    const headers = buildUpstreamH2Headers(ex.method, ex.path, ex.raw, ex.facts.connectionTokens, this.forwardContext(ex, target, false, false));
    if (target.tls) headers[':scheme'] = 'https';
    return headers;
  }

  countUpstreamFailure(code: string): void {
    const stats = this.stats;
    stats.countUpstreamError(code);
    if (code === 'CONNECT_TIMEOUT') stats.upstreamConnectTimeouts++;
    else if (code === 'RESPONSE_TIMEOUT') stats.upstreamResponseTimeouts++;
    if (this.log.debugEnabled) this.log.debug(`upstream failure ${code}`);
  }
}

/** True when a connection to `host` reaches a socket bound to `bound` on this machine. */
function reachesBound(host: string, bound: string): boolean {
  if (host === bound) return true;
  if (bound === '0.0.0.0' || bound === '::') {
    return host === 'localhost' || host === '::1' || host === '0.0.0.0' || host.startsWith('127.');
  }
  return bound === '127.0.0.1' && host === 'localhost';
}
