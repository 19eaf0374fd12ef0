// WebSocket frames built by hand (RFC 6455 §5.2), for clients that speak RFC 8441 over HTTP/2.
import { randomBytes } from 'node:crypto';

/** A masked client frame (opcode 1 text, 2 binary, 8 close, 9 ping). */
export function clientFrame(payload, opcode = 1, fin = true) {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const mask = randomBytes(4);
  let header;
  if (data.length < 126) {
    header = Buffer.alloc(2);
    header[1] = 0x80 | data.length;
  } else if (data.length < 65536) {
    header = Buffer.alloc(4);
    header[1] = 0x80 | 126;
    header.writeUInt16BE(data.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(data.length), 2);
  }
  header[0] = (fin ? 0x80 : 0) | opcode;
  const masked = Buffer.alloc(data.length);
  for (let i = 0; i < data.length; i++) masked[i] = data[i] ^ mask[i & 3];
  return Buffer.concat([header, mask, masked]);
}

/** Parses unmasked server frames from a buffer; returns { frames, rest }. */
export function parseServerFrames(buf) {
  const frames = [];
  let at = 0;
  while (buf.length - at >= 2) {
    const b0 = buf[at];
    let len = buf[at + 1] & 0x7f;
    let off = at + 2;
    if (len === 126) {
      if (buf.length - at < 4) break;
      len = buf.readUInt16BE(at + 2);
      off = at + 4;
    } else if (len === 127) {
      if (buf.length - at < 10) break;
      len = Number(buf.readBigUInt64BE(at + 2));
      off = at + 10;
    }
    if (buf.length < off + len) break;
    frames.push({ fin: (b0 & 0x80) !== 0, opcode: b0 & 0x0f, payload: buf.subarray(off, off + len) });
    at = off + len;
  }
  return { frames, rest: buf.subarray(at) };
}

/** Collects server frames from a readable until `count` frames arrived. */
export function readFrames(readable, count, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const got = [];
    const timer = setTimeout(() => {
      readable.removeListener('data', onData);
      reject(new Error(`timed out with ${got.length}/${count} frames`));
    }, timeoutMs);
    function onData(chunk) {
      buf = Buffer.concat([buf, chunk]);
      const { frames, rest } = parseServerFrames(buf);
      buf = rest;
      got.push(...frames);
      if (got.length >= count) {
        clearTimeout(timer);
        readable.removeListener('data', onData);
        resolve(got);
      }
    }
    readable.on('data', onData);
  });
}
