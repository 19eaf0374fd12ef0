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
  take(client: string): number {
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
