// Upload sink for the load benchmark: counts the bytes of every request body and answers 200 with
// the count as the body. `node upload-sink.mjs --port <p>`
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' } } });

const server = http.createServer((req, res) => {
  let bytes = 0;
  req.on('data', (chunk) => {
    bytes += chunk.length;
  });
  req.on('end', () => {
    const body = String(bytes);
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
});
server.requestTimeout = 0; // a 256 MiB upload through a slow proxy must not be cut off
server.keepAliveTimeout = 65000;
server.listen(Number(values.port), values.host, () => console.log(`upload sink on ${values.port}`));
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
