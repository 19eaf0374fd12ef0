import type http2 from 'node:http2';
import type { RequestHeadFacts } from '../headers.js';
import type { ProxyCore } from '../proxy-core.js';
import { respondError } from './session.js';

/**
 * HTTP/2 CONNECT: RFC 8441 extended CONNECT (`:protocol websocket`) and plain CONNECT tunnels.
 * Not built yet: answered 501 so clients fail fast and clearly.
 */
export function startExtendedConnect(
  core: ProxyCore,
  stream: http2.ServerHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  _raw: string[],
  _facts: RequestHeadFacts,
  _clientAddress: string,
  _tls: boolean,
): void {
  core.stats.proxyErrorResponses++;
  core.stats.countStatus(501);
  const isWebSocket = headers[':protocol'] === 'websocket';
  if (isWebSocket && !core.options.enableWebsockets) {
    respondError(stream, 501, 'websockets disabled');
    return;
  }
  respondError(stream, 501, 'CONNECT over HTTP/2 is not supported yet');
}
