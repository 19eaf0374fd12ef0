import type { Duplex } from 'node:stream';
import type net from 'node:net';
import type { StatsCounters } from './stats.js';
import type { TunnelRecord } from './observe.js';
import { publishTunnelEnd, type DiagnosticsRequest } from './diagnostics.js';

export const TUNNEL_WEBSOCKET = 1;
export const TUNNEL_CONNECT = 2;

/** After one side has closed cleanly, how long the other may take to flush and close. */
const LINGER_MS = 5_000;

const kTunnel = Symbol('cmux.tunnel');
type TunnelEnd = Duplex & { [kTunnel]?: Tunnel; setTimeout?: (ms: number) => unknown };

/**
 * Two byte streams spliced raw (no frame parsing), backpressure both ways: a 'data' chunk is
 * written to the other side, and a refused write pauses this side until the other drains.
 * Module-level listeners instead of `pipe()`, which adds nine closures and three `once`
 * wrappers per direction (~3 KiB per WebSocket, measured with heap snapshots).
 * A FIN on one side becomes a FIN on the other after what is buffered is flushed; an error on
 * either side destroys both. The tunnel counts as open until both sides have closed.
 */
export class Tunnel {
  readonly a: TunnelEnd;
  readonly b: TunnelEnd;
  private readonly stats: StatsCounters;
  private readonly kind: number;
  private open = 2;
  private settled = false;
  private readonly onClosed: ((tunnel: Tunnel) => void) | undefined;
  /** Set by the opener when an observer watches (see observe.ts). */
  record: TunnelRecord | null = null;
  /** Set by the opener when the diagnostics channels are subscribed: its `request:end` comes at the close. */
  diag: DiagnosticsRequest | null = null;
  /** The status that opened it (101 or 200), for `request:end`. */
  diagStatus = 0;

  constructor(a: Duplex, b: Duplex, kind: number, stats: StatsCounters, onClosed?: (tunnel: Tunnel) => void) {
    this.a = a as TunnelEnd;
    this.b = b as TunnelEnd;
    this.kind = kind;
    this.stats = stats;
    this.onClosed = onClosed;
    if (kind === TUNNEL_WEBSOCKET) stats.websocketConnections++;
    else stats.tunnelsOpen++;
    for (const end of [this.a, this.b]) {
      end[kTunnel] = this;
      end.on('error', tunnelEndOnError);
      end.on('close', tunnelEndOnClose);
      end.on('end', tunnelEndOnEnd);
      end.on('timeout', tunnelEndOnTimeout);
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
        other.setTimeout?.(LINGER_MS);
      }
      return;
    }
    if (this.settled) return;
    this.settled = true;
    if (this.kind === TUNNEL_WEBSOCKET) this.stats.websocketConnections--;
    else this.stats.tunnelsOpen--;
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
  if (!other.write(chunk)) this.pause();
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

function tunnelEndOnClose(this: TunnelEnd): void {
  this[kTunnel]?.sideClosed(this);
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
