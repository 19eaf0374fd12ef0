import type net from 'node:net';

/**
 * Reused read buffers for Content-Length bodies relayed outside llhttp, in both directions:
 * response bodies read from a plain-TCP upstream socket and lent to the client writes, request
 * bodies (uploads) read from a plain-TCP HTTP/1.1 client socket and lent to the upstream writes
 * (an HTTP/1.1 upstream socket, an h2c upstream stream). "Reader" below is the socket read,
 * "writer" the side its slices are written to.
 *
 * Node reads a socket into a fresh 64 KiB allocation per read unless the handle is given a buffer
 * of the caller's (the `onread: { buffer, callback }` option of `net.Socket`, which exists only
 * at construction). An upstream socket taken over for such a body gets the same read path Node
 * sets up for that option: `handle.useUserBuffer(buf)` plus the socket's own `kBuffer`,
 * `kBufferCb` and `kBufferGen` slots, which Node's read callback (`onStreamRead`) consults on
 * every read: it hands `kBufferCb` the bytes read into `kBuffer`, then asks `kBufferGen` where
 * the next read goes.
 *
 * A slice of a read buffer handed to a writer may sit in its queue (an HTTP/1.1 socket's pending
 * write, an HTTP/2 stream's DATA queue) after the read: the buffer is not read into again until
 * every write lent a slice of it has called back (`ReadBuffer.release`).
 * Until then the next read goes to another buffer of the body's ring (at most RING_MAX); with
 * all of them still lent, a new one takes the oldest one's place in the ring and the old one
 * goes back to the free list only once released. A buffer whose holder was destroyed before it
 * called back is never reused (an HTTP/2 write cancelled by a reset may still have bytes of it in
 * the session's outgoing write).
 *
 * Between such bodies (idle pooled sockets, heads, other framings, a socket handed to a tunnel) the handle reads into one process-wide PARKING buffer (16 KiB) whose bytes are copied out,
 * or parsed where they lie, before the read callback returns: no socket keeps a buffer of its own once its body is done.
 */

/** libuv's read size for a stream (what Node allocates per read by default). */
export const READ_BUFFER_SIZE = 64 * 1024;
/**
 * The PARKING buffer's size: the read size of a handle with no body of its own being relayed.
 * On a pooled upstream socket that read is the next response's head, usually with the first
 * bytes of its body, which llhttp copies out (the buffer is every such handle's). A read of
 * 16 KiB holds any usual head (heads go on across reads anyway) and leaves the rest of a long
 * body to reads into lent buffers: a 1 MiB response had up to 64 KiB of it copied with a 64 KiB
 * read (user-space memmove 4.7 % of the proxy's CPU in 1 MiB downloads, 0.8 % with 16 KiB).
 */
export const PARKING_SIZE = 16 * 1024;
/**
 * The read size for bodies relayed from reused buffers, both directions. The peer's kernel
 * usually holds more than 64 KiB by the time the socket is read (a 1 MiB response arrives
 * whole in the upstream socket's receive queue), so a larger read fills: each read saved is a
 * read, a write and their callbacks saved. 256 KiB reads took about 0.8x the CPU per MiB of
 * 64 KiB ones, uploads and downloads alike.
 */
export const BODY_BUFFER_SIZE = 256 * 1024;
/** Read buffers one body may have lent out at once before new ones replace them. */
const RING_MAX = 4;
/** Released read buffers kept for the next bodies, process-wide (2 MiB). */
export const FREE_MAX = 8;
/** Reads shorter than this are copied out instead of lent (a lent buffer is 256 KiB held). */
export const LEND_MIN = 8 * 1024;

/** Where every handle with a user buffer reads while no body of its own is being relayed. */
export const PARKING: Buffer = Buffer.allocUnsafeSlow(PARKING_SIZE);

/** What holds a lent slice: the socket or HTTP/2 stream it was written to. */
export interface LeaseHolder {
  readonly destroyed: boolean;
}

/**
 * A body chunk's read buffer, lent with it to the writer: `release` must be called exactly once,
 * when nothing the writer queued reads the chunk any more (the write's callback, or at once when
 * the chunk was copied or not written). `holder` names what queued it.
 */
export interface BodyLease {
  holder: LeaseHolder | null;
  readonly release: () => void;
}

/** Read buffers made so far, and those let go for the garbage collector, process-wide. */
let created = 0;
let dropped = 0;

export class ReadBuffer implements BodyLease {
  readonly buf: Buffer;
  /** Writes with a slice of `buf` not called back yet. */
  held = 0;
  /** In a body's ring (else it goes to the free list once released). */
  inRing = false;
  /** Its holder was destroyed with a write pending: never read into again. */
  poisoned = false;
  /**
   * What the slices lent now were written to. Every slice of one read goes to one holder (a
   * chunked body's read may lend several), so it is forgotten only once the last is released:
   * any release after the holder was destroyed poisons the buffer, even after others came back.
   */
  holder: LeaseHolder | null = null;
  readonly release = (): void => {
    const holder = this.holder;
    if (holder !== null && holder.destroyed && !this.poisoned) {
      this.poisoned = true;
      dropped++;
    }
    if (--this.held !== 0) return;
    this.holder = null;
    if (!this.inRing && !this.poisoned) putFree(this);
  };

  constructor() {
    this.buf = Buffer.allocUnsafeSlow(BODY_BUFFER_SIZE);
    created++;
  }

  /** Lends the buffer for one chunk; the receiver calls `release`. */
  lend(): this {
    this.held++;
    return this;
  }
}

const free: ReadBuffer[] = [];

function putFree(b: ReadBuffer): void {
  if (free.length < FREE_MAX) free.push(b);
  else dropped++;
}

function takeFree(): ReadBuffer {
  return free.pop() ?? new ReadBuffer();
}

/**
 * Read buffers made so far, those in the free list and those let go (free list full, or
 * poisoned): `created - free - dropped` are in a body's ring or lent to a write.
 */
export function readBufferCounts(): { created: number; free: number; dropped: number } {
  return { created, free: free.length, dropped };
}

/** The read buffers of one body being relayed, and which of them the handle reads into now. */
export class ReadRing {
  private readonly ring: ReadBuffer[] = [];
  /** What the handle reads into (null: PARKING). */
  current: ReadBuffer | null = null;

  /** A buffer for the handle's first read of a body (the ring is empty). */
  first(): ReadBuffer {
    const b = takeFree();
    b.inRing = true;
    this.ring.push(b);
    this.current = b;
    return b;
  }

  /** Where the next read goes: a buffer no write still reads. */
  next(): Buffer {
    const cur = this.current;
    if (cur !== null && cur.held === 0 && !cur.poisoned) return cur.buf;
    const ring = this.ring;
    for (let i = 0; i < ring.length; i++) {
      const b = ring[i]!;
      if (b.poisoned) {
        b.inRing = false;
        ring.splice(i--, 1);
      } else if (b.held === 0) {
        this.current = b;
        return b.buf;
      }
    }
    if (ring.length >= RING_MAX) {
      // Every buffer is still lent: the oldest leaves the ring and is freed when released.
      ring.shift()!.inRing = false;
    }
    const b = takeFree();
    b.inRing = true;
    ring.push(b);
    this.current = b;
    return b.buf;
  }

  /**
   * The body is done (or its socket closed): the handle reads into PARKING from here on (or
   * never again), and the buffers go back to the free list once no write holds them.
   */
  retire(): void {
    const ring = this.ring;
    for (let i = 0; i < ring.length; i++) {
      const b = ring[i]!;
      b.inRing = false;
      if (b.held === 0 && !b.poisoned) putFree(b);
    }
    ring.length = 0;
    this.current = null;
  }
}

/** The socket's read-buffer slots, found by name (the same in Node 20, 22 and 24). */
interface BufferSymbols {
  kBuffer: symbol;
  kBufferCb: symbol;
  kBufferGen: symbol;
}

let symbols: BufferSymbols | null | undefined;

function bufferSymbols(socket: object): BufferSymbols | null {
  if (symbols !== undefined) return symbols;
  let kBuffer: symbol | undefined;
  let kBufferCb: symbol | undefined;
  let kBufferGen: symbol | undefined;
  for (const s of Object.getOwnPropertySymbols(socket)) {
    if (s.description === 'kBuffer') kBuffer = s;
    else if (s.description === 'kBufferCb') kBufferCb = s;
    else if (s.description === 'kBufferGen') kBufferGen = s;
  }
  symbols = kBuffer !== undefined && kBufferCb !== undefined && kBufferGen !== undefined ? { kBuffer, kBufferCb, kBufferGen } : null;
  return symbols;
}

interface UserBufferHandle {
  useUserBuffer?(buf: Buffer): void;
}

/**
 * Switches a plain (not TLS) socket's reads to caller buffers for good: `first` takes the next
 * read; each read then goes to `onRead(nread, buf)` (called with the socket as `this`; returning
 * false stops reading, as a stream's push would) and `next()` (called without a receiver) says
 * where the following one goes.
 * False when this Node has no such read path for the socket; nothing changed then.
 */
export function useReadBuffers(
  socket: net.Socket,
  first: Buffer,
  onRead: (this: net.Socket, nread: number, buf: Buffer) => boolean,
  next: () => Buffer,
): boolean {
  if ((socket as { encrypted?: boolean }).encrypted === true) return false;
  const handle = (socket as unknown as { _handle?: UserBufferHandle | null })._handle;
  if (handle === null || handle === undefined || typeof handle.useUserBuffer !== 'function') return false;
  const s = bufferSymbols(socket);
  if (s === null) return false;
  const slots = socket as unknown as Record<symbol, unknown>;
  if (slots[s.kBuffer] !== null || slots[s.kBufferCb] !== null || slots[s.kBufferGen] !== null) return false;
  settleStreamPull(socket);
  slots[s.kBuffer] = first;
  slots[s.kBufferCb] = onRead;
  slots[s.kBufferGen] = next;
  handle.useUserBuffer(first);
  return true;
}

/**
 * Before reads bypass a socket's stream (llhttp consuming its handle, or reads into lent
 * buffers): the stream's pull for more still due from the last 'data' it delivered
 * (`maybeReadMore`, on the next tick) would call `read(0)` -> `_read`, which starts a handle
 * stopped since, and a socket paused there (pipelining, backpressure, a body queued while the
 * upstream connects) would read on. One pull now leaves the stream waiting for a push, which
 * never comes while reads bypass it: it asks no more. Whoever switches the reads over decides
 * right after whether the handle reads (this pull may start it).
 */
export function settleStreamPull(socket: { read(size: number): unknown }): void {
  socket.read(0);
}

/** A read's bytes in a Buffer of their own (what Node's default read path hands out). */
export function copyRead(buf: Buffer, nread: number): Buffer {
  const copy = Buffer.allocUnsafe(nread);
  buf.copy(copy, 0, 0, nread);
  return copy;
}
