import type http2 from 'node:http2';
import type { Exchange } from '../exchange.js';
import { openStreams } from './stream-tables.js';

/**
 * What a client session's streams make the proxy hold of their request bodies while the client
 * has not acknowledged a narrowing of its stream window (see stream-window.ts).
 *
 * nghttp2 enforces a new SETTINGS_INITIAL_WINDOW_SIZE only once the client acknowledges it, and
 * the client may take up to 10 s (SETTINGS_TIMEOUT) to: until then each of its streams may fill
 * the old 1 MiB window. A client that opened 100 uploads to a route still resolving (or to an
 * upstream that does not read), and held its acknowledgement back, made the proxy hold ~104 MiB
 * for those 10 s, per connection. While a narrowing waits for its acknowledgement the session's
 * streams are counted every 25 ms: past HELD_BODY_BYTES_MAX, 1.5 times the most a session holds
 * once the narrowing is in force (~32 MiB), the session is closed with GOAWAY(ENHANCE_YOUR_CALM).
 * What it took in before that look stays bounded by what a client can send in 25 ms. A client
 * that acknowledges at once (every HTTP/2 stack does, on its next read) is rarely counted, and
 * then holds far less.
 */
export const HELD_BODY_BYTES_MAX = 48 * 1024 * 1024;

/**
 * Request body bytes the session's streams hold: what Node buffered of each stream unread (a
 * paused stream: its upstream is not ready or not taking more), and what each exchange queued or
 * wrote and its upstream has not taken. Null when this Node keeps its streams where the proxy
 * does not look (then nothing is counted).
 */
export function requestBytesHeld(session: http2.Http2Session, exchangeOf: (stream: http2.Http2Stream) => Exchange | undefined): number | null {
  const streams = openStreams(session);
  if (streams === null) return null;
  let held = 0;
  for (const value of streams) {
    const stream = value as http2.Http2Stream;
    held += stream.readableLength;
    const ex = exchangeOf(stream);
    if (ex !== undefined) held += ex.heldRequestBytes();
  }
  return held;
}
