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

export function capYoungGeneration(): void {
  const major = Number.parseInt(process.versions.v8, 10);
  // The flag exists from V8 12; older versions reject it with a warning on stderr.
  if (major >= 13) v8().setFlagsFromString(YOUNG_GEN_FLAG);
  stopYoungGrowthAt(SEMI_SPACE_CAP_MB);
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
