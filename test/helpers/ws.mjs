// WebSocket helpers for the tests: a `ws` echo server that records what reached it, and
// promise wrappers around the `ws` client. Real sockets on 127.0.0.1, port 0.
import http from 'node:http';
import { EventEmitter, once } from 'node:events';
import WebSocket, { WebSocketServer } from 'ws';

/**
 * A `ws` server on its own http server. Every upgrade request head that reaches it is kept in
 * `upgrades` (refused ones too); every accepted connection is kept in `connections` with the
 * messages it got (`conn.messages`) and its request (`conn.request`). Messages are echoed back
 * with the same text/binary type unless `echo` is false.
 */
export async function startWsEcho(wssOptions = {}, { echo = true } = {}) {
  const server = http.createServer((req, res) => {
    res.writeHead(426, { 'content-type': 'text/plain' });
    res.end('upgrade required');
  });
  const upgrades = [];
  const connections = [];
  const events = new EventEmitter();
  events.setMaxListeners(0);
  server.on('upgrade', (req) => {
    upgrades.push({ url: req.url, headers: req.headers, rawHeaders: req.rawHeaders });
  });
  const wss = new WebSocketServer({ server, ...wssOptions });
  wss.on('connection', (ws, req) => {
    ws.request = { url: req.url, headers: req.headers, rawHeaders: req.rawHeaders };
    ws.messages = [];
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => {
      ws.messages.push({ data, isBinary });
      if (echo && ws.readyState === WebSocket.OPEN) ws.send(data, { binary: isBinary });
    });
    connections.push(ws);
    events.emit('connection', ws);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = server.address().port;
  return {
    server,
    wss,
    port,
    upgrades,
    connections,
    /** Resolves with the server side of the connection whose request path is `url`. */
    connectionFor(url, timeoutMs = 5000) {
      const found = connections.find((c) => c.request.url === url);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          events.removeListener('connection', onConn);
          reject(new Error(`no upstream connection for ${url}`));
        }, timeoutMs);
        const onConn = (ws) => {
          if (ws.request.url !== url) return;
          clearTimeout(timer);
          events.removeListener('connection', onConn);
          resolve(ws);
        };
        events.on('connection', onConn);
      });
    },
    /** Open server-side sockets (accepted and not yet closed). */
    openCount() {
      return wss.clients.size;
    },
    async close() {
      for (const c of wss.clients) c.terminate();
      await new Promise((r) => wss.close(() => r()));
      server.closeAllConnections();
      await new Promise((r) => server.close(() => r()));
    },
  };
}

/** Opens a `ws` client; resolves once open, rejects on error or a non-101 answer. */
export function openWs(url, protocols, options = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols, options);
    const onError = (err) => {
      cleanup();
      reject(err);
    };
    const onUnexpected = (_req, res) => {
      cleanup();
      ws.terminate();
      reject(new Error(`unexpected response ${res.statusCode}`));
    };
    const onOpen = () => {
      cleanup();
      ws.on('error', () => {});
      resolve(ws);
    };
    const cleanup = () => {
      ws.removeListener('error', onError);
      ws.removeListener('unexpected-response', onUnexpected);
      ws.removeListener('open', onOpen);
    };
    ws.on('error', onError);
    ws.on('unexpected-response', onUnexpected);
    ws.on('open', onOpen);
  });
}

/**
 * Starts a `ws` client that must be refused: resolves { status, headers, body } from its
 * 'unexpected-response'; rejects if it opens or errors first.
 */
export function refusedWs(url, protocols, options = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols, options);
    ws.on('open', () => {
      ws.terminate();
      reject(new Error('the WebSocket opened'));
    });
    ws.on('error', (err) => reject(err));
    ws.on('unexpected-response', (req, res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') });
        req.destroy();
      });
      res.on('error', reject);
    });
  });
}

/** The next message on `ws`: { data, isBinary }. */
export function nextMessage(ws, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.removeListener('message', onMessage);
      reject(new Error('no message'));
    }, timeoutMs);
    const onMessage = (data, isBinary) => {
      clearTimeout(timer);
      resolve({ data, isBinary });
    };
    ws.once('message', onMessage);
  });
}

/** Resolves with { code, reason } on 'close', or rejects after `timeoutMs`. */
export function closed(ws, timeoutMs = 10000) {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve({ code: ws._closeCode, reason: String(ws._closeMessage ?? '') });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('not closed')), timeoutMs);
    ws.once('close', (code, reason) => {
      clearTimeout(timer);
      resolve({ code, reason: reason.toString('utf8') });
    });
  });
}
