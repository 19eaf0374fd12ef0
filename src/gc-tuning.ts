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

export function capYoungGeneration(): void {
  const major = Number.parseInt(process.versions.v8, 10);
  // The flag exists from V8 12; older versions reject it with a warning on stderr.
  if (major >= 13) v8().setFlagsFromString(YOUNG_GEN_FLAG);
}
