import fs from 'node:fs';
import type { Logger } from './log.js';

/** One access log line: a finished exchange, or a closed WebSocket or tunnel. */
export interface AccessLogEntry {
  /** When it ended (ISO 8601, UTC). */
  time: string;
  /** 'http' (a request/response), 'websocket' or 'tunnel' (CONNECT). */
  kind: 'http' | 'websocket' | 'tunnel';
  client: string;
  /** 'HTTP/1.0', 'HTTP/1.1' or 'HTTP/2'. */
  protocol: string;
  tls: boolean;
  method: string;
  host: string | null;
  /** Without the query unless `accessLogQuery` is on. */
  path: string;
  /** How it was routed: 'header' (X-Cmux-*), 'host' (Host pattern), 'fallback', 'connect', or 'none' (not routed). */
  route: string;
  /** The upstream (`host:port` or `unix:/path`), or null when not routed. */
  target: string | null;
  /** Status sent to the client; 0 when none was (client aborted first). */
  status: number;
  /** Body bytes from the client (tunnels: all bytes toward the upstream). */
  bytesIn: number;
  /** Body bytes to the client (tunnels: all bytes from the upstream). */
  bytesOut: number;
  /** Request head received -> response end (tunnels: -> close), milliseconds. */
  durationMs: number;
  /** Served on a pooled upstream socket that had answered before. */
  reused: boolean;
  /** Error code (ECONNREFUSED, CLIENT_ABORT, NO_ROUTE, ...) or null. */
  error: string | null;
  requestId: string | null;
}

export type AccessLogOption = 'stdout' | string | ((entry: AccessLogEntry) => void);

/** A JSON string literal; the common case (printable ASCII, no quote or backslash) skips JSON.stringify. */
function str(s: string | null): string {
  if (s === null) return 'null';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x22 || c === 0x5c || c > 0x7e) return JSON.stringify(s);
  }
  return `"${s}"`;
}

/** `.001` .. `.999` as JavaScript prints them (no trailing zeros), '' for 0: index = thousandths. */
const THOUSANDTHS: readonly string[] = Array.from({ length: 1000 }, (_, i) => (i === 0 ? '' : (i / 1000).toString().slice(1)));

/**
 * A duration rounded to microseconds, as JSON.stringify prints it. A double's shortest form costs
 * several hundred nanoseconds and V8's number-string cache never hits on durations; whole
 * milliseconds (a small integer) and a table lookup for the fraction print the same text.
 */
function millis(ms: number): string {
  const us = Math.round(ms * 1000);
  if (!(us >= 0 && us < 0x4000_0000)) return `${ms}`;
  const whole = (us / 1000) | 0;
  return `${whole}${THOUSANDTHS[us - whole * 1000]!}`;
}

/** The entry as one JSON line (same keys and order as JSON.stringify; about 3x faster). */
export function formatEntry(e: AccessLogEntry): string {
  return (
    `{"time":"${e.time}","kind":"${e.kind}","client":${str(e.client)},"protocol":"${e.protocol}","tls":${e.tls},` +
    `"method":${str(e.method)},"host":${str(e.host)},"path":${str(e.path)},"route":"${e.route}","target":${str(e.target)},` +
    `"status":${e.status},"bytesIn":${e.bytesIn},"bytesOut":${e.bytesOut},"durationMs":${millis(e.durationMs)},"reused":${e.reused},` +
    `"error":${str(e.error)},"requestId":${str(e.requestId)}}`
  );
}

/** Lines wait at most this long for the write that takes them together. */
const FLUSH_MS = 50;

/** Buffered bytes past which lines are dropped (a sink slower than the traffic). */
const MAX_PENDING_BYTES = 16 * 1024 * 1024;

/** A batch buffer starts at this size and doubles as needed. */
const BATCH_BYTES = 64 * 1024;

/** A batch buffer up to this size is kept for the next batch; a larger one (a backlog) is let go. */
const KEEP_BYTES = 1024 * 1024;

/**
 * JSON lines, written in batches: the lines of FLUSH_MS leave in one write (stdout) or one
 * asynchronous fs.write (a file; lines that come meanwhile queue behind the write in flight).
 * Each line is encoded at once into the batch's Buffer; two Buffers take turns (one filling,
 * one being written), so a batch costs no join, no copy and no new Buffer.
 * A function sink gets each entry object as it ends.
 */
export class AccessLog {
  readonly fn: ((entry: AccessLogEntry) => void) | null;
  private readonly path: string | null;
  private fd: number | null = null;
  /** The batch being filled (null until the first line) and its length in bytes. */
  private buf: Buffer | null = null;
  private len = 0;
  /** The other batch Buffer, free for the next batch (null while it is being written). */
  private spare: Buffer | null = null;
  private scheduled = false;
  private writing = false;
  /** A descriptor replaced by reopen() while a write to it was in flight. */
  private retired: number | null = null;
  private dropped = 0;
  private flushed: (() => void)[] = [];
  private readonly log: Logger;

  constructor(option: AccessLogOption, log: Logger) {
    this.log = log;
    this.fn = typeof option === 'function' ? option : null;
    this.path = typeof option === 'string' && option !== 'stdout' ? option : null;
    if (this.path !== null) this.fd = fs.openSync(this.path, 'a');
  }

  add(entry: AccessLogEntry): void {
    const fn = this.fn;
    if (fn !== null) {
      try {
        fn(entry);
      } catch (err) {
        this.log.error(`accessLog function threw: ${(err as Error)?.message ?? String(err)}`);
      }
      return;
    }
    this.addLine(formatEntry(entry));
  }

  /** A line for a file or stdout sink (`fn` is null). */
  addLine(line: string): void {
    let len = this.len;
    if (len > MAX_PENDING_BYTES) {
      this.dropped++;
      return;
    }
    // UTF-8 takes at most 3 bytes per UTF-16 unit, plus the newline.
    const max = line.length * 3 + 1;
    let buf = this.buf;
    if (buf === null || len + max > buf.length) buf = this.grow(max);
    len += buf.write(line, len);
    buf[len++] = 0x0a;
    this.len = len;
    if (!this.writing) this.schedule();
  }

  /** A batch Buffer with room for `more` bytes past what is buffered. */
  private grow(more: number): Buffer {
    const old = this.buf;
    const need = this.len + more;
    let size = old === null ? BATCH_BYTES : old.length * 2;
    while (size < need) size *= 2;
    let buf = this.spare;
    if (buf !== null && buf.length >= need && old === null) this.spare = null;
    else buf = Buffer.allocUnsafe(size);
    if (old !== null && this.len > 0) old.copy(buf, 0, 0, this.len);
    this.buf = buf;
    return buf;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setTimeout(flushLater, FLUSH_MS, this).unref();
  }

  flush(): void {
    this.scheduled = false;
    if (this.writing || this.len === 0) return;
    const buf = this.buf!;
    const data = buf.subarray(0, this.len);
    this.inflight = buf;
    // The spare (if any) takes the next batch; this one comes back when written.
    this.buf = this.spare;
    this.spare = null;
    this.len = 0;
    if (this.dropped > 0) {
      this.log.warn(`access log: ${this.dropped} line(s) dropped, the sink is slower than the traffic`);
      this.dropped = 0;
    }
    this.writing = true;
    const fd = this.fd;
    if (fd === null) process.stdout.write(data, this.stdoutWritten);
    else writeAll(fd, data, 0, this);
  }

  /** The Buffer of the write in flight. */
  private inflight: Buffer | null = null;
  private readonly stdoutWritten = (err?: Error | null): void => this.written(err ?? null);

  /** The write in flight is done (or failed). */
  written(err: NodeJS.ErrnoException | null | undefined): void {
    this.writing = false;
    const done = this.inflight;
    this.inflight = null;
    if (done !== null && done.length <= KEEP_BYTES) {
      if (this.buf === null) this.buf = done;
      else this.spare = done;
    }
    if (err) this.log.error(`access log write failed: ${err.message}`);
    const retired = this.retired;
    if (retired !== null) {
      this.retired = null;
      fs.close(retired, ignore);
    }
    // Lines that came during the write wait for the timer too: one write per FLUSH_MS at most.
    // A drain() waiting writes the rest now.
    if (this.len > 0) {
      if (this.flushed.length > 0) this.flush();
      else this.schedule();
    } else this.settled();
  }

  private settled(): void {
    if (this.writing || this.len > 0) return;
    const waiters = this.flushed;
    this.flushed = [];
    for (const w of waiters) w();
  }

  /** Opens the file if it is not open (after close()). */
  open(): void {
    if (this.path !== null && this.fd === null) this.fd = fs.openSync(this.path, 'a');
  }

  /** Opens the file again (log rotation: the old name was moved away). */
  reopen(): void {
    if (this.path === null) return;
    const fd = fs.openSync(this.path, 'a');
    const old = this.fd;
    this.fd = fd;
    if (old === null) return;
    if (this.writing) this.retired = old;
    else fs.close(old, ignore);
  }

  /** Writes what is buffered; resolves once it is out. */
  drain(): Promise<void> {
    if (this.fn !== null) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.flushed.push(resolve);
      this.flush();
      this.settled();
    });
  }

  /** Writes what is buffered and closes the file. */
  async close(): Promise<void> {
    await this.drain();
    const fd = this.fd;
    if (fd !== null) {
      this.fd = null;
      await new Promise<void>((resolve) => fs.close(fd, () => resolve()));
    }
  }
}

function flushLater(log: AccessLog): void {
  log.flush();
}


function writeAll(fd: number, data: Buffer, offset: number, log: AccessLog): void {
  fs.write(fd, data, offset, data.length - offset, null, (err, n) => {
    if (err) return log.written(err);
    if (offset + n < data.length) return writeAll(fd, data, offset + n, log);
    log.written(null);
  });
}

function ignore(): void {}
