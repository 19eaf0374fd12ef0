import { LRUCache } from 'lru-cache';

/** A token bucket's state: tokens left and when they were last counted (ms). */
interface Bucket {
  tokens: number;
  last: number;
}

export interface RateLimitConfig {
  /** Tokens added per second (may be fractional). */
  rate: number;
  /** Bucket size: requests allowed at once after a quiet time. */
  burst: number;
  /** Clients remembered; the least recently seen one is forgotten past it (it starts full again). */
  maxClients: number;
}

/**
 * Per-client token buckets, one request = one token. Memory is bounded by an LRU of buckets: a
 * flood of distinct addresses evicts the quietest clients, never grows past `maxClients`.
 */
export class RateLimiter {
  private readonly buckets: LRUCache<string, Bucket>;
  private readonly rate: number;
  private readonly burst: number;
  /** `RateLimit-Policy` value, the same for every answer. */
  readonly policy: string;
  private readonly name: string;

  constructor(config: RateLimitConfig, name: string) {
    this.rate = config.rate;
    this.burst = config.burst;
    this.name = name;
    this.buckets = new LRUCache({ max: config.maxClients });
    // The window is the time a bucket takes to fill from empty.
    this.policy = `"${name}";q=${config.burst};w=${Math.max(1, Math.ceil(config.burst / config.rate))}`;
  }

  /** Takes a token for `client`: 0 when allowed, else the seconds until a token is there (≥ 1). */
  take(address: string): number {
    const client = address.includes(':') ? ipv6ClientKey(address) : address;
    const now = performance.now();
    const bucket = this.buckets.get(client);
    if (bucket === undefined) {
      this.buckets.set(client, { tokens: this.burst - 1, last: now });
      return 0;
    }
    const tokens = Math.min(this.burst, bucket.tokens + ((now - bucket.last) / 1000) * this.rate);
    bucket.last = now;
    if (tokens >= 1) {
      bucket.tokens = tokens - 1;
      return 0;
    }
    bucket.tokens = tokens;
    return Math.max(1, Math.ceil((1 - tokens) / this.rate));
  }

  /** The header fields of a 429 (name/value pairs): Retry-After and the IETF RateLimit fields. */
  answerHeaders(wait: number): string[] {
    return ['retry-after', String(wait), 'ratelimit-policy', this.policy, 'ratelimit', `"${this.name}";r=0;t=${wait}`];
  }

  get size(): number {
    return this.buckets.size;
  }
}

/**
 * The bucket key of an IPv6 client: its /64 (one host is given a whole /64 and may use any
 * address in it, so a bucket per address would be one per request); an IPv4-mapped address
 * (::ffff:a.b.c.d) is its IPv4 address. The address is in the form Node reports (maybe with a
 * zone); a form that does not parse is its own key.
 */
export function ipv6ClientKey(address: string): string {
  const zone = address.indexOf('%');
  const text = (zone === -1 ? address : address.slice(0, zone)).toLowerCase();
  if (text.startsWith('::ffff:') && text.includes('.')) return text.slice(7);
  const dbl = text.indexOf('::');
  const head = dbl === -1 ? text.split(':') : dbl === 0 ? [] : text.slice(0, dbl).split(':');
  const out: string[] = [];
  for (let i = 0; i < 4; i++) {
    const g = head[i];
    if (g === undefined) {
      // Past the groups before `::`: the zeros it stands for, then the groups after it.
      if (dbl === -1) return text;
      const tail = text.slice(dbl + 2) === '' ? [] : text.slice(dbl + 2).split(':');
      const tailGroups = tail.length + (tail.length > 0 && tail[tail.length - 1]!.includes('.') ? 1 : 0);
      const zeros = 8 - head.length - tailGroups;
      const t = i - head.length - zeros;
      out.push(t < 0 ? '0' : parseInt(tail[t] ?? '0', 16).toString(16));
      continue;
    }
    const v = parseInt(g, 16);
    if (Number.isNaN(v)) return text;
    out.push(v.toString(16));
  }
  return `${out.join(':')}::/64`;
}
