import type http2 from 'node:http2';
import type { StreamHandle } from '../h1/parser.js';
import { ChurnSet } from '../churn-set.js';

/**
 * nghttp2 reports a malformed stream it has already reset (DATA beyond or short of
 * `content-length`, RFC 9113 §8.1.1) to its invalid-frame callback as NGHTTP2_ERR_PROTO, the
 * same code as a connection error it has already answered with GOAWAY. Since Node 22 that
 * callback destroys the whole session (GOAWAY(INTERNAL_ERROR) on a server session), from inside
 * nghttp2's read loop, so one bad stream costs every request in flight on the connection
 * (RFC 9113 §5.4.2: a stream error ends that stream only). Node 20 reports neither.
 */
const NGHTTP2_ERR_PROTO = -505;

/** True for the error Node destroys a session with for an NGHTTP2_ERR_PROTO report. */
export function isReportedProtocolError(error: Error | null | undefined): boolean {
  if (error == null) return false;
  const e = error as NodeJS.ErrnoException;
  return e.errno === NGHTTP2_ERR_PROTO && e.code === 'ERR_HTTP2_ERROR';
}

type Destroy = (this: http2.Http2Session, error?: Error, code?: number) => void;

/** Node's own `Http2Session#destroy` (the class is not exported: taken from the first session). */
let nodeDestroy: Destroy | null = null;

/** Looks one loop turn apart (see settle): Node resumes reading after a write completes. */
const SECOND_LOOK_MS = 10;
/** While writes are queued the read state says nothing; looked at again this often, this many times. */
const BUSY_RETRY_MS = 25;
const BUSY_RETRIES = 200;

/**
 * For an upstream (client) session: an NGHTTP2_ERR_PROTO report no longer destroys it at once.
 * Once nghttp2 has returned, the session's socket handle tells the cases apart: for a stream
 * error nghttp2 still wants input (the handle is reading) and the session serves on, the bad
 * stream closing with RST_STREAM(PROTOCOL_ERROR); for a connection error nghttp2 wants no more
 * input (Node stopped reading with nothing left to write) and the session is destroyed as Node
 * would have.
 *
 * Node 20 reports neither case: after a connection error the session just stops reading, its
 * streams would wait forever and new requests would still be given to it. The same look is
 * therefore also taken at every watched session every DEAD_PROBE_MS.
 */
export function keepSessionOnStreamError(session: http2.ClientHttp2Session): void {
  nodeDestroy ??= session.destroy as Destroy;
  session.destroy = destroyUnlessStreamError;
  watched.add(session);
  session.once('close', unwatch);
  if (probeTimer === null) {
    probeTimer = setInterval(probeWatched, DEAD_PROBE_MS);
    probeTimer.unref();
  }
}

/** How often watched upstream sessions are looked at (see keepSessionOnStreamError). */
const DEAD_PROBE_MS = 250;
const watched = new ChurnSet<http2.Http2Session>();
let probeTimer: NodeJS.Timeout | null = null;
/** Sessions a look is under way for (a report or a probe), so one look runs at a time. */
const looking = new WeakSet<http2.Http2Session>();
const STOPPED_READING = Object.assign(new Error('the HTTP/2 upstream session stopped reading after a protocol error'), { code: 'ERR_HTTP2_ERROR', errno: NGHTTP2_ERR_PROTO });

function unwatch(this: http2.Http2Session): void {
  watched.delete(this);
  if (watched.size === 0 && probeTimer !== null) {
    clearInterval(probeTimer);
    probeTimer = null;
  }
}

function probeWatched(): void {
  for (const session of watched) {
    if (session.destroyed) watched.delete(session);
    else if (!looking.has(session) && session.socket != null) {
      looking.add(session);
      settle(session, STOPPED_READING, 0, false);
    }
  }
}

function destroyUnlessStreamError(this: http2.Http2Session, error?: Error, code?: number): void {
  if (isReportedProtocolError(error)) {
    if (!looking.has(this)) {
      looking.add(this);
      setImmediate(settle, this, error!, 0, false);
    }
    return;
  }
  nodeDestroy!.call(this, error, code);
}

function settle(session: http2.Http2Session, error: Error, tries: number, secondLook: boolean): void {
  if (session.destroyed) return;
  const handle = (session.socket as unknown as { _handle?: StreamHandle | null } | undefined)?._handle;
  if (handle == null || typeof handle.readStart !== 'function') {
    looking.delete(session);
    if (error !== STOPPED_READING) nodeDestroy!.call(session, error);
    return;
  }
  if (handle.writeQueueSize > 0) {
    if (tries < BUSY_RETRIES) setTimeout(settle, BUSY_RETRY_MS, session, error, tries + 1, false);
    else {
      looking.delete(session);
      if (error !== STOPPED_READING) nodeDestroy!.call(session, error);
    }
    return;
  }
  // 0: reading had stopped (our readStart started it); otherwise it was reading (EALREADY).
  if (handle.readStart() !== 0) {
    looking.delete(session);
    return;
  }
  // Leave it as Node left it, and look once more after Node had a turn to resume reading.
  handle.readStop();
  if (secondLook) nodeDestroy!.call(session, error);
  else setTimeout(settle, SECOND_LOOK_MS, session, error, tries, true);
}
