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

/** The entry as one JSON line (same keys and order as JSON.stringify; about 3x faster). */
export function formatEntry(e: AccessLogEntry): string {
  return (
    `{"time":"${e.time}","kind":"${e.kind}","client":${str(e.client)},"protocol":"${e.protocol}","tls":${e.tls},` +
    `"method":${str(e.method)},"host":${str(e.host)},"path":${str(e.path)},"route":"${e.route}","target":${str(e.target)},` +
    `"status":${e.status},"bytesIn":${e.bytesIn},"bytesOut":${e.bytesOut},"durationMs":${e.durationMs},"reused":${e.reused},` +
    `"error":${str(e.error)},"requestId":${str(e.requestId)}}`
  );
}

/** Lines wait at most this long for the write that takes them together. */
const FLUSH_MS = 50;

/** Buffered bytes past which lines are dropped (a sink slower than the traffic). */
const MAX_PENDING_BYTES = 16 * 1024 * 1024;

/**
 * JSON lines, written in batches: the lines of FLUSH_MS leave in one write (stdout) or one
 * asynchronous fs.write (a file; lines that come meanwhile queue behind the write in flight).
 * A function sink gets each entry object as it ends.
 */
export class AccessLog {
  readonly fn: ((entry: AccessLogEntry) => void) | null;
  private readonly path: string | null;
  private fd: number | null = null;
  private pending: string[] = [];
  private pendingBytes = 0;
  private scheduled = false;
  private writing = false;
  /** The file descriptor a write is in flight to (null: none, or stdout). */
  private writingFd: number | null = null;
  private dropped = 0;
  private flushed: (() => void)[] = [];
  private readonly log: Logger;
  /** stdout failed (its reader went away: EPIPE): lines are dropped from then on. */
  private stdoutFailed = false;

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
    if (this.pendingBytes > MAX_PENDING_BYTES) {
      this.dropped++;
      return;
    }
    this.pending.push(line);
    this.pendingBytes += line.length + 1;
    if (!this.writing) this.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setTimeout(flushLater, FLUSH_MS, this).unref();
  }

  flush(): void {
    this.scheduled = false;
    if (this.writing || this.pending.length === 0) return;
    if (this.stdoutFailed) {
      this.pending = [];
      this.pendingBytes = 0;
      this.settled();
      return;
    }
    const data = `${this.pending.join('\n')}\n`;
    this.pending = [];
    this.pendingBytes = 0;
    if (this.dropped > 0) {
      this.log.warn(`access log: ${this.dropped} line(s) dropped, the sink is slower than the traffic`);
      this.dropped = 0;
    }
    const fd = this.fd;
    if (fd === null) {
      if (process.stdout.write(data)) {
        this.settled();
        return;
      }
      // A reader slower than the traffic: lines wait here until the stream drains (and are
      // dropped past MAX_PENDING_BYTES), not in the stream's own unbounded buffer.
      this.writing = true;
      process.stdout.once('drain', () => this.written(null));
      return;
    }
    this.writing = true;
    this.writingFd = fd;
    writeAll(fd, Buffer.from(data), 0, this);
  }

  /** The write in flight is done (or failed). */
  written(err: NodeJS.ErrnoException | null): void {
    this.writing = false;
    if (err) this.log.error(`access log write failed: ${err.message}`);
    const fd = this.writingFd;
    this.writingFd = null;
    // reopen() replaced it while the write was in flight: it is closed now that the write is done.
    if (fd !== null && fd !== this.fd) fs.close(fd, ignore);
    // Lines that came during the write wait for the timer too: one write per FLUSH_MS at most.
    if (this.pending.length > 0) this.schedule();
    else this.settled();
  }

  private settled(): void {
    if (this.writing || this.pending.length > 0) return;
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
      this.writing = false;
      this.flush();
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
