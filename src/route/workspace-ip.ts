import { LRUCache } from 'lru-cache';

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;
const U32_MAX = 0xffffffff;

/** 32-bit FNV-1a over the UTF-8 bytes of `text`. */
export function fnv1a32(text: string): number {
  const bytes = Buffer.from(text, 'utf8');
  let hash = FNV_OFFSET;
  for (let i = 0; i < bytes.length; i++) {
    hash ^= bytes[i]!;
    hash = Math.imul(hash, FNV_PRIME) >>> 0;
  }
  return hash >>> 0;
}

function lastSegment(name: string): string {
  const slash = name.lastIndexOf('/');
  return slash === -1 ? name : name.slice(slash + 1);
}

/**
 * The workspace number: the trailing digits of the last `/` segment, else FNV-1a of the
 * lower-cased segment masked to 16 bits. `null` when the digits overflow a u32.
 * Must stay exact: the workspaces' own bind shim computes the same (it lower-cases the Unicode
 * name, then hashes its UTF-8 bytes).
 */
export function workspaceNumber(name: string): number | null {
  const segment = lastSegment(name);
  let start = segment.length;
  while (start > 0) {
    const c = segment.charCodeAt(start - 1);
    if (c < 48 || c > 57) break;
    start--;
  }
  if (start < segment.length) {
    const n = Number(segment.slice(start));
    return n > U32_MAX ? null : n;
  }
  return fnv1a32(segment.toLowerCase()) & 0xffff;
}

export function workspaceIpFromNumber(n: number): string {
  return `127.18.${(n >>> 8) & 255}.${n & 255}`;
}


/**
 * Names a client sends are bounded like DNS names (RFC 1035 §2.3.4): the segment the IP depends
 * on is one label of at most 63 bytes, the whole name at most 255.
 */
export const WORKSPACE_SEGMENT_MAX = 63;
export const WORKSPACE_NAME_MAX = 255;

// Why `workspaceIpFromWire` found no IP.
export const WS_OVERFLOW = 1;
export const WS_TOO_LONG = 2;
/** Not ASCII: the caller decodes the wire bytes as UTF-8 and asks `workspaceIp`. */
export const WS_NOT_ASCII = 3;

/**
 * Keyed by the last segment, the only part the IP depends on, and only ever holding ASCII
 * segments of at most 63 bytes, so 4,096 entries retain well under 1 MiB whatever clients send.
 * `false` marks a number that overflows.
 */
const cache = new LRUCache<string, string | false>({ max: 4096 });

/**
 * The IP for a name as it came off the wire: a latin1 string, one char per byte (what llhttp and
 * Node's http2 give for header values). ASCII names, the usual case, are answered from the cache;
 * a name with other bytes gets `WS_NOT_ASCII`, because lower-casing must apply to the decoded
 * characters, not to the bytes.
 */
export function workspaceIpFromWire(name: string): string | number {
  if (name.length > WORKSPACE_NAME_MAX) return WS_TOO_LONG;
  const segment = lastSegment(name);
  if (segment.length > WORKSPACE_SEGMENT_MAX) return WS_TOO_LONG;
  const hit = cache.get(segment);
  if (hit !== undefined) return hit === false ? WS_OVERFLOW : hit;
  for (let i = 0; i < segment.length; i++) if (segment.charCodeAt(i) > 127) return WS_NOT_ASCII;
  const n = workspaceNumber(segment);
  const ip = n === null ? false : workspaceIpFromNumber(n);
  cache.set(segment, ip);
  return ip === false ? WS_OVERFLOW : ip;
}

/**
 * `127.18.x.y` for a workspace name (a Unicode string), or `null` when its number overflows.
 * ASCII names come from the cache shared with the wire path (for ASCII both read the same).
 */
export function workspaceIp(name: string): string | null {
  const fromCache = workspaceIpFromWire(name);
  if (typeof fromCache === 'string') return fromCache;
  if (fromCache === WS_OVERFLOW) return null;
  const n = workspaceNumber(name);
  return n === null ? null : workspaceIpFromNumber(n);
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The characters a latin1 wire string's bytes spell in UTF-8, or `null` when they are not UTF-8. */
export function decodeWireUtf8(wire: string): string | null {
  try {
    return utf8.decode(Buffer.from(wire, 'latin1'));
  } catch {
    return null;
  }
}
