// A raw HTTP/2 client for hostile-input tests: it writes whatever frames a test builds (header
// blocks encoded with hpack.js, so names may be upper-case, pseudo-headers in any order or
// missing, connection-specific headers present...) and parses every frame the server sends.
//
//   const c = await H2RawClient.connect(port);            // preface + SETTINGS, ACKs the server's
//   c.send(headersFrame(1, [[':method', 'GET'], ...], { endStream: true }));
//   const out = await c.streamOutcome(1);                  // { status, headers, body, rstCode }
//   const ga = await c.waitForGoaway();                    // { lastStreamId, errorCode } or null
//
// Frame builders return Buffers, so a test can concatenate thousands of them into one write.
import net from 'node:net';
import { createRequire } from 'node:module';

const hpack = createRequire(import.meta.url)('hpack.js');

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export const FRAME = { DATA: 0, HEADERS: 1, PRIORITY: 2, RST_STREAM: 3, SETTINGS: 4, PUSH_PROMISE: 5, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8, CONTINUATION: 9 };
export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 };
export const ERROR = {
  NO_ERROR: 0,
  PROTOCOL_ERROR: 1,
  INTERNAL_ERROR: 2,
  FLOW_CONTROL_ERROR: 3,
  SETTINGS_TIMEOUT: 4,
  STREAM_CLOSED: 5,
  FRAME_SIZE_ERROR: 6,
  REFUSED_STREAM: 7,
  CANCEL: 8,
  COMPRESSION_ERROR: 9,
  CONNECT_ERROR: 10,
  ENHANCE_YOUR_CALM: 11,
  INADEQUATE_SECURITY: 12,
  HTTP_1_1_REQUIRED: 13,
};
export const SETTING = { HEADER_TABLE_SIZE: 1, ENABLE_PUSH: 2, MAX_CONCURRENT_STREAMS: 3, INITIAL_WINDOW_SIZE: 4, MAX_FRAME_SIZE: 5, MAX_HEADER_LIST_SIZE: 6, ENABLE_CONNECT_PROTOCOL: 8 };

/** Name of an error code, for assertion messages. */
export function errorName(code) {
  return Object.keys(ERROR).find((k) => ERROR[k] === code) ?? `0x${code?.toString(16)}`;
}

// ---- frame builders ------------------------------------------------------------------------

/** One frame: 9-byte header + payload. */
export function frame(type, flags, streamId, payload = Buffer.alloc(0)) {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([head, payload]);
}

/**
 * A header block fragment for `[[name, value], ...]`, written exactly as given (no lower-casing,
 * no reordering). Literal-without-indexing encoding, so blocks never touch the dynamic table
 * and may be built, sent, split or dropped independently.
 */
export function encodeHeaders(list) {
  const comp = hpack.compressor.create({ table: { size: 4096 } });
  comp.write(list.map(([name, value]) => ({ name, value: String(value), incremental: false, huffman: false })));
  return comp.read() ?? Buffer.alloc(0);
}

/** HEADERS; `endHeaders: false` leaves the block open for CONTINUATION frames. */
export function headersFrame(streamId, headers, { endStream = false, endHeaders = true } = {}) {
  const block = Buffer.isBuffer(headers) ? headers : encodeHeaders(headers);
  return frame(FRAME.HEADERS, (endStream ? FLAG.END_STREAM : 0) | (endHeaders ? FLAG.END_HEADERS : 0), streamId, block);
}

export function continuationFrame(streamId, fragment, { endHeaders = false } = {}) {
  return frame(FRAME.CONTINUATION, endHeaders ? FLAG.END_HEADERS : 0, streamId, Buffer.isBuffer(fragment) ? fragment : encodeHeaders(fragment));
}

export function dataFrame(streamId, data, { endStream = false } = {}) {
  return frame(FRAME.DATA, endStream ? FLAG.END_STREAM : 0, streamId, Buffer.isBuffer(data) ? data : Buffer.from(data));
}

export function rstStreamFrame(streamId, code = ERROR.CANCEL) {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(code);
  return frame(FRAME.RST_STREAM, 0, streamId, p);
}

/** SETTINGS from `{ [SETTING.X]: value }` or `[[id, value], ...]`; `ack` sends an empty ACK. */
export function settingsFrame(settings = {}, { ack = false } = {}) {
  if (ack) return frame(FRAME.SETTINGS, FLAG.ACK, 0);
  const entries = Array.isArray(settings) ? settings : Object.entries(settings).map(([k, v]) => [Number(k), v]);
  const p = Buffer.alloc(entries.length * 6);
  entries.forEach(([id, value], i) => {
    p.writeUInt16BE(id, i * 6);
    p.writeUInt32BE(value, i * 6 + 2);
  });
  return frame(FRAME.SETTINGS, 0, 0, p);
}

export function pingFrame(data = Buffer.alloc(8), { ack = false } = {}) {
  return frame(FRAME.PING, ack ? FLAG.ACK : 0, 0, data);
}

export function windowUpdateFrame(streamId, increment) {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(increment & 0x7fffffff);
  return frame(FRAME.WINDOW_UPDATE, 0, streamId, p);
}

export function goawayFrame(lastStreamId, code = ERROR.NO_ERROR, debug = '') {
  const p = Buffer.alloc(8);
  p.writeUInt32BE(lastStreamId & 0x7fffffff);
  p.writeUInt32BE(code, 4);
  return frame(FRAME.GOAWAY, 0, 0, Buffer.concat([p, Buffer.from(debug)]));
}

/**
 * The server side of a raw h2c connection on `socket`: skips the client's preface, sends empty
 * SETTINGS and ACKs the client's, and hands every frame after the preface to
 * `onFrame({ type, flags, streamId, payload })`.
 */
export function serveH2cFrames(socket, onFrame) {
  let buf = Buffer.alloc(0);
  let prefaceSeen = false;
  socket.on('data', (c) => {
    buf = Buffer.concat([buf, c]);
    if (!prefaceSeen) {
      if (buf.length < 24) return;
      buf = buf.subarray(24);
      prefaceSeen = true;
      socket.write(settingsFrame());
    }
    while (buf.length >= 9) {
      const length = buf.readUIntBE(0, 3);
      if (buf.length < 9 + length) return;
      const type = buf[3];
      const flags = buf[4];
      const streamId = buf.readUInt32BE(5) & 0x7fffffff;
      const payload = buf.subarray(9, 9 + length);
      buf = buf.subarray(9 + length);
      if (type === FRAME.SETTINGS && (flags & FLAG.ACK) === 0) socket.write(settingsFrame({}, { ack: true }));
      onFrame({ type, flags, streamId, payload });
    }
  });
}

/** A well-formed request header list routed with X-Cmux-Port-Internal; `extra` pairs are appended. */
export function requestHeaders(port, { method = 'GET', path = '/', authority = 'localhost', extra = [] } = {}) {
  return [[':method', method], [':scheme', 'http'], [':authority', authority], [':path', path], ['x-cmux-port-internal', String(port)], ...extra];
}

// ---- client + frame reader -----------------------------------------------------------------

/**
 * One connection. `frames` holds every parsed server frame in order:
 * `{ type, flags, streamId, payload, headers? (HEADERS, decoded with CONTINUATIONs), errorCode?
 * (RST_STREAM, GOAWAY), lastStreamId? (GOAWAY) }`. DATA payloads are dropped when `keepData`
 * is false (only their length is kept). Server SETTINGS and PINGs are ACKed unless disabled.
 */
export class H2RawClient {
  constructor(socket, { autoAck = true, keepData = true } = {}) {
    this.socket = socket;
    this.autoAck = autoAck;
    this.keepData = keepData;
    this.frames = [];
    this.bytesReceived = 0;
    this.closed = false;
    this.error = null;
    this.buffered = Buffer.alloc(0);
    this.decomp = hpack.decompressor.create({ table: { size: 4096 } });
    this.pendingBlock = null; // { streamId, flags, chunks } while CONTINUATIONs are due
    this.waiters = new Set();
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('error', (err) => (this.error = err));
    socket.on('close', () => {
      this.closed = true;
      this.notify();
    });
  }

  /** Connects, sends the preface and `settings` (a SETTINGS payload object). */
  static async connect(port, { host = '127.0.0.1', settings = {}, ...options } = {}) {
    const socket = net.connect({ port, host, noDelay: true });
    await new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const client = new H2RawClient(socket, options);
    client.send(PREFACE, settingsFrame(settings));
    return client;
  }

  /** Writes frames (Buffers); false when the socket is gone. */
  send(...buffers) {
    if (this.closed || this.socket.destroyed) return false;
    this.socket.write(buffers.length === 1 ? buffers[0] : Buffer.concat(buffers));
    return true;
  }

  /** Resolves once the socket has flushed what was written (or closed). */
  flushed() {
    return new Promise((resolve) => {
      if (this.closed || this.socket.writableLength === 0) return resolve();
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  close() {
    this.socket.destroy();
  }

  onData(chunk) {
    this.bytesReceived += chunk.length;
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    let at = 0;
    while (this.buffered.length - at >= 9) {
      const length = this.buffered.readUIntBE(at, 3);
      if (this.buffered.length - at < 9 + length) break;
      const f = {
        type: this.buffered[at + 3],
        flags: this.buffered[at + 4],
        streamId: this.buffered.readUInt32BE(at + 5) & 0x7fffffff,
        length,
        payload: this.buffered.subarray(at + 9, at + 9 + length),
      };
      at += 9 + length;
      this.onFrame(f);
    }
    this.buffered = at === this.buffered.length ? Buffer.alloc(0) : Buffer.from(this.buffered.subarray(at));
    this.notify();
  }

  onFrame(f) {
    switch (f.type) {
      case FRAME.DATA:
        if (!this.keepData) f.payload = null;
        else f.payload = Buffer.from(f.payload);
        break;
      case FRAME.HEADERS: {
        let p = f.payload;
        let pad = 0;
        if (f.flags & FLAG.PADDED) {
          pad = p[0];
          p = p.subarray(1);
        }
        if (f.flags & FLAG.PRIORITY) p = p.subarray(5);
        p = p.subarray(0, p.length - pad);
        if (f.flags & FLAG.END_HEADERS) f.headers = this.decode(p);
        else this.pendingBlock = { frame: f, chunks: [Buffer.from(p)] };
        break;
      }
      case FRAME.CONTINUATION:
        if (this.pendingBlock !== null) {
          this.pendingBlock.chunks.push(Buffer.from(f.payload));
          if (f.flags & FLAG.END_HEADERS) {
            this.pendingBlock.frame.headers = this.decode(Buffer.concat(this.pendingBlock.chunks));
            this.pendingBlock = null;
          }
        }
        break;
      case FRAME.RST_STREAM:
        f.errorCode = f.payload.readUInt32BE(0);
        break;
      case FRAME.GOAWAY:
        f.lastStreamId = f.payload.readUInt32BE(0) & 0x7fffffff;
        f.errorCode = f.payload.readUInt32BE(4);
        f.debug = f.payload.subarray(8).toString('latin1');
        break;
      case FRAME.SETTINGS:
        if (this.autoAck && !(f.flags & FLAG.ACK)) this.send(settingsFrame({}, { ack: true }));
        break;
      case FRAME.PING:
        if (this.autoAck && !(f.flags & FLAG.ACK)) this.send(pingFrame(Buffer.from(f.payload), { ack: true }));
        break;
    }
    if (f.type !== FRAME.DATA) f.payload = Buffer.from(f.payload);
    this.frames.push(f);
  }

  /** A decoded header block as `[[name, value], ...]`. */
  decode(block) {
    this.decomp.write(block);
    this.decomp.execute();
    const out = [];
    for (let h = this.decomp.read(); h !== null; h = this.decomp.read()) out.push([h.name, h.value]);
    return out;
  }

  notify() {
    for (const check of this.waiters) check();
  }

  /**
   * Resolves with the first frame (from index `from`) matching `predicate`, or null when the
   * connection closes or `timeoutMs` passes first.
   */
  waitForFrame(predicate, { timeoutMs = 3000, from = 0 } = {}) {
    return new Promise((resolve) => {
      let timer;
      const check = () => {
        const found = this.frames.slice(from).find(predicate);
        if (found !== undefined || this.closed) {
          clearTimeout(timer);
          this.waiters.delete(check);
          resolve(found ?? null);
        }
      };
      timer = setTimeout(() => {
        this.waiters.delete(check);
        resolve(null);
      }, timeoutMs);
      this.waiters.add(check);
      check();
    });
  }

  /** GOAWAY as `{ lastStreamId, errorCode, debug }`, or null if none came in time. */
  waitForGoaway(options) {
    return this.waitForFrame((f) => f.type === FRAME.GOAWAY, options);
  }

  /** Resolves true once the server closed the connection, false after `timeoutMs`. */
  waitForClose({ timeoutMs = 3000 } = {}) {
    return new Promise((resolve) => {
      if (this.closed) return resolve(true);
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.socket.once('close', () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /**
   * How a stream ended: `{ status, headers, body, rstCode, ended, goaway, closed }`. Waits for
   * END_STREAM, RST_STREAM, GOAWAY or close (then `ended` is false for whatever did not finish).
   */
  async streamOutcome(streamId, { timeoutMs = 3000 } = {}) {
    await this.waitForFrame(
      (f) =>
        (f.streamId === streamId && (f.type === FRAME.RST_STREAM || ((f.type === FRAME.DATA || f.type === FRAME.HEADERS) && f.flags & FLAG.END_STREAM))) ||
        f.type === FRAME.GOAWAY,
      { timeoutMs },
    );
    const mine = this.frames.filter((f) => f.streamId === streamId);
    const head = mine.find((f) => f.type === FRAME.HEADERS && f.headers);
    const rst = mine.find((f) => f.type === FRAME.RST_STREAM);
    const data = mine.filter((f) => f.type === FRAME.DATA);
    return {
      status: head ? Number(head.headers.find(([n]) => n === ':status')?.[1]) : undefined,
      headers: head?.headers,
      body: this.keepData ? Buffer.concat(data.map((f) => f.payload)).toString('utf8') : undefined,
      dataBytes: data.reduce((n, f) => n + f.length, 0),
      rstCode: rst?.errorCode,
      ended: mine.some((f) => f.flags & FLAG.END_STREAM && (f.type === FRAME.DATA || f.type === FRAME.HEADERS)),
      goaway: this.frames.find((f) => f.type === FRAME.GOAWAY) ?? null,
      closed: this.closed,
    };
  }
}
