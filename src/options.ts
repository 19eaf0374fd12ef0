import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger, LogLevel } from './log.js';
import type { TlsOption } from './tls.js';
import type { AccessLogOption } from './access-log.js';

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
  'maxSocketsPerUpstream', 'maxIdleSocketsPerUpstream', 'maxSessionsPerUpstream', 'http2MaxConcurrentStreams', 'upstreamProtocolCacheTtlMs',
  'upstreamTls', 'upstreamTlsRejectUnauthorized', 'upstreamTlsInsecureLoopback', 'upstreamCa', 'fallback', 'containerPortResolver',
  'dockerSocketPath', 'portResolverCacheTtlMs', 'logger', 'logLevel', 'tls', 'adminPort', 'adminHost', 'accessLog', 'accessLogQuery',
]);

/** A value as error messages show it: strings quoted, objects as JSON, functions as "a function". */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'object' && value !== null) {
    try {
      return JSON.stringify(value);
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
  const upstreamCa = o['upstreamCa'];
  if (upstreamCa !== undefined && (typeof upstreamCa !== 'string' || upstreamCa === '')) fail('upstreamCa', upstreamCa, 'a PEM file path');
  const maxSocketsPerUpstream = integer(o, 'maxSocketsPerUpstream', DEFAULTS.maxSocketsPerUpstream, 1, 1_000_000);
  return {
    listenPort: integer(o, 'listenPort', undefined, 0, 65535),
    listenHost,
    enableHttp2: bool(o, 'enableHttp2', DEFAULTS.enableHttp2),
    enableWebsockets: bool(o, 'enableWebsockets', DEFAULTS.enableWebsockets),
    maxConnections: integer(o, 'maxConnections', DEFAULTS.maxConnections, 1, 10_000_000),
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
  };
}
