import type http2 from 'node:http2';
import type { Exchange } from '../exchange.js';
import { readableHeld, writesPendingCost } from '../held-memory.js';
import { heldTowardPeer } from '../tunnel.js';
import { heldInRefusal } from './extended-connect.js';
import { openStreams } from './stream-tables.js';

/**
 * What a client session's streams make the proxy hold of their bodies, in memory: request
 * bodies, and the pieces of answers waiting for the client.
 *
 * Stream windows bound the bytes, not the pieces: a client's request bodies in 1-byte DATA
 * frames, to a route still resolving (or an upstream not reading), cost ~127 bytes of memory per
 * byte held (held-memory.ts); 16 streams of 1 MiB windows made the proxy hold 408 MiB after 4 s
 * of 1-byte frames (3 MiB of data), and 1 MiB windows allowed ~2 GiB. Every 250 ms (the session
 * probe) each session with open streams is counted, its pieces included, and past
 * HELD_BODY_MEMORY_MAX it is closed with GOAWAY(ENHANCE_YOUR_CALM).
 *
 * nghttp2 enforces a new SETTINGS_INITIAL_WINDOW_SIZE only once the client acknowledges it, and
 * the client may take up to 10 s (SETTINGS_TIMEOUT) to: until then each of its streams may fill
 * the old 1 MiB window. A client that opened 100 uploads to a route still resolving (or to an
 * upstream that does not read), and held its acknowledgement back, made the proxy hold ~104 MiB
 * for those 10 s, per connection. While a narrowing waits for its acknowledgement the session is
 * counted every 25 ms as well. HELD_BODY_MEMORY_MAX is 1.5 times the most a session's windows let
 * it hold in full DATA frames once a narrowing is in force (~32 MiB): a client that acknowledges
 * at once (every HTTP/2 stack does, on its next read) and sends frames of a few KiB never reaches
 * it; one that fills many stalled streams with frames of ~100 bytes can.
 */
export const HELD_BODY_MEMORY_MAX = 48 * 1024 * 1024;

/**
 * Memory the session's streams hold of their bodies: what Node buffered of each stream unread
 * (a paused stream: its upstream is not ready or not taking more), what each exchange queued or
 * wrote and its upstream has not taken, what a tunnel's upstream socket has not taken, and the
 * writes toward the client each stream has not handed on yet (HELD_PIECE_COST each). Null when
 * this Node keeps its streams where the proxy does not look (then nothing is counted).
 */
export function requestMemoryHeld(session: http2.Http2Session, exchangeOf: (stream: http2.Http2Stream) => Exchange | undefined): number | null {
  const streams = openStreams(session);
  if (streams === null) return null;
  let held = 0;
  for (const value of streams) {
    const stream = value as http2.Http2Stream;
    // An extended CONNECT (or CONNECT) stream spliced to its upstream: what the socket has not
    // taken, and what it read and the stream has not taken.
    held += readableHeld(stream) + heldTowardPeer(stream);
    // Its answer's writes the client has not taken yet (a WebSocket's upstream-to-client side
    // too): pieces of a few bytes each, from an upstream that writes them one at a time, waited
    // as ~170 bytes each until 16 KiB (64 KiB on Node 22 and 24) of bytes paused the upstream.
    // And a refused WebSocket's answer, read from its paused upstream socket.
    held += writesPendingCost(stream) + heldInRefusal(stream);
    const ex = exchangeOf(stream);
    if (ex !== undefined) held += ex.heldRequestMemory();
  }
  return held;
}
