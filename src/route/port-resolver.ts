import { LRUCache } from 'lru-cache';
import type { ContainerPortResolver } from '../options.js';

/**
 * Caches a container port resolver's answers (hits and "not found") for `ttlMs`, and shares one
 * look-up among concurrent requests for the same container and port. Failures are not cached.
 */
export class CachedPortResolver {
  private readonly resolver: ContainerPortResolver;
  private readonly cache: LRUCache<string, { port: number | null }> | undefined;
  private readonly inflight = new Map<string, Promise<number | null>>();

  constructor(resolver: ContainerPortResolver, ttlMs: number) {
    this.resolver = resolver;
    this.cache = ttlMs > 0 ? new LRUCache({ max: 10_000, ttl: ttlMs }) : undefined;
  }

  /** The cached answer, or `undefined` when a look-up is needed. */
  peek(container: string, port: number): number | null | undefined {
    return this.cache?.get(`${container}\0${port}`)?.port;
  }

  resolve(container: string, port: number): Promise<number | null> {
    const key = `${container}\0${port}`;
    const hit = this.cache?.get(key);
    if (hit !== undefined) return Promise.resolve(hit.port);
    let pending = this.inflight.get(key);
    if (pending === undefined) {
      const lookUp = this.lookUp(key, container, port);
      pending = lookUp;
      this.inflight.set(key, lookUp);
      // Cleared once settled (also when the resolver threw synchronously): failures are not kept.
      const clear = (): void => {
        if (this.inflight.get(key) === lookUp) this.inflight.delete(key);
      };
      lookUp.then(clear, clear);
    }
    return pending;
  }

  private async lookUp(key: string, container: string, port: number): Promise<number | null> {
    const answer = await this.resolver(container, port);
    if (answer !== null && (!Number.isInteger(answer) || answer < 1 || answer > 65535)) {
      throw new Error(`resolver returned an invalid port: ${String(answer)}`);
    }
    this.cache?.set(key, { port: answer });
    return answer;
  }

  clear(): void {
    this.cache?.clear();
  }
}
