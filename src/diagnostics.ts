import dc from 'node:diagnostics_channel';

/**
 * `node:diagnostics_channel` events, in the style of undici's `undici:request:*`. Every publish
 * site checks `channel.hasSubscribers` first, so with nobody subscribed no payload object is
 * built: the cost is one property read per site.
 *
 * Every `request:start` is followed by exactly one `request:end` (for a WebSocket or a CONNECT
 * tunnel, when it closes). The same `request` object travels in every event of one request.
 */

/** The request as the channels describe it: built once per request, and only when subscribed. */
export interface DiagnosticsRequest {
  /** The `X-Request-Id` sent upstream (the client's when valid, else the proxy's). */
  readonly id: string;
  readonly method: string;
  /** Host, `:authority` or the absolute-form authority; null when the request had none. */
  readonly host: string | null;
  /** Origin-form path with its query. */
  readonly path: string;
  /** 'HTTP/1.0', 'HTTP/1.1' or 'HTTP/2'. */
  readonly protocol: string;
  readonly tls: boolean;
  /** Client address. */
  readonly client: string;
}

export const requestStart = dc.channel('cmux-proxy:request:start');
export const requestRoute = dc.channel('cmux-proxy:request:route');
export const upstreamConnect = dc.channel('cmux-proxy:upstream:connect');
export const responseHeaders = dc.channel('cmux-proxy:response:headers');
export const requestEnd = dc.channel('cmux-proxy:request:end');
export const requestError = dc.channel('cmux-proxy:request:error');
export const websocketOpen = dc.channel('cmux-proxy:websocket:open');
export const websocketClose = dc.channel('cmux-proxy:websocket:close');

/** Every channel name, in the order a request meets them. */
export const CHANNEL_NAMES: readonly string[] = [
  'cmux-proxy:request:start',
  'cmux-proxy:request:route',
  'cmux-proxy:upstream:connect',
  'cmux-proxy:response:headers',
  'cmux-proxy:websocket:open',
  'cmux-proxy:websocket:close',
  'cmux-proxy:request:error',
  'cmux-proxy:request:end',
];

export function diagnosticsRequest(id: string, method: string, host: string | undefined, path: string, clientVersion: string, tls: boolean, client: string): DiagnosticsRequest {
  return {
    id,
    method,
    host: host ?? null,
    path,
    protocol: clientVersion === '2' ? 'HTTP/2' : clientVersion === '1.0' ? 'HTTP/1.0' : 'HTTP/1.1',
    tls,
    client,
  };
}

/** A WebSocket or tunnel closed: `websocket:close` (WebSockets) then `request:end`. */
export function publishTunnelEnd(request: DiagnosticsRequest, websocket: boolean, status: number, bytesIn: number, bytesOut: number): void {
  if (websocket && websocketClose.hasSubscribers) websocketClose.publish({ request, bytesIn, bytesOut });
  if (requestEnd.hasSubscribers) requestEnd.publish({ request, status, bytesIn, bytesOut, error: null });
}

/** A request answered or abandoned: `request:error` when `code` is set, then `request:end`. */
export function publishEnd(request: DiagnosticsRequest, status: number, code: string, bytesIn: number, bytesOut: number): void {
  const error = code === '' ? null : code;
  if (error !== null && requestError.hasSubscribers) requestError.publish({ request, code: error, status });
  if (requestEnd.hasSubscribers) requestEnd.publish({ request, status, bytesIn, bytesOut, error });
}
