/**
 * The error catalogue. Every failure the proxy answers with has a stable `code`, the HTTP status
 * it maps to and a short text body. Users match on `.code`.
 *
 * Retry safety: codes under `UPSTREAM_NOT_DELIVERED` mean nothing of the request
 * reached the upstream (the connection was never established), so a client may retry any
 * method. Every other upstream code means the upstream may have seen (part of) the request.
 */
import { NGHTTP2_HTTP_1_1_REQUIRED } from './h2/constants.js';

export class ProxyError extends Error {
  readonly code: string;
  readonly status: number;
  constructor(code: string, status: number, message: string) {
    super(message);
    this.name = 'ProxyError';
    this.code = code;
    this.status = status;
  }
}

export const ErrorCodes = {
  BAD_REQUEST: 'CMUX_BAD_REQUEST',
  EMPTY_HEADER: 'CMUX_EMPTY_HEADER',
  INVALID_PORT: 'CMUX_INVALID_PORT',
  INVALID_WORKSPACE: 'CMUX_INVALID_WORKSPACE',
  NO_ROUTE: 'CMUX_NO_ROUTE',
  CONTAINER_NOT_FOUND: 'CMUX_CONTAINER_NOT_FOUND',
  RESOLVER_FAILED: 'CMUX_RESOLVER_FAILED',
  RESOLVER_TIMEOUT: 'CMUX_RESOLVER_TIMEOUT',
  LOOP_DETECTED: 'CMUX_LOOP_DETECTED',
  NO_HEALTHY_UPSTREAM: 'CMUX_NO_HEALTHY_UPSTREAM',
  TOO_MANY_REQUESTS: 'CMUX_TOO_MANY_REQUESTS',
  HEADERS_TOO_LARGE: 'CMUX_HEADERS_TOO_LARGE',
  URI_TOO_LONG: 'CMUX_URI_TOO_LONG',
  REQUEST_TIMEOUT: 'CMUX_REQUEST_TIMEOUT',
  UPSTREAM_REQUEST_ERROR: 'CMUX_UPSTREAM_REQUEST_ERROR',
  UPSTREAM_TIMEOUT: 'CMUX_UPSTREAM_TIMEOUT',
  UPSTREAM_BAD_RESPONSE: 'CMUX_UPSTREAM_BAD_RESPONSE',
  AT_CAPACITY: 'CMUX_AT_CAPACITY',
  SHUTTING_DOWN: 'CMUX_SHUTTING_DOWN',
  HTTP_VERSION_NOT_SUPPORTED: 'CMUX_HTTP_VERSION_NOT_SUPPORTED',
  WEBSOCKETS_DISABLED: 'CMUX_WEBSOCKETS_DISABLED',
  NOT_IMPLEMENTED: 'CMUX_NOT_IMPLEMENTED',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/** Upstream error codes (as shown in `upstream request error: <code>` and in stats). */
export const UPSTREAM_NOT_DELIVERED: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
  'ENOENT', // unix socket path missing
  'CONNECT_TIMEOUT',
  // A TLS handshake that failed: the request was never written.
  'UPSTREAM_TLS_CERT',
  'UPSTREAM_TLS_HANDSHAKE',
  // The proxy's own limits: no upstream socket was opened.
  'SOCKET_LIMIT',
  'FD_LIMIT',
  'EMFILE',
  'ENFILE',
]);

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  404: 'Not Found',
  408: 'Request Timeout',
  413: 'Content Too Large',
  414: 'URI Too Long',
  431: 'Request Header Fields Too Large',
  501: 'Not Implemented',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
  505: 'HTTP Version Not Supported',
  508: 'Loop Detected',
  429: 'Too Many Requests',
};

export function statusText(status: number): string {
  return STATUS_TEXT[status] ?? 'Error';
}

/** A complete HTTP/1.1 error response with a short text body. */
export function errorResponse(status: number, body: string, keepAlive: boolean, headers: readonly string[] | null = null): string {
  return (
    `HTTP/1.1 ${status} ${statusText(status)}\r\ncontent-type: text/plain; charset=utf-8\r\n${headers === null ? '' : headerLines(headers)}` +
    `content-length: ${Buffer.byteLength(body)}\r\nconnection: ${keepAlive ? 'keep-alive' : 'close'}\r\n\r\n${body}`
  );
}

/** `name: value` lines of proxy-made fields (name/value pairs). */
function headerLines(headers: readonly string[]): string {
  let out = '';
  for (let i = 0; i < headers.length; i += 2) out += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return out;
}

/**
 * An error response that closes the connection. Used where no exchange exists yet (parse
 * errors, capacity) and for canned answers.
 */
export function closingErrorResponse(status: number, body: string): Buffer {
  return Buffer.from(errorResponse(status, body, false), 'latin1');
}

/** The answer to an upstream failure before a response started: 504 on timeouts, else 502. */
export function upstreamFailureAnswer(code: string): { status: number; message: string } {
  if (code === 'CONNECT_TIMEOUT' || code === 'RESPONSE_TIMEOUT') return { status: 504, message: 'upstream timeout' };
  // The proxy's own limits, not the upstream's fault: 503, try again later.
  if (code === 'FD_LIMIT' || code === 'EMFILE' || code === 'ENFILE') return { status: 503, message: 'proxy out of file descriptors' };
  if (code === 'SOCKET_LIMIT') return { status: 503, message: 'upstream socket limit reached' };
  if (code === 'UPSTREAM_TLS_CERT') {
    return { status: 502, message: 'upstream request error: UPSTREAM_TLS_CERT (the upstream TLS certificate did not verify)' };
  }
  if (code === 'UPSTREAM_TLS_HANDSHAKE') {
    return { status: 502, message: 'upstream request error: UPSTREAM_TLS_HANDSHAKE (the TLS handshake with the upstream failed)' };
  }
  return { status: 502, message: `upstream request error: ${code}` };
}

// Preallocated answers for the hot failure paths (STYLE habit 6).
export const RESPONSE_400_BAD_REQUEST = closingErrorResponse(400, 'bad request');
export const RESPONSE_408_TIMEOUT = closingErrorResponse(408, 'request headers timeout');
export const RESPONSE_414_URI_TOO_LONG = closingErrorResponse(414, 'request line too long');
export const RESPONSE_431_HEADERS_TOO_LARGE = closingErrorResponse(431, 'request headers too large');
export const RESPONSE_503_AT_CAPACITY = closingErrorResponse(503, 'proxy at connection capacity');

/**
 * The answer to an h2c preface when HTTP/2 is disabled, in HTTP/2 (an h2 client cannot read an
 * HTTP/1.1 response): the server preface (an empty SETTINGS frame, RFC 9113 §3.4), then
 * GOAWAY(HTTP_1_1_REQUIRED, last stream 0) with the reason as debug data.
 */
export const GOAWAY_HTTP_1_1_REQUIRED = h2Goaway(NGHTTP2_HTTP_1_1_REQUIRED, 'HTTP/2 is disabled on this proxy');

function h2Goaway(code: number, debug: string): Buffer {
  const reason = Buffer.from(debug, 'latin1');
  const out = Buffer.alloc(9 + 9 + 8 + reason.length);
  out[3] = 0x4; // SETTINGS, empty
  out.writeUIntBE(8 + reason.length, 9, 3);
  out[12] = 0x7; // GOAWAY on stream 0, last stream id 0
  out.writeUInt32BE(code, 22);
  reason.copy(out, 26);
  return out;
}
