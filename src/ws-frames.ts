import { crypto } from './builtins.js';

// RFC 6455 §5.2 frame boundaries, counted over the bytes a WebSocket tunnel forwards: the
// header (2-14 bytes) is read a byte at a time, the payload is skipped by its length. Nothing is
// copied, unmasked or inflated. Used to put a close frame between two frames when the proxy stops.

const S_FIRST = 0; // at a frame boundary: FIN, RSV, opcode next
const S_LENGTH = 1; // mask bit and 7-bit length next
const S_EXTENDED = 2; // 16- or 64-bit length bytes next
const S_MASK = 3; // masking key bytes next
const S_PAYLOAD = 4; // payload bytes next
const S_INVALID = 5; // not WebSocket framing: no longer followed

/** Forwarding as usual. */
export const FRAMES_FORWARD = 0;
/** Stopping: the close frame goes out at the next frame boundary. */
export const FRAMES_WAIT_BOUNDARY = 1;
/** The close frame went out: nothing more is forwarded in this direction. */
export const FRAMES_CLOSED = 2;

/** 1001 Going Away and its reason, as a close frame's payload. */
const CLOSE_PAYLOAD = Buffer.from([0x03, 0xe9, ...Buffer.from('proxy shutting down', 'latin1')]);

/** The frame boundaries of one direction of a WebSocket. */
export class WsFrames {
  /** Client-to-server frames carry a masking key; server-to-client frames do not. */
  private readonly masked: boolean;
  private state = S_FIRST;
  /** Payload bytes left in S_PAYLOAD; the length read so far in S_EXTENDED. */
  private left = 0;
  /** Length or masking-key bytes left in S_EXTENDED / S_MASK. */
  private count = 0;
  private control = false;
  /** A data frame without FIN was seen: continuation frames are expected. */
  private fragmented = false;
  /** A close frame was seen in this direction (since the proxy's own went out, once it has). */
  closeSeen = false;
  /** FRAMES_FORWARD, FRAMES_WAIT_BOUNDARY or FRAMES_CLOSED. */
  mode = FRAMES_FORWARD;

  constructor(masked: boolean) {
    this.masked = masked;
  }

  get invalid(): boolean {
    return this.state === S_INVALID;
  }

  get atBoundary(): boolean {
    return this.state === S_FIRST;
  }

  /**
   * Follows `buf` from `at`; returns where it stopped: `buf.length`, or with `stopAtBoundary` the
   * first frame boundary reached (a boundary at `at` itself does not count).
   */
  scan(buf: Buffer, at: number, stopAtBoundary: boolean): number {
    const end = buf.length;
    let state = this.state;
    let left = this.left;
    while (at < end) {
      if (state === S_PAYLOAD) {
        const available = end - at;
        if (left > available) {
          left -= available;
          at = end;
          break;
        }
        at += left;
        left = 0;
        state = S_FIRST;
        if (stopAtBoundary) break;
        continue;
      }
      if (state === S_INVALID) {
        at = end;
        break;
      }
      const byte = buf[at++]!;
      if (state === S_FIRST) {
        const opcode = byte & 0x0f;
        const fin = (byte & 0x80) !== 0;
        if (opcode >= 8) {
          // Close, ping, pong; control frames are never fragmented (RFC 6455 §5.5).
          if (opcode > 10 || !fin) {
            state = S_INVALID;
            continue;
          }
          if (opcode === 8) this.closeSeen = true;
          this.control = true;
        } else {
          if (opcode > 2 || (opcode === 0) !== this.fragmented) {
            state = S_INVALID;
            continue;
          }
          this.fragmented = !fin;
          this.control = false;
        }
        state = S_LENGTH;
      } else if (state === S_LENGTH) {
        const length = byte & 0x7f;
        if (((byte & 0x80) !== 0) !== this.masked || (this.control && length > 125)) {
          state = S_INVALID;
          continue;
        }
        if (length >= 126) {
          this.count = length === 126 ? 2 : 8;
          left = 0;
          state = S_EXTENDED;
        } else {
          left = length;
          state = this.masked ? S_MASK : S_PAYLOAD;
          this.count = 4;
        }
      } else if (state === S_EXTENDED) {
        // A 64-bit length has its top bit clear (RFC 6455 §5.2); beyond 2^53 it is not a real length either.
        if ((this.count === 8 && byte !== 0) || (this.count === 7 && byte > 0x1f)) {
          state = S_INVALID;
          continue;
        }
        left = left * 256 + byte;
        if (--this.count === 0) {
          state = this.masked ? S_MASK : S_PAYLOAD;
          this.count = 4;
        }
      } else if (--this.count === 0) {
        state = S_PAYLOAD;
      }
      if (state === S_PAYLOAD && left === 0) {
        state = S_FIRST;
        if (stopAtBoundary) break;
      }
    }
    this.state = state;
    this.left = left;
    return at;
  }
}

/**
 * A close frame with code 1001 and a short reason: masked with a random key toward the
 * upstream (client-to-server), unmasked toward the client.
 */
export function goingAwayFrame(masked: boolean): Buffer {
  const length = CLOSE_PAYLOAD.length;
  if (!masked) return Buffer.concat([Buffer.from([0x88, length]), CLOSE_PAYLOAD]);
  const frame = Buffer.allocUnsafe(6 + length);
  frame[0] = 0x88;
  frame[1] = 0x80 | length;
  crypto().randomFillSync(frame, 2, 4);
  for (let i = 0; i < length; i++) frame[6 + i] = CLOSE_PAYLOAD[i]! ^ frame[2 + (i & 3)]!;
  return frame;
}
