// HTTP/2 receive windows: the proxy gives clients and h2c upstreams a 1 MiB stream window and a
// 16 MiB connection window (RFC 9113 §6.9), bodies stay byte-exact both ways, and a stream whose
// destination does not read still stops its sender.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { digestBody, startProxy, h2connect, waitFor, sleep } from './helpers/servers.mjs';

const MiB = 1024 * 1024;
const STREAM_WINDOW = MiB;
const CONNECTION_WINDOW = 16 * MiB;

const sha = (buf) => createHash('sha256').update(buf).digest('hex');

/** Bytes that differ along the body, so a reordered or repeated piece changes the hash. */
function pattern(size) {
  const buf = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) buf.writeUInt32LE(i, i);
  return buf;
}

/** An h2c upstream: POST echoes its body's sha256 and length, GET /big sends `big`. */
async function startH2Upstream(big) {
  const sessions = [];
  const server = http2.createServer();
  server.on('session', (s) => sessions.push(s));
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    if (headers[':method'] === 'GET') {
      stream.respond({ ':status': 200, 'content-length': String(big.length) });
      stream.end(big);
      return;
    }
    digestBody(stream).then(({ length, sha }) => {
      stream.respond({ ':status': 200, 'content-type': 'application/json' });
      stream.end(JSON.stringify({ sha, length }));
    }, () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    sessions,
    port: server.address().port,
    close: () => new Promise((r) => {
      for (const s of sessions) s.destroy();
      server.close(r);
    }),
  };
}

/** Sends `body` on one stream and collects the response body. */
function h2exchange(session, headers, body) {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: body === undefined });
    const chunks = [];
    let status;
    stream.on('response', (h) => (status = h[':status']));
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', () => resolve({ status, body: Buffer.concat(chunks) }));
    stream.on('error', reject);
    if (body !== undefined) stream.end(body);
  });
}

describe('HTTP/2 receive windows', () => {
  it('advertises a 1 MiB stream window and opens a 16 MiB connection window to clients', async () => {
    const px = await startProxy();
    const client = h2connect(px.port);
    try {
      const [settings] = await once(client, 'remoteSettings');
      assert.equal(settings.initialWindowSize, STREAM_WINDOW);
      // The connection window grows by WINDOW_UPDATE on stream 0, right after SETTINGS.
      assert.ok(
        await waitFor(() => client.state.remoteWindowSize === CONNECTION_WINDOW, { timeoutMs: 10000 }),
        `client may send ${client.state.remoteWindowSize} bytes on the connection, expected ${CONNECTION_WINDOW}`,
      );
    } finally {
      client.destroy();
      await px.proxy.stop();
    }
  });

  it('gives h2c upstreams the same windows, and 8 MiB bodies pass byte-exact both ways', async () => {
    const big = pattern(8 * MiB);
    const up = await startH2Upstream(big);
    const px = await startProxy({ upstreamProtocol: 'h2c' });
    const client = h2connect(px.port);
    try {
      const route = { 'x-cmux-port-internal': String(up.port) };
      const upload = await h2exchange(client, { ':method': 'POST', ':path': '/up', ...route }, big);
      assert.equal(upload.status, 200);
      assert.deepEqual(JSON.parse(upload.body.toString()), { sha: sha(big), length: big.length });
      const download = await h2exchange(client, { ':method': 'GET', ':path': '/big', ...route });
      assert.equal(download.status, 200);
      assert.equal(download.body.length, big.length);
      assert.equal(sha(download.body), sha(big));

      assert.equal(up.sessions.length, 1);
      const fromProxy = up.sessions[0];
      assert.equal(fromProxy.remoteSettings.initialWindowSize, STREAM_WINDOW);
      // What the upstream may still send on the connection: the proxy's window, topped up as it reads.
      assert.ok(
        await waitFor(() => fromProxy.state.remoteWindowSize > 8 * MiB, { timeoutMs: 10000 }),
        `upstream may send ${fromProxy.state.remoteWindowSize} bytes on the connection`,
      );
    } finally {
      client.destroy();
      await px.proxy.stop();
      await up.close();
    }
  });

  it('stops an HTTP/2 upload whose HTTP/1.1 upstream does not read, and serves the connection after', async () => {
    let held = null;
    const server = http.createServer((req, res) => {
      if (req.url === '/hold') {
        held = { req, res };
        req.pause(); // never reads: the proxy's writes stall, the client's stream must stop
        return;
      }
      res.end('ok');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const px = await startProxy();
    const client = h2connect(px.port);
    try {
      const route = { 'x-cmux-port-internal': String(server.address().port) };
      const stream = client.request({ ':method': 'POST', ':path': '/hold', ...route });
      stream.on('error', () => {});
      const piece = Buffer.alloc(256 * 1024, 0x61);
      const total = 256 * MiB;
      let written = 0;
      // Writes until the stream's buffer backs up; flow control means the proxy stops taking bytes.
      const pump = () => {
        while (written < total) {
          written += piece.length;
          if (!stream.write(piece)) {
            stream.once('drain', pump);
            return;
          }
        }
      };
      pump();
      assert.ok(await waitFor(() => held !== null, { timeoutMs: 10000 }), 'upstream never got the request');
      let last = -1;
      assert.ok(
        await waitFor(
          async () => {
            const sent = written - stream.writableLength;
            const stalled = sent === last;
            last = sent;
            if (!stalled) await sleep(300);
            return stalled;
          },
          { timeoutMs: 20000, stepMs: 300 },
        ),
        'the client kept sending',
      );
      // Bounded by the stream window plus the kernel's socket buffers on the upstream path.
      assert.ok(last < 32 * MiB, `client sent ${last} bytes into a stream nobody reads`);
      // The same connection still serves other streams.
      const other = await h2exchange(client, { ':method': 'GET', ':path': '/other', ...route });
      assert.equal(other.status, 200);
      assert.equal(other.body.toString(), 'ok');
    } finally {
      client.destroy();
      held?.res.destroy();
      await px.proxy.stop();
      await new Promise((r) => {
        server.closeAllConnections();
        server.close(r);
      });
    }
  });
});
