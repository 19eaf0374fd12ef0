/**
 * The data bytes of a chunked request body, taken from bytes llhttp has already accepted.
 *
 * While such a body is read, the session takes `kOnBody` off the parser: llhttp still validates
 * every size line, extension, data CRLF and trailer in C++, but no longer calls into JavaScript
 * with a copied buffer per chunk (one call per 1-byte chunk is what made such bodies cost ~170x
 * their size in one chunk). This scan walks the same bytes once per read to find the data, which
 * goes upstream as one chunk of the proxy's own framing; the client's size lines and extensions
 * never do. It trusts nothing: a byte llhttp would not have accepted where the scan stands is
 * reported (SCAN_BAD), and the session checks that the scan and llhttp agree on where the message
 * ends.
 */

/** The message has not ended within the bytes scanned. */
export const SCAN_MORE = -1;
/** A byte the chunked framing does not allow where the scan stands. */
export const SCAN_BAD = -2;

const S_SIZE = 0; // hex digits of a chunk-size line
const S_SIZE_REST = 1; // extensions and line end of a size line, up to its LF
const S_DATA = 2;
const S_DATA_CR = 3; // the CRLF after a chunk's data
const S_DATA_LF = 4;
const S_TRAILER = 5; // the start of a trailer line, or of the final CRLF
const S_TRAILER_REST = 6; // a trailer line, up to its LF
const S_END_LF = 7;

/** Data ranges up to this size are copied byte by byte (cheaper than a native copy call). */
const COPY_LOOP_MAX = 32;

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  const l = c | 0x20;
  if (l >= 97 && l <= 102) return l - 87;
  return -1;
}

export class ChunkedScan {
  private state = S_SIZE;
  private digits = 0;
  /** Data bytes left in the current chunk (its size while the size line is read). */
  private left = 0;
  /** The data of the bytes scanned since the last take(): one view, or bytes copied into `out`. */
  private view: Buffer | null = null;
  private out: Buffer | null = null;
  private outLen = 0;

  reset(): void {
    this.state = S_SIZE;
    this.digits = 0;
    this.left = 0;
    this.view = null;
    this.out = null;
    this.outLen = 0;
  }

  /**
   * Scans `buf[0, end)`, continuing from where the last scan stopped. Returns the offset just
   * past the message's end (the CRLF after the last chunk or its trailers), SCAN_MORE or SCAN_BAD.
   * One tight loop per part of a chunk (a 1-byte chunk is 6 bytes: this runs for every one).
   */
  scan(buf: Buffer, end: number): number {
    let state = this.state;
    let left = this.left;
    let i = 0;
    while (i < end) {
      if (state === S_SIZE) {
        let digits = this.digits;
        if (digits === 0 && i + 6 <= end) {
          // Whole chunks of a one-digit size without extensions (`5\r\nhello\r\n`) within
          // the read, the 1-byte chunk among them: checked and copied without a state change.
          // Anything else leaves for the byte-by-byte states below.
          let out = this.out;
          let len = this.outLen;
          while (i + 6 <= end) {
            const v = hexValue(buf[i]!);
            if (v <= 0 || buf[i + 1] !== 13 || buf[i + 2] !== 10) break;
            const from = i + 3;
            const to = from + v;
            if (to + 2 > end || buf[to] !== 13 || buf[to + 1] !== 10) break;
            if (out === null) {
              out = this.startOut(buf, from);
              len = this.outLen;
            }
            if (len + v > out.length) break;
            for (let k = from; k < to; k++) out[len++] = buf[k]!;
            i = to + 2;
          }
          this.outLen = len;
          if (i === end) break;
        }
        let c = 0;
        while (i < end) {
          c = buf[i]!;
          const v = hexValue(c);
          if (v < 0) break;
          // llhttp refuses a size past 64 bits; past 2^52 bytes no body ever gets, so the
          // float's lost precision cannot matter.
          left = left * 16 + v;
          digits++;
          i++;
        }
        this.digits = digits;
        if (i === end) break;
        if (digits === 0 || (c !== 13 && c !== 59 /* ; */ && c !== 32 && c !== 9)) return this.bad();
        state = S_SIZE_REST;
      }
      if (state === S_SIZE_REST) {
        while (i < end && buf[i] !== 10) i++;
        if (i === end) break;
        i++;
        state = left === 0 ? S_TRAILER : S_DATA;
        if (i === end) break;
      }
      if (state === S_DATA) {
        let n = end - i;
        if (n > left) n = left;
        const out = this.out;
        if (out !== null && n <= COPY_LOOP_MAX && this.outLen + n <= out.length) {
          let len = this.outLen;
          for (let k = i; k < i + n; k++) out[len++] = buf[k]!;
          this.outLen = len;
        } else {
          this.data(buf, i, i + n);
        }
        left -= n;
        i += n;
        if (left !== 0) break;
        state = S_DATA_CR;
        if (i === end) break;
      }
      if (state === S_DATA_CR) {
        if (buf[i] !== 13) return this.bad();
        i++;
        state = S_DATA_LF;
        if (i === end) break;
      }
      if (state === S_DATA_LF) {
        if (buf[i] !== 10) return this.bad();
        i++;
        state = S_SIZE;
        this.digits = 0;
        continue;
      }
      // The trailer section: lines up to an empty one.
      while (i < end) {
        const c = buf[i]!;
        if (state === S_TRAILER) {
          if (c === 10) return this.bad();
          state = c === 13 ? S_END_LF : S_TRAILER_REST;
        } else if (state === S_TRAILER_REST) {
          if (c === 10) state = S_TRAILER;
        } else {
          if (c !== 10) return this.bad();
          this.state = S_SIZE;
          this.digits = 0;
          this.left = 0;
          return i + 1;
        }
        i++;
      }
    }
    this.state = state;
    this.left = left;
    return SCAN_MORE;
  }

  /** The data bytes scanned since the last call (null when none). */
  take(): Buffer | null {
    const view = this.view;
    if (view !== null) {
      this.view = null;
      return view;
    }
    const out = this.out;
    if (out === null) return null;
    const len = this.outLen;
    this.out = null;
    this.outLen = 0;
    return out.subarray(0, len);
  }

  /** The copy buffer for the data of this read from `from` on (with the view taken so far). */
  private startOut(buf: Buffer, from: number): Buffer {
    const view = this.view;
    const out = (this.out = Buffer.allocUnsafe((view === null ? 0 : view.length) + (buf.length - from)));
    this.outLen = view === null ? 0 : view.copy(out, 0);
    this.view = null;
    return out;
  }

  private bad(): number {
    this.reset();
    return SCAN_BAD;
  }

  /**
   * Adds `buf[from, to)` to the data of this read: the first range as a view (a read holding one
   * large chunk is not copied), any more copied into one buffer sized for the rest of the read.
   */
  private data(buf: Buffer, from: number, to: number): void {
    if (from === to) return;
    let out = this.out;
    if (out === null) {
      if (this.view === null) {
        this.view = buf.subarray(from, to);
        return;
      }
      out = this.startOut(buf, from);
    }
    let len = this.outLen;
    if (len + (to - from) > out.length) {
      // Only when a new read arrives before take(): never on the session's path, kept for safety.
      const bigger = Buffer.allocUnsafe((len + (to - from)) * 2);
      out.copy(bigger, 0, 0, len);
      out = this.out = bigger;
    }
    if (to - from <= COPY_LOOP_MAX) {
      for (let k = from; k < to; k++) out[len++] = buf[k]!;
    } else {
      len += buf.copy(out, len, from, to);
    }
    this.outLen = len;
  }
}
