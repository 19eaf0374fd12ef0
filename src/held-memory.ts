import type { Readable, Writable } from 'node:stream';

/**
 * What a Buffer waiting in a stream's queue costs beyond its bytes: the Buffer object (a view of
 * the read it came in) and its slot. A client's 1-byte DATA frames held by a paused HTTP/2
 * stream cost ~127 bytes each (Node 20: 3.2 million frames, 3 MiB of data, took 408 MiB), so
 * what such queues hold is counted as bytes plus this much per piece.
 */
export const HELD_PIECE_COST = 128;

interface QueueState {
  length: number;
  pendingcb?: number;
  buffer?: unknown;
  bufferIndex?: number;
  buffered?: unknown;
  bufferedIndex?: number;
}

/** Pieces waiting in a stream queue kept as an array and the index of its first live entry (Node 20.20 and later); 0 otherwise. */
function piecesIn(queue: unknown, index: number | undefined): number {
  return Array.isArray(queue) ? queue.length - (index ?? 0) : 0;
}

/** What a readable stream holds unread, in memory: its bytes and HELD_PIECE_COST per piece. */
export function readableHeld(stream: Readable): number {
  const state = (stream as unknown as { _readableState?: QueueState })._readableState;
  if (state === undefined) return stream.readableLength;
  return state.length + HELD_PIECE_COST * piecesIn(state.buffer, state.bufferIndex);
}

/** What a writable stream holds unwritten, in memory: its bytes and HELD_PIECE_COST per queued write. */
export function writableHeld(stream: Writable): number {
  const state = (stream as unknown as { _writableState?: QueueState })._writableState;
  if (state === undefined) return stream.writableLength;
  return state.length + HELD_PIECE_COST * piecesIn(state.buffered, state.bufferedIndex);
}

/**
 * What a writable stream's unfinished writes cost beyond their bytes: HELD_PIECE_COST per write
 * it has taken and not yet called back, queued in it or already below it (an HTTP/2 stream's
 * writes wait in nghttp2's queue for the peer's window). Its bytes are left out: backpressure
 * bounds them per stream (the high-water mark plus the write that crossed it).
 */
export function writesPendingCost(stream: Writable): number {
  const pending = (stream as unknown as { _writableState?: QueueState })._writableState?.pendingcb;
  return typeof pending === 'number' && pending > 0 ? HELD_PIECE_COST * pending : 0;
}
