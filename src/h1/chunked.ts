/**
 * The framing of a chunked request body, checked and taken apart in one pass per client read.
 *
 * llhttp reads the head only: it stops right after a chunked request's head, and this scan is
 * the body's one parser (llhttp's per-chunk work, even with no JavaScript callback, costs ~35 ns
 * a chunk: a body of 1-byte chunks cost ~40x its size in one chunk). The scan is at least as
 * strict as llhttp (strict mode): hex sizes, extensions as tokens or quoted strings, CRLF line
 * ends only, trailer fields as `token ":" value` without obs-fold or control bytes. What it takes
 * out is the data, which goes upstream in the proxy's own framing (the client's size lines and
 * extensions never do), and the trailer fields, filtered like any others. After the message's
 * last CRLF a fresh llhttp state takes what follows.
 */

/** The message has not ended within the bytes scanned. */
export const SCAN_MORE = -1;
/** A byte the chunked framing does not allow where the scan stands. */
export const SCAN_BAD = -2;
/** The trailer section is past the size or field-count limit of a head. */
export const SCAN_TOO_LARGE = -3;

const S_SIZE = 0; // hex digits of a chunk-size line
const S_SIZE_LF = 1; // the LF of a size line
const S_EXT_NAME = 2; // a chunk extension's name (after `;`)
const S_EXT_VALUE = 3; // its token value (after `=`)
const S_EXT_QUOTED = 4; // its quoted-string value
const S_EXT_ESCAPE = 5; // the byte after a backslash in it
const S_EXT_QUOTED_END = 6; // after the closing quote: `;` or CR
const S_DATA = 7;
const S_DATA_CR = 8; // the CRLF after a chunk's data
const S_DATA_LF = 9;
const S_TRAILER = 10; // the start of a trailer line, or of the final CRLF
const S_TRAILER_NAME = 11;
const S_TRAILER_VALUE = 12;
const S_TRAILER_LF = 13;
const S_END_LF = 14;

/** A chunk size past this many bytes is refused (llhttp's limit is 2^64; no body gets near). */
const MAX_CHUNK_SIZE = 2 ** 48;

/**
 * The bytes of one chunk's extensions (after its size) past which it is refused, as Node's llhttp
 * binding refuses them (HPE_CHUNK_EXTENSIONS_OVERFLOW, 16 KiB of names and values a chunk): they
 * are never forwarded, so without a bound a client could stream them forever as no body at all.
 */
const MAX_EXTENSION_BYTES = 16 * 1024;

/** Data ranges up to this size are copied byte by byte (cheaper than a native copy call). */
const COPY_LOOP_MAX = 32;

/**
 * In place (a read buffer the scan may rewrite), a data range at least this long starts a piece of
 * its own where it lies; a shorter one is moved down next to the piece before it (moving it costs
 * less than the upstream write a piece of its own would add).
 */
export const PIECE_MIN = 16 * 1024;

/** RFC 9110 tchar. */
const TCHAR = new Uint8Array(256);
for (let c = 0x21; c < 0x7f; c++) TCHAR[c] = 1;
for (const c of '"(),/:;<=>?@[\\]{}') TCHAR[c.charCodeAt(0)] = 0;
/** qdtext: HTAB, SP, VCHAR but `"` and backslash, obs-text. */
const QDTEXT = new Uint8Array(256);
QDTEXT[9] = 1;
for (let c = 0x20; c < 0x100; c++) QDTEXT[c] = c === 0x22 || c === 0x5c || c === 0x7f ? 0 : 1;
/** A field value's bytes: HTAB, SP, VCHAR, obs-text. */
const VALUE = new Uint8Array(256);
VALUE[9] = 1;
for (let c = 0x20; c < 0x100; c++) VALUE[c] = c === 0x7f ? 0 : 1;

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  const l = c | 0x20;
  if (l >= 97 && l <= 102) return l - 87;
  return -1;
}

const CLOSE_TOKEN = /(?:^|,)[ \t]*close[ \t]*(?:,|$)/i;

function trimOws(value: string): string {
  let from = 0;
  let to = value.length;
  while (from < to && (value.charCodeAt(from) === 32 || value.charCodeAt(from) === 9)) from++;
  while (to > from && (value.charCodeAt(to - 1) === 32 || value.charCodeAt(to - 1) === 9)) to--;
  return from === 0 && to === value.length ? value : value.slice(from, to);
}

export class ChunkedScan {
  private state = S_SIZE;
  private digits = 0;
  /** Data bytes left in the current chunk (its size while the size line is read). */
  private left = 0;
  /** Bytes of the extension name or value being read, and of the chunk's extensions so far. */
  private extLen = 0;
  private extBytes = 0;
  /** The data of the bytes scanned since the last take(): one view, or bytes copied into `out`. */
  private view: Buffer | null = null;
  private out: Buffer | null = null;
  private outLen = 0;
  /**
   * Scanning in place (scan's `inPlace`): `out` is the scanned buffer itself, the open piece is
   * `out[pieceStart, outLen)`, and the pieces closed before it are in `pieces`.
   */
  private inPlace = false;
  private pieceStart = 0;
  private pieces: Buffer[] | null = null;
  /** Trailer fields as [name, value, ...] (llhttp's raw form), the field being read, the section's size. */
  private trailers: string[] | null = null;
  private fieldName = '';
  private fieldValue = '';
  private trailerBytes = 0;
  /** A trailer field asked to close the connection (`Connection: close`). */
  closeAsked = false;
  private maxTrailerBytes: number;
  private maxTrailerFields: number;

  /** `maxTrailerBytes` and `maxTrailerFields` bound the trailer section as a head is bounded. */
  constructor(maxTrailerBytes = 16 * 1024, maxTrailerFields = 100) {
    this.maxTrailerBytes = maxTrailerBytes;
    this.maxTrailerFields = maxTrailerFields;
  }

  reset(): void {
    this.state = S_SIZE;
    this.digits = 0;
    this.left = 0;
    this.extLen = 0;
    this.extBytes = 0;
    this.view = null;
    this.out = null;
    this.outLen = 0;
    this.pieceStart = 0;
    this.pieces = null;
    this.trailers = null;
    this.fieldName = '';
    this.fieldValue = '';
    this.trailerBytes = 0;
    this.closeAsked = false;
  }

  /** The trailer fields of the message that ended (null when it had none); taken once. */
  takeTrailers(): string[] | null {
    const trailers = this.trailers;
    this.trailers = null;
    return trailers;
  }

  /**
   * Scans `buf[0, end)`, continuing from where the last scan stopped. Returns the offset just
   * past the message's end (the CRLF after the last chunk or its trailers), SCAN_MORE, SCAN_BAD
   * or SCAN_TOO_LARGE. One tight loop per part of a chunk (a 1-byte chunk is 6 bytes: this runs
   * for every one).
   *
   * `inPlace`: `buf` is the caller's to rewrite, and the data is taken with takeInPlace(), as
   * views of `buf` (nothing is allocated or copied out): each range of PIECE_MIN or more is a
   * piece where it lies, and shorter ones are moved down to follow the piece before them, over
   * framing bytes already scanned (nothing past the returned offset is written).
   */
  scan(buf: Buffer, end: number, inPlace = false): number {
    this.inPlace = inPlace;
    // (A piece of another buffer not taken yet stays a piece of its own.)
    if (inPlace && this.out !== null && this.out !== buf) this.closePiece();
    let state = this.state;
    let left = this.left;
    let i = 0;
    while (i < end) {
      if (state === S_SIZE) {
        let digits = this.digits;
        if (digits === 0 && i + 6 <= end) {
          i = this.smallChunks(buf, i, end);
          if (i === end) break;
        }
        let c = 0;
        while (i < end) {
          c = buf[i]!;
          const v = hexValue(c);
          if (v < 0) break;
          if (left >= MAX_CHUNK_SIZE) return this.bad();
          left = left * 16 + v;
          digits++;
          i++;
        }
        this.digits = digits;
        if (i === end) break;
        if (digits === 0) return this.bad();
        i++;
        if (c === 13) state = S_SIZE_LF;
        else if (c === 59 /* ; */) {
          state = S_EXT_NAME;
          this.extLen = 0;
          this.extBytes = 0;
        } else return this.bad();
        if (i === end) break;
      }
      if (state === S_SIZE_LF) {
        if (buf[i] !== 10) return this.bad();
        i++;
        state = left === 0 ? S_TRAILER : S_DATA;
        if (i === end) break;
      } else if (state < S_DATA) {
        // A chunk extension (rare: walked byte by byte).
        const c = buf[i]!;
        i++;
        // (The line's CR is counted too: the bound is one byte looser, names and values alone.)
        if (++this.extBytes > MAX_EXTENSION_BYTES + 1) return this.bad();
        if (state === S_EXT_NAME || state === S_EXT_VALUE) {
          if (TCHAR[c] === 1) this.extLen++;
          else if (c === 34 /* " */ && state === S_EXT_VALUE && this.extLen === 0) state = S_EXT_QUOTED;
          else if (state === S_EXT_NAME && this.extLen === 0) return this.bad();
          else if (c === 61 /* = */ && state === S_EXT_NAME) {
            state = S_EXT_VALUE;
            this.extLen = 0;
          } else if (c === 59) {
            state = S_EXT_NAME;
            this.extLen = 0;
          } else if (c === 13) state = S_SIZE_LF;
          else return this.bad();
        } else if (state === S_EXT_QUOTED) {
          if (c === 34) state = S_EXT_QUOTED_END;
          else if (c === 92 /* \\ */) state = S_EXT_ESCAPE;
          else if (QDTEXT[c] !== 1) return this.bad();
        } else if (state === S_EXT_ESCAPE) {
          if (VALUE[c] !== 1) return this.bad();
          state = S_EXT_QUOTED;
        } else if (c === 59) {
          state = S_EXT_NAME;
          this.extLen = 0;
        } else if (c === 13) state = S_SIZE_LF;
        else return this.bad();
        continue;
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
      // The trailer section: field lines up to an empty one.
      const at = this.trailer(buf, i, end, state);
      if (at < 0) return at === SCAN_MORE ? SCAN_MORE : at === SCAN_TOO_LARGE ? this.tooLarge() : this.bad();
      return at;
    }
    this.state = state;
    this.left = left;
    return SCAN_MORE;
  }

  /**
   * Whole chunks of a one-digit size without extensions (`5\r\nhello\r\n`) from `buf[i]` on,
   * the 1-byte chunk among them: checked and copied without a state change (a small function
   * the JIT keeps tight). Returns where the first other byte sequence starts, for the states.
   */
  private smallChunks(buf: Buffer, i: number, end: number): number {
    let out = this.out;
    let len = this.outLen;
    while (i + 6 <= end) {
      const c = buf[i]!;
      const v = c === 49 ? 1 : hexValue(c);
      if (v <= 0 || buf[i + 1] !== 13 || buf[i + 2] !== 10) break;
      const from = i + 3;
      const to = from + v;
      if (to + 2 > end || buf[to] !== 13 || buf[to + 1] !== 10) break;
      if (out === null) {
        out = this.startOut(buf, from);
        len = this.outLen;
      }
      if (len + v > out.length) break;
      if (v === 1) out[len++] = buf[from]!;
      else for (let k = from; k < to; k++) out[len++] = buf[k]!;
      i = to + 2;
    }
    this.outLen = len;
    return i;
  }

  /** The trailer section from `buf[i]` on, in `state`: the offset past its end, or a SCAN_ code. */
  private trailer(buf: Buffer, i: number, end: number, state: number): number {
    const from = i;
    let result = SCAN_MORE;
    while (i < end) {
      const c = buf[i]!;
      if (state === S_TRAILER) {
        if (c === 13) state = S_END_LF;
        else if (TCHAR[c] === 1) {
          state = S_TRAILER_NAME;
          continue;
        } else return SCAN_BAD;
      } else if (state === S_TRAILER_NAME) {
        const start = i;
        while (i < end && TCHAR[buf[i]!] === 1) i++;
        if (i > start) this.fieldName += buf.toString('latin1', start, i);
        if (i === end) break;
        if (buf[i] !== 58 /* : */) return SCAN_BAD;
        state = S_TRAILER_VALUE;
      } else if (state === S_TRAILER_VALUE) {
        const start = i;
        while (i < end && VALUE[buf[i]!] === 1) i++;
        if (i > start) this.fieldValue += buf.toString('latin1', start, i);
        if (i === end) break;
        if (buf[i] !== 13) return SCAN_BAD;
        state = S_TRAILER_LF;
      } else if (state === S_TRAILER_LF) {
        if (c !== 10) return SCAN_BAD;
        const trailers = (this.trailers ??= []);
        const name = this.fieldName;
        const value = trimOws(this.fieldValue);
        const lower = name.length >= 10 && name.length <= 17 ? name.toLowerCase() : '';
        // As llhttp: framing fields are refused in trailers, and `Connection: close` there ends
        // the connection's requests.
        if (lower === 'content-length' || lower === 'transfer-encoding') return SCAN_BAD;
        if ((lower === 'connection' || lower === 'proxy-connection') && CLOSE_TOKEN.test(value)) this.closeAsked = true;
        trailers.push(name, value);
        this.fieldName = '';
        this.fieldValue = '';
        if (trailers.length / 2 > this.maxTrailerFields) return SCAN_TOO_LARGE;
        state = S_TRAILER;
      } else {
        if (c !== 10) return SCAN_BAD;
        i++;
        result = i;
        break;
      }
      i++;
    }
    this.trailerBytes += i - from;
    if (this.trailerBytes > this.maxTrailerBytes) return SCAN_TOO_LARGE;
    if (result >= 0) {
      this.state = S_SIZE;
      this.digits = 0;
      this.left = 0;
      this.extLen = 0;
      this.trailerBytes = 0;
      return result;
    }
    this.state = state;
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

  /**
   * The data of the buffer scanned in place (see scan): views of it, in order (null when none).
   * A caller that lends them keeps the buffer from being read into until every one is released.
   */
  takeInPlace(): Buffer[] | null {
    this.closePiece();
    const pieces = this.pieces;
    this.pieces = null;
    return pieces;
  }

  /** The open piece (`out[pieceStart, outLen)`) goes to `pieces`; none is open after. */
  private closePiece(): void {
    const out = this.out;
    if (out !== null && this.outLen > this.pieceStart) (this.pieces ??= []).push(out.subarray(this.pieceStart, this.outLen));
    this.out = null;
    this.outLen = 0;
    this.pieceStart = 0;
  }

  /** The copy buffer for the data of this read from `from` on (with the view taken so far). */
  private startOut(buf: Buffer, from: number): Buffer {
    if (this.inPlace) {
      // In place: the buffer itself, a piece opening at `from` (the caller copies onto it from `from` on).
      this.out = buf;
      this.pieceStart = this.outLen = from;
      return buf;
    }
    const view = this.view;
    this.pieceStart = 0;
    const out = (this.out = Buffer.allocUnsafe((view === null ? 0 : view.length) + (buf.length - from)));
    this.outLen = view === null ? 0 : view.copy(out, 0);
    this.view = null;
    return out;
  }

  private bad(): number {
    this.reset();
    return SCAN_BAD;
  }

  private tooLarge(): number {
    this.reset();
    return SCAN_TOO_LARGE;
  }

  /**
   * Adds `buf[from, to)` to the data of this read: the first range as a view (a read holding one
   * large chunk is not copied), any more copied into one buffer sized for the rest of the read.
   */
  private data(buf: Buffer, from: number, to: number): void {
    if (from === to) return;
    if (this.inPlace) {
      this.dataInPlace(buf, from, to);
      return;
    }
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

  /** data() in place: `buf[from, to)` opens a piece where it lies, or moves down onto the open one. */
  private dataInPlace(buf: Buffer, from: number, to: number): void {
    const out = this.out;
    if (out === null || to - from >= PIECE_MIN) {
      this.closePiece();
      this.out = buf;
      this.pieceStart = from;
      this.outLen = to;
      return;
    }
    const len = this.outLen;
    if (len !== from) buf.copyWithin(len, from, to);
    this.outLen = len + (to - from);
  }
}
