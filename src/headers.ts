/**
 * Header handling for both directions and both protocols (STYLE habit 8): hop-by-hop removal
 * (RFC 9110 §7.6.1), forwarding headers, and HTTP/1 <-> HTTP/2 translation (RFC 9113 §8.2.2).
 */

/** Removed in both directions, whatever the protocol. `upgrade` is kept only on upgrades. */
const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
  'x-cmux-port-internal',
  'x-cmux-workspace-internal',
  'x-cmux-host-override',
  'x-cmux-upstream-scheme',
]);

/**
 * Fields a `Connection` option can never remove. Message framing and the target are the proxy's
 * own: dropping `Content-Length` while still relaying the body raw would let the body be read
 * upstream as a second request (request smuggling), and `Host` is always written by the proxy.
 * RFC 9110 §7.6.1 forbids naming end-to-end fields as connection options, so such an option is
 * ignored and the field is handled as if it had not been named.
 */
const NOT_CONNECTION_OPTIONS: ReadonlySet<string> = new Set(['content-length', 'host']);

/**
 * Adds the lower-cased options of one `Connection` value (RFC 9110 §7.6.1) that name fields the
 * proxy would otherwise forward. Hop-by-hop names go anyway and `close` names no field (it is a
 * reserved field name, RFC 9110 §18.4), so the usual `keep-alive`, `close` and `upgrade` leave
 * `tokens` null and spare every other header a lower-cased lookup.
 */
function addConnectionTokens(value: string, tokens: string[] | null): string[] | null {
  // The values nearly every peer sends name no forwardable field: no split, trim or lower-casing.
  if (value === 'keep-alive' || value === 'close' || value === 'Keep-Alive' || value === 'Close' || value === 'Upgrade' || value === 'upgrade') return tokens;
  for (const part of value.split(',')) {
    const token = part.trim().toLowerCase();
    if (token !== '' && token !== 'close' && !HOP_BY_HOP.has(token) && !NOT_CONNECTION_OPTIONS.has(token)) (tokens ??= []).push(token);
  }
  return tokens;
}

// What a header name means to the proxy. Kinds with the HOP bit are removed in both directions.
const N_OTHER = 0;
const N_HOST = 1;
const N_CONTENT_LENGTH = 2;
const N_FORWARDED_FOR = 3;
const N_VIA = 4;
/** X-Forwarded-Proto/-Host: set by this proxy from what it saw, never passed on. */
const N_FORWARDED_SET = 5;
const N_COOKIE = 6;
const N_REQUEST_ID = 7;
const N_TRACEPARENT = 8;
const N_HOP = 0x10;
const N_KEEP_ALIVE = N_HOP | 1;
const N_UPGRADE = N_HOP | 2;
const N_CONNECTION = N_HOP | 3;
const N_TRANSFER_ENCODING = N_HOP | 4;
const N_PORT_HEADER = N_HOP | 5;
const N_WORKSPACE_HEADER = N_HOP | 6;
const N_HOST_OVERRIDE = N_HOP | 7;
const N_TE = N_HOP | 8;
const N_SCHEME_HEADER = N_HOP | 9;

const KIND_BY_LOWER_NAME: ReadonlyMap<string, number> = new Map([
  ...[...HOP_BY_HOP].map((name) => [name, N_HOP] as const),
  ['keep-alive', N_KEEP_ALIVE],
  ['upgrade', N_UPGRADE],
  ['connection', N_CONNECTION],
  ['transfer-encoding', N_TRANSFER_ENCODING],
  ['x-cmux-port-internal', N_PORT_HEADER],
  ['x-cmux-workspace-internal', N_WORKSPACE_HEADER],
  ['x-cmux-host-override', N_HOST_OVERRIDE],
  ['x-cmux-upstream-scheme', N_SCHEME_HEADER],
  ['te', N_TE],
  ['host', N_HOST],
  ['content-length', N_CONTENT_LENGTH],
  ['x-forwarded-for', N_FORWARDED_FOR],
  ['via', N_VIA],
  ['x-forwarded-proto', N_FORWARDED_SET],
  ['x-forwarded-host', N_FORWARDED_SET],
  ['cookie', N_COOKIE],
  ['x-request-id', N_REQUEST_ID],
  ['traceparent', N_TRACEPARENT],
]);

/**
 * Kinds by the spelling a peer used ("Content-Length", "content-length", ...): clients and
 * upstreams repeat the same few spellings, so after the first request a name costs one Map
 * lookup instead of a lower-casing copy and a Set lookup. Bounded: short names, 2,048 spellings.
 */
const kindBySpelling = new Map<string, number>();
const SPELLINGS_MAX = 2048;
const SPELLING_LENGTH_MAX = 64;

/** Lower-case names by spelling, bounded as kindBySpelling: the HTTP/2 response head needs them per field. */
const lowerBySpelling = new Map<string, string>();

function lowerName(name: string): string {
  let lower = lowerBySpelling.get(name);
  if (lower === undefined) {
    lower = name.toLowerCase();
    if (lowerBySpelling.size < SPELLINGS_MAX && name.length <= SPELLING_LENGTH_MAX) lowerBySpelling.set(name, lower);
  }
  return lower;
}

function nameKind(name: string): number {
  let kind = kindBySpelling.get(name);
  if (kind === undefined) {
    kind = KIND_BY_LOWER_NAME.get(name.toLowerCase()) ?? N_OTHER;
    if (kindBySpelling.size < SPELLINGS_MAX && name.length <= SPELLING_LENGTH_MAX) kindBySpelling.set(name, kind);
  }
  return kind;
}

export function isHopByHop(lowerName: string): boolean {
  return HOP_BY_HOP.has(lowerName);
}

/** Lower-cased options of every `Connection` header that name forwardable fields (else null). */
export function connectionTokens(raw: readonly string[]): string[] | null {
  let tokens: string[] | null = null;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 10 && nameKind(name) === N_CONNECTION) tokens = addConnectionTokens(raw[i + 1]!, tokens);
  }
  return tokens;
}

/** Facts about a client request head, gathered in one pass over its raw headers. */
export interface RequestHeadFacts {
  host: string | undefined;
  hostCount: number;
  portHeader: string | undefined;
  workspaceHeader: string | undefined;
  hostOverride: string | undefined;
  /** `X-Cmux-Upstream-Scheme`: `https` asks for TLS to the upstream, `http` for cleartext. */
  schemeHeader: string | undefined;
  contentLength: string | undefined;
  chunked: boolean;
  /** How many `Via` entries name this proxy instance. */
  viaSelfCount: number;
  connectionTokens: string[] | null;
  /** `Upgrade` names `websocket`: the only upgrade the proxy tunnels. */
  upgradeWebsocket: boolean;
  /** `REPEATED_*` bits: routing headers given more than once (refused, never "last one wins"). */
  repeatedRouting: number;
  /** The client's `X-Request-Id` ('' when given more than once). */
  requestId: string | undefined;
}

export const REPEATED_PORT = 1;
export const REPEATED_WORKSPACE = 2;
export const REPEATED_HOST_OVERRIDE = 4;
export const REPEATED_SCHEME = 8;

export function emptyFacts(): RequestHeadFacts {
  return {
    host: undefined,
    hostCount: 0,
    portHeader: undefined,
    workspaceHeader: undefined,
    hostOverride: undefined,
    schemeHeader: undefined,
    contentLength: undefined,
    chunked: false,
    viaSelfCount: 0,
    connectionTokens: null,
    upgradeWebsocket: false,
    repeatedRouting: 0,
    requestId: undefined,
  };
}

function countOccurrences(haystack: string, needle: string): number {
  let count = 0;
  let at = haystack.indexOf(needle);
  while (at !== -1) {
    count++;
    at = haystack.indexOf(needle, at + needle.length);
  }
  return count;
}

function namesWebsocket(value: string): boolean {
  if (value.length === 9) return value.toLowerCase() === 'websocket';
  for (const part of value.split(',')) if (part.trim().toLowerCase() === 'websocket') return true;
  return false;
}

/** One pass over a flat `[name, value, ...]` list, names in any case. */
export function scanRequestHeaders(raw: readonly string[], viaToken: string, facts: RequestHeadFacts): void {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.charCodeAt(0) === 58 /* : */) continue;
    switch (nameKind(name)) {
      case N_VIA:
        facts.viaSelfCount += countOccurrences(raw[i + 1]!, viaToken);
        break;
      case N_HOST:
        facts.hostCount++;
        facts.host = raw[i + 1]!;
        break;
      case N_UPGRADE:
        if (!facts.upgradeWebsocket) facts.upgradeWebsocket = namesWebsocket(raw[i + 1]!);
        break;
      case N_CONNECTION:
        facts.connectionTokens = addConnectionTokens(raw[i + 1]!, facts.connectionTokens);
        break;
      case N_CONTENT_LENGTH:
        facts.contentLength = raw[i + 1]!;
        break;
      case N_TRANSFER_ENCODING:
        facts.chunked = true;
        break;
      // A routing header given twice would route by whichever copy a reader happens to keep;
      // like a second Host (RFC 9112 §3.2), it is noted here and refused by routing.
      case N_PORT_HEADER:
        if (facts.portHeader !== undefined) facts.repeatedRouting |= REPEATED_PORT;
        facts.portHeader = raw[i + 1]!;
        break;
      case N_HOST_OVERRIDE:
        if (facts.hostOverride !== undefined) facts.repeatedRouting |= REPEATED_HOST_OVERRIDE;
        facts.hostOverride = raw[i + 1]!;
        break;
      case N_SCHEME_HEADER:
        if (facts.schemeHeader !== undefined) facts.repeatedRouting |= REPEATED_SCHEME;
        facts.schemeHeader = raw[i + 1]!;
        break;
      case N_WORKSPACE_HEADER:
        if (facts.workspaceHeader !== undefined) facts.repeatedRouting |= REPEATED_WORKSPACE;
        facts.workspaceHeader = raw[i + 1]!;
        break;
      case N_REQUEST_ID:
        facts.requestId = facts.requestId === undefined ? raw[i + 1]! : '';
        break;
    }
  }
}

/** What the forwarded head must say beyond the client's own headers. */
export interface ForwardContext {
  /** Host to send (already decided: kept, overridden or rewritten to the target). */
  host: string;
  /** The Host the client asked for (X-Forwarded-Host). */
  forwardedHost: string;
  clientAddress: string;
  proto: 'http' | 'https';
  /** e.g. `1.1 cmux-proxy-1a2b3c4d` */
  viaEntry: string;
  /** Keep `Upgrade` and `Connection: upgrade` (WebSocket upgrades). */
  upgrade: boolean;
  /** Send `transfer-encoding: chunked` (the body length is not known up front). */
  chunked: boolean;
  /** `X-Request-Id` to send (the client's when valid, else one the proxy made). */
  requestId: string;
  /** The proxy's span context, sent instead of the client's `traceparent` (undefined: the client's passes unchanged). */
  traceparent?: string | undefined;
}

/** Longest `X-Request-Id` kept from a client. */
const REQUEST_ID_MAX = 200;

/** A client's `X-Request-Id` is kept when it is 1-200 visible ASCII characters (0x21-0x7E). */
export function validRequestId(value: string | undefined): value is string {
  if (value === undefined || value.length === 0 || value.length > REQUEST_ID_MAX) return false;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

/**
 * The HTTP/1.1 request head for the upstream from a flat raw header list (HTTP/1 names in any
 * case, or HTTP/2 lower-case names with pseudo-headers, which are skipped).
 */
export function buildUpstreamRequestHead(
  method: string,
  path: string,
  raw: readonly string[],
  tokens: readonly string[] | null,
  ctx: ForwardContext,
): string {
  let head = `${method} ${path} HTTP/1.1\r\nhost: ${ctx.host}\r\n`;
  let xff: string | undefined;
  let via: string | undefined;
  let cookie: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.charCodeAt(0) === 58 /* : */) continue;
    const kind = nameKind(name);
    if ((kind & N_HOP) !== 0 || kind === N_HOST) {
      if (!(ctx.upgrade && kind === N_UPGRADE)) continue;
    } else if (tokens !== null && tokens.includes(name.toLowerCase())) continue;
    const value = raw[i + 1]!;
    switch (kind) {
      case N_FORWARDED_FOR:
        xff = xff === undefined ? value : `${xff}, ${value}`;
        continue;
      case N_VIA:
        via = via === undefined ? value : `${via}, ${value}`;
        continue;
      case N_FORWARDED_SET:
        // Set by this proxy from what it saw; a client's own value is not trusted.
        continue;
      case N_COOKIE:
        // HTTP/2 may split cookies over several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
        cookie = cookie === undefined ? value : `${cookie}; ${value}`;
        continue;
      case N_REQUEST_ID:
        // Sent once below: the client's when valid, else the proxy's own.
        continue;
      case N_TRACEPARENT:
        if (ctx.traceparent !== undefined) continue;
        break;
    }
    head += `${name}: ${value}\r\n`;
  }
  if (cookie !== undefined) head += `cookie: ${cookie}\r\n`;
  head += `x-forwarded-for: ${xff === undefined ? ctx.clientAddress : `${xff}, ${ctx.clientAddress}`}\r\n`;
  head += `x-forwarded-proto: ${ctx.proto}\r\nx-forwarded-host: ${ctx.forwardedHost}\r\n`;
  head += `via: ${via === undefined ? ctx.viaEntry : `${via}, ${ctx.viaEntry}`}\r\nx-request-id: ${ctx.requestId}\r\n`;
  if (ctx.traceparent !== undefined) head += `traceparent: ${ctx.traceparent}\r\n`;
  if (ctx.upgrade) head += 'connection: upgrade\r\n';
  if (ctx.chunked) head += 'transfer-encoding: chunked\r\n';
  return `${head}\r\n`;
}

/**
 * The same request for an h2c upstream (RFC 9113 §8.2.2): pseudo-headers set, no
 * connection-specific fields, `te: trailers` kept, cookies as separate fields; the forwarding
 * rules are those of buildUpstreamRequestHead.
 */
export function buildUpstreamH2Headers(
  method: string,
  path: string,
  raw: readonly string[],
  tokens: readonly string[] | null,
  ctx: ForwardContext,
): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = { ':method': method, ':path': path, ':scheme': 'http', ':authority': ctx.host };
  let xff: string | undefined;
  let via: string | undefined;
  let trailers = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.charCodeAt(0) === 58) continue;
    const kind = nameKind(name);
    const value = raw[i + 1]!;
    if (kind === N_TE) {
      trailers ||= value.toLowerCase().includes('trailers');
      continue;
    }
    if ((kind & N_HOP) !== 0 || kind === N_HOST || kind === N_FORWARDED_SET || kind === N_REQUEST_ID) continue;
    if (kind === N_TRACEPARENT && ctx.traceparent !== undefined) continue;
    const lower = name.toLowerCase();
    if (tokens !== null && tokens.includes(lower)) continue;
    if (kind === N_FORWARDED_FOR) {
      xff = xff === undefined ? value : `${xff}, ${value}`;
      continue;
    }
    if (kind === N_VIA) {
      via = via === undefined ? value : `${via}, ${value}`;
      continue;
    }
    const previous = headers[lower];
    if (previous === undefined) headers[lower] = value;
    else if (Array.isArray(previous)) previous.push(value);
    else headers[lower] = kind === N_COOKIE ? [previous, value] : `${previous}, ${value}`;
  }
  if (trailers) headers['te'] = 'trailers';
  headers['x-forwarded-for'] = xff === undefined ? ctx.clientAddress : `${xff}, ${ctx.clientAddress}`;
  headers['x-forwarded-proto'] = ctx.proto;
  headers['x-forwarded-host'] = ctx.forwardedHost;
  headers['via'] = via === undefined ? ctx.viaEntry : `${via}, ${ctx.viaEntry}`;
  headers['x-request-id'] = ctx.requestId;
  if (ctx.traceparent !== undefined) headers['traceparent'] = ctx.traceparent;
  return headers;
}

/** Facts about an upstream response head. */
export interface ResponseHeadFacts {
  contentLength: boolean;
  /** `Keep-Alive: timeout=N` in seconds, or 0. */
  keepAliveTimeoutSec: number;
}

function keepAliveTimeout(value: string): number {
  const at = value.toLowerCase().indexOf('timeout=');
  if (at === -1) return 0;
  const n = Number.parseInt(value.slice(at + 8), 10);
  return Number.isFinite(n) && n > 0 ? n : 0;
}

/**
 * The response head's header lines for an HTTP/1.1 client (hop-by-hop removed), and facts
 * about framing. `upgrade` keeps Upgrade/Connection (101 answers); `noLength` drops Content-Length
 * (1xx and 204 answers).
 */
export function filterResponseHeadersH1(raw: readonly string[], upgrade: boolean, facts: ResponseHeadFacts, noLength: boolean): string {
  const tokens = connectionTokens(raw);
  let lines = '';
  facts.contentLength = false;
  facts.keepAliveTimeoutSec = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const kind = nameKind(name);
    const value = raw[i + 1]!;
    if (kind === N_KEEP_ALIVE) {
      facts.keepAliveTimeoutSec = keepAliveTimeout(value);
      continue;
    }
    if ((kind & N_HOP) !== 0) {
      if (!(upgrade && (kind === N_UPGRADE || kind === N_CONNECTION))) continue;
    } else if (tokens !== null && tokens.includes(name.toLowerCase())) continue;
    if (kind === N_CONTENT_LENGTH) {
      // RFC 9110 §8.6: never on a 1xx or 204; a lenient client behind would wait for that body.
      if (noLength) continue;
      facts.contentLength = true;
    }
    lines += `${name}: ${value}\r\n`;
  }
  return lines;
}

/** Response headers for an HTTP/2 client: lower-case, no connection-specific fields. */
export function responseHeadersH2(raw: readonly string[], status: number, facts: ResponseHeadFacts): Record<string, string | string[] | number> {
  const tokens = connectionTokens(raw);
  const out: Record<string, string | string[] | number> = { ':status': status };
  facts.contentLength = false;
  facts.keepAliveTimeoutSec = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const kind = nameKind(name);
    const value = raw[i + 1]!;
    if (kind === N_KEEP_ALIVE) {
      facts.keepAliveTimeoutSec = keepAliveTimeout(value);
      continue;
    }
    if ((kind & N_HOP) !== 0) continue;
    const lower = lowerName(name);
    if (tokens !== null && tokens.includes(lower)) continue;
    if (kind === N_CONTENT_LENGTH) facts.contentLength = true;
    const previous = out[lower];
    if (previous === undefined) {
      out[lower] = lower === 'set-cookie' ? [value] : value;
    } else if (Array.isArray(previous)) {
      previous.push(value);
    } else {
      out[lower] = `${String(previous)}, ${value}`;
    }
  }
  return out;
}

/**
 * True for a field that never travels in a trailer section: hop-by-hop and routing fields,
 * framing (`content-length`, `transfer-encoding`), `host` and pseudo-headers (RFC 9110 §6.5.1,
 * RFC 9113 §8.1). Such a field is dropped, the rest of the section is relayed. A request's
 * trailers also lose the fields the proxy itself sets in the head it sends (X-Forwarded-For,
 * -Host, -Proto, Via, X-Request-Id): a client must not supply them behind the proxy's back to
 * an upstream that merges trailers into the header section.
 */
function notATrailer(name: string, request: boolean): boolean {
  if (name.charCodeAt(0) === 58 /* : */) return true;
  const kind = nameKind(name);
  if ((kind & N_HOP) !== 0 || kind === N_CONTENT_LENGTH || kind === N_HOST) return true;
  return request && (kind === N_FORWARDED_FOR || kind === N_FORWARDED_SET || kind === N_VIA || kind === N_REQUEST_ID);
}

/** Trailers from a flat raw list, as HTTP/1.1 trailer lines (`request`: a request's, see notATrailer). */
export function trailerLines(raw: readonly string[], request: boolean): string {
  let lines = '';
  for (let i = 0; i < raw.length; i += 2) {
    if (notATrailer(raw[i]!, request)) continue;
    lines += `${raw[i]}: ${raw[i + 1]}\r\n`;
  }
  return lines;
}

/** Trailers for an HTTP/2 stream (lower-case names, no connection-specific, framing or pseudo fields; `request`: see notATrailer). */
export function trailersH2(raw: readonly string[], request: boolean): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (notATrailer(name, request)) continue;
    const lower = name.toLowerCase();
    out[lower] = out[lower] === undefined ? raw[i + 1]! : `${out[lower]}, ${raw[i + 1]!}`;
  }
  return out;
}

/** The value of a Content-Length llhttp accepted (digits, maybe padded with spaces or tabs), or -1. */
export function acceptedContentLength(value: string): number {
  let n = 0;
  let digits = 0;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0x20 || c === 0x09) continue;
    if (c < 0x30 || c > 0x39) return -1;
    n = n * 10 + (c - 0x30);
    digits++;
  }
  return digits === 0 || !Number.isSafeInteger(n) ? -1 : n;
}
