/**
 * Counters updated on the hot path as plain integer fields; `snapshot()` copies them.
 * Gauges (open now) and counters (since start) are named apart in the README.
 */
export class StatsCounters {
  // The fields every embedder reads first
  totalRequests = 0;
  activeConnections = 0;
  websocketConnections = 0;
  http2Connections = 0;
  /** Bytes of client sockets already closed; live sockets are added at snapshot time. */
  closedConnectionBytes = 0;
  // by protocol
  http1Requests = 0;
  http2Requests = 0;
  tlsRequests = 0;
  // by outcome
  responses1xx = 0;
  responses2xx = 0;
  responses3xx = 0;
  responses4xx = 0;
  responses5xx = 0;
  /** Answers the proxy made itself (routing, parse errors, upstream failures). */
  proxyErrorResponses = 0;
  /** Exchanges the client aborted before the response ended. */
  clientAborts = 0;
  /** Responses reset mid-body because the upstream failed after the response started. */
  responsesReset = 0;
  // WebSockets
  websocketsUpgradeTotal = 0;
  websocketsExtendedConnectTotal = 0;
  tunnelsOpen = 0;
  // timeouts
  requestHeadersTimeouts = 0;
  clientIdleTimeouts = 0;
  upstreamConnectTimeouts = 0;
  upstreamResponseTimeouts = 0;
  // connections
  connectionsTotal = 0;
  connectionsQueued = 0;
  connectionsRefusedAtCapacity = 0;
  parseErrors = 0;
  // upstream pool
  upstreamSocketsCreated = 0;
  upstreamSocketsReused = 0;
  upstreamRetries = 0;
  // route groups
  /** Requests answered `503 no healthy upstream`. */
  noHealthyUpstream = 0;
  /** Route upstreams whose circuit opened / closed again. */
  circuitOpenings = 0;
  circuitCloses = 0;
  /** Active health checks that changed an upstream's health. */
  activeCheckChanges = 0;
  /** Requests answered `429 too many requests` (the `rateLimit` buckets). */
  rateLimited = 0;
  /** HTTP/2 client sessions closed with GOAWAY because new streams were refused before the proxy saw them. */
  http2RefusingSessionsClosed = 0;
  /** Upstream errors by code (ECONNREFUSED, ECONNRESET, CONNECT_TIMEOUT, RESPONSE_TIMEOUT, ...). */
  readonly upstreamErrors: Record<string, number> = Object.create(null) as Record<string, number>;

  countStatus(status: number): void {
    if (status < 200) this.responses1xx++;
    else if (status < 300) this.responses2xx++;
    else if (status < 400) this.responses3xx++;
    else if (status < 500) this.responses4xx++;
    else this.responses5xx++;
  }

  countUpstreamError(code: string): void {
    this.upstreamErrors[code] = (this.upstreamErrors[code] ?? 0) + 1;
  }
}

export interface PoolStats {
  upstreamSocketsActive: number;
  upstreamSocketsIdle: number;
  upstreamWaiters: number;
  /** HTTP/2 sessions to h2c upstreams, their running streams, and requests waiting for a stream. */
  upstreamH2Sessions: number;
  upstreamH2Streams: number;
  upstreamH2Waiters: number;
}

/** One upstream of a route group, as `getStats().routeUpstreams` lists it. */
export interface RouteUpstreamStats {
  route: string;
  upstream: string;
  state: 'closed' | 'open' | 'half-open';
  healthy: boolean;
  inFlight: number;
  openings: number;
}

export interface GroupStats {
  /** Route upstreams not taking requests now (circuit open, or failing active checks). */
  routeUpstreamsUnavailable: number;
  routeUpstreams: RouteUpstreamStats[];
}

export interface ProxyStats extends PoolStats, GroupStats {
  totalRequests: number;
  activeConnections: number;
  websocketConnections: number;
  http2Connections: number;
  bytesTransferred: number;
  http1Requests: number;
  http2Requests: number;
  tlsRequests: number;
  responses1xx: number;
  responses2xx: number;
  responses3xx: number;
  responses4xx: number;
  responses5xx: number;
  proxyErrorResponses: number;
  clientAborts: number;
  responsesReset: number;
  websocketsUpgradeTotal: number;
  websocketsExtendedConnectTotal: number;
  tunnelsOpen: number;
  requestHeadersTimeouts: number;
  clientIdleTimeouts: number;
  upstreamConnectTimeouts: number;
  upstreamResponseTimeouts: number;
  connectionsTotal: number;
  connectionsQueued: number;
  connectionsRefusedAtCapacity: number;
  parseErrors: number;
  upstreamSocketsCreated: number;
  upstreamSocketsReused: number;
  upstreamRetries: number;
  noHealthyUpstream: number;
  circuitOpenings: number;
  circuitCloses: number;
  activeCheckChanges: number;
  rateLimited: number;
  http2RefusingSessionsClosed: number;
  upstreamErrors: Record<string, number>;
}

export function snapshot(c: StatsCounters, liveBytes: number, pool: PoolStats, groups: GroupStats): ProxyStats {
  return {
    totalRequests: c.totalRequests,
    activeConnections: c.activeConnections,
    websocketConnections: c.websocketConnections,
    http2Connections: c.http2Connections,
    bytesTransferred: c.closedConnectionBytes + liveBytes,
    http1Requests: c.http1Requests,
    http2Requests: c.http2Requests,
    tlsRequests: c.tlsRequests,
    responses1xx: c.responses1xx,
    responses2xx: c.responses2xx,
    responses3xx: c.responses3xx,
    responses4xx: c.responses4xx,
    responses5xx: c.responses5xx,
    proxyErrorResponses: c.proxyErrorResponses,
    clientAborts: c.clientAborts,
    responsesReset: c.responsesReset,
    websocketsUpgradeTotal: c.websocketsUpgradeTotal,
    websocketsExtendedConnectTotal: c.websocketsExtendedConnectTotal,
    tunnelsOpen: c.tunnelsOpen,
    requestHeadersTimeouts: c.requestHeadersTimeouts,
    clientIdleTimeouts: c.clientIdleTimeouts,
    upstreamConnectTimeouts: c.upstreamConnectTimeouts,
    upstreamResponseTimeouts: c.upstreamResponseTimeouts,
    connectionsTotal: c.connectionsTotal,
    connectionsQueued: c.connectionsQueued,
    connectionsRefusedAtCapacity: c.connectionsRefusedAtCapacity,
    parseErrors: c.parseErrors,
    upstreamSocketsCreated: c.upstreamSocketsCreated,
    upstreamSocketsReused: c.upstreamSocketsReused,
    upstreamRetries: c.upstreamRetries,
    noHealthyUpstream: c.noHealthyUpstream,
    circuitOpenings: c.circuitOpenings,
    circuitCloses: c.circuitCloses,
    activeCheckChanges: c.activeCheckChanges,
    rateLimited: c.rateLimited,
    http2RefusingSessionsClosed: c.http2RefusingSessionsClosed,
    upstreamErrors: { ...c.upstreamErrors },
    upstreamSocketsActive: pool.upstreamSocketsActive,
    upstreamSocketsIdle: pool.upstreamSocketsIdle,
    upstreamWaiters: pool.upstreamWaiters,
    upstreamH2Sessions: pool.upstreamH2Sessions,
    upstreamH2Streams: pool.upstreamH2Streams,
    upstreamH2Waiters: pool.upstreamH2Waiters,
    routeUpstreamsUnavailable: groups.routeUpstreamsUnavailable,
    routeUpstreams: groups.routeUpstreams,
  };
}
