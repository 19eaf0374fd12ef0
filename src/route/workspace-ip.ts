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

/**
 * The workspace number: the trailing digits of the last `/` segment, else FNV-1a of the
 * lower-cased segment masked to 16 bits. `null` when the digits overflow a u32 (SPEC §3).
 * Must stay exact: the workspaces' own bind shim computes the same.
 */
export function workspaceNumber(name: string): number | null {
  const slash = name.lastIndexOf('/');
  const segment = slash === -1 ? name : name.slice(slash + 1);
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

const cache = new LRUCache<string, string | false>({ max: 4096 });

/** `127.18.x.y` for a workspace name, or `null` when its number overflows. Cached. */
export function workspaceIp(name: string): string | null {
  const hit = cache.get(name);
  if (hit !== undefined) return hit === false ? null : hit;
  const n = workspaceNumber(name);
  const ip = n === null ? null : workspaceIpFromNumber(n);
  cache.set(name, ip ?? false);
  return ip;
}
