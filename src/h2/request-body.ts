import { EX_HEAD_SENT, type Exchange } from '../exchange.js';

/**
 * An HTTP/2 client's request body on its way to an HTTP/1.1 upstream. Node emits one 'data'
 * per DATA frame (16 KiB at the default SETTINGS_MAX_FRAME_SIZE); written one by one, each
 * would be a write(2) of its own to the upstream: ~4,100 for a 64 MiB upload, the CPU of an
 * h2c upload. The pieces a stream receives in one event-loop turn are gathered and written
 * together in that turn's check phase (one setImmediate serves every stream), corked: one
 * writev, one chunk in a chunked body (Exchange.requestBodyPieces). Pieces wait at most until
 * then, and never past the stream's end: the end flushes them first.
 *
 * Pieces for an HTTP/2 upstream, or for an upstream not connected yet (they are queued anyway),
 * go on at once; once a stream has pieces waiting, later ones join them, so order holds whatever
 * happens to the upstream in between.
 */
/** The part of an exchange's `clientState` (an HTTP/2 stream's) that holds its waiting pieces. */
export interface GatheredBody {
  /** Pieces read this turn, not written yet; null when none. */
  pieces: Buffer[] | null;
}

let waiting: Exchange[] = [];

export function requestBodyPiece(ex: Exchange, chunk: Buffer): void {
  const body = ex.clientState as GatheredBody;
  const pieces = body.pieces;
  if (pieces !== null) {
    pieces.push(chunk);
    return;
  }
  if (ex.conn === null || (ex.flags & EX_HEAD_SENT) === 0) {
    ex.requestBody(chunk);
    return;
  }
  body.pieces = [chunk];
  waiting.push(ex);
  if (waiting.length === 1) setImmediate(writeWaiting);
}

/** Writes an exchange's waiting pieces now (its request is ending). */
export function flushRequestBody(ex: Exchange): void {
  const body = ex.clientState as GatheredBody;
  const pieces = body.pieces;
  if (pieces === null) return;
  body.pieces = null;
  ex.requestBodyPieces(pieces);
}

function writeWaiting(): void {
  const batch = waiting;
  waiting = [];
  for (const ex of batch) flushRequestBody(ex);
}
