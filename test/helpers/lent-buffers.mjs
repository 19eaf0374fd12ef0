// Shared by the tests of bodies read into reused (lent) buffers: position-coded body bytes, their
// check as they arrive, and the check that every lent buffer came back.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
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

/** The sha256 (hex) of body `seed` [0, size). */
export const shaOf = (seed, size) => createHash('sha256').update(positionCoded(seed, 0, size)).digest('hex');

/** Checks a body as it arrives: every byte against its position, and the whole by sha256. */
export class BodyCheck {
  constructor(seed, size) {
    this.seed = seed;
    this.size = size;
    this.bytes = 0;
    this.firstBad = -1;
    this.hash = createHash('sha256');
  }
  add(chunk) {
    if (this.firstBad === -1) {
      const n = Math.min(chunk.length, Math.max(0, this.size - this.bytes));
      const want = positionCoded(this.seed, this.bytes, n);
      if (n < chunk.length || !want.equals(chunk.subarray(0, n))) {
        let i = 0;
        while (i < n && want[i] === chunk[i]) i++;
        this.firstBad = this.bytes + i;
      }
    }
    this.hash.update(chunk);
    this.bytes += chunk.length;
  }
  /** What arrived: { bytes, firstBad, sha } (once: the hash is done then). */
  summary() {
    return { bytes: this.bytes, firstBad: this.firstBad, sha: this.hash.digest('hex') };
  }
  /** The body came whole (see assertWhole); `from` names who sent it. */
  assertWhole(label, from) {
    assertWhole(this.summary(), this.seed, this.size, label, from);
  }
}

/** A BodyCheck summary `got` is body `seed` [0, size) exactly; `from` names who sent it. */
export function assertWhole(got, seed, size, label, from) {
  assert.equal(got.firstBad, -1, `${label}: byte ${got.firstBad} of ${size} is not the ${from}'s`);
  assert.equal(got.bytes, size, `${label}: ${got.bytes} of ${size} bytes`);
  assert.equal(got.sha, shaOf(seed, size), `${label}: sha256`);
}
