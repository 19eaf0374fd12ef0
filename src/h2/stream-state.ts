import type http2 from 'node:http2';
import type { ReadBatch } from '../upstream/h1-pool.js';
import type { GatheredBody } from './request-body.js';

/** Chunks of an upstream's chunked answer up to this size are batched per upstream read. */
const BATCHED_CHUNK_MAX = 1024;
/** Batched bytes written at once past this length (a DATA frame's default size): backpressure holds. */
const BATCHED_BYTES_MAX = 16 * 1024;

/**
 * Per-exchange state of the HTTP/2 side (`exchange.clientState`), and the exchange's read batch
 * (`exchange.out`): the small chunks one upstream read produces leave in one stream write.
 *
 * An HTTP/1.1 upstream's chunked answer arrives as llhttp's pieces, one per chunk: written one
 * by one, each cost a stream write (Node's Writable, a write request into nghttp2's queue),
 * ~1.6 µs of proxy CPU per 1-byte chunk against ~0.9 batched (llhttp's callback per chunk is
 * the rest). Chunks up to BATCHED_CHUNK_MAX of one upstream read are
 * joined and written when the read is through (`endBatch`), or once BATCHED_BYTES_MAX wait; a
 * larger chunk, the answer's end, its trailers or a failure write what waits first, so order
 * holds. The write's backpressure pauses the upstream as a single chunk's would.
 */
export class H2StreamState implements GatheredBody, ReadBatch {
  readonly stream: http2.ServerHttp2Stream;
  /** Kept here: `stream.session` is gone once the stream is destroyed. */
  readonly session: http2.ServerHttp2Session | undefined;
  /** Request body pieces read this turn (see request-body.ts). */
  pieces: Buffer[] | null = null;
  /** Response trailers, sent when Node asks for them ('wantTrailers'). */
  trailers: string[] | null = null;
  /** The client's request trailers (raw), passed on with the request's end. */
  requestTrailers: string[] | null = null;
  /** 'drain' is listened to (from the first write the stream could not take whole). */
  drainListened = false;
  /** An upstream read is being parsed: small chunks wait for its end. */
  private inBatch = false;
  /** The waiting chunks' bytes (latin1: the read's buffers are reused once it is through). */
  private batched = '';
  private readonly onDrain: (this: http2.ServerHttp2Stream) => void;

  constructor(stream: http2.ServerHttp2Stream, session: http2.ServerHttp2Session | undefined, onDrain: (this: http2.ServerHttp2Stream) => void) {
    this.stream = stream;
    this.session = session;
    this.onDrain = onDrain;
  }

  beginBatch(): void {
    this.inBatch = true;
  }

  endBatch(): boolean {
    this.inBatch = false;
    return this.flushBatched();
  }

  /**
   * Takes a body chunk that may wait for the end of the read; false when it must be written now
   * (a large chunk, a lent buffer, no read being parsed), after `flushBatched`.
   */
  batchChunk(chunk: Buffer): boolean {
    if (!this.inBatch || chunk.length > BATCHED_CHUNK_MAX) return false;
    this.batched += chunk.toString('latin1');
    return true;
  }

  /** Whether so much waits that it is written now (`flushBatched`) rather than at the read's end. */
  get batchFull(): boolean {
    return this.batched.length >= BATCHED_BYTES_MAX;
  }

  /** Writes the waiting chunks, if any; false: the stream holds more than it wants (wait for 'drain'). */
  flushBatched(): boolean {
    const text = this.batched;
    if (text.length === 0) return true;
    this.batched = '';
    const stream = this.stream;
    if (stream.destroyed || stream.writableEnded) return true;
    return this.written(stream.write(Buffer.from(text, 'latin1')));
  }

  /** A write's result: when the stream could not take it whole, its 'drain' is listened to (once per stream). */
  written(ok: boolean): boolean {
    if (!ok && !this.drainListened) {
      this.drainListened = true;
      this.stream.on('drain', this.onDrain);
    }
    return ok;
  }
}
