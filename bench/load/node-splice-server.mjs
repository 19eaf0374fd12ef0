// A reference in the load benchmark, not a proxy: every client connection is spliced to one
// upstream port with `net` sockets piped both ways — no HTTP parsing, no routing, no pool (one
// upstream connection per client connection). What a Node process pays to move the same bytes
// between sockets is the floor under any Node proxy's CPU per request.
//   node node-splice-server.mjs --port <p> --target-port <upstream>
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' }, 'target-port': { type: 'string' } },
});
const targetPort = Number(values['target-port']);
if (!Number.isInteger(targetPort) || targetPort < 1 || targetPort > 65535) {
  console.error('node-splice-server: --target-port <1-65535> is required');
  process.exit(2);
}

const server = net.createServer((client) => {
  client.setNoDelay(true);
  const upstream = net.connect(targetPort, '127.0.0.1');
  upstream.setNoDelay(true);
  client.pipe(upstream);
  upstream.pipe(client);
  // A reset on either side resets the other. An orderly end travels through the pipes (the
  // peer gets a FIN after what is still queued for it); once the client is gone for good, so is
  // its upstream connection.
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
  client.on('close', () => upstream.destroy());
});
server.listen(Number(values.port), values.host, () => console.log(`node-splice on ${values.port} -> ${targetPort}`));
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
