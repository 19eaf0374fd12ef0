import type { Readable } from 'node:stream';
import { requireBuiltin } from '../builtins.js';
import { settleStreamPull } from '../upstream/read-buffers.js';

/**
 * Node's own llhttp binding, as `node:http` uses it (through `_http_common`, which Node keeps for
 * compatibility; `process.binding('http_parser')` warns). No HTTP/1 parser from npm.
 */
export interface HTTPParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  /** Reads straight from a stream handle in C++ (no 'data' events); results come to kOnExecute. */
  consume(handle: object): void;
  unconsume(): void;
  getCurrentBuffer(): Buffer;
  execute(data: Buffer): number | ParseError;
  finish(): number | ParseError | undefined;
  /** Lets llhttp go on after a callback paused it (`HPE_PAUSED`). */
  resume(): void;
  close(): void;
  free(): void;
  remove(): void;
  [index: number]: unknown;
}

export interface ParseError extends Error {
  code: string;
  reason?: string;
  bytesParsed: number;
}

interface HTTPParserClass {
  new (): HTTPParser;
  readonly REQUEST: number;
  readonly RESPONSE: number;
  readonly kOnMessageBegin: number;
  readonly kOnHeaders: number;
  readonly kOnHeadersComplete: number;
  readonly kOnBody: number;
  readonly kOnMessageComplete: number;
  readonly kOnExecute: number;
  readonly kOnTimeout: number;
  readonly kLenientNone: number;
}

const common = requireBuiltin('_http_common') as { HTTPParser: HTTPParserClass; methods: string[] };

export const Parser = common.HTTPParser;
/**
 * Method names indexed by llhttp's method number. `_http_common.methods` is llhttp's HTTP list,
 * which matches the enum only up to 33; the enum goes on with PRI, the RTSP methods and QUERY
 * (llhttp `llhttp_method_t`), which `node:http` reads from the binding's `allMethods`.
 */
export const METHODS: readonly string[] = [
  ...common.methods.slice(0, 34),
  'PRI', 'DESCRIBE', 'ANNOUNCE', 'SETUP', 'PLAY', 'PAUSE', 'TEARDOWN',
  'GET_PARAMETER', 'SET_PARAMETER', 'REDIRECT', 'RECORD', 'FLUSH', 'QUERY',
];
export const REQUEST = Parser.REQUEST;
export const RESPONSE = Parser.RESPONSE;
export const kOnHeaders = Parser.kOnHeaders;
export const kOnHeadersComplete = Parser.kOnHeadersComplete;
export const kOnBody = Parser.kOnBody;
export const kOnMessageComplete = Parser.kOnMessageComplete;
const kOnExecute = Parser.kOnExecute;

/** The libuv stream handle under a net.Socket / TLSSocket (what `node:http` consumes too). */
export interface StreamHandle {
  isStreamBase?: boolean;
  _consumed?: boolean;
  reading?: boolean;
  readonly writeQueueSize: number;
  readStart(): number;
  readStop(): number;
}

function streamHandle(socket: object): StreamHandle | undefined {
  const handle = (socket as { _handle?: StreamHandle | null })._handle;
  return handle !== null && handle !== undefined && handle.isStreamBase === true ? handle : undefined;
}

/**
 * Lets llhttp read the socket's handle directly, as `node:http` does (no stream machinery per
 * read); each read's result goes to `onExecute`. Null when the socket has no such handle or it
 * is consumed already.
 */
export function consumeSocket(parser: HTTPParser, socket: Readable, onExecute: (this: never, ret: number | ParseError) => void): StreamHandle | null {
  const handle = streamHandle(socket);
  if (handle === undefined || handle._consumed === true) return null;
  handle._consumed = true;
  parser.consume(handle);
  parser[kOnExecute] = onExecute;
  settleStreamPull(socket);
  return handle;
}

/** Gives a consumed handle back to the socket's stream; whether it reads is the caller's call. */
export function releaseHandle(parser: HTTPParser, handle: StreamHandle): void {
  parser.unconsume();
  handle._consumed = false;
}

/** Stops reading a socket: at its consumed handle, or through its stream when not consuming. */
export function stopReading(socket: Readable, handle: StreamHandle | null): void {
  if (handle === null) socket.pause();
  else if (handle.reading !== false) {
    handle.reading = false;
    handle.readStop();
  }
}

/**
 * Makes a socket that nothing consumes read again, however it was stopped: at its stream
 * (`pause()`) or at its handle (`stopReading` while consumed), which `resume()` alone does not
 * undo when the stream itself still counts as flowing.
 */
export function resumeSocket(socket: Readable): void {
  socket.resume();
  const handle = streamHandle(socket);
  if (handle !== undefined && handle._consumed !== true && handle.reading === false) {
    handle.reading = true;
    handle.readStart();
  }
}

export function startReading(socket: Readable, handle: StreamHandle | null): void {
  if (handle === null) socket.resume();
  else if (handle.reading === false) {
    handle.reading = true;
    handle.readStart();
  }
}
export const kLenientNone = Parser.kLenientNone;


/**
 * Frees a parser's C++ object once the stack has unwound. `close()` deletes it at once, and
 * llhttp's binding still writes to it after a callback (kOnExecute, kOnHeadersComplete...)
 * returns: closing from inside one corrupts the heap ("free(): invalid next size"). node:http
 * defers it the same way (freeParser -> setImmediate(closeParserInstance)).
 */
export function closeParserLater(parser: HTTPParser): void {
  setImmediate(closeParserNow, parser);
}

function closeParserNow(parser: HTTPParser): void {
  parser.close();
}

export function isParseError(value: unknown): value is ParseError {
  return value instanceof Error;
}

/**
 * The llhttp "resource" argument: async_hooks keeps its context on it (AsyncLocalStorage stores
 * a symbol property), so it must be a fresh, extensible object per parser — a shared frozen
 * one crashes every connection once any AsyncLocalStorage is active in the process.
 */
export function parserResource(owner: object): object {
  return { owner };
}
