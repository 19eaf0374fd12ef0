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

/** Whether nothing is queued, in flight or held on the socket's stream: a direct write goes straight to the handle. */
function streamIdle(s: DirectSocket): boolean {
  const state = s._writableState;
  // `length` counts what the stream holds and what it is writing; `ending` covers end() and after.
  return s._handle != null && state.length === 0 && state.corked === 0 && !state.ending && !s.connecting && s.encrypted !== true;
}

/**
 * Writes `data` (latin1) as `socket.write(data, 'latin1')` would. Returns false when the caller
 * should wait for 'drain'. Falls back to `socket.write` whenever the socket's stream holds or
 * writes anything, is corked, connecting, ending or gone.
 */
export function writeLatin1(socket: net.Socket, data: string): boolean {
  if (WriteWrap === undefined || !streamIdle(socket as DirectSocket)) return socket.write(data, 'latin1');
  return writeToHandle(socket as DirectSocket, data);
}

/** The direct write itself: the handle takes `data` now, or libuv keeps the rest (false: wait for 'drain'). */
function writeToHandle(s: DirectSocket, data: string): boolean {
  const handle = s._handle!;
  s._unrefTimer();
  const req = spare ?? newReq();
  const err = handle.writeLatin1String(req, data);
  if (err !== 0) {
    // As `write`: the error destroys the socket, on the next tick.
    spare = req;
    return s.write(data, 'latin1');
  }
  if (streamBaseState![kLastWriteWasAsync] === 0) {
    spare = req;
    return true;
  }
  // libuv holds the rest: this request object is the C++ write's until it completes.
  spare = null;
  req.handle = handle;
  req.socket = s;
  req.async = true;
  req.bytes = streamBaseState![kBytesWritten]!;
  const key = lastWriteQueueSizeKey(s);
  if (key !== null) (s as unknown as Record<symbol, number>)[key] = req.bytes;
  return false;
}

/**
 * Whether a socket's peer reads slower than the socket is written, with a 'drain' to come when
 * it catches up: its stream waits for 'drain' (a `write` returned false), or libuv holds bytes of
 * a direct write (whose completion emits 'drain'; bytes of a stream write it holds show in the
 * stream's length, and count once they pass its high-water mark).
 */
export function writeBacklogged(socket: net.Socket): boolean {
  const s = socket as DirectSocket;
  if (s.writableNeedDrain) return true;
  const handle = s._handle;
  return handle != null && s.encrypted !== true && s._writableState.length === 0 && handle.writeQueueSize > 0;
}

/**
 * The owner of a socket whose small writes may wait for the end of the event-loop turn: an
 * HTTP/1 client connection (its responses) or an upstream connection (its request heads).
 */
export interface TurnWriter {
  readonly socket: net.Socket;
  /** This writer's place in the turn's batch; -1 when nothing of it waits. */
  turnSlot: number;
}

/**
 * Writes `data` (latin1) at the end of this event-loop turn, after the I/O callbacks of the
 * turn (setImmediate's check phase), together with every other socket's writes of the turn.
 *
 * A write to a loopback peer that sleeps in epoll wakes it (an IPI to its CPU, costly in a
 * VM), and one write per request and direction woke the client and the upstream once per
 * request: written in one burst after the turn's reads, a peer is woken once and finds the rest
 * already queued when it runs. Under `wrk -t1 -c50` the proxy spent ~4.5 µs of kernel time per
 * request in those wake-ups (`perf`: `sock_def_readable` under `tcp_v4_rcv`, interrupts off)
 * where nginx spent ~1.4; ~1.9 with the burst.
 *
 * Order: the socket is corked while its bytes wait, so anything written through its stream
 * meanwhile (a body, a 100-continue) queues behind them and follows them out when they are
 * written and the cork comes off; a later small write joins the waiting bytes only while the
 * stream holds nothing, and queues behind what it holds otherwise. `end()` and `destroy()` do
 * not wait for the turn: the owner calls `flushTurnWrite` before either (an `end()` found at the
 * end of the turn has let the stream's bytes overtake the waiting ones, so the socket is then
 * destroyed rather than given them out of order). A TLS socket's bytes wait in its corked
 * stream instead (end() there keeps the order by itself); a plain socket with anything queued
 * on its stream is written through `write` at once. Returns false when the caller should wait
 * for 'drain' (only from `write`).
 */
export function writeInTurn(writer: TurnWriter, data: string): boolean {
  const slot = writer.turnSlot;
  const s = writer.socket as DirectSocket;
  if (slot >= 0 && turnData[slot] !== null) {
    // Joins the waiting bytes unless something went through the stream since: then it follows that.
    if (s._writableState.length !== 0) return s.write(data, 'latin1');
    turnData[slot] += data;
    return true;
  }
  if (s.encrypted === true) return writeTlsInTurn(writer, s, data);
  if (WriteWrap === undefined || !streamIdle(s)) return s.write(data, 'latin1');
  // libuv still holds an earlier write (the peer reads slowly): written now, behind it, so the
  // caller is told to wait for 'drain' as before.
  if (s._handle!.writeQueueSize !== 0) return writeToHandle(s, data);
  s.cork();
  joinTurn(writer, data);
  return true;
}

/**
 * A TLS socket's write goes through its stream, corked until the end of the turn: the turn's
 * writes become one TLS record and one write of the TCP socket below, at the end of the turn.
 */
function writeTlsInTurn(writer: TurnWriter, s: DirectSocket, data: string): boolean {
  if (writer.turnSlot < 0) {
    const state = s._writableState;
    if (s.destroyed || state.ending || state.corked !== 0) return s.write(data, 'latin1');
    s.cork();
    joinTurn(writer, null);
  }
  return s.write(data, 'latin1');
}

function joinTurn(writer: TurnWriter, data: string | null): void {
  writer.turnSlot = turnWriters.length;
  turnWriters.push(writer);
  turnData.push(data);
  if (writer.turnSlot === 0) setImmediate(writeTurn);
}

/** Writes what waits of `writer`'s for the turn now: before its socket ends or is destroyed. */
export function flushTurnWrite(writer: TurnWriter): void {
  const slot = writer.turnSlot;
  if (slot < 0) return;
  writer.turnSlot = -1;
  turnWriters[slot] = null;
  writeOut(writer.socket as DirectSocket, turnData[slot] ?? null);
}

let turnWriters: (TurnWriter | null)[] = [];
/** Each writer's waiting bytes; null for a TLS socket's (they wait in its corked stream). */
let turnData: (string | null)[] = [];
let spareWriters: (TurnWriter | null)[] = [];
let spareData: (string | null)[] = [];

function writeTurn(): void {
  const writers = turnWriters;
  const data = turnData;
  turnWriters = spareWriters;
  turnData = spareData;
  for (let i = 0; i < writers.length; i++) {
    const writer = writers[i];
    if (writer == null) continue;
    writer.turnSlot = -1;
    writeOut(writer.socket as DirectSocket, data[i] ?? null);
  }
  writers.length = 0;
  data.length = 0;
  spareWriters = writers;
  spareData = data;
}

function writeOut(s: DirectSocket, data: string | null): void {
  if (s.destroyed) return;
  if (data === null) {
    s.uncork();
    return;
  }
  if (s._writableState.ending || s._handle == null) {
    // Ended without flushTurnWrite: what the stream held went out first, these bytes would now
    // follow it out of order. A reset instead of a corrupted stream.
    s.destroy();
    return;
  }
  // Nothing the stream holds has reached the handle (corked since these bytes were taken): they go first.
  writeToHandle(s, data);
  s.uncork();
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
