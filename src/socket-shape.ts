import net from 'node:net';
import { channel } from 'node:diagnostics_channel';

/**
 * One hidden class for every socket's options on Node 20.
 *
 * `net.Socket`'s constructor copies its options (`{ ...options }`) and then writes
 * `allowHalfOpen`, `emitClose`, `autoDestroy` and `decodeStrings` into the copy. On V8 11 (Node 20)
 * adding a property to an object made by spread gives that object a map of its own, so each socket
 * made from options that lack those keys left ~1.5 KB of dead maps, descriptor arrays and
 * inline-cache handlers behind (every load from the options in the stream-state constructors
 * missed on a new map): 9,000 sockets, 13-14 MiB, much of it promoted before it died (V8's
 * `--trace-gc-object-stats`). V8 12+ (Node 22, 24) shares the map. Options that already carry
 * every key the constructor writes, with the values it writes, keep one map on every version.
 */
export const SOCKET_WRITES = { allowHalfOpen: false, emitClose: false, autoDestroy: true, decodeStrings: false } as const;

type ClientHandle = { setNoDelay?: (enable: boolean) => number };
type ListenHandle = { onconnection?: (this: ListenHandle, err: number, clientHandle: ClientHandle) => void };
type ListeningServer = net.Server & {
  _handle?: ListenHandle | null;
  _connections: number;
  allowHalfOpen?: boolean;
  pauseOnConnect?: boolean;
  noDelay?: boolean;
  keepAlive?: boolean;
  highWaterMark?: number;
};
type AcceptedSocket = net.Socket & { server: net.Server; _server: net.Server };

const serverSocketChannel = channel('net.server.socket');

/**
 * Node 20 only (V8 < 12): the listening handle's accept callback becomes one that builds each
 * socket from complete options, and otherwise does what Node's does (the connection count, the
 * socket's server, no-delay, the 'connection' event and the `net.server.socket` channel).
 * Errors, keep-alive servers and a full `maxConnections` stay with Node's own. Call once the
 * server listens.
 */
export function shapeAcceptedSockets(server: net.Server): void {
  if (Number.parseInt(process.versions.v8, 10) >= 12) return;
  const listening = server as ListeningServer;
  const handle = listening._handle;
  const nodeOnConnection = handle?.onconnection;
  if (handle == null || typeof nodeOnConnection !== 'function') return;
  handle.onconnection = function onconnection(this: ListenHandle, err: number, clientHandle: ClientHandle): void {
    const max = listening.maxConnections;
    if (err !== 0 || listening.keepAlive === true || (max > 0 && listening._connections >= max)) {
      nodeOnConnection.call(this, err, clientHandle);
      return;
    }
    const noDelay = listening.noDelay === true;
    const socket = new net.Socket({
      handle: clientHandle,
      allowHalfOpen: listening.allowHalfOpen === true,
      pauseOnCreate: listening.pauseOnConnect === true,
      readable: true,
      writable: true,
      readableHighWaterMark: listening.highWaterMark,
      writableHighWaterMark: listening.highWaterMark,
      noDelay,
      emitClose: false,
      autoDestroy: true,
      decodeStrings: false,
    } as net.SocketConstructorOpts) as AcceptedSocket;
    if (noDelay && clientHandle.setNoDelay !== undefined) clientHandle.setNoDelay(true);
    listening._connections++;
    socket.server = listening;
    socket._server = listening;
    listening.emit('connection', socket);
    if (serverSocketChannel.hasSubscribers) serverSocketChannel.publish({ socket });
  };
}
