/**
 * The PROXY protocol header (HAProxy's, versions 1 and 2) that a load balancer sends before the
 * client's first byte, naming the client's address. Parsed from the bytes read so far: the
 * header may arrive split across reads at any byte.
 */

/** Which headers the listener accepts: `true` either version. */
export type ProxyProtocolOption = boolean | 'v1' | 'v2';

export const PP_V1 = 1;
export const PP_V2 = 2;
export const PP_ANY = PP_V1 | PP_V2;

/** Not enough bytes yet. */
export const PP_MORE = -1;
/** Not a valid header: the connection is closed. */
export const PP_BAD = -2;

/** v1: the whole line, "PROXY" to CRLF, is at most 107 bytes. */
export const V1_MAX = 107;
/** v2: 12-byte signature, version/command, family, 2-byte length. */
const V2_FIXED = 16;
/**
 * v2: the largest address block + TLVs accepted. Addresses take at most 216 bytes (two unix
 * paths); the rest is TLVs (ALPN, authority, unique id, SSL details), a few hundred bytes in
 * practice. Beyond this the header is refused rather than buffered.
 */
export const V2_MAX_LENGTH = 1024;

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_PREFIX = Buffer.from('PROXY ', 'latin1');

/** What a complete header said. `address` null: use the connection's own (LOCAL, UNKNOWN, unspecified or unix family). */
export interface ProxyHeader {
  /** Bytes the header took; what follows is the client's. */
  length: number;
  address: string | null;
  port: number;
  family: 'IPv4' | 'IPv6' | null;
}

/**
 * Parses a header at the start of `data`: a ProxyHeader, PP_MORE (a valid prefix so far, within
 * the size limits) or PP_BAD. `accept` is PP_V1, PP_V2 or PP_ANY.
 */
export function parseProxyHeader(data: Buffer, accept: number): ProxyHeader | number {
  if (data.length === 0) return PP_MORE;
  const first = data[0];
  if (first === 0x50 && (accept & PP_V1) !== 0) return parseV1(data);
  if (first === 0x0d && (accept & PP_V2) !== 0) return parseV2(data);
  return PP_BAD;
}

function parseV1(data: Buffer): ProxyHeader | number {
  const n = Math.min(data.length, V1_PREFIX.length);
  if (data.compare(V1_PREFIX, 0, n, 0, n) !== 0) return PP_BAD;
  const end = Math.min(data.length, V1_MAX);
  let cr = -1;
  for (let i = V1_PREFIX.length; i < end; i++) {
    const c = data[i]!;
    if (c === 0x0d) {
      cr = i;
      break;
    }
    // Printable US-ASCII only; a bare LF is not the end of the line.
    if (c < 0x20 || c > 0x7e) return PP_BAD;
  }
  if (cr === -1) return data.length >= V1_MAX ? PP_BAD : PP_MORE;
  if (cr + 1 >= V1_MAX) return PP_BAD;
  if (cr + 1 === data.length) return PP_MORE;
  if (data[cr + 1] !== 0x0a) return PP_BAD;
  const length = cr + 2;
  const fields = data.toString('latin1', V1_PREFIX.length, cr).split(' ');
  const proto = fields[0];
  // "UNKNOWN" may be followed by anything: the receiver ignores it and uses the real addresses.
  if (proto === 'UNKNOWN') return { length, address: null, port: 0, family: null };
  if (fields.length !== 5) return PP_BAD;
  const [, src, dst, sport, dport] = fields as [string, string, string, string, string];
  const srcPort = v1Port(sport);
  if (srcPort < 0 || v1Port(dport) < 0) return PP_BAD;
  if (proto === 'TCP4') {
    if (!isIPv4(src) || !isIPv4(dst)) return PP_BAD;
    return { length, address: src, port: srcPort, family: 'IPv4' };
  }
  if (proto === 'TCP6') {
    const a = parseIPv6(src);
    if (a === null || parseIPv6(dst) === null) return PP_BAD;
    return { length, address: formatIPv6(a), port: srcPort, family: 'IPv6' };
  }
  return PP_BAD;
}

/** A decimal port 0..65535 without leading zeros, else -1. */
function v1Port(text: string): number {
  if (text.length === 0 || text.length > 5 || (text.length > 1 && text.charCodeAt(0) === 0x30)) return -1;
  let value = 0;
  for (let i = 0; i < text.length; i++) {
    const d = text.charCodeAt(i) - 0x30;
    if (d < 0 || d > 9) return -1;
    value = value * 10 + d;
  }
  return value <= 65535 ? value : -1;
}

/** Dotted quad, each part 0..255 without leading zeros. */
function isIPv4(text: string): boolean {
  const parts = text.split('.');
  if (parts.length !== 4) return false;
  for (const part of parts) {
    if (part.length === 0 || part.length > 3 || (part.length > 1 && part.charCodeAt(0) === 0x30)) return false;
    let value = 0;
    for (let i = 0; i < part.length; i++) {
      const d = part.charCodeAt(i) - 0x30;
      if (d < 0 || d > 9) return false;
      value = value * 10 + d;
    }
    if (value > 255) return false;
  }
  return true;
}

/** RFC 4291 text form (with `::` and a trailing dotted quad) -> 8 groups, or null. */
function parseIPv6(text: string): number[] | null {
  if (text.length < 2 || text.length > 45) return null;
  const dbl = text.indexOf('::');
  if (dbl === -1) {
    const groups = hexGroups(text.split(':'), true);
    return groups !== null && groups.length === 8 ? groups : null;
  }
  if (text.indexOf('::', dbl + 1) !== -1) return null;
  const head = text.slice(0, dbl);
  const tail = text.slice(dbl + 2);
  const left = head === '' ? [] : hexGroups(head.split(':'), false);
  const right = tail === '' ? [] : hexGroups(tail.split(':'), true);
  if (left === null || right === null || left.length + right.length > 7) return null;
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
}

/** `ffff`, `0`, ... each 1 to 4 hex digits; the last may be a dotted quad (two groups) when `quad`. */
function hexGroups(parts: string[], quad: boolean): number[] | null {
  const groups: number[] = [];
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    if (quad && i === parts.length - 1 && part.includes('.')) {
      if (!isIPv4(part)) return null;
      const q = part.split('.').map(Number) as [number, number, number, number];
      groups.push((q[0] << 8) | q[1], (q[2] << 8) | q[3]);
      continue;
    }
    if (part.length === 0 || part.length > 4) return null;
    let value = 0;
    for (let j = 0; j < part.length; j++) {
      const c = part.charCodeAt(j);
      const d = c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : c >= 0x41 && c <= 0x46 ? c - 0x37 : -1;
      if (d < 0) return null;
      value = value * 16 + d;
    }
    groups.push(value);
  }
  return groups;
}

/** 8 groups -> the form Node reports (RFC 5952: lower case, longest zero run as `::`, IPv4-mapped as ::ffff:a.b.c.d). */
function formatIPv6(g: number[]): string {
  if (g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) {
    return `::ffff:${g[6]! >> 8}.${g[6]! & 255}.${g[7]! >> 8}.${g[7]! & 255}`;
  }
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestAt = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = g.map((v) => v.toString(16));
  if (bestAt === -1) return hex.join(':');
  return `${hex.slice(0, bestAt).join(':')}::${hex.slice(bestAt + bestLen).join(':')}`;
}

function parseV2(data: Buffer): ProxyHeader | number {
  const n = Math.min(data.length, V2_SIGNATURE.length);
  if (data.compare(V2_SIGNATURE, 0, n, 0, n) !== 0) return PP_BAD;
  if (data.length < 13) return PP_MORE;
  const verCmd = data[12]!;
  // Version 2; command LOCAL (0) or PROXY (1).
  if (verCmd >> 4 !== 2 || (verCmd & 0x0f) > 1) return PP_BAD;
  if (data.length < 14) return PP_MORE;
  const fam = data[13]!;
  // Family 0-3 (unspecified, IPv4, IPv6, unix) over transport 0-2 (unspecified, stream, datagram).
  if (fam >> 4 > 3 || (fam & 0x0f) > 2) return PP_BAD;
  if (data.length < V2_FIXED) return PP_MORE;
  const len = data.readUInt16BE(14);
  if (len > V2_MAX_LENGTH) return PP_BAD;
  const af = fam >> 4;
  // The address block must fit in what the length announces.
  if ((af === 1 && len < 12) || (af === 2 && len < 36) || (af === 3 && len < 216)) return PP_BAD;
  if (data.length < V2_FIXED + len) return PP_MORE;
  const length = V2_FIXED + len;
  // LOCAL: the balancer's own connection (a health check); the socket's address stands. TLVs
  // after the addresses are skipped as a whole: nothing in them is used.
  if ((verCmd & 0x0f) === 0 || af === 0 || af === 3) return { length, address: null, port: 0, family: null };
  if (af === 1) {
    const a = `${data[16]}.${data[17]}.${data[18]}.${data[19]}`;
    return { length, address: a, port: data.readUInt16BE(24), family: 'IPv4' };
  }
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push(data.readUInt16BE(16 + i * 2));
  return { length, address: formatIPv6(g), port: data.readUInt16BE(48), family: 'IPv6' };
}
