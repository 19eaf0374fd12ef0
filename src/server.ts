import type http from 'node:http';
import type http2 from 'node:http2';
import net from 'node:net';
import { shapeAcceptedSockets } from './socket-shape.js';
import type tls from 'node:tls';
import { http as loadHttp, tls as loadTls } from './builtins.js';
import { GOAWAY_HTTP_1_1_REQUIRED, RESPONSE_503_AT_CAPACITY } from './errors.js';
import { DeadlineSweep } from './deadlines.js';
import { ChurnSet } from './churn-set.js';
import { H1Connection, type SessionHost } from './h1/session.js';
import { createH2Server, serveH2, type H2Host } from './h2/session.js';
import { createLogger } from './log.js';
import { resolveOptions, type ProxyOptions, type ResolvedOptions } from './options.js';
import { ProxyCore } from './proxy-core.js';
import { createDockerPortResolver } from './route/docker-resolver.js';
import { CachedPortResolver } from './route/port-resolver.js';
import { pinnedTcpTarget } from './route/target.js';
import { SNIFF_H1, SNIFF_H2, SNIFF_MORE, SNIFF_TLS, sniff } from './sniff.js';
import { StatsCounters, snapshot, type ProxyStats } from './stats.js';
import { TlsContexts } from './tls.js';
import { AdminServer } from './admin.js';
import { Observer } from './observe.js';
import { loadTracing } from './tracing.js';
import { AccessLog } from './access-log.js';
import { PP_ANY, PP_BAD, PP_MORE, PP_V1, PP_V2, parseProxyHeader, type ProxyHeader } from './proxy-protocol.js';

const kSniff = Symbol('cmux.sniff');
const kServer = Symbol('cmux.server');
/** Bytes a client may send before the sniffer has decided (the h2 preface is 24). */
const MAX_SNIFF_BYTES = 64;
/** Accept failures (out of descriptors) are logged at most this often. */
const ACCEPT_LOG_MS = 10_000;
/** After the close frames at stop(), how long WebSocket peers get to answer (and a frame in flight to end). */
const WEBSOCKET_CLOSE_GRACE_MS = 1_000;

const kSniffTimer = Symbol('cmux.sniffTimer');

type AcceptedSocket = net.Socket & { [kSniff]?: Buffer | null; [kSniffTimer]?: NodeJS.Timeout | null; [kServer]: ProxyServer };

interface QueuedConnection {
  socket: AcceptedSocket;
  timer: NodeJS.Timeout;
}

/** How a cluster worker runs its proxy (not part of createProxyServer's options). */
export interface ServerInternals {
  /** Keep request histograms though no admin listener runs here (the primary asks for them). */
  observe?: boolean;
  /** Bind with SO_REUSEPORT instead of through the cluster primary (the kernel spreads connections). */
  reusePort?: boolean;
  /** A secret every worker shares, from which TLS session ticket keys are derived (see src/tls.ts). */
  ticketSecret?: Buffer;
}

const NO_INTERNALS: ServerInternals = {};

export interface ProxyAddress {
  address: string;
  port: number;
  family: string;
}

/**
 * The embedding API: one listening port, sniffed per connection, connection
 * accounting with `maxConnections`, graceful drain on `stop()`, stats.
 */
export class ProxyServer implements SessionHost, H2Host {
  readonly options: ResolvedOptions;
  readonly core: ProxyCore;
  readonly headTimer: DeadlineSweep;
  private readonly stats = new StatsCounters();
  /** Made on the first HTTP/2 connection, so HTTP/1.1-only use never loads node:http2. */
  private h2server: http2.Http2Server | null = null;
  private server: net.Server | null = null;
  private fallbackServer: http.Server | null = null;
  /** Listening (possibly draining). */
  private running = false;
  /** Draining in stop(). */
  private stopping = false;
  /** stop() calls whose drain has not begun yet. */
  private stopsQueued = 0;
  /** Whether the proxy runs once every pending start()/stop() has run. */
  private wanted = false;
  /** start()/stop() calls queued or running. */
  private pendingOps = 0;
  /** Settles when the last queued start()/stop() has. */
  private tail: Promise<void> = Promise.resolve();
  /** The pending stop() that nothing was queued after: another stop() returns it. */
  private pendingStop: Promise<void> | null = null;
  /** Client sockets being served (not the queued ones). */
  private readonly sockets = new ChurnSet<AcceptedSocket>();
  /** Every accepted socket still open, served or not (queued, refused, lingering). */
  private readonly accepted = new ChurnSet<AcceptedSocket>();
  private readonly h1 = new ChurnSet<H1Connection>();
  private readonly sessions = new ChurnSet<http2.ServerHttp2Session>();
  private readonly queue: QueuedConnection[] = [];
  private allClosed: (() => void) | null = null;
  /** Client connections that are HTTP/1.1 tunnels now (WebSockets, CONNECT). */
  private h1Tunnels = 0;
  private readonly tls: TlsContexts | undefined;
  private tlsServer: tls.Server | null = null;
  private readonly alpn: string[];
  private acceptFailures = 0;
  private acceptLoggedAt = 0;
  private readonly admin: AdminServer | null = null;
  private tracingLoaded = false;
  /** PROXY protocol versions every connection must start with (PP_V1 | PP_V2); 0: none. */
  private readonly proxyProtocol: number;
  private readonly internals: ServerInternals;

  constructor(input: ProxyOptions, internals: ServerInternals = NO_INTERNALS) {
    this.internals = internals;
    this.options = resolveOptions(input);
    const pp = this.options.acceptProxyProtocol;
    this.proxyProtocol = pp === 'v1' ? PP_V1 : pp === 'v2' ? PP_V2 : pp ? PP_ANY : 0;
    const log = createLogger(this.options.logLevel, this.options.logger);
    const resolverFn =
      this.options.containerPortResolver ??
      (this.options.dockerSocketPath !== undefined ? createDockerPortResolver(this.options.dockerSocketPath) : undefined);
    const resolver = resolverFn === undefined ? undefined : new CachedPortResolver(resolverFn, this.options.portResolverCacheTtlMs);
    this.core = new ProxyCore(this.options, this.stats, log, resolver);
    const { adminPort, accessLog } = this.options;
    if (adminPort !== undefined || accessLog !== undefined || internals.observe === true) {
      // A file that cannot be opened fails createProxyServer, not the first request.
      const observer = new Observer(accessLog === undefined ? null : new AccessLog(accessLog, log), this.options.accessLogQuery);
      this.core.observer = observer;
      if (adminPort !== undefined) this.admin = new AdminServer(this, observer, this.options.adminHost, adminPort);
    }
    // Head deadlines fire up to one sweep late: 250 ms on top of requestHeadersTimeoutMs.
    this.headTimer = new DeadlineSweep(250);
    // Certificates are read now, so a bad path fails createProxyServer, not the first client.
    this.tls = this.options.tls === undefined ? undefined : new TlsContexts(this.options.tls, log, internals.ticketSecret);
    this.alpn = this.options.enableHttp2 ? ['h2', 'http/1.1'] : ['http/1.1'];
    if (this.tls !== undefined) {
      // Never listening: the sniffer hands it the sockets that start with a ClientHello.
      const contexts = this.tls;
      const server = loadTls().createServer({
        ...contexts.defaultOptions(),
        SNICallback: contexts.sniCallback,
        ALPNProtocols: this.alpn,
        // The handshake is part of the request head's time budget.
        handshakeTimeout: this.options.requestHeadersTimeoutMs,
      });
      (server as tls.Server & { [kServer]: ProxyServer })[kServer] = this;
      server.on('secureConnection', tlsOnSecureConnection);
      server.on('tlsClientError', tlsOnClientError);
      this.tlsServer = server;
      contexts.onReload = () => server.setSecureContext(contexts.defaultOptions());
    }
  }

  /**
   * Replaces the `routes` table (validated like the option: throws an OptionError and keeps the
   * old table on a bad one). Exchanges already routed finish on their upstreams; new requests
   * use the new table. Upstreams kept under the same match keep their circuit state; active
   * checks of the old table stop.
   */
  updateRoutes(routes: unknown): void {
    this.core.updateRoutes(routes, this.running);
  }

  /** Re-reads the TLS certificate files now (they are also watched while running). */
  reloadCertificates(): boolean {
    return this.tls?.reload() ?? false;
  }

  /**
   * Starts listening. Calls to start() and stop() take effect one after the other, in call order:
   * a stop() made while start() is pending waits for it, then stops; a start() made while stop()
   * is pending waits for it, then starts. start() rejects when the proxy is running or will be
   * once the pending calls are done.
   */
  start(): Promise<void> {
    if (this.wanted) return Promise.reject(new Error('cmux-proxy is already running'));
    this.wanted = true;
    this.pendingStop = null;
    return this.enqueue(() => this.listen());
  }

  /** The start itself, run when every earlier start()/stop() has settled. */
  private async listen(): Promise<void> {
    try {
      await this.startObservability();
      await this.startFallbackServer();
      const server = net.createServer({ pauseOnConnect: true, noDelay: true });
      server.on('connection', serverOnConnection);
      (server as net.Server & { [kServer]: ProxyServer })[kServer] = this;
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        const at: net.ListenOptions & { reusePort?: boolean } = { port: this.options.listenPort, host: this.options.listenHost };
        if (this.internals.reusePort === true) {
          at.exclusive = true;
          at.reusePort = true;
        }
        server.listen(at, () => {
          server.removeListener('error', reject);
          resolve();
        });
      });
      server.on('error', serverOnError);
      shapeAcceptedSockets(server);
      this.server = server;
      this.running = true;
      this.core.pool.fds.measure();
      const address = server.address() as net.AddressInfo;
      this.core.listenAddress = address.address;
      this.core.listenPort = address.port;
      this.core.draining = false;
      this.core.pool.reopen();
      this.core.routeTable?.startChecks();
      this.tls?.watch();
      const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      const protocols = this.options.enableHttp2 ? 'HTTP/1.1, h2c' : 'HTTP/1.1';
      this.core.log.info(`listening on ${host}:${address.port} (${protocols}${this.tls === undefined ? '' : ', TLS'})`);
      const admin = this.admin?.address();
      if (admin != null) this.core.log.info(`admin on ${admin.family === 'IPv6' ? `[${admin.address}]` : admin.address}:${admin.port}`);
    } catch (err) {
      const server = this.server;
      if (server !== null) {
        // Failed after listening: nothing may stay open.
        this.server = null;
        this.running = false;
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
      await this.stopFallbackServer();
      await this.stopObservability();
      throw listenError(err as NodeJS.ErrnoException, this.options.listenHost, this.options.listenPort);
    }
  }

  /** Runs `op` after every earlier start()/stop() has settled; `wanted` follows the outcome. */
  private enqueue(op: () => Promise<void>): Promise<void> {
    this.pendingOps++;
    const run = this.tail.then(op).finally(() => {
      // Updated before the caller sees the result, so a start() right after a failed one works.
      if (--this.pendingOps > 0) return;
      this.wanted = this.running;
      this.pendingStop = null;
    });
    this.tail = run.then(noop, noop);
    return run;
  }

  /** The admin listener and the access log file: up before the proxy listens; `@opentelemetry/api` looked for once. */
  private async startObservability(): Promise<void> {
    if (!this.tracingLoaded) {
      this.tracingLoaded = true;
      this.core.tracing = await loadTracing();
    }
    this.core.observer?.accessLog?.open();
    await this.admin?.start();
    const admin = this.admin?.address();
    if (admin != null) {
      this.core.adminAddress = admin.address;
      this.core.adminPort = admin.port;
    }
  }

  /** After the drain: the admin listener closes, the access log is written out and closed. */
  private async stopObservability(): Promise<void> {
    await this.admin?.stop();
    this.core.adminAddress = '';
    this.core.adminPort = 0;
    await this.core.observer?.accessLog?.close();
  }

  /** Opens the access log file again (after it was moved away for rotation); false when there is none. */
  reopenAccessLog(): boolean {
    const log = this.core.observer?.accessLog;
    if (log == null) return false;
    log.reopen();
    return true;
  }

  private async startFallbackServer(): Promise<void> {
    const fallback = this.options.fallback;
    if (fallback === undefined || !('handler' in fallback)) return;
    const server = loadHttp().createServer(fallback.handler);
    if (fallback.upgrade !== undefined) server.on('upgrade', fallback.upgrade);
    else server.on('upgrade', (_req, socket) => socket.end('HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n'));
    // The handler is served on a private loopback port and proxied like any upstream.
    server.keepAliveTimeout = this.options.upstreamIdleTimeoutMs + 1000;
    server.requestTimeout = 0;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      // exclusive: in a cluster worker, a plain listen() would share one port among all the
      // workers' handler servers through the primary, and a worker would hand its requests to
      // another worker's handler (an old one draining in a restart, with the old configuration).
      server.listen({ port: 0, host: '127.0.0.1', exclusive: true }, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    this.fallbackServer = server;
    this.core.fallbackTarget = pinnedTcpTarget('127.0.0.1', (server.address() as net.AddressInfo).port);
  }

  private async stopFallbackServer(): Promise<void> {
    const server = this.fallbackServer;
    if (server === null) return;
    this.fallbackServer = null;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /**
   * Graceful: the listener closes at once, idle keep-alive connections close, HTTP/2 sessions
   * get GOAWAY, in-flight exchanges get `drainTimeoutMs` to finish, then whatever is left
   * (WebSockets, tunnels, slow exchanges) is closed.
   */
  stop(): Promise<void> {
    if (!this.wanted) return this.pendingStop ?? Promise.reject(new Error('cmux-proxy is not running'));
    this.wanted = false;
    this.stopsQueued++;
    return (this.pendingStop = this.enqueue(() => this.close()));
  }

  /** The stop itself, run when every earlier start()/stop() has settled: nothing to do if that start failed. */
  private async close(): Promise<void> {
    this.stopsQueued--;
    if (!this.running) return;
    this.stopping = true;
    try {
      await this.drainAndClose();
    } finally {
      this.running = false;
      this.stopping = false;
    }
  }

  private async drainAndClose(): Promise<void> {
    const core = this.core;
    core.draining = true;
    const server = this.server!;
    this.server = null;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const queued of this.queue.splice(0)) this.refuseQueued(queued);
    for (const conn of this.h1) conn.drain();
    // A connection that has not said anything yet may have its first request on the way (the
    // client has just connected): it gets SILENT_DRAIN_GRACE_MS to send it, and is answered with
    // `connection: close`; still silent, it is closed. Behind a balancer (PROXY protocol) the
    // balancer connects as its client does: those keep their head deadline within the drain.
    const silentTimer =
      this.proxyProtocol === 0 ? setTimeout(closeSilentSockets, Math.min(SILENT_DRAIN_GRACE_MS, this.options.drainTimeoutMs), this.sockets) : null;
    for (const session of this.sessions) session.close();
    core.pool.closeIdle();
    core.h2pool.closeIdle();
    if (!this.onlyTunnelsLeft() && this.options.drainTimeoutMs > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.options.drainTimeoutMs);
        this.allClosed = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.allClosed = null;
    }
    if (silentTimer !== null) clearTimeout(silentTimer);
    if (core.websockets.size > 0) await this.closeWebSockets();
    for (const session of this.sessions) session.destroy();
    // An HTTP/1 connection writes the responses it finished (maybe waiting for the end of this
    // turn, see writeInTurn) before its socket goes.
    for (const conn of this.h1) conn.destroySocket();
    for (const socket of this.accepted) socket.destroy();
    core.pool.close();
    core.h2pool.close();
    core.routeTable?.stopChecks();
    this.headTimer.stop(true);
    this.tls?.unwatch();
    await closed;
    // Destroyed sockets report 'close' asynchronously; let the tunnels settle their counts.
    for (let i = 0; i < 100 && this.stats.websocketConnections + this.stats.tunnelsOpen > 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await this.stopFallbackServer();
    await this.stopObservability();
    core.log.info('stopped');
  }

  /**
   * The drain is over: each WebSocket gets a close frame (1001 Going Away) both ways at the next
   * frame boundary, and the peers up to WEBSOCKET_CLOSE_GRACE_MS to answer and close.
   */
  private async closeWebSockets(): Promise<void> {
    const websockets = this.core.websockets;
    for (const tunnel of [...websockets]) tunnel.goingAway();
    const deadline = performance.now() + WEBSOCKET_CLOSE_GRACE_MS;
    while (websockets.size > 0 && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
  }

  /** True while listening with no stop() pending; false while a start() is still pending. */
  isRunning(): boolean {
    return this.running && !this.stopping && this.stopsQueued === 0;
  }

  /** Listening and not draining (the admin listener's /readyz). */
  isReady(): boolean {
    return this.server !== null && !this.core.draining;
  }

  /** The admin listener's address while it runs, else null. */
  adminAddress(): ProxyAddress | null {
    const address = this.admin?.address();
    return address == null ? null : { address: address.address, port: address.port, family: address.family };
  }

  address(): ProxyAddress | null {
    const address = this.server?.address();
    if (address === null || address === undefined || typeof address === 'string') return null;
    return { address: address.address, port: address.port, family: address.family };
  }

  getStats(): ProxyStats {
    let live = 0;
    for (const socket of this.sockets) live += socket.bytesRead + socket.bytesWritten;
    const h2 = this.core.h2pool.counts();
    return snapshot(this.stats, live, {
      ...this.core.pool.counts(),
      upstreamH2Sessions: h2.sessions,
      upstreamH2Streams: h2.streams,
      upstreamH2Waiters: h2.waiters,
    }, this.core.groupStats());
  }

  /** This process's Prometheus text, or null when nothing observes it (see ServerInternals.observe). */
  metricsText(): string | null {
    return this.core.observer?.metrics(this.getStats()) ?? null;
  }

  // ---- connections ----------------------------------------------------------------------

  accept(socket: AcceptedSocket): void {
    const stats = this.stats;
    stats.connectionsTotal++;
    socket[kServer] = this;
    this.accepted.add(socket);
    const fds = this.core.pool.fds;
    fds.clients++;
    socket.on('close', acceptedSocketOnClose);
    socket.on('error', ignoreError);
    // Accepted while draining (handed over just before the listener closed): served like the
    // others, its answer closes it.
    if (!fds.clientAllowed()) {
      // Nearly out of descriptors: answer now and let go of this one soon, or the next accept
      // fails and libuv closes the waiting connections without an answer.
      // No lingering here: each refused socket holding a descriptor is what brings that on.
      stats.connectionsRefusedAtCapacity++;
      socket.once('finish', destroySocket);
      socket.end(RESPONSE_503_AT_CAPACITY);
      return;
    }
    if (stats.activeConnections >= this.options.maxConnections) {
      if (this.queue.length >= this.options.maxQueuedConnections || this.options.connectionQueueTimeoutMs === 0) {
        stats.connectionsRefusedAtCapacity++;
        endAndLinger(socket, RESPONSE_503_AT_CAPACITY);
        return;
      }
      // Wait (not read) for a free slot, bounded in time.
      const queued: QueuedConnection = { socket, timer: setTimeout(queuedTimedOut, this.options.connectionQueueTimeoutMs, this, socket) };
      socket.once('close', queuedSocketOnClose);
      this.queue.push(queued);
      stats.connectionsQueued++;
      return;
    }
    this.admit(socket);
  }

  private admit(socket: AcceptedSocket): void {
    this.stats.activeConnections++;
    this.sockets.add(socket);
    socket.on('close', servedSocketOnClose);
    socket[kSniff] = null;
    socket.on('data', this.proxyProtocol === 0 ? sniffOnData : proxyHeaderOnData);
    // A connection that never says anything must not hold a slot (slowloris). A fixed deadline,
    // not socket.setTimeout: that one restarts on every byte, so a preface trickled a byte at a
    // time would live 24 times the budget. It covers a PROXY protocol header too.
    const timer = setTimeout(sniffDeadline, this.options.requestHeadersTimeoutMs, socket);
    timer.unref();
    socket[kSniffTimer] = timer;
    socket.resume();
  }

  queuedTimedOut(socket: AcceptedSocket): void {
    const at = this.queue.findIndex((q) => q.socket === socket);
    if (at === -1) return;
    const [queued] = this.queue.splice(at, 1);
    this.refuseQueued(queued!);
  }

  private refuseQueued(queued: QueuedConnection): void {
    clearTimeout(queued.timer);
    this.stats.connectionsQueued--;
    this.stats.connectionsRefusedAtCapacity++;
    queued.socket.removeListener('close', queuedSocketOnClose);
    endAndLinger(queued.socket, RESPONSE_503_AT_CAPACITY);
  }

  /**
   * Draining is over when nothing but tunnels is left: in-flight exchanges are done, and
   * WebSockets and CONNECT tunnels do not end by themselves (they are closed after the drain).
   */
  private onlyTunnelsLeft(): boolean {
    return this.sockets.size <= this.h1Tunnels;
  }

  tunnelOpened(socket: net.Socket): void {
    this.h1Tunnels++;
    // Before the served-socket accounting, so a closing tunnel is never counted as in-flight work.
    // (A TLS client's socket is the TLSSocket, which the listener has not tagged yet.)
    (socket as AcceptedSocket)[kServer] = this;
    // One 'close' listener for all of the socket's accounting in place of three (the tunnel takes
    // it over and runs it before its own), and no 'error' listener: the tunnel's handles errors.
    socket.removeListener('close', acceptedSocketOnClose);
    socket.removeListener('close', servedSocketOnClose);
    socket.removeListener('error', ignoreError);
    socket.on('close', tunnelSocketOnClose);
  }

  tunnelClosed(): void {
    this.h1Tunnels--;
  }

  acceptedClosed(socket: AcceptedSocket): void {
    if (this.accepted.delete(socket)) this.core.pool.fds.clients--;
  }

  /**
   * The listener failed to accept. Node keeps listening; on EMFILE/ENFILE libuv has already
   * closed the connections that were waiting. Logged at most once per ACCEPT_LOG_MS.
   */
  listenerError(err: NodeJS.ErrnoException): void {
    const log = this.core.log;
    if (err.code !== 'EMFILE' && err.code !== 'ENFILE') {
      log.error(`listener error: ${err.message}`);
      return;
    }
    this.core.pool.fds.exhausted();
    this.acceptFailures++;
    const now = Date.now();
    if (now - this.acceptLoggedAt < ACCEPT_LOG_MS) return;
    this.acceptLoggedAt = now;
    log.warn(`out of file descriptors (${err.code}): ${this.acceptFailures} accept failure(s); connections waiting were closed by the runtime`);
    this.acceptFailures = 0;
  }

  queuedClosed(socket: AcceptedSocket): void {
    const at = this.queue.findIndex((q) => q.socket === socket);
    if (at === -1) return;
    const [queued] = this.queue.splice(at, 1);
    clearTimeout(queued!.timer);
    this.stats.connectionsQueued--;
  }

  servedClosed(socket: AcceptedSocket): void {
    if (!this.sockets.delete(socket)) return;
    const stats = this.stats;
    stats.activeConnections--;
    stats.closedConnectionBytes += socket.bytesRead + socket.bytesWritten;
    if (this.allClosed !== null && this.onlyTunnelsLeft()) this.allClosed();
    const next = this.queue.shift();
    if (next !== undefined) {
      clearTimeout(next.timer);
      stats.connectionsQueued--;
      next.socket.removeListener('close', queuedSocketOnClose);
      if (next.socket.destroyed) return;
      this.admit(next.socket);
    }
  }

  /**
   * The PROXY protocol header, before anything else: the client's address replaces the
   * balancer's on the socket (what X-Forwarded-For and the access log report); the bytes after
   * it go to the sniffer. Anything but a valid header closes the connection: there is no one to
   * answer, the peer is the balancer.
   */
  proxyHeader(socket: AcceptedSocket, chunk: Buffer): void {
    const seen = socket[kSniff];
    const data = seen === null || seen === undefined ? chunk : Buffer.concat([seen, chunk]);
    const header = parseProxyHeader(data, this.proxyProtocol);
    if (header === PP_MORE) {
      socket[kSniff] = data;
      return;
    }
    if (header === PP_BAD) {
      this.stats.parseErrors++;
      if (this.core.log.debugEnabled) this.core.log.debug(`connection from ${socket.remoteAddress ?? ''}: no valid PROXY protocol header, closed`);
      socket.destroy();
      return;
    }
    const h = header as ProxyHeader;
    if (h.address !== null) adoptClientAddress(socket, h.address, h.port, h.family!);
    socket.removeListener('data', proxyHeaderOnData);
    socket.on('data', sniffOnData);
    socket[kSniff] = null;
    if (data.length > h.length) this.sniffed(socket, data.subarray(h.length));
  }

  sniffed(socket: AcceptedSocket, chunk: Buffer): void {
    const seen = socket[kSniff];
    const data = seen === null || seen === undefined ? chunk : Buffer.concat([seen, chunk]);
    const kind = sniff(data);
    if (kind === SNIFF_MORE && data.length < MAX_SNIFF_BYTES) {
      socket[kSniff] = data;
      return;
    }
    socket.removeListener('data', sniffOnData);
    const timer = socket[kSniffTimer];
    if (timer != null) clearTimeout(timer);
    socket[kSniffTimer] = null;
    socket[kSniff] = undefined;
    switch (kind) {
      case SNIFF_H2:
        if (!this.options.enableHttp2) {
          this.stats.proxyErrorResponses++;
          endAndLinger(socket, GOAWAY_HTTP_1_1_REQUIRED);
          return;
        }
        socket.pause();
        socket.unshift(data);
        serveH2(this.http2Server(), socket);
        return;
      case SNIFF_TLS:
        if (this.tls === undefined) {
          // TLS termination is not configured: there is no certificate to answer with.
          this.stats.parseErrors++;
          socket.destroy();
          return;
        }
        socket.pause();
        // TLSSocket feeds what is buffered on the socket to OpenSSL first ("emulate receiving it").
        socket.unshift(data);
        this.startTls(socket);
        return;
      case SNIFF_H1:
      default: {
        const conn = new H1Connection(this, socket, false);
        this.h1.add(conn);
        conn.feed(data);
      }
    }
  }

  private http2Server(): http2.Http2Server {
    return (this.h2server ??= createH2Server(this));
  }

  private startTls(socket: AcceptedSocket): void {
    this.tlsServer!.emit('connection', socket);
  }

  tlsReady(secure: tls.TLSSocket): void {
    // A client-initiated renegotiation (TLS 1.2) costs the server a full handshake each time,
    // over and over on one connection: refuse it. Node only emits an error for it, so any TLS
    // socket error destroys the socket.
    secure.disableRenegotiation();
    secure.on('error', destroyOnError);
    if (this.proxyProtocol !== 0) {
      // The TLS socket asks the kernel for its peer; the PROXY header's client is on the plain socket.
      // (Node keeps the wrapped net.Socket as `_parent`.)
      const plain = (secure as tls.TLSSocket & { _parent?: unknown })._parent;
      if (plain instanceof net.Socket && Object.hasOwn(plain, 'remoteAddress')) {
        adoptClientAddress(secure, plain.remoteAddress!, plain.remotePort!, plain.remoteFamily!);
      }
    }
    if (secure.alpnProtocol === 'h2') {
      serveH2(this.http2Server(), secure);
      return;
    }
    const conn = new H1Connection(this, secure, true);
    this.h1.add(conn);
    conn.consumeReads();
  }

  h1Closed(conn: H1Connection): void {
    this.h1.delete(conn);
  }

  sessionOpened(session: http2.ServerHttp2Session): void {
    this.stats.http2Connections++;
    this.sessions.add(session);
    // Opened during the drain: GOAWAY at once (its streams are refused, so clients retry them).
    if (this.core.draining) session.close();
  }

  sessionClosed(session: http2.ServerHttp2Session): void {
    if (this.sessions.delete(session)) this.stats.http2Connections--;
  }
}

function noop(): void {}

/** How long a connection that has sent nothing yet may still send its first request once a drain began. */
const SILENT_DRAIN_GRACE_MS = 1000;

function closeSilentSockets(sockets: ChurnSet<AcceptedSocket>): void {
  for (const socket of sockets) if (socket[kSniff] !== undefined) socket.destroy();
}

const LISTEN_ERRORS: Record<string, string> = {
  EADDRINUSE: 'address already in use',
  EACCES: 'permission denied',
  EADDRNOTAVAIL: 'address not available',
};

/** A listen failure as an Error that names the address and carries the system code as `.code`. */
function listenError(err: NodeJS.ErrnoException, host: string, port: number): Error {
  if (typeof err.code !== 'string' || err.syscall !== 'listen') return err;
  const what = LISTEN_ERRORS[err.code] ?? err.message;
  const address = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  const out = new Error(`cannot listen on ${address}: ${what} (${err.code})`, { cause: err }) as NodeJS.ErrnoException;
  out.code = err.code;
  out.errno = err.errno;
  out.syscall = err.syscall;
  return out;
}

function tunnelSocketOnClose(this: AcceptedSocket): void {
  const server = this[kServer];
  server.tunnelClosed();
  // Each a no-op for a socket not in its set (a TLS client's socket is the TLSSocket).
  server.acceptedClosed(this);
  server.servedClosed(this);
}

function serverOnError(this: net.Server & { [kServer]: ProxyServer }, err: NodeJS.ErrnoException): void {
  this[kServer].listenerError(err);
}

function serverOnConnection(this: net.Server & { [kServer]: ProxyServer }, socket: net.Socket): void {
  this[kServer].accept(socket as AcceptedSocket);
}

function proxyHeaderOnData(this: AcceptedSocket, chunk: Buffer): void {
  this[kServer].proxyHeader(this, chunk);
}

/** The client a PROXY protocol header named, in place of the peer the kernel reports. */
function adoptClientAddress(socket: net.Socket, address: string, port: number, family: string): void {
  Object.defineProperty(socket, 'remoteAddress', { value: address, configurable: true });
  Object.defineProperty(socket, 'remotePort', { value: port, configurable: true });
  Object.defineProperty(socket, 'remoteFamily', { value: family, configurable: true });
}

function sniffOnData(this: AcceptedSocket, chunk: Buffer): void {
  this[kServer].sniffed(this, chunk);
}

function tlsOnSecureConnection(this: tls.Server & { [kServer]: ProxyServer }, secure: tls.TLSSocket): void {
  this[kServer].tlsReady(secure);
}

function tlsOnClientError(this: tls.Server & { [kServer]: ProxyServer }, err: NodeJS.ErrnoException, secure: tls.TLSSocket): void {
  const server = this[kServer];
  if (err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT') server.core.stats.requestHeadersTimeouts++;
  else server.core.stats.parseErrors++;
  secure.destroy();
}

function sniffDeadline(socket: AcceptedSocket): void {
  socket[kSniffTimer] = null;
  // Already decided (the timer is cleared then) or gone.
  if (socket[kSniff] === undefined || socket.destroyed) return;
  socket[kServer].core.stats.requestHeadersTimeouts++;
  socket.destroy();
}

function servedSocketOnClose(this: AcceptedSocket): void {
  this[kServer].servedClosed(this);
}

function queuedSocketOnClose(this: AcceptedSocket): void {
  this[kServer].queuedClosed(this);
}

function queuedTimedOut(server: ProxyServer, socket: AcceptedSocket): void {
  server.queuedTimedOut(socket);
}

function acceptedSocketOnClose(this: AcceptedSocket): void {
  this[kServer].acceptedClosed(this);
}

/**
 * Writes a last answer and closes once it is flushed. Reads (and drops) what the client still
 * sends, so the close is a FIN and the client gets to read the answer; bounded by a timer.
 */
function endAndLinger(socket: net.Socket, data: Buffer): void {
  socket.removeAllListeners('data');
  socket.on('data', ignoreError);
  socket.resume();
  socket.end(data);
  socket.setTimeout(5_000, destroySocket);
}

function destroyOnError(this: net.Socket): void {
  this.destroy();
}

function destroySocket(this: net.Socket): void {
  this.destroy();
}

function ignoreError(): void {
  // 'close' follows every socket error; accounting happens there.
}

/** Creates a proxy; options are validated now (TypeError naming the bad option). */
export function createProxyServer(options: ProxyOptions): ProxyServer {
  return new ProxyServer(options);
}
