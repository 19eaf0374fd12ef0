import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger, LogLevel } from './log.js';
import type { TlsOption } from './tls.js';
import type { AccessLogOption } from './access-log.js';
import type { RateLimitConfig } from './rate-limit.js';
import type { ProxyProtocolOption } from './proxy-protocol.js';

/** Looks up the host port a container publishes for `port`; `null` when the container is unknown. */
export type ContainerPortResolver = (container: string, port: number) => Promise<number | null>;

/**
 * Where requests that match no route go (the last routing rule): the embedding app's own port or unix
 * socket (proxied like any upstream), or a handler. A handler is served by a private
 * `http.Server` on a loopback port that the proxy forwards to, so it sees ordinary
 * `IncomingMessage` / `ServerResponse` objects (and `upgrade` sees the raw socket).
 */
export type FallbackOption =
  | { port: number; host?: string; tls?: boolean }
  | { socketPath: string }
  | {
      handler: (req: IncomingMessage, res: ServerResponse) => void;
      upgrade?: (req: IncomingMessage, socket: Duplex, head: Buffer) => void;
    };

export type UpstreamProtocol = 'http1' | 'h2c' | 'auto';

/**
 * One upstream of a route: `host:port` on loopback or an absolute unix socket path, with an
 * optional weight, and `tls` to speak TLS to it (default: the `upstreamTls` option).
 */
export type RouteUpstreamOption = string | { address: string; weight?: number; tls?: boolean };

/** A route with an upstream group (see README "Routes with upstream groups"). */
export interface RouteOption {
  /** `host`: an exact name (`api.localhost`) or `*.suffix`; `pathPrefix`: the path must start with it. */
  match: { host: string; pathPrefix?: string };
  upstreams: RouteUpstreamOption[];
  balance?: 'round-robin' | 'least-connections' | 'hash';
  /** What `hash` hashes: the client address (default) or one request header. */
  hashOn?: 'client-address' | { header: string };
  /** Active checks: HTTP/1.1 GET `path` every `intervalMs`; 2xx/3xx within `timeoutMs` is healthy. */
  healthCheck?: { path: string; intervalMs?: number; timeoutMs?: number };
  /** Passive health per upstream: open after `failures` in a row, for `openMs` doubling up to `maxOpenMs`. */
  circuitBreaker?: { failures?: number; openMs?: number; maxOpenMs?: number; halfOpenProbes?: number };
  /** This route's own per-client token buckets (on top of the top-level `rateLimit`). */
  rateLimit?: RateLimitOption;
}

/** Per-client token bucket: `rate` tokens a second, at most `burst`; one request takes one. */
export interface RateLimitOption {
  rate: number;
  burst: number;
  /** Clients remembered (LRU); default 100,000. */
  maxClients?: number;
}

/** A route upstream as validated: where to connect and its weight. */
export interface ResolvedUpstream {
  /** As written in the options (stats and log label). */
  address: string;
  host: string;
  port: number;
  socketPath: string | undefined;
  weight: number;
  /** TLS to this upstream; undefined: as the `upstreamTls` option says. */
  tls: boolean | undefined;
}

export interface ResolvedRoute {
  /** Lower-case exact host, or `*.suffix`. */
  host: string;
  /** '' matches every path. */
  pathPrefix: string;
  upstreams: ResolvedUpstream[];
  balance: 'round-robin' | 'least-connections' | 'hash';
  /** Lower-case header name `hash` reads, or null for the client address. */
  hashHeader: string | null;
  healthCheck: { path: string; intervalMs: number; timeoutMs: number } | null;
  circuitBreaker: { failures: number; openMs: number; maxOpenMs: number; halfOpenProbes: number };
  rateLimit: RateLimitConfig | undefined;
}

export interface ProxyOptions {
  /** Port to listen on; 0 picks a free one. */
  listenPort: number;
  /** Address to bind. */
  listenHost?: string;
  enableHttp2?: boolean;
  enableWebsockets?: boolean;
  /** Client connections served at once; more wait (bounded by `connectionQueueTimeoutMs`), then 503. */
  maxConnections?: number;
  /** How long a connection past `maxConnections` may wait for a free slot. */
  connectionQueueTimeoutMs?: number;
  /** Most connections allowed to wait for a slot; past it they get 503 at once. */
  maxQueuedConnections?: number;
  idleTimeoutMs?: number;
  clientIdleTimeoutMs?: number;
  upstreamIdleTimeoutMs?: number;
  keepaliveMs?: number;
  headerRoutingEnabled?: boolean;
  workspaceIsolation?: boolean;
  /** false rewrites Host to the target (like `changeOrigin`). */
  preserveHost?: boolean;
  upstreamProtocol?: UpstreamProtocol;
  upstreamConnectTimeoutMs?: number;
  /** Time from the request being sent until the upstream's response head arrives. */
  upstreamResponseTimeoutMs?: number;
  /** Time a client has to send a complete request head (slowloris guard). */
  requestHeadersTimeoutMs?: number;
  /** How long `stop()` lets in-flight exchanges finish. */
  drainTimeoutMs?: number;
  /** Largest request/response head in bytes (431 past it). */
  maxHeaderSize?: number;
  /** Most header fields in one request head (431 past it). */
  maxHeadersCount?: number;
  /** Most sockets (busy + idle) to one upstream; further requests wait for a free one. */
  maxSocketsPerUpstream?: number;
  /** Most idle keep-alive sockets kept per upstream. */
  maxIdleSocketsPerUpstream?: number;
  /** Most HTTP/2 sessions per h2c upstream; further streams wait for a free slot. */
  maxSessionsPerUpstream?: number;
  /**
   * SETTINGS_MAX_CONCURRENT_STREAMS the proxy advertises to HTTP/2 clients: streams one client
   * connection may have open at once, each holding an upstream socket or tunnel while it runs.
   */
  http2MaxConcurrentStreams?: number;
  /**
   * Memory one HTTP/2 client session may hold (MiB: header tables, stream state, response data
   * queued for the client) before Node refuses its new streams; such a session is then closed
   * with GOAWAY.
   */
  http2MaxSessionMemoryMb?: number;
  /** How long `auto` remembers what an upstream speaks. */
  upstreamProtocolCacheTtlMs?: number;
  /** Speak TLS to routed upstreams (a request's `X-Cmux-Upstream-Scheme` decides for itself). */
  upstreamTls?: boolean;
  /** Refuse upstream certificates that do not verify. */
  upstreamTlsRejectUnauthorized?: boolean;
  /** Accept certificates that do not verify (self-signed) from loopback upstreams only. */
  upstreamTlsInsecureLoopback?: boolean;
  /** A PEM file of CA certificates trusted for upstreams, besides Node's roots. */
  upstreamCa?: string;
  fallback?: FallbackOption;
  containerPortResolver?: ContainerPortResolver;
  /** Docker Engine API unix socket; builds a container port resolver when no resolver is given. */
  dockerSocketPath?: string;
  portResolverCacheTtlMs?: number;
  logger?: Logger;
  logLevel?: LogLevel;
  /** Terminate TLS on the same port (ALPN h2 / http/1.1). Files are PEM; reloaded when they change. */
  tls?: TlsOption;
  /** Port of the admin listener (/metrics, /healthz, /readyz, /stats); off when unset, 0 picks a free one. */
  adminPort?: number;
  /** Address the admin listener binds. */
  adminHost?: string;
  /** One JSON line per finished exchange, WebSocket and tunnel: 'stdout', a file path (appended), or a function. Off when unset. */
  accessLog?: AccessLogOption;
  /** Log the path with its query string (off: the query is cut). */
  accessLogQuery?: boolean;
  /** Routes with upstream groups, checked in order after the header routes and before the Host patterns. */
  routes?: RouteOption[];
  /** Per-client token buckets for every request (WebSocket upgrades and CONNECTs included): 429 past them. */
  rateLimit?: RateLimitOption;
  /**
   * Every connection starts with a PROXY protocol header (from a load balancer): `'v1'`, `'v2'`
   * or `true` for either. The client address it names is the one forwarded and logged; a
   * connection without a valid header is closed. Off when unset.
   */
  acceptProxyProtocol?: ProxyProtocolOption;
}

export interface ResolvedOptions {
  listenPort: number;
  listenHost: string;
  enableHttp2: boolean;
  enableWebsockets: boolean;
  maxConnections: number;
  connectionQueueTimeoutMs: number;
  maxQueuedConnections: number;
  idleTimeoutMs: number;
  clientIdleTimeoutMs: number;
  upstreamIdleTimeoutMs: number;
  keepaliveMs: number;
  headerRoutingEnabled: boolean;
  workspaceIsolation: boolean;
  preserveHost: boolean;
  upstreamProtocol: UpstreamProtocol;
  upstreamConnectTimeoutMs: number;
  upstreamResponseTimeoutMs: number;
  requestHeadersTimeoutMs: number;
  drainTimeoutMs: number;
  maxHeaderSize: number;
  maxHeadersCount: number;
  maxSocketsPerUpstream: number;
  maxIdleSocketsPerUpstream: number;
  maxSessionsPerUpstream: number;
  http2MaxConcurrentStreams: number;
  http2MaxSessionMemoryMb: number;
  upstreamProtocolCacheTtlMs: number;
  upstreamTls: boolean;
  upstreamTlsRejectUnauthorized: boolean;
  upstreamTlsInsecureLoopback: boolean;
  upstreamCa: string | undefined;
  fallback: FallbackOption | undefined;
  containerPortResolver: ContainerPortResolver | undefined;
  dockerSocketPath: string | undefined;
  portResolverCacheTtlMs: number;
  logger: Logger | undefined;
  logLevel: LogLevel;
  tls: TlsOption | undefined;
  adminPort: number | undefined;
  adminHost: string;
  accessLog: AccessLogOption | undefined;
  accessLogQuery: boolean;
  routes: ResolvedRoute[];
  rateLimit: RateLimitConfig | undefined;
  acceptProxyProtocol: ProxyProtocolOption;
}

export const DEFAULTS = {
  listenHost: '127.0.0.1',
  enableHttp2: true,
  enableWebsockets: true,
  maxConnections: 1000,
  connectionQueueTimeoutMs: 10_000,
  maxQueuedConnections: 1000,
  idleTimeoutMs: 120_000,
  keepaliveMs: 30_000,
  headerRoutingEnabled: true,
  workspaceIsolation: true,
  preserveHost: true,
  upstreamProtocol: 'http1' as UpstreamProtocol,
  upstreamConnectTimeoutMs: 5_000,
  upstreamResponseTimeoutMs: 120_000,
  requestHeadersTimeoutMs: 30_000,
  drainTimeoutMs: 10_000,
  maxHeaderSize: 16_384,
  maxHeadersCount: 200,
  maxSocketsPerUpstream: 1024,
  maxIdleSocketsPerUpstream: 256,
  maxSessionsPerUpstream: 8,
  // nginx's http2_max_concurrent_streams is 128; one client connection must not be able to
  // take a large share of the process's file descriptors (each stream may hold an upstream socket).
  http2MaxConcurrentStreams: 100,
  // node:http2's 10 MiB default is too small for a proxy with slow readers.
  http2MaxSessionMemoryMb: 64,
  upstreamProtocolCacheTtlMs: 300_000,
  upstreamTls: false,
  upstreamTlsRejectUnauthorized: true,
  upstreamTlsInsecureLoopback: false,
  portResolverCacheTtlMs: 2_000,
  logLevel: 'info' as LogLevel,
  adminHost: '127.0.0.1',
} as const;

const LOG_LEVELS: ReadonlySet<string> = new Set(['silent', 'error', 'warn', 'info', 'debug']);
const KNOWN_OPTIONS: ReadonlySet<string> = new Set([
  'listenPort', 'listenHost', 'enableHttp2', 'enableWebsockets', 'maxConnections',
  'connectionQueueTimeoutMs', 'maxQueuedConnections', 'idleTimeoutMs', 'clientIdleTimeoutMs',
  'upstreamIdleTimeoutMs', 'keepaliveMs', 'headerRoutingEnabled', 'workspaceIsolation',
  'preserveHost', 'upstreamProtocol', 'upstreamConnectTimeoutMs', 'upstreamResponseTimeoutMs',
  'requestHeadersTimeoutMs', 'drainTimeoutMs', 'maxHeaderSize', 'maxHeadersCount',
  'maxSocketsPerUpstream', 'maxIdleSocketsPerUpstream', 'maxSessionsPerUpstream', 'http2MaxConcurrentStreams', 'http2MaxSessionMemoryMb', 'upstreamProtocolCacheTtlMs',
  'upstreamTls', 'upstreamTlsRejectUnauthorized', 'upstreamTlsInsecureLoopback', 'upstreamCa', 'fallback', 'containerPortResolver',
  'dockerSocketPath', 'portResolverCacheTtlMs', 'logger', 'logLevel', 'tls', 'adminPort', 'adminHost', 'accessLog', 'accessLogQuery', 'routes', 'rateLimit',
  'acceptProxyProtocol',
]);

/** A value as error messages show it: strings quoted, objects as JSON, functions as "a function". */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'object' && value !== null) {
    try {
      // A long value (a whole route table) is cut: the message names the path to the bad entry.
      const text = JSON.stringify(value);
      return text.length > 300 ? `${text.slice(0, 300)}…` : text;
    } catch {
      return 'an object';
    }
  }
  return String(value);
}

/**
 * A bad option: `option` is its path as written (`tls.sni["a.test"].certFile`), `value` what was
 * given, `expected` what would have been accepted (`undefined` for an unknown option name). The
 * CLI uses these to name the flag, environment variable or config file entry the value came from.
 */
export class OptionError extends TypeError {
  readonly option: string;
  readonly value: unknown;
  readonly expected: string | undefined;
  constructor(option: string, value: unknown, expected: string | undefined) {
    super(
      expected === undefined
        ? `Unknown option ${option}: ${describeValue(value)} (the README lists the options)`
        : `Invalid option ${option}: ${describeValue(value)} (expected ${expected})`,
    );
    this.name = 'TypeError';
    this.option = option;
    this.value = value;
    this.expected = expected;
  }
}

function fail(name: string, value: unknown, expected: string): never {
  throw new OptionError(name, value, expected);
}

/** Refuses keys of a nested option object that are not in `known`. */
function onlyKnown(name: string, value: object, known: readonly string[]): void {
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) throw new OptionError(`${name}.${key}`, (value as Record<string, unknown>)[key], undefined);
  }
}

function integer(o: Record<string, unknown>, name: string, fallback: number | undefined, min: number, max: number): number {
  const value = o[name];
  if (value === undefined) {
    if (fallback === undefined) fail(name, value, `an integer from ${min} to ${max}`);
    return fallback;
  }
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    fail(name, value, `an integer from ${min} to ${max}`);
  }
  return value;
}

function bool(o: Record<string, unknown>, name: string, fallback: boolean): boolean {
  const value = o[name];
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') fail(name, value, 'a boolean');
  return value;
}

const MAX_TIMEOUT = 2_147_483_647; // setTimeout's limit

function validateFallback(value: unknown): FallbackOption | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null) fail('fallback', value, '{ port }, { socketPath } or { handler }');
  const f = value as Record<string, unknown>;
  if ('handler' in f) {
    onlyKnown('fallback', f, ['handler', 'upgrade']);
    if (typeof f['handler'] !== 'function') fail('fallback.handler', f['handler'], 'a function (req, res)');
    if (f['upgrade'] !== undefined && typeof f['upgrade'] !== 'function') {
      fail('fallback.upgrade', f['upgrade'], 'a function (req, socket, head)');
    }
    return value as FallbackOption;
  }
  if ('socketPath' in f) {
    onlyKnown('fallback', f, ['socketPath']);
    if (typeof f['socketPath'] !== 'string' || f['socketPath'] === '') fail('fallback.socketPath', f['socketPath'], 'a non-empty path');
    return { socketPath: f['socketPath'] };
  }
  if ('port' in f) {
    onlyKnown('fallback', f, ['port', 'host', 'tls']);
    const port = f['port'];
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
      fail('fallback.port', port, 'an integer from 1 to 65535');
    }
    const host = f['host'];
    if (host !== undefined && (typeof host !== 'string' || host === '')) fail('fallback.host', host, 'a host name or address');
    const tls = f['tls'];
    if (tls !== undefined && typeof tls !== 'boolean') fail('fallback.tls', tls, 'a boolean');
    return tls === true ? { port, host: host ?? '127.0.0.1', tls } : { port, host: host ?? '127.0.0.1' };
  }
  return fail('fallback', value, '{ port }, { socketPath } or { handler }');
}

function validateFiles(name: string, value: unknown, known: readonly string[]): void {
  if (typeof value !== 'object' || value === null) fail(name, value, '{ certFile, keyFile }');
  onlyKnown(name, value, known);
  const v = value as Record<string, unknown>;
  for (const field of ['certFile', 'keyFile']) {
    if (typeof v[field] !== 'string' || v[field] === '') fail(`${name}.${field}`, v[field], 'a file path');
  }
}

function validateTls(value: unknown): TlsOption | undefined {
  if (value === undefined) return undefined;
  validateFiles('tls', value, ['certFile', 'keyFile', 'sni']);
  const sni = (value as Record<string, unknown>)['sni'];
  if (sni !== undefined) {
    if (typeof sni !== 'object' || sni === null) fail('tls.sni', sni, 'an object of server name -> { certFile, keyFile }');
    for (const [name, files] of Object.entries(sni)) validateFiles(`tls.sni[${JSON.stringify(name)}]`, files, ['certFile', 'keyFile']);
  }
  return value as TlsOption;
}

/** Applies defaults and validates; throws a TypeError naming the bad option and its value. */
export function resolveOptions(input: ProxyOptions): ResolvedOptions {
  if (typeof input !== 'object' || input === null) fail('options', input, 'an object');
  const o = input as unknown as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (!KNOWN_OPTIONS.has(key)) throw new OptionError(key, o[key], undefined);
  }
  const listenHost = o['listenHost'] ?? DEFAULTS.listenHost;
  if (typeof listenHost !== 'string' || listenHost === '') fail('listenHost', listenHost, 'an address to bind');
  const idleTimeoutMs = integer(o, 'idleTimeoutMs', DEFAULTS.idleTimeoutMs, 0, MAX_TIMEOUT);
  const upstreamProtocol = o['upstreamProtocol'] ?? DEFAULTS.upstreamProtocol;
  if (upstreamProtocol !== 'http1' && upstreamProtocol !== 'h2c' && upstreamProtocol !== 'auto') {
    fail('upstreamProtocol', upstreamProtocol, '"http1", "h2c" or "auto"');
  }
  const logLevel = o['logLevel'] ?? DEFAULTS.logLevel;
  if (typeof logLevel !== 'string' || !LOG_LEVELS.has(logLevel)) fail('logLevel', logLevel, 'silent, error, warn, info or debug');
  const logger = o['logger'];
  if (logger !== undefined) {
    const l = logger as Record<string, unknown>;
    if (typeof logger !== 'object' || logger === null || ['debug', 'info', 'warn', 'error'].some((m) => typeof l[m] !== 'function')) {
      fail('logger', logger, 'an object with debug, info, warn and error methods');
    }
  }
  const resolver = o['containerPortResolver'];
  if (resolver !== undefined && typeof resolver !== 'function') fail('containerPortResolver', resolver, 'a function (container, port) => Promise<number | null>');
  const dockerSocketPath = o['dockerSocketPath'];
  if (dockerSocketPath !== undefined && (typeof dockerSocketPath !== 'string' || dockerSocketPath === '')) {
    fail('dockerSocketPath', dockerSocketPath, 'a unix socket path');
  }
  const adminHost = o['adminHost'] ?? DEFAULTS.adminHost;
  if (typeof adminHost !== 'string' || adminHost === '') fail('adminHost', adminHost, 'an address to bind');
  const accessLog = o['accessLog'];
  if (accessLog !== undefined && typeof accessLog !== 'function' && (typeof accessLog !== 'string' || accessLog === '')) {
    fail('accessLog', accessLog, "'stdout', a file path or a function (entry) => void");
  }
  const acceptProxyProtocol = o['acceptProxyProtocol'] === undefined ? false : o['acceptProxyProtocol'];
  if (typeof acceptProxyProtocol !== 'boolean' && acceptProxyProtocol !== 'v1' && acceptProxyProtocol !== 'v2') {
    fail('acceptProxyProtocol', acceptProxyProtocol, "true, false, 'v1' or 'v2'");
  }
  const upstreamCa = o['upstreamCa'];
  if (upstreamCa !== undefined && (typeof upstreamCa !== 'string' || upstreamCa === '')) fail('upstreamCa', upstreamCa, 'a PEM file path');
  const maxConnections = integer(o, 'maxConnections', DEFAULTS.maxConnections, 1, 10_000_000);
  // A WebSocket holds a client connection and an upstream socket slot: by default the slots follow
  // maxConnections, so raising it alone lets that many WebSockets reach one upstream.
  const maxSocketsPerUpstream = integer(o, 'maxSocketsPerUpstream', Math.min(1_000_000, Math.max(DEFAULTS.maxSocketsPerUpstream, maxConnections)), 1, 1_000_000);
  return {
    listenPort: integer(o, 'listenPort', undefined, 0, 65535),
    listenHost,
    enableHttp2: bool(o, 'enableHttp2', DEFAULTS.enableHttp2),
    enableWebsockets: bool(o, 'enableWebsockets', DEFAULTS.enableWebsockets),
    maxConnections,
    connectionQueueTimeoutMs: integer(o, 'connectionQueueTimeoutMs', DEFAULTS.connectionQueueTimeoutMs, 0, MAX_TIMEOUT),
    maxQueuedConnections: integer(o, 'maxQueuedConnections', DEFAULTS.maxQueuedConnections, 0, 10_000_000),
    idleTimeoutMs,
    clientIdleTimeoutMs: integer(o, 'clientIdleTimeoutMs', idleTimeoutMs, 0, MAX_TIMEOUT),
    upstreamIdleTimeoutMs: integer(o, 'upstreamIdleTimeoutMs', idleTimeoutMs, 0, MAX_TIMEOUT),
    keepaliveMs: integer(o, 'keepaliveMs', DEFAULTS.keepaliveMs, 0, MAX_TIMEOUT),
    headerRoutingEnabled: bool(o, 'headerRoutingEnabled', DEFAULTS.headerRoutingEnabled),
    workspaceIsolation: bool(o, 'workspaceIsolation', DEFAULTS.workspaceIsolation),
    preserveHost: bool(o, 'preserveHost', DEFAULTS.preserveHost),
    upstreamProtocol: upstreamProtocol as UpstreamProtocol,
    upstreamConnectTimeoutMs: integer(o, 'upstreamConnectTimeoutMs', DEFAULTS.upstreamConnectTimeoutMs, 1, MAX_TIMEOUT),
    upstreamResponseTimeoutMs: integer(o, 'upstreamResponseTimeoutMs', DEFAULTS.upstreamResponseTimeoutMs, 1, MAX_TIMEOUT),
    requestHeadersTimeoutMs: integer(o, 'requestHeadersTimeoutMs', DEFAULTS.requestHeadersTimeoutMs, 1, MAX_TIMEOUT),
    drainTimeoutMs: integer(o, 'drainTimeoutMs', DEFAULTS.drainTimeoutMs, 0, MAX_TIMEOUT),
    maxHeaderSize: integer(o, 'maxHeaderSize', DEFAULTS.maxHeaderSize, 1024, 1_048_576),
    maxHeadersCount: integer(o, 'maxHeadersCount', DEFAULTS.maxHeadersCount, 1, 10_000),
    maxSocketsPerUpstream,
    maxIdleSocketsPerUpstream: integer(o, 'maxIdleSocketsPerUpstream', Math.min(DEFAULTS.maxIdleSocketsPerUpstream, maxSocketsPerUpstream), 0, maxSocketsPerUpstream),
    maxSessionsPerUpstream: integer(o, 'maxSessionsPerUpstream', DEFAULTS.maxSessionsPerUpstream, 1, 10_000),
    http2MaxConcurrentStreams: integer(o, 'http2MaxConcurrentStreams', DEFAULTS.http2MaxConcurrentStreams, 1, 10_000),
    http2MaxSessionMemoryMb: integer(o, 'http2MaxSessionMemoryMb', DEFAULTS.http2MaxSessionMemoryMb, 1, 4096),
    upstreamProtocolCacheTtlMs: integer(o, 'upstreamProtocolCacheTtlMs', DEFAULTS.upstreamProtocolCacheTtlMs, 0, MAX_TIMEOUT),
    upstreamTls: bool(o, 'upstreamTls', DEFAULTS.upstreamTls),
    upstreamTlsRejectUnauthorized: bool(o, 'upstreamTlsRejectUnauthorized', DEFAULTS.upstreamTlsRejectUnauthorized),
    upstreamTlsInsecureLoopback: bool(o, 'upstreamTlsInsecureLoopback', DEFAULTS.upstreamTlsInsecureLoopback),
    upstreamCa: upstreamCa as string | undefined,
    fallback: validateFallback(o['fallback']),
    containerPortResolver: resolver as ContainerPortResolver | undefined,
    dockerSocketPath: dockerSocketPath as string | undefined,
    portResolverCacheTtlMs: integer(o, 'portResolverCacheTtlMs', DEFAULTS.portResolverCacheTtlMs, 0, MAX_TIMEOUT),
    logger: logger as Logger | undefined,
    logLevel: logLevel as LogLevel,
    tls: validateTls(o['tls']),
    adminPort: o['adminPort'] === undefined ? undefined : integer(o, 'adminPort', undefined, 0, 65535),
    adminHost,
    accessLog: accessLog as AccessLogOption | undefined,
    accessLogQuery: bool(o, 'accessLogQuery', false),
    routes: validateRoutes(o['routes']),
    rateLimit: validateRateLimit('rateLimit', o['rateLimit']),
    acceptProxyProtocol,
  };
}

// ---- routes -------------------------------------------------------------------------------

export const ROUTE_LIMITS = { routes: 100_000, upstreams: 1024, weight: 1000, text: 1024 } as const;
const BALANCES: readonly string[] = ['round-robin', 'least-connections', 'hash'];
/** A DNS name as a Host carries it: letters, digits, '-', '_', dots between labels. */
const HOST_NAME = /^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*$/;
/** A field name (RFC 9110 §5.1 token). */
const TOKEN = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;
/** A path prefix or health-check path: '/' then visible ASCII, no '?' or '#'. */
const PATH = /^\/[\x21-\x22\x24-\x3e\x40-\x7e]*$/;
const UPSTREAM_EXPECTED = 'a loopback "host:port" (127.0.0.0/8, [::1] or localhost) or an absolute unix socket path';

function isLoopbackIpv4(host: string): boolean {
  const parts = host.split('.');
  if (parts.length !== 4 || parts[0] !== '127') return false;
  return parts.every((p) => /^(?:0|[1-9][0-9]{0,2})$/.test(p) && Number(p) <= 255);
}

/** `host:port` on loopback or `/unix/socket`, else null. */
export function parseUpstreamAddress(text: string): { host: string; port: number; socketPath: string | undefined } | null {
  if (text.length === 0 || text.length > ROUTE_LIMITS.text) return null;
  if (text.charCodeAt(0) === 47 /* / */) {
    // Any byte but NUL is allowed in a path; control characters would only hide a mistake.
    return /[\x00-\x1f\x7f]/.test(text) ? null : { host: 'localhost', port: 0, socketPath: text };
  }
  const colon = text.lastIndexOf(':');
  if (colon <= 0) return null;
  const portText = text.slice(colon + 1);
  if (!/^[0-9]{1,5}$/.test(portText)) return null;
  const port = Number(portText);
  if (port < 1 || port > 65535) return null;
  const host = text.slice(0, colon).toLowerCase();
  if (host === '[::1]') return { host: '::1', port, socketPath: undefined };
  if (host === 'localhost' || isLoopbackIpv4(host)) return { host, port, socketPath: undefined };
  return null;
}

function positive(name: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) fail(name, value, `an integer from ${min} to ${max}`);
  return value;
}

function plainObject(name: string, value: unknown, expected: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(name, value, expected);
  return value as Record<string, unknown>;
}

function validateUpstream(name: string, value: unknown): ResolvedUpstream {
  let address: unknown = value;
  let weight = 1;
  let tls: boolean | undefined;
  const outer = name;
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    onlyKnown(name, value, ['address', 'weight', 'tls']);
    const u = value as Record<string, unknown>;
    address = u['address'];
    weight = positive(`${name}.weight`, u['weight'], 1, 1, ROUTE_LIMITS.weight);
    const t = u['tls'];
    if (t !== undefined && typeof t !== 'boolean') fail(`${name}.tls`, t, 'true or false');
    tls = t;
    name = `${name}.address`;
  }
  if (typeof address !== 'string') fail(name, address, UPSTREAM_EXPECTED);
  const parsed = parseUpstreamAddress(address);
  if (parsed === null) fail(name, address, UPSTREAM_EXPECTED);
  if (tls === true && parsed.socketPath !== undefined) fail(`${outer}.tls`, tls, 'no tls for a unix socket upstream');
  return { address, host: parsed.host, port: parsed.port, socketPath: parsed.socketPath, weight, tls };
}

function validateRoute(name: string, value: unknown): ResolvedRoute {
  const r = plainObject(name, value, '{ match, upstreams, balance? }');
  onlyKnown(name, r, ['match', 'upstreams', 'balance', 'hashOn', 'healthCheck', 'circuitBreaker', 'rateLimit']);
  const match = plainObject(`${name}.match`, r['match'], '{ host, pathPrefix? }');
  onlyKnown(`${name}.match`, match, ['host', 'pathPrefix']);
  const hostValue = match['host'];
  const hostExpected = 'a host name ("api.localhost") or "*.suffix", without a port';
  if (typeof hostValue !== 'string' || hostValue.length > 253) fail(`${name}.match.host`, hostValue, hostExpected);
  let host = hostValue.toLowerCase();
  if (host.endsWith('.')) host = host.slice(0, -1);
  const bare = host.startsWith('*.') ? host.slice(2) : host;
  if (!HOST_NAME.test(bare)) fail(`${name}.match.host`, hostValue, hostExpected);
  const prefix = match['pathPrefix'];
  if (prefix !== undefined && (typeof prefix !== 'string' || prefix.length > ROUTE_LIMITS.text || !PATH.test(prefix))) {
    fail(`${name}.match.pathPrefix`, prefix, "a path starting with '/' (visible ASCII, no '?' or '#')");
  }
  const list = r['upstreams'];
  if (!Array.isArray(list) || list.length === 0 || list.length > ROUTE_LIMITS.upstreams) {
    fail(`${name}.upstreams`, list, `an array of 1 to ${ROUTE_LIMITS.upstreams} upstreams`);
  }
  const upstreams: ResolvedUpstream[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < list.length; i++) {
    const u = validateUpstream(`${name}.upstreams[${i}]`, list[i]);
    const key = u.socketPath ?? `${u.host}:${u.port}`;
    if (seen.has(key)) fail(`${name}.upstreams[${i}]`, list[i], 'each upstream once');
    seen.add(key);
    upstreams.push(u);
  }
  const balance = r['balance'] ?? 'round-robin';
  if (typeof balance !== 'string' || !BALANCES.includes(balance)) fail(`${name}.balance`, balance, '"round-robin", "least-connections" or "hash"');
  let hashHeader: string | null = null;
  const hashOn = r['hashOn'];
  if (hashOn !== undefined) {
    if (balance !== 'hash') fail(`${name}.hashOn`, hashOn, 'no hashOn unless balance is "hash"');
    if (hashOn !== 'client-address') {
      const h = plainObject(`${name}.hashOn`, hashOn, '"client-address" or { header }');
      onlyKnown(`${name}.hashOn`, h, ['header']);
      const header = h['header'];
      if (typeof header !== 'string' || header.length > 256 || !TOKEN.test(header.toLowerCase())) fail(`${name}.hashOn.header`, header, 'a header field name');
      hashHeader = header.toLowerCase();
    }
  }
  let healthCheck: ResolvedRoute['healthCheck'] = null;
  if (r['healthCheck'] !== undefined) {
    const hc = plainObject(`${name}.healthCheck`, r['healthCheck'], '{ path, intervalMs?, timeoutMs? }');
    onlyKnown(`${name}.healthCheck`, hc, ['path', 'intervalMs', 'timeoutMs']);
    const path = hc['path'];
    if (typeof path !== 'string' || path.length > ROUTE_LIMITS.text || !/^\/[\x21-\x7e]*$/.test(path)) {
      fail(`${name}.healthCheck.path`, path, "a path starting with '/' (visible ASCII)");
    }
    const intervalMs = positive(`${name}.healthCheck.intervalMs`, hc['intervalMs'], 5000, 100, MAX_TIMEOUT);
    const timeoutMs = positive(`${name}.healthCheck.timeoutMs`, hc['timeoutMs'], Math.min(2000, intervalMs), 1, intervalMs);
    healthCheck = { path, intervalMs, timeoutMs };
  }
  const cbValue = r['circuitBreaker'] === undefined ? {} : plainObject(`${name}.circuitBreaker`, r['circuitBreaker'], '{ failures?, openMs?, maxOpenMs?, halfOpenProbes? }');
  onlyKnown(`${name}.circuitBreaker`, cbValue, ['failures', 'openMs', 'maxOpenMs', 'halfOpenProbes']);
  const openMs = positive(`${name}.circuitBreaker.openMs`, cbValue['openMs'], 5000, 1, MAX_TIMEOUT);
  const circuitBreaker = {
    failures: positive(`${name}.circuitBreaker.failures`, cbValue['failures'], 5, 1, 1_000_000),
    openMs,
    maxOpenMs: positive(`${name}.circuitBreaker.maxOpenMs`, cbValue['maxOpenMs'], Math.max(openMs, 300_000), openMs, MAX_TIMEOUT),
    halfOpenProbes: positive(`${name}.circuitBreaker.halfOpenProbes`, cbValue['halfOpenProbes'], 1, 1, 1000),
  };
  return {
    host,
    pathPrefix: (prefix as string | undefined) ?? '',
    upstreams,
    balance: balance as ResolvedRoute['balance'],
    hashHeader,
    healthCheck,
    circuitBreaker,
    rateLimit: validateRateLimit(`${name}.rateLimit`, r['rateLimit']),
  };
}

function validateRateLimit(name: string, value: unknown): RateLimitConfig | undefined {
  if (value === undefined) return undefined;
  const r = plainObject(name, value, '{ rate, burst, maxClients? }');
  onlyKnown(name, r, ['rate', 'burst', 'maxClients']);
  const rate = r['rate'];
  if (typeof rate !== 'number' || !Number.isFinite(rate) || rate < 0.001 || rate > 1_000_000) fail(`${name}.rate`, rate, 'tokens per second, a number from 0.001 to 1000000');
  const burst = r['burst'];
  if (typeof burst !== 'number' || !Number.isInteger(burst) || burst < 1 || burst > 1_000_000) fail(`${name}.burst`, burst, 'an integer from 1 to 1000000');
  return { rate, burst, maxClients: positive(`${name}.maxClients`, r['maxClients'], 100_000, 1, 10_000_000) };
}

/** Validates the `routes` option (also used by `updateRoutes()`): throws an OptionError naming the entry. */
export function validateRoutes(value: unknown): ResolvedRoute[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.length > ROUTE_LIMITS.routes) fail('routes', value, `an array of at most ${ROUTE_LIMITS.routes} routes`);
  const out: ResolvedRoute[] = [];
  const seen = new Map<string, number>();
  for (let i = 0; i < value.length; i++) {
    const route = validateRoute(`routes[${i}]`, value[i]);
    const key = `${route.host} ${route.pathPrefix}`;
    const first = seen.get(key);
    if (first !== undefined) fail(`routes[${i}].match`, value[i]['match'], `a match other than routes[${first}]'s (it would never be used)`);
    seen.set(key, i);
    out.push(route);
  }
  return out;
}
