import type http from 'node:http';
import type net from 'node:net';
import { http as loadHttp } from './builtins.js';
import type { Observer } from './observe.js';
import type { ProxyStats } from './stats.js';

/** What the admin listener reads from the proxy. */
export interface AdminHost {
  getStats(): ProxyStats;
  /** Listening and not draining. */
  isReady(): boolean;
}

const TEXT = 'text/plain; charset=utf-8';
const PROMETHEUS = 'text/plain; version=0.0.4; charset=utf-8';

/** Connections the admin listener holds at once; more are closed as they arrive. */
export const ADMIN_MAX_CONNECTIONS = 64;

/**
 * An `http.Server` for an admin listener, bounded so that a client holding connections open
 * (idle, or trickling a head) cannot take the process's descriptors or memory: at most
 * ADMIN_MAX_CONNECTIONS connections, 8 KiB heads complete within 5 s, requests within 10 s,
 * connections silent for 5 s (keep-alive or never used) closed.
 */
export function adminHttpServer(handler: http.RequestListener): http.Server {
  const server = loadHttp().createServer({ maxHeaderSize: 8192, headersTimeout: 5_000, requestTimeout: 10_000, connectionsCheckingInterval: 1_000 }, handler);
  server.keepAliveTimeout = 5_000;
  // A connection that has sent nothing at all is not under headersTimeout: 5 s of silence ends it.
  server.timeout = 5_000;
  server.maxConnections = ADMIN_MAX_CONNECTIONS;
  return server;
}

/**
 * The admin listener: a plain `http.Server` on its own address (never the proxied port) with
 * `/metrics` (Prometheus text), `/healthz`, `/readyz` and `/stats` (the getStats() JSON).
 */
export class AdminServer {
  private server: http.Server | null = null;
  private readonly host: AdminHost;
  private readonly observer: Observer;
  private readonly listenHost: string;
  private readonly listenPort: number;

  constructor(host: AdminHost, observer: Observer, listenHost: string, listenPort: number) {
    this.host = host;
    this.observer = observer;
    this.listenHost = listenHost;
    this.listenPort = listenPort;
  }

  async start(): Promise<void> {
    const server = adminHttpServer((req, res) => this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: this.listenPort, host: this.listenHost }, () => {
        server.removeListener('error', reject);
        resolve();
      });
    }).catch((err: NodeJS.ErrnoException) => {
      const out = new Error(`cannot listen on admin ${this.listenHost}:${this.listenPort}: ${err.code ?? err.message}`, { cause: err }) as NodeJS.ErrnoException;
      if (err.code !== undefined) out.code = err.code;
      throw out;
    });
    server.on('error', () => {});
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (server === null) return;
    this.server = null;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  address(): net.AddressInfo | null {
    const address = this.server?.address();
    return address === null || address === undefined || typeof address === 'string' ? null : address;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const method = req.method ?? 'GET';
    if (method !== 'GET' && method !== 'HEAD') {
      send(res, 405, TEXT, 'method not allowed\n', { allow: 'GET, HEAD' });
      return;
    }
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    switch (path) {
      case '/metrics':
        send(res, 200, PROMETHEUS, this.observer.metrics(this.host.getStats()));
        return;
      case '/healthz':
        send(res, 200, TEXT, 'ok\n');
        return;
      case '/readyz':
        if (this.host.isReady()) send(res, 200, TEXT, 'ready\n');
        else send(res, 503, TEXT, 'not ready\n');
        return;
      case '/stats':
        send(res, 200, 'application/json', `${JSON.stringify(this.host.getStats())}\n`);
        return;
      default:
        send(res, 404, TEXT, 'not found: /metrics, /healthz, /readyz, /stats\n');
    }
  }
}

function send(res: http.ServerResponse, status: number, type: string, body: string, extra?: Record<string, string>): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store', ...extra });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}
