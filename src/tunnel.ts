import type { Duplex } from 'node:stream';
import type net from 'node:net';
import { readableHeld, writableHeld } from './held-memory.js';
import type { StatsCounters } from './stats.js';
import type { ChurnSet } from './churn-set.js';
import type { TunnelRecord } from './observe.js';
import { publishTunnelEnd, type DiagnosticsRequest } from './diagnostics.js';
import { FRAMES_CLOSED, FRAMES_FORWARD, FRAMES_WAIT_BOUNDARY, WsFrames, goingAwayFrame } from './ws-frames.js';

export const TUNNEL_WEBSOCKET = 1;
export const TUNNEL_CONNECT = 2;

/** After one side has closed cleanly, how long the other may take to flush and close. */
const LINGER_MS = 5_000;

const kTunnel = Symbol('cmux.tunnel');
type TunnelEnd = Duplex & { [kTunnel]?: Tunnel; setTimeout?: (ms: number) => unknown };
type CloseListener = (this: TunnelEnd, hadError: boolean) => void;

/**
 * Node's own key for a socket's idle Timeout (`socket[kTimeout]`, internal/timers). A socket keeps
 * its last Timeout even after `setTimeout(0)` cleared it (~200 bytes with its fields); found by
 * its description on the first socket that has it, undefined until then (or if Node renames it).
 */
let kNodeTimeout: symbol | null | undefined = null;

/** Lets go of a cleared idle Timeout the socket still points at (a spliced socket has none armed). */
function dropClearedTimeout(end: object): void {
  if (kNodeTimeout === null) {
    kNodeTimeout = Object.getOwnPropertySymbols(end).find((s) => s.description === 'timeout');
    if (kNodeTimeout === undefined) kNodeTimeout = null;
  }
  if (kNodeTimeout === null || kNodeTimeout === undefined) return;
  const holder = end as Record<symbol, { _idleTimeout?: number; _destroyed?: boolean } | null | undefined>;
  const timer = holder[kNodeTimeout];
  // Only a timer clearTimeout() has unenrolled: an armed one (a linger deadline) stays.
  if (timer != null && timer._destroyed === true && timer._idleTimeout === -1) holder[kNodeTimeout] = null;
}

/**
 * Two byte streams spliced raw, backpressure both ways: a 'data' chunk is
 * written to the other side, and a refused write pauses this side until the other drains.
 * Module-level listeners instead of `pipe()`, which adds nine closures and three `once`
 * wrappers per direction (~3 KiB per WebSocket, measured with heap snapshots).
 * A FIN on one side becomes a FIN on the other after what is buffered is flushed; an error on
 * either side destroys both. The tunnel counts as open until both sides have closed.
 * A WebSocket's frame boundaries are counted in each direction (ws-frames.ts, no copying) so
 * that `goingAway()` can close it with 1001 between two frames.
 */
export class Tunnel {
  readonly a: TunnelEnd;
  readonly b: TunnelEnd;
  private readonly stats: StatsCounters;
  private readonly kind: number;
  private open = 2;
  private settled = false;
  private readonly onClosed: ((tunnel: Tunnel) => void) | undefined;
  /** WebSockets: the frame boundaries of what `a` (the client) sends and of what `b` (the upstream) sends. */
  readonly fromClient: WsFrames | null;
  readonly fromUpstream: WsFrames | null;
  /** The open WebSockets this one is listed in until it closes. */
  private readonly websockets: ChurnSet<Tunnel> | null;
  /** Set by the opener when an observer watches (see observe.ts). */
  record: TunnelRecord | null = null;
  /** Set by the opener when the diagnostics channels are subscribed: its `request:end` comes at the close. */
  diag: DiagnosticsRequest | null = null;
  /** The status that opened it (101 or 200), for `request:end`. */
  diagStatus = 0;
  /** The one 'close' listener each side had before the splice, run by the tunnel's own (see adoptClose). */
  private readonly closeA: CloseListener | null;
  private readonly closeB: CloseListener | null;

  /**
   * `a` is the client side, `b` the upstream socket; WebSockets are listed in `websockets` while
   * open. With `adopt`, a side's one 'close' listener from before (the server's and the pool's
   * accounting) is taken off the socket and run first by the tunnel's own: one listener per event
   * and socket, no listener arrays, for as long as the tunnel lives.
   */
  constructor(a: Duplex, b: Duplex, kind: number, stats: StatsCounters, websockets: ChurnSet<Tunnel> | null = null, onClosed?: (tunnel: Tunnel) => void, adopt = false) {
    this.a = a as TunnelEnd;
    this.b = b as TunnelEnd;
    this.kind = kind;
    this.stats = stats;
    this.onClosed = onClosed;
    if (kind === TUNNEL_WEBSOCKET) {
      stats.websocketConnections++;
      this.fromClient = new WsFrames(true);
      this.fromUpstream = new WsFrames(false);
      this.websockets = websockets;
      websockets?.add(this);
    } else {
      stats.tunnelsOpen++;
      this.fromClient = null;
      this.fromUpstream = null;
      this.websockets = null;
    }
    this.closeA = adopt ? adoptClose(this.a) : null;
    this.closeB = adopt ? adoptClose(this.b) : null;
    for (const end of [this.a, this.b]) {
      end[kTunnel] = this;
      if (adopt) {
        dropClearedTimeout(end);
        // The peer address object Node caches on first use (read again from the handle if asked).
        if ((end as { _peername?: unknown })._peername != null) (end as { _peername?: unknown })._peername = undefined;
      }
      end.on('error', tunnelEndOnError);
      end.on('close', tunnelEndOnClose);
      end.on('end', tunnelEndOnEnd);
      // Spliced sockets have no idle timeout: their 'timeout' listener comes with the linger
      // deadline (sideClosed), not before (one property fewer on each socket's listener table).
      if (!adopt) end.on('timeout', tunnelEndOnTimeout);
      end.on('data', tunnelEndOnData);
      end.on('drain', tunnelEndOnDrain);
    }
  }

  other(end: TunnelEnd): TunnelEnd {
    return end === this.a ? this.b : this.a;
  }

  /** Tears both sides down at once (errors, proxy shutdown). */
  destroy(): void {
    this.a.destroy();
    this.b.destroy();
  }

  /** Bytes already passed on before the splice (read with the handshake): their frames count too. */
  forwardedEarly(fromClient: boolean, chunk: Buffer | null): void {
    const frames = fromClient ? this.fromClient : this.fromUpstream;
    if (frames !== null && chunk !== null && chunk.length > 0) frames.scan(chunk, 0, false);
  }

  /**
   * The proxy is stopping: each direction gets a close frame (1001 Going Away) at its next frame
   * boundary, masked toward the upstream, and forwards nothing after it; the peers answer with
   * theirs and close. A WebSocket already closing is left to it; a byte stream that is not
   * WebSocket framing is torn down at once. What is still open after the grace is destroyed by
   * the caller.
   */
  goingAway(): void {
    const up = this.fromClient;
    const down = this.fromUpstream;
    if (up === null || down === null || up.invalid || down.invalid) {
      this.destroy();
      return;
    }
    if (up.mode !== FRAMES_FORWARD || up.closeSeen || down.closeSeen) return;
    if (up.atBoundary) this.sendGoingAway(this.b, up);
    else up.mode = FRAMES_WAIT_BOUNDARY;
    if (down.atBoundary) this.sendGoingAway(this.a, down);
    else down.mode = FRAMES_WAIT_BOUNDARY;
  }

  private sendGoingAway(to: TunnelEnd, frames: WsFrames): void {
    frames.mode = FRAMES_CLOSED;
    // From now on a close frame seen in the other direction is the peer's answer.
    const answers = to === this.b ? this.fromUpstream! : this.fromClient!;
    answers.closeSeen = false;
    if (!to.destroyed && !to.writableEnded) to.write(goingAwayFrame(to === this.b));
  }

  /** A chunk read while stopping: forwarded up to the frame boundary, the close frame, the rest dropped. */
  stoppingData(from: TunnelEnd, to: TunnelEnd, frames: WsFrames, chunk: Buffer): void {
    let at = 0;
    if (frames.mode === FRAMES_WAIT_BOUNDARY) {
      at = frames.scan(chunk, 0, true);
      if (frames.invalid) {
        this.destroy();
        return;
      }
      if (!frames.atBoundary) {
        if (!to.write(chunk)) from.pause();
        return;
      }
      to.write(at === chunk.length ? chunk : chunk.subarray(0, at));
      this.sendGoingAway(to, frames);
    }
    // Dropped, but followed: a close frame in it answers the proxy's.
    if (at < chunk.length) frames.scan(chunk, at, false);
    const up = this.fromClient!;
    const down = this.fromUpstream!;
    if (up.mode === FRAMES_CLOSED && down.mode === FRAMES_CLOSED && up.closeSeen && down.closeSeen) {
      // Both closing handshakes are complete: FIN both ways once the close frames are flushed.
      this.a.end();
      this.b.end();
    }
  }

  /** A side's 'close': the listener adopted from it first, then the tunnel's accounting. */
  closed(end: TunnelEnd, hadError: boolean): void {
    const adopted = end === this.a ? this.closeA : this.closeB;
    if (adopted !== null) adopted.call(end, hadError);
    this.sideClosed(end);
  }

  sideClosed(end: TunnelEnd): void {
    this.open--;
    if (this.open > 0) {
      const other = this.other(end);
      // Nothing can reach the closed side any more: the other side flushes what it holds
      // toward its peer, ends, and is closed then (or after LINGER_MS at the latest).
      if (other.writableFinished) {
        other.destroy();
      } else if (!other.destroyed) {
        other.once('finish', tunnelEndOnFinish);
        other.end();
        if (other.setTimeout !== undefined) {
          if (!other.listeners('timeout').includes(tunnelEndOnTimeout)) other.on('timeout', tunnelEndOnTimeout);
          other.setTimeout(LINGER_MS);
        }
      }
      return;
    }
    if (this.settled) return;
    this.settled = true;
    if (this.kind === TUNNEL_WEBSOCKET) {
      this.stats.websocketConnections--;
      this.websockets?.delete(this);
    } else this.stats.tunnelsOpen--;
    const record = this.record;
    if (record !== null) record.observer.tunnelEnd(record, this);
    const diag = this.diag;
    if (diag !== null) {
      // The second end is always the upstream socket.
      const upstream = this.b as unknown as { bytesRead?: number; bytesWritten?: number };
      publishTunnelEnd(diag, this.kind === TUNNEL_WEBSOCKET, this.diagStatus, upstream.bytesWritten ?? 0, upstream.bytesRead ?? 0);
    }
    this.onClosed?.(this);
  }
}

function tunnelEndOnData(this: TunnelEnd, chunk: Buffer): void {
  const tunnel = this[kTunnel];
  if (tunnel === undefined) return;
  const other = tunnel.other(this);
  // Nothing can reach a side that is gone or ending; the close path tears this side down.
  if (other.destroyed || other.writableEnded) return;
  const frames = this === tunnel.a ? tunnel.fromClient : tunnel.fromUpstream;
  if (frames !== null) {
    if (frames.mode !== FRAMES_FORWARD) {
      tunnel.stoppingData(this, other, frames, chunk);
      return;
    }
    frames.scan(chunk, 0, false);
  }
  if (!other.write(chunk)) this.pause();
}

/**
 * What a tunnel holds at its other side, in memory (bytes plus HELD_PIECE_COST a piece,
 * held-memory.ts): `end`'s bytes written to it and not yet taken, and what it has read and
 * `end` has not taken yet (read on while paused, up to its high-water mark: 16 KiB on Node 20,
 * 64 KiB on 22 and 24); 0 when `end` is not in a tunnel. An HTTP/2 stream's DATA frames reach
 * the upstream socket one write each, and the socket's queue pauses the stream at 16 KiB of
 * bytes: 1-byte frames toward an upstream that does not read held ~1.6 MB per stream, uncounted
 * (100 WebSocket streams of one session: 214 MB). The other way, an upstream's 1-byte writes
 * toward a client that does not read waited in the paused socket, one Buffer each: 358-480 MiB
 * for 100 WebSocket streams, uncounted.
 */
export function heldTowardPeer(end: Duplex): number {
  const tunnel = (end as TunnelEnd)[kTunnel];
  if (tunnel === undefined) return 0;
  const other = tunnel.other(end as TunnelEnd);
  return other.destroyed ? 0 : writableHeld(other) + readableHeld(other);
}

function tunnelEndOnDrain(this: TunnelEnd): void {
  const tunnel = this[kTunnel];
  if (tunnel === undefined) return;
  const source = tunnel.other(this);
  if (!source.destroyed && source.isPaused()) source.resume();
}

function tunnelEndOnError(this: TunnelEnd): void {
  this[kTunnel]?.destroy();
}

function tunnelEndOnClose(this: TunnelEnd, hadError: boolean): void {
  const tunnel = this[kTunnel];
  if (tunnel === undefined) return;
  tunnel.closed(this, hadError);
}

/** Takes a side's only 'close' listener off it (none or several: left where they are). */
function adoptClose(end: TunnelEnd): CloseListener | null {
  if (end.listenerCount('close') !== 1) return null;
  const listener = end.listeners('close')[0] as CloseListener;
  end.removeListener('close', listener);
  return listener;
}

function tunnelEndOnEnd(this: TunnelEnd): void {
  const tunnel = this[kTunnel];
  if (tunnel !== undefined) tunnel.other(this).end();
}

function tunnelEndOnFinish(this: TunnelEnd): void {
  this.destroy();
}

function tunnelEndOnTimeout(this: TunnelEnd): void {
  this.destroy();
}

export function configureTunnelSocket(socket: net.Socket, keepaliveMs: number): void {
  socket.setNoDelay(true);
  socket.setTimeout(0);
  if (keepaliveMs > 0) socket.setKeepAlive(true, keepaliveMs);
}
