import type http2 from 'node:http2';
import { H2_STREAM_WINDOW } from './windows.js';

/**
 * What one HTTP/2 session may make the proxy hold, whatever its stream count. Node returns
 * connection window as soon as data arrives, and stream window only as a stream is read: a
 * stream whose destination is not reading (its route resolves, its upstream connects or is slow,
 * its client is slow) holds up to its stream window. At 1 MiB per stream a client's 100 uploads
 * held 100 MiB, and an upstream's 100 answers to a stalled client as much.
 *
 * So while more than WIDE_STREAMS streams are open the session's SETTINGS_INITIAL_WINDOW_SIZE
 * drops to `narrowStreamWindow(most streams)`, and it goes back to H2_STREAM_WINDOW once no more
 * than half of WIDE_STREAMS are (the gap keeps a stream count near the line from sending a
 * SETTINGS frame per stream). RFC 9113 §6.9.2: the change applies to the windows of open streams
 * too, so a stream that holds its old window's worth gets no more. A session then holds at most
 * WIDE_STREAMS × 1 MiB (filled before the change) plus NARROW_BUDGET: ~32 MiB with 100 streams
 * (a narrow window of 163 KiB). Past 256 streams the 64 KiB floor rules: 64 KiB per stream.
 * That holds for a peer that acknowledges at once: until it does, it may fill every stream's
 * old window (the timeout below bounds how long it may wait; a client session is also closed
 * once its streams hold more than held-bodies.ts allows meanwhile).
 *
 * nghttp2 enforces a new setting only once the peer acknowledges it: a peer that does not within
 * SETTINGS_ACK_TIMEOUT_MS is `overdue` (RFC 9113 §6.5.3, SETTINGS_TIMEOUT), when watched, and
 * while a narrowing waits the watch looks at the session every NARROWING_CHECK_MS.
 * A client's session is closed then; an h2c upstream's is left to wait (a local dev server whose
 * event loop is busy compiling may take that long, and its running streams would be lost).
 */
const WIDE_STREAMS = 16;
const NARROW_BUDGET = 16 * 1024 * 1024;
/** RFC 9113's default window (what nginx lets a stream send before it reads): a narrow window is never below it. */
const MIN_STREAM_WINDOW = 64 * 1024;
const SETTINGS_ACK_TIMEOUT_MS = 10_000;
/** How often a client's session is looked at while a narrowing waits for its acknowledgement. */
const NARROWING_CHECK_MS = 25;

/** What is done about a client's session while it has not acknowledged a SETTINGS frame of ours. */
export interface AckWatch<S> {
  /** Every NARROWING_CHECK_MS while a narrowing waits (see held-bodies.ts). */
  narrowingWaits(session: S): void;
  /** SETTINGS_ACK_TIMEOUT_MS passed without the acknowledgement. */
  overdue(session: S): void;
}

/** The stream window while narrow: NARROW_BUDGET spread over the most streams the session may open. */
function narrowStreamWindow(maxStreams: number): number {
  const share = Math.floor(NARROW_BUDGET / Math.max(1, maxStreams));
  return Math.max(MIN_STREAM_WINDOW, Math.min(H2_STREAM_WINDOW, share - (share % 1024)));
}

/** Fits one session's stream window to its open streams (see above); `fit` runs on each open and close. */
export class StreamWindowFit<S extends http2.Http2Session> {
  private readonly session: S;
  private readonly watch: AckWatch<S> | null;
  private narrow = false;
  /** A SETTINGS frame of ours awaits its ACK: no other is sent meanwhile. */
  private awaitingAck = false;
  private ackTimer: NodeJS.Timeout | null = null;
  private checkTimer: NodeJS.Timeout | null = null;
  private open = 0;
  private maxStreams = 0;

  constructor(session: S, watch: AckWatch<S> | null) {
    this.session = session;
    this.watch = watch;
  }

  fit(open: number, maxStreams: number): void {
    this.open = open;
    this.maxStreams = maxStreams;
    if (this.awaitingAck) return;
    const narrow = this.narrow ? open > WIDE_STREAMS >>> 1 : open > WIDE_STREAMS;
    if (narrow === this.narrow) return;
    const session = this.session;
    if (session.destroyed || session.closed) return;
    try {
      session.settings({ initialWindowSize: narrow ? narrowStreamWindow(maxStreams) : H2_STREAM_WINDOW }, this.acknowledged);
    } catch {
      // Not sent (Node refuses past 10 SETTINGS unacknowledged; ours go one at a time): the window stays.
      return;
    }
    this.narrow = narrow;
    this.awaitingAck = true;
    if (this.watch !== null) {
      this.ackTimer = setTimeout(this.expired, SETTINGS_ACK_TIMEOUT_MS);
      this.ackTimer.unref();
      if (narrow) {
        this.checkTimer = setInterval(this.check, NARROWING_CHECK_MS);
        this.checkTimer.unref();
      }
    }
  }

  /** The session closed (or the ACK came): its timers go. */
  dispose(): void {
    if (this.ackTimer !== null) clearTimeout(this.ackTimer);
    this.ackTimer = null;
    if (this.checkTimer !== null) clearInterval(this.checkTimer);
    this.checkTimer = null;
  }

  private readonly acknowledged = (err: Error | null): void => {
    this.dispose();
    this.awaitingAck = false;
    // The session went before the ACK: nothing more to fit.
    if (err === null) this.fit(this.open, this.maxStreams);
  };

  private readonly expired = (): void => {
    this.ackTimer = null;
    if (!this.session.destroyed) this.watch?.overdue(this.session);
  };

  private readonly check = (): void => {
    if (this.session.destroyed) this.dispose();
    else this.watch?.narrowingWaits(this.session);
  };
}
