import { v8 } from './builtins.js';

/**
 * Body bytes pass through short-lived Buffers (llhttp's copy of each body piece), so a transfer
 * leaves its own size in dead ArrayBuffers behind it. V8 collects young ones once they add up
 * to twice the young generation's largest semi-space: 16 MiB up to V8 12 (Node 20, 22), 32 MiB
 * from V8 13 (Node 24), where the old generation's 64 MiB external-memory limit then comes
 * first; a 256 MiB upload peaks ~40 MiB higher on Node 24 for nothing. The CLI, which owns its
 * process, caps the young generation at V8 12's size (the flag is read at each backing-store
 * allocation, so setting it at start-up takes effect). Embedders can pass the same flag to
 * `node`; the library itself leaves the host process's heap alone.
 */
const YOUNG_GEN_FLAG = '--scavenger-max-new-space-capacity-mb=8';

/**
 * Semi-space size at which the young generation stops growing (MiB; two semi-spaces make it).
 * V8 doubles a semi-space, 1 MiB at start, up to 16 MiB (32 on V8 13) whenever most of it
 * survives a scavenge, as it does while thousands of WebSockets open in a burst, and keeps it
 * for as long as they stay open: ~2.7 KiB per WebSocket at 9,500. `--max-semi-space-size` is
 * read only when the heap is set up, but the growth factor is read at each growth, so once the
 * semi-space has reached this size the factor becomes 1. The same effect as `node
 * --max-semi-space-size=4`.
 */
const SEMI_SPACE_CAP_MB = 4;

/**
 * How far the old generation may grow past what the last mark-compact left live before the next
 * one (30 %). V8's own factor goes up to 4x on a small heap: while thousands of WebSockets open in
 * a burst, each connection's short-lived objects outlive two scavenges and are promoted, and with
 * 8 MiB live after a mark-compact the next one waits until the old generation holds ~34 MiB,
 * garbage included, committed and kept (~1.4 KiB of RSS per WebSocket at 9,000 on Node 20). With
 * 1.3x the garbage goes every few MiB instead, at the cost of a few more mark-compacts while the
 * heap grows (each a few ms at this size; V8's minimum step keeps small heaps at their usual
 * pace). V8 reads the flag at each mark-compact, so setting it at start-up takes effect.
 */
const OLD_GEN_GROWTH_FLAG = '--heap-growing-percent=30';

/** The CLI's heap settings for a process that holds many connections (the library leaves its host's heap alone). */
export function tuneHeapForConnections(): void {
  capYoungGeneration();
  limitOldGenerationGrowth();
}

export function capYoungGeneration(): void {
  const major = Number.parseInt(process.versions.v8, 10);
  // The flag exists from V8 12; older versions reject it with a warning on stderr.
  if (major >= 13) v8().setFlagsFromString(YOUNG_GEN_FLAG);
  stopYoungGrowthAt(SEMI_SPACE_CAP_MB);
}

export function limitOldGenerationGrowth(): void {
  v8().setFlagsFromString(OLD_GEN_GROWTH_FLAG);
}

/** Watches collections (entries come on a later turn) until the young generation is `mb` per semi-space. */
function stopYoungGrowthAt(mb: number): void {
  const cap = 2 * mb * 1024 * 1024;
  const reached = (): boolean => {
    const young = v8().getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
    if (young === undefined || young.space_size < cap) return false;
    v8().setFlagsFromString('--semi-space-growth-factor=1');
    return true;
  };
  if (reached()) return;
  const observer = new PerformanceObserver(() => {
    if (reached()) observer.disconnect();
  });
  observer.observe({ entryTypes: ['gc'] });
}
