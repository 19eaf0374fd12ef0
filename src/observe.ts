import { formatEntry, type AccessLog, type AccessLogEntry } from './access-log.js';
import type { Exchange } from './exchange.js';
import type { RequestHeadFacts } from './headers.js';
import type { ProxyCore } from './proxy-core.js';
import type { Target } from './route/target.js';
import type { ProxyStats } from './stats.js';
import type { Tunnel } from './tunnel.js';

/**
 * What the proxy records when something watches it (the admin listener's histograms): one
 * `exchangeEnd` per finished exchange, one `tunnelEnd` per closed WebSocket or tunnel. The
 * proxy holds `null` instead of an Observer when nothing watches, so the hot path costs one
 * null check and the clock is never read.
 */

/** Request duration buckets (seconds): head received -> response end. */
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** Upstream connect buckets (seconds). */
const CONNECT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** WebSocket and tunnel lifetime buckets (seconds). */
const LIFETIME_BUCKETS = [1, 5, 15, 60, 300, 900, 3600, 14400, 86400];

const PROTOCOLS = ['http1', 'http2'] as const;
const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx', 'none'] as const;
const TUNNEL_KINDS = ['websocket', 'connect'] as const;

export const PROTO_HTTP1 = 0;
export const PROTO_HTTP2 = 1;
export const TUNNEL_KIND_WEBSOCKET = 0;
export const TUNNEL_KIND_CONNECT = 1;

/** Fixed buckets, one series per label index; counts per bucket (not cumulative) plus +Inf. */
class Histogram {
  readonly buckets: readonly number[];
  readonly counts: number[][];
  readonly sums: number[];
  readonly totals: number[];

  constructor(buckets: readonly number[], series: number) {
    this.buckets = buckets;
    this.counts = [];
    this.sums = [];
    this.totals = [];
    for (let i = 0; i < series; i++) {
      this.counts.push(new Array<number>(buckets.length + 1).fill(0));
      this.sums.push(0);
      this.totals.push(0);
    }
  }

  observe(series: number, value: number): void {
    const buckets = this.buckets;
    let i = 0;
    while (i < buckets.length && value > buckets[i]!) i++;
    this.counts[series]![i]!++;
    this.sums[series]! += value;
    this.totals[series]!++;
  }

  /** Prometheus text lines for one series (`labels` without braces, may be empty). */
  render(out: string[], name: string, series: number, labels: string): void {
    const counts = this.counts[series]!;
    const sep = labels === '' ? '' : ',';
    let cumulative = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      cumulative += counts[i]!;
      out.push(`${name}_bucket{${labels}${sep}le="${this.buckets[i]}"} ${cumulative}`);
    }
    cumulative += counts[this.buckets.length]!;
    out.push(`${name}_bucket{${labels}${sep}le="+Inf"} ${cumulative}`);
    const braces = labels === '' ? '' : `{${labels}}`;
    out.push(`${name}_sum${braces} ${this.sums[series]}`);
    out.push(`${name}_count${braces} ${this.totals[series]}`);
  }
}

function statusClass(status: number): number {
  return status >= 100 && status < 600 ? ((status / 100) | 0) - 1 : 5;
}

/** What the access log says about a WebSocket or tunnel, taken when it opens. */
export interface TunnelInfo {
  client: string;
  clientVersion: string;
  tls: boolean;
  method: string;
  host: string | undefined;
  path: string;
  route: string;
  target: Target | null;
  status: number;
  requestId: string;
}

/** A WebSocket or tunnel being watched, made when it opens. */
export interface TunnelRecord {
  readonly observer: Observer;
  readonly kind: number;
  /** performance.now() when its request head arrived. */
  readonly t0: number;
  readonly info: TunnelInfo | null;
}

/** How a request was routed, for the access log. */
export function routeKind(core: ProxyCore, method: string, facts: RequestHeadFacts, target: Target | null, grouped = false): string {
  if (method === 'CONNECT') return 'connect';
  if (target === null) return 'none';
  if (grouped) return 'routes';
  if (target === core.fallbackTarget) return 'fallback';
  if (core.options.headerRoutingEnabled && (facts.portHeader !== undefined || facts.workspaceHeader !== undefined)) return 'header';
  return 'host';
}

function protocolName(clientVersion: string): string {
  return clientVersion === '2' ? 'HTTP/2' : clientVersion === '1.0' ? 'HTTP/1.0' : 'HTTP/1.1';
}

export class Observer {
  private readonly duration = new Histogram(DURATION_BUCKETS, PROTOCOLS.length * STATUS_CLASSES.length);
  private readonly connect = new Histogram(CONNECT_BUCKETS, 1);
  private readonly lifetime = new Histogram(LIFETIME_BUCKETS, TUNNEL_KINDS.length);
  readonly accessLog: AccessLog | null;
  private readonly logQuery: boolean;
  /** ISO time of the current millisecond's lines (one Date string per millisecond, not per line). */
  private now = '';
  private nowMs = 0;
  private readonly scratch: AccessLogEntry = newEntry();

  constructor(accessLog: AccessLog | null, logQuery: boolean) {
    this.accessLog = accessLog;
    this.logQuery = logQuery;
  }

  private time(): string {
    const ms = Date.now();
    if (ms !== this.nowMs) {
      this.nowMs = ms;
      this.now = new Date(ms).toISOString();
    }
    return this.now;
  }

  private logPath(path: string): string {
    if (this.logQuery) return path;
    const q = path.indexOf('?');
    return q === -1 ? path : path.slice(0, q);
  }

  /** The exchange is over (response ended, proxy-made answer, failure or client abort). */
  exchangeEnd(ex: Exchange): void {
    const ms = performance.now() - ex.t0;
    const proto = ex.clientVersion === '2' ? PROTO_HTTP2 : PROTO_HTTP1;
    this.duration.observe(proto * STATUS_CLASSES.length + statusClass(ex.status), ms / 1000);
    const log = this.accessLog;
    if (log === null) return;
    // A function sink keeps its objects; a line sink reuses one (no allocation per request).
    const entry: AccessLogEntry = log.fn === null ? this.scratch : newEntry();
    entry.time = this.time();
    entry.kind = 'http';
    entry.client = ex.clientAddress;
    entry.protocol = protocolName(ex.clientVersion);
    entry.tls = ex.proto === 'https';
    entry.method = ex.method;
    entry.host = ex.host ?? null;
    entry.path = this.logPath(ex.path);
    entry.route = routeKind(ex.core, ex.method, ex.facts, ex.target, ex.grouped);
    entry.target = ex.target === null ? null : ex.target.key;
    entry.status = ex.status;
    entry.bytesIn = ex.bytesIn;
    entry.bytesOut = ex.bytesOut;
    entry.durationMs = Math.round(ms * 1000) / 1000;
    entry.reused = ex.reused;
    entry.error = ex.errorCode === '' ? null : ex.errorCode;
    entry.requestId = ex.requestId;
    if (log.fn === null) log.addLine(formatEntry(entry));
    else log.add(entry);
  }

  /** What the access log needs of an exchange that became a WebSocket or tunnel (null: no log). */
  tunnelInfo(ex: Exchange): TunnelInfo | null {
    if (this.accessLog === null) return null;
    return {
      client: ex.clientAddress,
      clientVersion: ex.clientVersion,
      tls: ex.proto === 'https',
      method: ex.method,
      host: ex.host,
      path: ex.path,
      route: routeKind(ex.core, ex.method, ex.facts, ex.target, ex.grouped),
      target: ex.target,
      status: ex.status === 0 ? 200 : ex.status,
      requestId: ex.requestId,
    };
  }

  /** A new upstream socket connected; `t0` is when it was asked for. */
  upstreamConnected(t0: number): void {
    this.connect.observe(0, (performance.now() - t0) / 1000);
  }

  tunnelOpened(kind: number, t0: number, info: TunnelInfo | null): TunnelRecord {
    return { observer: this, kind, t0, info };
  }

  tunnelEnd(record: TunnelRecord, tunnel: Tunnel): void {
    const ms = performance.now() - record.t0;
    this.lifetime.observe(record.kind, ms / 1000);
    const log = this.accessLog;
    const info = record.info;
    if (log === null || info === null) return;
    // The second end is always the upstream socket.
    const upstream = tunnel.b as unknown as { bytesRead?: number; bytesWritten?: number };
    log.add({
      time: this.time(),
      kind: record.kind === TUNNEL_KIND_WEBSOCKET ? 'websocket' : 'tunnel',
      client: info.client,
      protocol: protocolName(info.clientVersion),
      tls: info.tls,
      method: info.method,
      host: info.host ?? null,
      path: this.logPath(info.path),
      route: info.route,
      target: info.target === null ? null : info.target.key,
      status: info.status,
      bytesIn: upstream.bytesWritten ?? 0,
      bytesOut: upstream.bytesRead ?? 0,
      durationMs: Math.round(ms * 1000) / 1000,
      reused: false,
      error: null,
      requestId: info.requestId === '' ? null : info.requestId,
    });
  }

  /** Prometheus text exposition format 0.0.4. */
  metrics(stats: ProxyStats): string {
    const out: string[] = [];
    for (const m of SCALARS) {
      out.push(`# HELP ${m.name} ${m.help}`, `# TYPE ${m.name} ${m.type}`, `${m.name} ${stats[m.field] as number}`);
    }
    out.push(
      '# HELP cmux_proxy_responses_total Responses by status class, proxy-made answers included.',
      '# TYPE cmux_proxy_responses_total counter',
      `cmux_proxy_responses_total{class="1xx"} ${stats.responses1xx}`,
      `cmux_proxy_responses_total{class="2xx"} ${stats.responses2xx}`,
      `cmux_proxy_responses_total{class="3xx"} ${stats.responses3xx}`,
      `cmux_proxy_responses_total{class="4xx"} ${stats.responses4xx}`,
      `cmux_proxy_responses_total{class="5xx"} ${stats.responses5xx}`,
      '# HELP cmux_proxy_upstream_errors_total Upstream failures by error code.',
      '# TYPE cmux_proxy_upstream_errors_total counter',
    );
    for (const code of Object.keys(stats.upstreamErrors).sort()) {
      out.push(`cmux_proxy_upstream_errors_total{code="${labelValue(code)}"} ${stats.upstreamErrors[code]}`);
    }
    out.push(
      '# HELP cmux_proxy_route_upstream_state Circuit of each route upstream: 0 closed, 1 open, 2 half-open.',
      '# TYPE cmux_proxy_route_upstream_state gauge',
    );
    for (const u of stats.routeUpstreams) {
      out.push(`cmux_proxy_route_upstream_state{route="${labelValue(u.route)}",upstream="${labelValue(u.upstream)}"} ${CIRCUIT_VALUE[u.state]}`);
    }
    out.push(
      '# HELP cmux_proxy_route_upstream_in_flight Exchanges in flight and tunnels open to each route upstream.',
      '# TYPE cmux_proxy_route_upstream_in_flight gauge',
    );
    for (const u of stats.routeUpstreams) {
      out.push(`cmux_proxy_route_upstream_in_flight{route="${labelValue(u.route)}",upstream="${labelValue(u.upstream)}"} ${u.inFlight}`);
    }
    let name = 'cmux_proxy_request_duration_seconds';
    out.push(
      `# HELP ${name} Time from a request head received to its response end, by client protocol and status class (none: no response).`,
      `# TYPE ${name} histogram`,
    );
    for (let p = 0; p < PROTOCOLS.length; p++) {
      for (let c = 0; c < STATUS_CLASSES.length; c++) {
        this.duration.render(out, name, p * STATUS_CLASSES.length + c, `protocol="${PROTOCOLS[p]}",status_class="${STATUS_CLASSES[c]}"`);
      }
    }
    name = 'cmux_proxy_upstream_connect_seconds';
    out.push(`# HELP ${name} Time to open a new HTTP/1.1 upstream socket for an exchange.`, `# TYPE ${name} histogram`);
    this.connect.render(out, name, 0, '');
    name = 'cmux_proxy_tunnel_duration_seconds';
    out.push(`# HELP ${name} Lifetime of closed WebSockets and CONNECT tunnels, from the request head.`, `# TYPE ${name} histogram`);
    for (let k = 0; k < TUNNEL_KINDS.length; k++) this.lifetime.render(out, name, k, `kind="${TUNNEL_KINDS[k]}"`);
    out.push('');
    return out.join('\n');
  }
}

const CIRCUIT_VALUE = { closed: 0, open: 1, 'half-open': 2 } as const;

function newEntry(): AccessLogEntry {
  return {
    time: '',
    kind: 'http',
    client: '',
    protocol: '',
    tls: false,
    method: '',
    host: null,
    path: '',
    route: '',
    target: null,
    status: 0,
    bytesIn: 0,
    bytesOut: 0,
    durationMs: 0,
    reused: false,
    error: null,
    requestId: null,
  };
}


function labelValue(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`));
}

type ScalarField = Exclude<keyof ProxyStats, 'upstreamErrors' | 'routeUpstreams' | 'responses1xx' | 'responses2xx' | 'responses3xx' | 'responses4xx' | 'responses5xx'>;

interface Scalar {
  field: ScalarField;
  name: string;
  type: 'counter' | 'gauge';
  help: string;
}

function counter(field: ScalarField, name: string, help: string): Scalar {
  return { field, name: `cmux_proxy_${name}_total`, type: 'counter', help };
}

function gauge(field: ScalarField, name: string, help: string): Scalar {
  return { field, name: `cmux_proxy_${name}`, type: 'gauge', help };
}

/** Every `getStats()` field once (the Record type makes a missing one a compile error). */
const BY_FIELD: Record<ScalarField, Scalar> = {
  totalRequests: counter('totalRequests', 'requests', 'Request heads and HTTP/2 streams received.'),
  http1Requests: counter('http1Requests', 'http1_requests', 'HTTP/1.x requests received.'),
  http2Requests: counter('http2Requests', 'http2_requests', 'HTTP/2 streams received.'),
  tlsRequests: counter('tlsRequests', 'tls_requests', 'Requests received over TLS.'),
  bytesTransferred: counter('bytesTransferred', 'client_bytes', 'Bytes read from and written to client sockets, live ones included.'),
  proxyErrorResponses: counter('proxyErrorResponses', 'proxy_error_responses', 'Answers the proxy made itself.'),
  clientAborts: counter('clientAborts', 'client_aborts', 'Exchanges the client abandoned before the response ended.'),
  responsesReset: counter('responsesReset', 'responses_reset', 'Responses cut because the upstream failed after they started.'),
  websocketsUpgradeTotal: counter('websocketsUpgradeTotal', 'websocket_upgrades', 'HTTP/1.1 WebSocket upgrade attempts.'),
  websocketsExtendedConnectTotal: counter('websocketsExtendedConnectTotal', 'websocket_extended_connects', 'HTTP/2 extended CONNECT WebSocket attempts.'),
  requestHeadersTimeouts: counter('requestHeadersTimeouts', 'request_headers_timeouts', 'Clients too slow to send a request head.'),
  clientIdleTimeouts: counter('clientIdleTimeouts', 'client_idle_timeouts', 'Idle client connections closed.'),
  upstreamConnectTimeouts: counter('upstreamConnectTimeouts', 'upstream_connect_timeouts', 'Upstream connects that timed out.'),
  upstreamResponseTimeouts: counter('upstreamResponseTimeouts', 'upstream_response_timeouts', 'Upstream response heads that timed out.'),
  connectionsTotal: counter('connectionsTotal', 'connections', 'Client connections accepted.'),
  connectionsRefusedAtCapacity: counter('connectionsRefusedAtCapacity', 'connections_refused_at_capacity', 'Client connections refused with 503 at capacity.'),
  parseErrors: counter('parseErrors', 'parse_errors', 'Client connections that sent malformed HTTP/1 or TLS.'),
  upstreamSocketsCreated: counter('upstreamSocketsCreated', 'upstream_sockets_created', 'Upstream sockets opened.'),
  upstreamSocketsReused: counter('upstreamSocketsReused', 'upstream_sockets_reused', 'Exchanges served on a pooled upstream socket.'),
  upstreamRetries: counter('upstreamRetries', 'upstream_retries', 'Requests replayed after a stale pooled socket or a refused h2c stream.'),
  activeConnections: gauge('activeConnections', 'active_connections', 'Client connections being served now.'),
  websocketConnections: gauge('websocketConnections', 'websocket_connections', 'WebSockets open now.'),
  http2Connections: gauge('http2Connections', 'http2_connections', 'HTTP/2 client sessions open now.'),
  tunnelsOpen: gauge('tunnelsOpen', 'tunnels_open', 'CONNECT tunnels open now.'),
  connectionsQueued: gauge('connectionsQueued', 'connections_queued', 'Client connections waiting for a slot now.'),
  upstreamSocketsActive: gauge('upstreamSocketsActive', 'upstream_sockets_active', 'HTTP/1.1 upstream sockets in use now.'),
  upstreamSocketsIdle: gauge('upstreamSocketsIdle', 'upstream_sockets_idle', 'Idle pooled HTTP/1.1 upstream sockets now.'),
  upstreamWaiters: gauge('upstreamWaiters', 'upstream_waiters', 'Requests waiting for an HTTP/1.1 upstream socket now.'),
  upstreamH2Sessions: gauge('upstreamH2Sessions', 'upstream_h2_sessions', 'HTTP/2 sessions to h2c upstreams now.'),
  upstreamH2Streams: gauge('upstreamH2Streams', 'upstream_h2_streams', 'Streams running on h2c upstream sessions now.'),
  upstreamH2Waiters: gauge('upstreamH2Waiters', 'upstream_h2_waiters', 'Requests waiting for an h2c upstream stream now.'),
  noHealthyUpstream: counter('noHealthyUpstream', 'no_healthy_upstream', 'Requests answered 503 because no upstream of their route was available.'),
  circuitOpenings: counter('circuitOpenings', 'circuit_openings', 'Route upstream circuits opened (passive health).'),
  circuitCloses: counter('circuitCloses', 'circuit_closes', 'Route upstream circuits closed again after a half-open probe succeeded.'),
  activeCheckChanges: counter('activeCheckChanges', 'active_check_changes', 'Route upstreams whose active health check changed their health.'),
  rateLimited: counter('rateLimited', 'rate_limited', 'Requests answered 429 by the per-client rate limits.'),
  http2RefusingSessionsClosed: counter('http2RefusingSessionsClosed', 'http2_refusing_sessions_closed', 'HTTP/2 client sessions closed with GOAWAY because their new streams were being refused.'),
  routeUpstreamsUnavailable: gauge('routeUpstreamsUnavailable', 'route_upstreams_unavailable', 'Route upstreams not taking requests now (circuit open or active check failing).'),
};

const SCALARS: readonly Scalar[] = Object.values(BY_FIELD);

/** Metric names, for the README and tests. */
export const METRIC_NAMES: readonly string[] = [
  ...SCALARS.map((s) => s.name),
  'cmux_proxy_responses_total',
  'cmux_proxy_upstream_errors_total',
  'cmux_proxy_route_upstream_state',
  'cmux_proxy_route_upstream_in_flight',
  'cmux_proxy_request_duration_seconds',
  'cmux_proxy_upstream_connect_seconds',
  'cmux_proxy_tunnel_duration_seconds',
];
