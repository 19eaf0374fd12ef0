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
]);

/** Adds the lower-cased tokens of one `Connection` value (RFC 9110 §7.6.1) to `tokens`. */
function addConnectionTokens(value: string, tokens: string[] | null): string[] | null {
  for (const part of value.split(',')) {
    const token = part.trim().toLowerCase();
    if (token !== '') (tokens ??= []).push(token);
  }
  return tokens;
}

export function isHopByHop(lowerName: string): boolean {
  return HOP_BY_HOP.has(lowerName);
}

/** Lower-cased tokens of every `Connection` header in a flat raw header list. */
export function connectionTokens(raw: readonly string[]): string[] | null {
  let tokens: string[] | null = null;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 10 && name.toLowerCase() === 'connection') tokens = addConnectionTokens(raw[i + 1]!, tokens);
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
  contentLength: string | undefined;
  chunked: boolean;
  /** How many `Via` entries name this proxy instance. */
  viaSelfCount: number;
  connectionTokens: string[] | null;
  hasUpgrade: boolean;
}

export function emptyFacts(): RequestHeadFacts {
  return {
    host: undefined,
    hostCount: 0,
    portHeader: undefined,
    workspaceHeader: undefined,
    hostOverride: undefined,
    contentLength: undefined,
    chunked: false,
    viaSelfCount: 0,
    connectionTokens: null,
    hasUpgrade: false,
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

/** One pass over a flat `[name, value, ...]` list, names in any case. */
export function scanRequestHeaders(raw: readonly string[], viaToken: string, facts: RequestHeadFacts): void {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const value = raw[i + 1]!;
    switch (name.length) {
      case 3:
        if (name.toLowerCase() === 'via') facts.viaSelfCount += countOccurrences(value, viaToken);
        break;
      case 4:
        if (name.toLowerCase() === 'host') {
          facts.hostCount++;
          facts.host = value;
        }
        break;
      case 7:
        if (name.toLowerCase() === 'upgrade') facts.hasUpgrade = true;
        break;
      case 10:
        if (name.toLowerCase() === 'connection') facts.connectionTokens = addConnectionTokens(value, facts.connectionTokens);
        break;
      case 14:
        if (name.toLowerCase() === 'content-length') facts.contentLength = value;
        break;
      case 17:
        if (name.toLowerCase() === 'transfer-encoding') facts.chunked = true;
        break;
      case 20:
        if (name.toLowerCase() === 'x-cmux-port-internal') facts.portHeader = value;
        else if (name.toLowerCase() === 'x-cmux-host-override') facts.hostOverride = value;
        break;
      case 25:
        if (name.toLowerCase() === 'x-cmux-workspace-internal') facts.workspaceHeader = value;
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
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || lower === 'host' || (tokens !== null && tokens.includes(lower))) {
      if (!(ctx.upgrade && lower === 'upgrade')) continue;
    }
    const value = raw[i + 1]!;
    switch (lower) {
      case 'x-forwarded-for':
        xff = xff === undefined ? value : `${xff}, ${value}`;
        continue;
      case 'via':
        via = via === undefined ? value : `${via}, ${value}`;
        continue;
      case 'x-forwarded-proto':
      case 'x-forwarded-host':
        // Set by this proxy from what it saw (SPEC §4); a client's own value is not trusted.
        continue;
      case 'cookie':
        // HTTP/2 may split cookies over several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
        cookie = cookie === undefined ? value : `${cookie}; ${value}`;
        continue;
    }
    head += `${name}: ${value}\r\n`;
  }
  if (cookie !== undefined) head += `cookie: ${cookie}\r\n`;
  head += `x-forwarded-for: ${xff === undefined ? ctx.clientAddress : `${xff}, ${ctx.clientAddress}`}\r\n`;
  head += `x-forwarded-proto: ${ctx.proto}\r\nx-forwarded-host: ${ctx.forwardedHost}\r\n`;
  head += `via: ${via === undefined ? ctx.viaEntry : `${via}, ${ctx.viaEntry}`}\r\n`;
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
    const lower = name.toLowerCase();
    const value = raw[i + 1]!;
    if (lower === 'te') {
      trailers ||= value.toLowerCase().includes('trailers');
      continue;
    }
    if (HOP_BY_HOP.has(lower) || lower === 'host' || (tokens !== null && tokens.includes(lower))) continue;
    if (lower === 'x-forwarded-proto' || lower === 'x-forwarded-host') continue;
    if (lower === 'x-forwarded-for') {
      xff = xff === undefined ? value : `${xff}, ${value}`;
      continue;
    }
    if (lower === 'via') {
      via = via === undefined ? value : `${via}, ${value}`;
      continue;
    }
    const previous = headers[lower];
    if (previous === undefined) headers[lower] = value;
    else if (Array.isArray(previous)) previous.push(value);
    else headers[lower] = lower === 'cookie' ? [previous, value] : `${previous}, ${value}`;
  }
  if (trailers) headers['te'] = 'trailers';
  headers['x-forwarded-for'] = xff === undefined ? ctx.clientAddress : `${xff}, ${ctx.clientAddress}`;
  headers['x-forwarded-proto'] = ctx.proto;
  headers['x-forwarded-host'] = ctx.forwardedHost;
  headers['via'] = via === undefined ? ctx.viaEntry : `${via}, ${ctx.viaEntry}`;
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
 * about framing. `upgrade` keeps Upgrade/Connection (101 answers).
 */
export function filterResponseHeadersH1(raw: readonly string[], upgrade: boolean, facts: ResponseHeadFacts): string {
  const tokens = connectionTokens(raw);
  let lines = '';
  facts.contentLength = false;
  facts.keepAliveTimeoutSec = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    const value = raw[i + 1]!;
    if (lower === 'keep-alive') {
      facts.keepAliveTimeoutSec = keepAliveTimeout(value);
      continue;
    }
    if (HOP_BY_HOP.has(lower)) {
      if (!(upgrade && (lower === 'upgrade' || lower === 'connection'))) continue;
    } else if (tokens !== null && tokens.includes(lower)) continue;
    if (lower === 'content-length') facts.contentLength = true;
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
    const lower = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    if (lower === 'keep-alive') {
      facts.keepAliveTimeoutSec = keepAliveTimeout(value);
      continue;
    }
    if (HOP_BY_HOP.has(lower) || (tokens !== null && tokens.includes(lower))) continue;
    if (lower === 'content-length') facts.contentLength = true;
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

/** Trailers from a flat raw list, as HTTP/1.1 trailer lines. */
export function trailerLines(raw: readonly string[]): string {
  let lines = '';
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(lower) || lower === 'content-length' || lower === 'host') continue;
    lines += `${raw[i]}: ${raw[i + 1]}\r\n`;
  }
  return lines;
}

/** Trailers for an HTTP/2 stream (lower-case names, no connection-specific or pseudo fields). */
export function trailersH2(raw: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(lower) || lower === 'content-length' || lower.charCodeAt(0) === 58) continue;
    out[lower] = out[lower] === undefined ? raw[i + 1]! : `${out[lower]}, ${raw[i + 1]!}`;
  }
  return out;
}
