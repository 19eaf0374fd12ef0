// A peer in the load benchmark: fastify 5 with @fastify/http-proxy (@fastify/reply-from on
// undici's per-origin pools), set up as their docs recommend: no logger, no request logging,
// undici's keep-alive pool (128 connections per upstream, no pipelining, 60 s idle), the
// upstream picked per request by `replyOptions.getUpstream` from X-Cmux-Port-Internal, and
// `websocket: true` (the `ws` package) for upgrades. Two listeners in one process: HTTP/1.1 +
// WebSocket on --port, h2c (fastify `http2: true`, prior knowledge) on --h2c-port; both forward
// over HTTP/1.1 to 127.0.0.1.
//   node fastify-proxy-server.mjs --port <p> --h2c-port <q>
import Fastify, { LogController } from 'fastify';
import httpProxy from '@fastify/http-proxy';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { port: { type: 'string' }, 'h2c-port': { type: 'string' }, host: { type: 'string', default: '127.0.0.1' } },
});

/** 'http://127.0.0.1:<port>' from X-Cmux-Port-Internal, or null when the header is not a port. */
function upstreamOf(headers) {
  const port = Number(headers['x-cmux-port-internal']);
  return Number.isInteger(port) && port >= 1 && port <= 65535 ? `http://127.0.0.1:${port}` : null;
}

async function start(port, http2) {
  const app = Fastify({ logger: false, logController: new LogController({ disableRequestLogging: true }), http2 });
  await app.register(httpProxy, {
    upstream: '',
    websocket: !http2,
    undici: { connections: 128, pipelining: 1, keepAliveTimeout: 60_000 },
    preHandler(request, reply, done) {
      if (upstreamOf(request.headers) === null) {
        reply.code(400).type('text/plain').send('missing X-Cmux-Port-Internal');
        return;
      }
      done();
    },
    replyOptions: { getUpstream: (request) => upstreamOf(request.headers) },
  });
  await app.listen({ port, host: values.host });
  return app;
}

await Promise.all([start(Number(values.port), false), start(Number(values['h2c-port']), true)]);
console.log(`fastify on ${values.port} (HTTP/1.1, WebSocket) and ${values['h2c-port']} (h2c)`);
// held WebSockets would keep a graceful close waiting: the benchmark only needs the process gone
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
