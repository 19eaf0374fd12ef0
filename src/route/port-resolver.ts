import { LRUCache } from 'lru-cache';
import type { ContainerPortResolver } from '../options.js';

/** A published port on a loopback address other than 127.0.0.1 (a resolver's richer answer). */
export interface ResolvedAddress {
  readonly host: string;
  readonly port: number;
}

/** A resolver that may name the address too (the Docker one does, from `HostIp`). */
export type ContainerAddressResolver = (container: string, port: number) => Promise<number | ResolvedAddress | null>;

export type ResolverAnswer = number | ResolvedAddress | null;

/** The code of the error a look-up rejects with when it outlives its deadline. */
export const RESOLVER_TIMEOUT = 'RESOLVER_TIMEOUT';

function validPort(port: unknown): boolean {
  return Number.isInteger(port) && (port as number) >= 1 && (port as number) <= 65535;
}

function validAnswer(answer: unknown): answer is ResolverAnswer {
  if (answer === null || typeof answer === 'number') return answer === null || validPort(answer);
  if (typeof answer !== 'object') return false;
  const { host, port } = answer as { host?: unknown; port?: unknown };
  return typeof host === 'string' && host !== '' && validPort(port);
}

/**
 * Caches a container port resolver's answers (hits and "not found") for `ttlMs`, and shares one
 * look-up among concurrent requests for the same container and port. Failures are not cached.
 * Every look-up has a deadline: a resolver that never answers (or trickles its answer) fails
 * the requests waiting on it, and the next request starts a new look-up instead of joining it.
 */
export class CachedPortResolver {
  private readonly resolver: ContainerPortResolver | ContainerAddressResolver;
  private readonly cache: LRUCache<string, { port: ResolverAnswer }> | undefined;
  private readonly inflight = new Map<string, Promise<ResolverAnswer>>();

  constructor(resolver: ContainerPortResolver | ContainerAddressResolver, ttlMs: number) {
    this.resolver = resolver;
    this.cache = ttlMs > 0 ? new LRUCache({ max: 10_000, ttl: ttlMs }) : undefined;
  }

  /** The cached answer, or `undefined` when a look-up is needed. */
  peek(container: string, port: number): ResolverAnswer | undefined {
    return this.cache?.get(`${container}\0${port}`)?.port;
  }

  /** Rejects with an error whose `code` is RESOLVER_TIMEOUT after `timeoutMs` (0: no deadline). */
  resolve(container: string, port: number, timeoutMs = 0): Promise<ResolverAnswer> {
    const key = `${container}\0${port}`;
    const hit = this.cache?.get(key);
    if (hit !== undefined) return Promise.resolve(hit.port);
    let pending = this.inflight.get(key);
    if (pending === undefined) {
      const lookUp = this.lookUp(key, container, port, timeoutMs);
      pending = lookUp;
      this.inflight.set(key, lookUp);
      // Cleared once settled (also when the resolver threw synchronously, or at the deadline):
      // failures are not kept.
      const clear = (): void => {
        if (this.inflight.get(key) === lookUp) this.inflight.delete(key);
      };
      lookUp.then(clear, clear);
    }
    return pending;
  }

  private lookUp(key: string, container: string, port: number, timeoutMs: number): Promise<ResolverAnswer> {
    return new Promise<ResolverAnswer>((resolve, reject) => {
      let settled = false;
      const timer =
        timeoutMs > 0
          ? setTimeout(() => {
              settled = true;
              const err = new Error(`container port resolver gave no answer within ${timeoutMs} ms`) as NodeJS.ErrnoException;
              err.code = RESOLVER_TIMEOUT;
              reject(err);
            }, timeoutMs)
          : undefined;
      const answered = (answer: unknown): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!validAnswer(answer)) {
          reject(new Error(`resolver returned an invalid port: ${String(answer)}`));
          return;
        }
        this.cache?.set(key, { port: answer });
        resolve(answer);
      };
      const failed = (err: unknown): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(err);
      };
      try {
        this.resolver(container, port).then(answered, failed);
      } catch (err) {
        failed(err);
      }
    });
  }

  clear(): void {
    this.cache?.clear();
  }
}
