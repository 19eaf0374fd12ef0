// Shared by the tests of bodies read into reused (lent) buffers: position-coded body bytes, and
// the check that every lent buffer came back.
import assert from 'node:assert/strict';
import { readBufferCounts } from '../../dist/upstream/read-buffers.js';
import { waitFor } from './servers.mjs';

/** The body bytes [offset, offset + length) of body `seed`: each 32-bit word codes its position. */
export function positionCoded(seed, offset, length) {
  const start = offset & ~3;
  const words = Math.ceil((offset - start + length) / 4);
  const u32 = new Uint32Array(words);
  const first = start >>> 2;
  for (let i = 0; i < words; i++) u32[i] = Math.imul(first + i, 2654435761) ^ seed;
  return Buffer.from(u32.buffer, offset - start, length);
}

/** Every buffer made is free or let go within `timeoutMs`, and the free lists hold at most `freeMax`. */
export async function assertNoBufferHeld(label, timeoutMs, freeMax) {
  const settled = await waitFor(() => {
    const { created, free, dropped } = readBufferCounts();
    return free + dropped === created;
  }, { timeoutMs });
  const { created, free, dropped } = readBufferCounts();
  assert.ok(settled, `${label}: ${created} read buffers made, ${free} free, ${dropped} let go: ${created - free - dropped} still held`);
  assert.ok(free <= freeMax);
}
