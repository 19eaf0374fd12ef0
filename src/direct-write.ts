import type net from 'node:net';

/**
 * Writes to a TCP socket's handle directly, as Node's own stream code does underneath
 * `socket.write` (stream_base_commons: `handle.writeLatin1String(req, data)` with a WriteWrap),
 * without the Writable machinery around it (state, write callbacks, after-write ticks). Used for
 * what a request or response costs most often: a head, or a head and a small body in one
 * string, written while nothing else is queued on the socket.
 *
 * Most such writes complete at once (the kernel takes them whole): one request object serves
 * them all. One the kernel takes only in part goes on in libuv (which keeps later writes behind
 * it, whichever path they take) with a request object of its own; until it completes the caller
 * is told to wait (false) and the socket then emits 'drain', as after a `write` that returned
 * false. The socket's idle timer is refreshed as by `write`, and while such a write makes
 * progress the socket's timeout is held off as Node holds it off for its own writes.
 */

interface WriteReq {
  handle: StreamWriteHandle | null;
  oncomplete: (this: WriteReq, status: number) => void;
  async: boolean;
  bytes: number;
  buffer: null;
  callback: null;
  socket: net.Socket | null;
}

interface StreamWriteHandle {
  writeLatin1String(req: WriteReq, data: string): number;
  readonly writeQueueSize: number;
}

interface StreamWrapBinding {
  WriteWrap: new () => WriteReq;
  streamBaseState: Int32Array;
  kBytesWritten: number;
  kLastWriteWasAsync: number;
}

function loadBinding(): StreamWrapBinding | null {
  try {
    // `stream_wrap` is on process.binding's allow list without a deprecation warning (unlike
    // http_parser); a runtime that refuses it (permission model) keeps every write on `write`.
    const binding = (process as unknown as { binding(name: string): StreamWrapBinding }).binding('stream_wrap');
    if (typeof binding.WriteWrap !== 'function' || !(binding.streamBaseState instanceof Int32Array)) return null;
    if (typeof binding.kBytesWritten !== 'number' || typeof binding.kLastWriteWasAsync !== 'number') return null;
    return binding;
  } catch {
    return null;
  }
}

const binding = loadBinding();
const WriteWrap = binding?.WriteWrap;
const streamBaseState = binding?.streamBaseState;
const kBytesWritten = binding?.kBytesWritten ?? 0;
const kLastWriteWasAsync = binding?.kLastWriteWasAsync ?? 0;

/** net.Socket's `lastWriteQueueSize` (what its `_onTimeout` compares), found on the first socket. */
let kLastWriteQueueSize: symbol | null | undefined;

function lastWriteQueueSizeKey(socket: net.Socket): symbol | null {
  if (kLastWriteQueueSize === undefined) {
    kLastWriteQueueSize = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'lastWriteQueueSize') ?? null;
  }
  return kLastWriteQueueSize;
}

function newReq(): WriteReq {
  const req = new WriteWrap!();
  req.handle = null;
  req.oncomplete = onDirectWriteComplete;
  req.async = false;
  req.bytes = 0;
  req.buffer = null;
  req.callback = null;
  req.socket = null;
  return req;
}

/** The request object of writes that complete at once (the C++ side keeps no hold on it then). */
let spare: WriteReq | null = null;

type DirectSocket = net.Socket & {
  _handle: StreamWriteHandle | null | undefined;
  _unrefTimer(): void;
  encrypted?: boolean;
  _writableState: { length: number; corked: number; ending: boolean };
};

/** Whether a socket's writes can take the direct path at all (a plain TCP socket, and the binding is there). */
export function directWritable(socket: net.Socket): boolean {
  return WriteWrap !== undefined && (socket as DirectSocket).encrypted !== true;
}

/**
 * Writes `data` (latin1) as `socket.write(data, 'latin1')` would. Returns false when the caller
 * should wait for 'drain'. Falls back to `socket.write` whenever the socket's stream holds or
 * writes anything, is corked, connecting, ending or gone.
 */
export function writeLatin1(socket: net.Socket, data: string): boolean {
  const s = socket as DirectSocket;
  const handle = s._handle;
  const state = s._writableState;
  // `length` counts what the stream holds and what it is writing; `ending` covers end() and after.
  if (WriteWrap === undefined || handle == null || state.length !== 0 || state.corked !== 0 || state.ending || s.connecting || s.encrypted === true) {
    return socket.write(data, 'latin1');
  }
  s._unrefTimer();
  const req = spare ?? newReq();
  const err = handle.writeLatin1String(req, data);
  if (err !== 0) {
    // As `write`: the error destroys the socket, on the next tick.
    spare = req;
    return socket.write(data, 'latin1');
  }
  if (streamBaseState![kLastWriteWasAsync] === 0) {
    spare = req;
    return true;
  }
  // libuv holds the rest: this request object is the C++ write's until it completes.
  spare = null;
  req.handle = handle;
  req.socket = socket;
  req.async = true;
  req.bytes = streamBaseState![kBytesWritten]!;
  const key = lastWriteQueueSizeKey(socket);
  if (key !== null) (socket as unknown as Record<symbol, number>)[key] = req.bytes;
  return false;
}

function onDirectWriteComplete(this: WriteReq, status: number): void {
  const socket = this.socket as DirectSocket | null;
  this.socket = null;
  this.handle = null;
  if (socket === null || socket.destroyed) return;
  if (status < 0) {
    socket.destroy(Object.assign(new Error(`write failed (${status})`), { errno: status, syscall: 'write' }));
    return;
  }
  socket._unrefTimer();
  const key = lastWriteQueueSizeKey(socket);
  if (key !== null) (socket as unknown as Record<symbol, number>)[key] = 0;
  socket.emit('drain');
}
