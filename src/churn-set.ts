import { PerformanceObserver, type PerformanceObserverEntryList } from 'node:perf_hooks';

/**
 * V8 rebuilds a Set's or Map's hash table every few additions once deletions have left holes
 * in it, and the table it replaces keeps a pointer to its successor (for iterators still
 * walking it). If the replaced table was in the old generation (a mark-compact promotes every
 * live young object), it is dead, but a scavenge cannot know that: through it the successor
 * survives and is promoted, is replaced a few additions later, keeps its own successor alive,
 * and so on. From then until the next mark-compact every member the collection held is
 * promoted, with everything it reaches, and that mark-compact starts the chain again. A
 * collection whose members come and go all the time (connections, sessions, streams) thus
 * turns most of what they reach into old-generation garbage: after one forced mark-compact, a Set
 * kept at 10 members by adding and deleting has ~180 of every ~200 bytes of its members promoted
 * (test/gc-chains.test.mjs), and a bare node:http2 server promotes ~0.7 MB per scavenge through
 * node's own per-session stream Map and Set (stream-tables.ts).
 *
 * A fresh collection after each major collection holds the same members in a young table, no
 * longer reachable from the dead one, so the chain ends there.
 */
export interface Renewable {
  /** Replaces the hash tables it churns with fresh ones (same contents). */
  renew(): void;
}

const renewables: WeakRef<Renewable>[] = [];
let observer: PerformanceObserver | null = null;

/** NODE_PERFORMANCE_GC_MAJOR (perf_hooks.constants). */
const GC_MAJOR = 4;

/** Calls `item.renew()` after each major collection, for as long as the item is reachable elsewhere. */
export function renewAfterMajorCollections(item: Renewable): void {
  renewables.push(new WeakRef(item));
  if (observer === null) {
    observer = new PerformanceObserver(afterCollections);
    observer.observe({ entryTypes: ['gc'] });
  }
}

function afterCollections(list: PerformanceObserverEntryList): void {
  let major = false;
  for (const entry of list.getEntries()) {
    if ((entry as { detail?: { kind?: number } | null }).detail?.kind === GC_MAJOR) major = true;
  }
  if (!major) return;
  let live = 0;
  for (const ref of renewables) {
    const item = ref.deref();
    if (item === undefined) continue;
    renewables[live++] = ref;
    item.renew();
  }
  renewables.length = live;
  if (live === 0 && observer !== null) {
    observer.disconnect();
    observer = null;
  }
}

/** A Set for members that come and go all the time, renewed after each major collection (from its first member on). */
export class ChurnSet<T> implements Iterable<T>, Renewable {
  private members = new Set<T>();
  private registered = false;

  get size(): number {
    return this.members.size;
  }

  add(member: T): this {
    this.members.add(member);
    if (!this.registered) {
      this.registered = true;
      renewAfterMajorCollections(this);
    }
    return this;
  }

  delete(member: T): boolean {
    return this.members.delete(member);
  }

  has(member: T): boolean {
    return this.members.has(member);
  }

  clear(): void {
    this.members = new Set();
  }

  [Symbol.iterator](): IterableIterator<T> {
    return this.members.values();
  }

  renew(): void {
    this.members = new Set(this.members);
  }
}
