import net from 'node:net';
import type { Target } from '../route/target.js';

/** Opens a TCP connection (or a unix socket connection) to a routed target. */
export function connectTo(target: Target): net.Socket {
  return target.socketPath !== undefined ? net.connect({ path: target.socketPath }) : net.connect({ host: target.host, port: target.port });
}
