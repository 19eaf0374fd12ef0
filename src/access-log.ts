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
  /** The file descriptor a write is in flight to (null: none, or stdout). */
  private writingFd: number | null = null;
  /** stdout failed (its reader went away: EPIPE): lines are dropped from then on. */
  private stdoutFailed = false;
  private dropped = 0;
  private flushed: (() => void)[] = [];
  private readonly log: Logger;

  constructor(option: AccessLogOption, log: Logger) {
    this.log = log;
    this.fn = typeof option === 'function' ? option : null;
    this.path = typeof option === 'string' && option !== 'stdout' ? option : null;
    if (this.path !== null) this.fd = fs.openSync(this.path, 'a');
    else if (this.fn === null) watchStdout(this);
  }

  /**
   * The stdout stream failed (the reader closed its end of the pipe): logged once, and later
   * lines are dropped. Without a listener the error would end the process.
   */
  stdoutError(err: NodeJS.ErrnoException): void {
    if (this.stdoutFailed) return;
    this.stdoutFailed = true;
    this.len = 0;
    this.log.error(`access log: stdout failed (${err.code ?? err.message}): lines are dropped from now on`);
    if (this.writing) this.written(null);
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
    if (this.stdoutFailed) return;
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
    // stdout: the batch counts as in flight until the stream wrote it, so a reader slower than
    // the traffic makes lines wait here (dropped past MAX_PENDING_BYTES), not in the stream's own
    // unbounded buffer.
    if (fd === null) process.stdout.write(data, this.stdoutWritten);
    else {
      this.writingFd = fd;
      writeAll(fd, data, 0, this);
    }
  }

  /** The Buffer of the write in flight. */
  private inflight: Buffer | null = null;
  private readonly stdoutWritten = (err?: Error | null): void => this.written(err ?? null);

  /** The write in flight is done (or failed). */
  written(err: NodeJS.ErrnoException | null | undefined): void {
    // stdoutError() may have ended the write before the stream's callback came.
    if (!this.writing) return;
    this.writing = false;
    const done = this.inflight;
    this.inflight = null;
    if (done !== null && done.length <= KEEP_BYTES) {
      if (this.buf === null) this.buf = done;
      else this.spare = done;
    }
    const fd = this.writingFd;
    if (err) {
      if (this.path === null && !this.stdoutFailed) {
        // The stdout stream reports its reader gone here first, then as an 'error' event.
        this.writing = true;
        this.stdoutError(err);
        return;
      }
      if (!this.stdoutFailed) this.log.error(`access log write failed: ${err.message}`);
    }
    this.writingFd = null;
    // reopen() replaced it while the write was in flight: it is closed now that the write is done.
    if (fd !== null && fd !== this.fd) fs.close(fd, ignore);
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
    // The descriptor a write is in flight to is closed when that write is done (see written()).
    if (old !== null && old !== this.writingFd) fs.close(old, ignore);
  }

  /** Writes what is buffered; resolves once it is out. */
  drain(): Promise<void> {
    if (this.fn !== null) return Promise.resolve();
    if (this.path === null) {
      // stdout: what is buffered goes to the stream now, even past a stalled reader (the stream
      // writes it out before the process exits); stop() never waits on that reader.
      if (this.len > 0 && !this.stdoutFailed) process.stdout.write(Buffer.from(this.buf!.subarray(0, this.len)));
      this.len = 0;
      return Promise.resolve();
    }
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

/** Access logs writing to stdout; one 'error' listener on the stream serves them all. */
const stdoutLogs = new Set<AccessLog>();

function watchStdout(log: AccessLog): void {
  if (stdoutLogs.size === 0) process.stdout.on('error', stdoutOnError);
  stdoutLogs.add(log);
}

function stdoutOnError(err: NodeJS.ErrnoException): void {
  for (const log of stdoutLogs) log.stdoutError(err);
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
