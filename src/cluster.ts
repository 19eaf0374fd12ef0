import type { Worker } from 'node:cluster';
import { cluster as loadCluster } from './builtins.js';
import type http from 'node:http';
import type net from 'node:net';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { adminHttpServer, adminPath, PROMETHEUS, send, TEXT } from './admin.js';
import { crypto as loadCrypto } from './builtins.js';
import { createLogger, type Logger } from './log.js';
import { resolveOptions, OptionError, type ProxyOptions } from './options.js';
import { ProxyServer, type ProxyAddress } from './server.js';
import type { ProxyStats } from './stats.js';

/**
 * Several worker processes on one port (node:cluster). The primary only supervises: it forks the
 * workers (each runs the same script, so each calls startCluster() and gets a ProxyServer),
 * restarts one that dies with a back-off, serves the admin listener with the workers' figures,
 * and forwards signals. createProxyServer() stays single-process.
 */
export interface ClusterOptions extends ProxyOptions {
  /** Worker processes: a number, or 'auto' for os.availableParallelism(). */
  workers: number | 'auto';
  /** SIGTERM/SIGINT stop every worker then exit, SIGUSR1 reopens the access logs. Default true. */
  handleSignals?: boolean;
  /**
   * A listening worker that has not answered the primary's ping for this long (its event loop
   * stuck) is killed and started again. Default 10,000 ms; 0 turns the watchdog off.
   */
  workerWatchdogMs?: number;
}

/** getStats() of a cluster: the workers' figures summed, and each worker's own. */
export interface ClusterStats extends ProxyStats {
  workers: (ProxyStats & { worker: number; pid: number })[];
  /** Workers that died and were started again since startCluster(). */
  workerRestarts: number;
}

/** Set in a worker's environment by the primary once the port is known: the port the worker binds. */
const ENV_PORT = 'CMUX_CLUSTER_PORT';
/** Set in a worker's environment by the primary: '1' when the workers bind with reusePort. */
const ENV_REUSEPORT = 'CMUX_CLUSTER_REUSEPORT';
/** The secret the workers derive TLS session ticket keys from (hex), so tickets resume on any worker. */
const ENV_TICKET_SECRET = 'CMUX_CLUSTER_TLS_TICKET_SECRET';
/** Overrides the choice of scheduling: 'reuseport' or 'round-robin'. */
export const ENV_SCHEDULING = 'CMUX_PROXY_CLUSTER_SCHEDULING';
/** A worker that lived this long before dying starts its back-off again from the shortest delay. */
const STABLE_MS = 10_000;
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 10_000;
/** How long the primary waits for a worker's figures before leaving it out. */
const STATS_TIMEOUT_MS = 2_000;
const WATCHDOG_DEFAULT_MS = 10_000;


/**
 * `reusePort` in net.Server.listen() exists from Node 22.12 and 23.1: each worker binds the port
 * itself and the kernel spreads new connections. Before that the primary accepts every
 * connection and hands it to a worker in turn (cluster.SCHED_RR).
 */
export function hasReusePort(version: string = process.versions.node): boolean {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}

/**
 * Whether the workers bind with reusePort. When a reusePort socket closes (a worker stopping,
 * replaced or dead), Linux resets the connections still waiting in its accept queue unless
 * `net.ipv4.tcp_migrate_req` is 1 (Linux 5.14+), which hands them to the group's other sockets.
 * So: reusePort where Node has it and the kernel migrates; round-robin by the primary otherwise.
 * CMUX_PROXY_CLUSTER_SCHEDULING=reuseport|round-robin overrides the choice.
 */
export function useReusePort(env: NodeJS.ProcessEnv = process.env): boolean {
  const forced = env[ENV_SCHEDULING];
  if (forced === 'round-robin') return false;
  if (!hasReusePort()) return false;
  if (forced === 'reuseport') return true;
  try {
    return readFileSync('/proc/sys/net/ipv4/tcp_migrate_req', 'latin1').trim() === '1';
  } catch {
    return false;
  }
}

interface Slot {
  slot: number;
  worker: Worker | null;
  pid: number;
  listening: boolean;
  startedAt: number;
  /** Deaths in a row, each within STABLE_MS of its start. */
  failures: number;
  /** When the worker last answered a watchdog ping (or started listening). */
  lastPong: number;
  timer: NodeJS.Timeout | null;
}

type Message =
  | { cmux: 'listening'; address: ProxyAddress }
  | { cmux: 'failed'; message: string; code?: string }
  | { cmux: 'stats'; seq: number; stats: ProxyStats; metrics: string | null; ready: boolean }
  | { cmux: 'pong' };

/** Validates `workers`; the other options are validated as createProxyServer's. */
export function resolveWorkers(value: unknown): number {
  if (value === 'auto') return os.availableParallelism();
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 1024) {
    throw new OptionError('workers', value, "an integer from 1 to 1024 or 'auto'");
  }
  return value;
}

/**
 * In the primary: forks the workers and resolves with the ProxyCluster once all listen (rejects,
 * with every worker stopped, when one cannot start). In a worker: starts that worker's proxy and
 * resolves null.
 */
export async function startCluster(options: ClusterOptions): Promise<ProxyCluster | null> {
  const { workers, handleSignals, workerWatchdogMs, ...proxyOptions } = options;
  const count = resolveWorkers(workers);
  const watchdogMs = workerWatchdogMs ?? WATCHDOG_DEFAULT_MS;
  if (typeof watchdogMs !== 'number' || !Number.isInteger(watchdogMs) || watchdogMs < 0 || (watchdogMs > 0 && watchdogMs < 200) || watchdogMs > 3_600_000) {
    throw new OptionError('workerWatchdogMs', watchdogMs, 'an integer from 200 to 3600000, or 0 (off)');
  }
  // Bad options fail here, in the primary, before anything is forked.
  resolveOptions(proxyOptions);
  if (loadCluster().isWorker) {
    await runWorker(proxyOptions, handleSignals !== false);
    return null;
  }
  const c = new ProxyCluster(proxyOptions, count, watchdogMs);
  await c.start();
  if (handleSignals !== false) c.handleSignals();
  return c;
}

async function runWorker(options: ProxyOptions, handleSignals: boolean): Promise<void> {
  const { adminPort, ...rest } = options;
  const fixedPort = process.env[ENV_PORT];
  const reusePort = process.env[ENV_REUSEPORT] === '1';
  const secret = process.env[ENV_TICKET_SECRET];
  // not left for the processes a worker's code may start
  delete process.env[ENV_TICKET_SECRET];
  const proxy = new ProxyServer(
    { ...rest, listenPort: fixedPort === undefined ? rest.listenPort : Number(fixedPort) },
    // The primary serves the admin listener; the worker keeps the histograms it asks for.
    { observe: adminPort !== undefined, reusePort, ticketSecret: secret === undefined ? undefined : Buffer.from(secret, 'hex') },
  );
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    proxy.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('message', (m: { cmux?: string; seq?: number }) => {
    switch (m?.cmux) {
      case 'stop':
        stop();
        return;
      case 'ping':
        process.send?.({ cmux: 'pong' });
        return;
      case 'stats':
        process.send?.({ cmux: 'stats', seq: m.seq, stats: proxy.getStats(), metrics: proxy.metricsText(), ready: proxy.isReady() });
        return;
      case 'reopen':
        try {
          proxy.reopenAccessLog();
        } catch (err) {
          proxy.core.log.error(`cannot reopen the access log: ${(err as Error).message}`);
        }
        return;
      default:
    }
  });
  // The primary is gone (killed): nothing supervises this worker any more.
  process.on('disconnect', stop);
  if (handleSignals) {
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  }
  try {
    await proxy.start();
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    process.send?.({ cmux: 'failed', message: e.message, code: e.code });
    process.exit(1);
  }
  process.send?.({ cmux: 'listening', address: proxy.address() });
}

export class ProxyCluster {
  readonly size: number;
  private readonly options: ProxyOptions;
  private readonly log: Logger;
  private readonly slots: Slot[] = [];
  private stopping: Promise<void> | null = null;
  /** The restart whose new workers are being started now (its old ones may drain after it). */
  private replacing: Promise<void> | null = null;
  /** A restart asked for while another was starting workers: it runs once that one is through. */
  private queuedRestart: Promise<void> | null = null;
  /** Restarts not settled yet (old workers still draining included): stop() waits for them. */
  private readonly rolling = new Set<Promise<void>>();
  private port: number;
  /** Round-robin: the port the workers ask for (0 at first for `listenPort: 0`). */
  private rrPort: number;
  /** Given to every worker (restarts too), so TLS sessions resume across workers. */
  private readonly ticketSecret: string | null;
  private boundAddress: ProxyAddress | null = null;
  private restarts = 0;
  private admin: http.Server | null = null;
  private seq = 0;
  private readonly pendingStats = new Map<number, (m: Extract<Message, { cmux: 'stats' }> | null) => void>();
  /** Settles a start of `slots` (all at first, one per step of a restart): resolve when they all listen, reject on the first failure. */
  private startWaiter: { slots: ReadonlySet<Slot>; resolve: () => void; reject: (err: Error) => void } | null = null;
  private readonly reusePort = useReusePort();
  private readonly watchdogMs: number;
  private watchdog: NodeJS.Timeout | null = null;

  constructor(options: ProxyOptions, size: number, watchdogMs = WATCHDOG_DEFAULT_MS) {
    this.watchdogMs = watchdogMs;
    const resolved = resolveOptions(options);
    this.options = options;
    this.size = size;
    this.port = resolved.listenPort;
    this.rrPort = resolved.listenPort;
    this.log = createLogger(resolved.logLevel, resolved.logger);
    for (let i = 1; i <= size; i++) this.slots.push({ slot: i, worker: null, pid: 0, listening: false, startedAt: 0, failures: 0, lastPong: 0, timer: null });
    this.ticketSecret = resolved.tls === undefined ? null : loadCrypto().randomBytes(32).toString('hex');
  }

  async start(): Promise<void> {
    // Round-robin by the primary without reusePort: Node's default on Linux, set here
    // so that NODE_CLUSTER_SCHED_POLICY cannot change it.
    if (!this.reusePort) loadCluster().schedulingPolicy = loadCluster().SCHED_RR;
    try {
      if (this.reusePort && this.port === 0) {
        // Each reusePort socket picks its own port for 0: the first worker picks, the rest join it.
        await this.startSlots(this.slots.slice(0, 1));
        this.port = this.boundAddress!.port;
        await this.startSlots(this.slots.slice(1));
      } else await this.startSlots(this.slots);
      await this.startAdmin();
      if (this.watchdogMs > 0) {
        this.watchdog = setInterval(() => this.checkWorkers(), Math.max(50, Math.floor(this.watchdogMs / 4)));
        this.watchdog.unref();
      }
    } catch (err) {
      await this.stop();
      throw err;
    }
    const a = this.boundAddress!;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    this.log.info(`cluster: ${this.size} worker(s) on ${host}:${a.port} (${this.reusePort ? 'reusePort: the kernel spreads connections' : 'round-robin by the primary'})`);
  }

  private startSlots(slots: Slot[]): Promise<void> {
    if (slots.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.startWaiter = { slots: new Set(slots), resolve, reject };
      for (const s of slots) this.fork(s);
    }).finally(() => {
      this.startWaiter = null;
    });
  }

  private fork(s: Slot): void {
    s.timer = null;
    const env: Record<string, string> = { [ENV_REUSEPORT]: this.reusePort ? '1' : '0' };
    if (this.ticketSecret !== null) env[ENV_TICKET_SECRET] = this.ticketSecret;
    if (this.reusePort) {
      if (this.port !== 0) env[ENV_PORT] = String(this.port);
    } else {
      // Round-robin: workers asking for the same port share the primary's socket for it, which
      // closes when the last of them is gone; asking for 0 again would then get a new port. A
      // worker started when none is left asks for the port the cluster listens on.
      if (this.boundAddress !== null && this.slots.every((x) => x.worker === null)) this.rrPort = this.boundAddress.port;
      if (this.rrPort !== 0) env[ENV_PORT] = String(this.rrPort);
    }
    const worker = loadCluster().fork(env);
    s.worker = worker;
    s.pid = worker.process.pid ?? 0;
    s.listening = false;
    s.startedAt = Date.now();
    worker.on('message', (m: Message) => this.onMessage(s, worker, m));
    worker.on('exit', (code, signal) => this.onExit(s, worker, code, signal));
    // A message to a worker that is exiting fails with EPIPE; its 'exit' follows.
    worker.on('error', ignore);
  }

  private onMessage(s: Slot, worker: Worker, m: Message): void {
    if (s.worker !== worker) return;
    switch (m?.cmux) {
      case 'listening':
        s.listening = true;
        s.lastPong = Date.now();
        this.boundAddress ??= m.address;
        // Only the slots being started count: another slot's worker coming back from a crash neither holds nor settles it.
        if (this.startWaiter !== null && this.startWaiter.slots.has(s)) {
          for (const x of this.startWaiter.slots) if (!x.listening) return;
          this.startWaiter.resolve();
        }
        return;
      case 'failed':
        if (this.startWaiter !== null && this.startWaiter.slots.has(s)) {
          const err = new Error(m.message) as NodeJS.ErrnoException;
          if (m.code !== undefined) err.code = m.code;
          this.startWaiter.reject(err);
        } else this.log.error(`worker ${s.slot} (pid ${s.pid}) cannot start: ${m.message}`);
        return;
      case 'stats':
        this.pendingStats.get(m.seq)?.(m);
        return;
      case 'pong':
        s.lastPong = Date.now();
        return;
      default:
    }
  }

  private onExit(s: Slot, worker: Worker, code: number | null, signal: string | null): void {
    if (s.worker !== worker) return;
    const wasListening = s.listening;
    s.worker = null;
    s.listening = false;
    // A worker being started (first start or a step of restart()) that dies fails that start,
    // also while stopping (the start must settle for stop() to end); any other worker is
    // started again below, unless the cluster is stopping.
    if (this.startWaiter !== null && this.startWaiter.slots.has(s) && !wasListening) {
      this.startWaiter.reject(new Error(`worker ${s.slot} exited before listening (${signal ?? `code ${code}`})`));
      return;
    }
    if (this.stopping !== null) return;
    this.scheduleRestart(s, `exited (${signal ?? `code ${code}`})`);
  }

  /**
   * Watchdog: pings every listening worker; one silent for `watchdogMs` (a stuck event loop: it
   * still holds connections the primary hands it, and answers none) is killed, and its exit
   * starts it again as any death does.
   */
  private checkWorkers(): void {
    if (this.stopping !== null) return;
    const now = Date.now();
    for (const s of this.slots) {
      const worker = s.worker;
      if (worker === null || !s.listening) continue;
      if (now - s.lastPong > this.watchdogMs) {
        this.log.error(`worker ${s.slot} (pid ${s.pid}) has not answered for ${now - s.lastPong} ms; killing it`);
        s.lastPong = now;
        worker.process.kill('SIGKILL');
        continue;
      }
      try {
        worker.send({ cmux: 'ping' });
      } catch {
        // Exiting: its 'exit' follows.
      }
    }
  }

  /** Starts the slot's worker again after its back-off delay. */
  private scheduleRestart(s: Slot, why: string): void {
    s.failures = Date.now() - s.startedAt >= STABLE_MS ? 1 : s.failures + 1;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (s.failures - 1));
    this.restarts++;
    this.log.warn(`worker ${s.slot} (pid ${s.pid}) ${why}; starting it again in ${delay} ms`);
    s.timer = setTimeout(() => this.fork(s), delay);
  }

  /** Process ids of the workers running now, by slot (0 while one is being restarted). */
  workerPids(): number[] {
    return this.slots.map((s) => (s.worker === null ? 0 : s.pid));
  }

  /** The shared listening address. */
  address(): ProxyAddress | null {
    return this.boundAddress;
  }

  /** The primary's admin listener, when `adminPort` is set. */
  adminAddress(): ProxyAddress | null {
    const a = this.admin?.address() as net.AddressInfo | null | undefined;
    return a == null ? null : { address: a.address, port: a.port, family: a.family };
  }

  /** Each worker's figures (workers that do not answer within 2 s are left out) and their sum. */
  async getStats(): Promise<ClusterStats> {
    const replies = await this.collect();
    const sum = sumStats(replies.map((r) => r.stats));
    return {
      ...sum,
      workers: replies.map((r) => ({ worker: r.slot, pid: r.pid, ...r.stats })),
      workerRestarts: this.restarts,
    };
  }

  private collect(): Promise<{ slot: number; pid: number; stats: ProxyStats; metrics: string | null; ready: boolean }[]> {
    const live = this.slots.filter((s) => s.worker !== null && s.listening);
    return Promise.all(
      live.map(
        (s) =>
          new Promise<{ slot: number; pid: number; stats: ProxyStats; metrics: string | null; ready: boolean } | null>((resolve) => {
            const seq = ++this.seq;
            const timer = setTimeout(() => done(null), STATS_TIMEOUT_MS);
            const done = (m: Extract<Message, { cmux: 'stats' }> | null): void => {
              clearTimeout(timer);
              this.pendingStats.delete(seq);
              resolve(m === null ? null : { slot: s.slot, pid: s.pid, stats: m.stats, metrics: m.metrics, ready: m.ready });
            };
            this.pendingStats.set(seq, done);
            try {
              s.worker!.send({ cmux: 'stats', seq });
            } catch {
              done(null);
            }
          }),
      ),
    ).then((all) => all.filter((r) => r !== null));
  }

  /**
   * Replaces the workers one at a time: a new worker starts (reading the script's configuration,
   * the config file and the certificates afresh) and listens, then the old one drains as
   * ProxyServer.stop() does. Resolves when every old worker has exited; rejects, keeping the old
   * worker of that slot and the ones not yet replaced, when a new one cannot start. A call while
   * one is starting its new workers runs another restart once that is through, so every worker
   * ends up with what was there at the last call (calls meanwhile share that one).
   */
  restart(): Promise<void> {
    if (this.queuedRestart !== null) return this.queuedRestart;
    const current = this.replacing;
    if (current === null) return this.roll();
    const queued = current.catch(ignore).then(() => {
      this.queuedRestart = null;
      return this.roll();
    });
    this.queuedRestart = queued;
    return queued;
  }

  /** One restart: replaces every slot's worker, then waits for the old ones to exit. */
  private roll(): Promise<void> {
    if (this.stopping !== null) return Promise.resolve();
    const exits: Promise<void>[] = [];
    const replacing = this.replaceAll(exits);
    this.replacing = replacing;
    const done = replacing
      .finally(() => {
        if (this.replacing === replacing) this.replacing = null;
        return Promise.all(exits);
      })
      .then(() => this.log.info(`cluster: ${this.size} worker(s) replaced`));
    this.rolling.add(done);
    done.catch(ignore).finally(() => this.rolling.delete(done));
    return done;
  }

  /** Starts each slot's new worker in turn; `exits` gets each old worker's drain. */
  private async replaceAll(exits: Promise<void>[]): Promise<void> {
    for (const s of this.slots) {
      if (this.stopping !== null) break;
      const old = s.worker;
      if (s.timer !== null) {
        // Waiting for a restart after a crash: start it now.
        clearTimeout(s.timer);
        s.timer = null;
      }
      try {
        await this.startSlots([s]);
      } catch (err) {
        const failed = s.worker;
        s.worker = old;
        s.listening = old !== null;
        s.pid = old?.process.pid ?? 0;
        failed?.process.kill('SIGKILL');
        if (this.stopping !== null) {
          // stop() came during this step and stopped the new worker, not the old one.
          if (old !== null) exits.push(this.stopWorker(old, resolveOptions(this.options).drainTimeoutMs + 5_000));
        } else if (old === null) {
          // The slot was waiting to come back from a crash: it keeps doing so.
          this.scheduleRestart(s, 'did not start in the restart');
        }
        throw err;
      }
      if (old !== null) exits.push(this.stopWorker(old, resolveOptions(this.options).drainTimeoutMs + 5_000));
    }
  }

  /** Asks a worker to drain and exit; resolves once it has (killed after `graceMs`). */
  private stopWorker(worker: Worker, graceMs: number): Promise<void> {
    return new Promise<void>((resolve) => {
      if (worker.process.exitCode !== null || worker.process.signalCode !== null) return resolve();
      const kill = setTimeout(() => worker.process.kill('SIGKILL'), graceMs);
      worker.process.once('exit', () => {
        clearTimeout(kill);
        resolve();
      });
      try {
        worker.send({ cmux: 'stop' });
      } catch {
        worker.process.kill('SIGTERM');
      }
    });
  }

  /** Asks every worker to reopen its access log file (after rotation). */
  reopenAccessLogs(): void {
    for (const s of this.slots) if (s.worker !== null) s.worker.send({ cmux: 'reopen' });
  }

  /**
   * Stops every worker gracefully (each drains as ProxyServer.stop() does) and the admin
   * listener; resolves when all have exited. A worker still running `drainTimeoutMs` + 5 s
   * later is killed.
   */
  stop(): Promise<void> {
    return (this.stopping ??= this.stopAll());
  }

  private async stopAll(): Promise<void> {
    if (this.watchdog !== null) clearInterval(this.watchdog);
    this.watchdog = null;
    const exits: Promise<void>[] = [];
    const grace = resolveOptions(this.options).drainTimeoutMs + 5_000;
    for (const s of this.slots) {
      if (s.timer !== null) clearTimeout(s.timer);
      s.timer = null;
      if (s.worker !== null) exits.push(this.stopWorker(s.worker, grace));
    }
    await Promise.all(exits);
    // A rolling restart in progress has its old workers draining: wait for them too.
    await this.queuedRestart?.catch(ignore);
    await Promise.all([...this.rolling].map((p) => p.catch(ignore)));
    const admin = this.admin;
    this.admin = null;
    if (admin !== null) {
      admin.closeAllConnections();
      await new Promise<void>((resolve) => admin.close(() => resolve()));
    }
    this.log.info('cluster: stopped');
  }

  /**
   * SIGTERM/SIGINT: stop, then exit 0 (a second signal exits at once with 1); SIGHUP: restart()
   * (replace the workers one at a time); SIGUSR1: reopen the access logs.
   */
  handleSignals(): void {
    let signalled = false;
    const onStop = (signal: string): void => {
      if (signalled) {
        process.stderr.write(`cmux-proxy: second ${signal}, exiting now\n`);
        process.exit(1);
      }
      signalled = true;
      this.stop().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    };
    process.on('SIGTERM', onStop);
    process.on('SIGINT', onStop);
    process.on('SIGUSR1', () => this.reopenAccessLogs());
    process.on('SIGHUP', () => {
      this.restart().catch((err: unknown) => this.log.error(`restart failed, the remaining workers are kept: ${(err as Error).message}`));
    });
  }

  private async startAdmin(): Promise<void> {
    const resolved = resolveOptions(this.options);
    if (resolved.adminPort === undefined) return;
    const server = adminHttpServer((req, res) => {
      this.handleAdmin(req, res).catch(() => res.destroy());
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: resolved.adminPort, host: resolved.adminHost }, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    server.on('error', () => {});
    this.admin = server;
    const a = server.address() as net.AddressInfo;
    this.log.info(`admin on ${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`);
  }

  /** The admin listener of ProxyServer, over the workers: /stats sums them, /metrics labels each series with its worker. */
  private async handleAdmin(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = adminPath(req, res);
    if (path === null) return;
    switch (path) {
      case '/metrics': {
        const replies = await this.collect();
        send(res, 200, PROMETHEUS, mergeMetrics(replies, this.slots.filter((s) => s.worker !== null).length, this.restarts));
        return;
      }
      case '/healthz':
        send(res, 200, TEXT, 'ok\n');
        return;
      case '/readyz': {
        // Ready while some worker listens and the cluster is not stopping.
        const ready = this.stopping === null && (await this.collect()).some((r) => r.ready);
        if (ready) send(res, 200, TEXT, 'ready\n');
        else send(res, 503, TEXT, 'not ready\n');
        return;
      }
      case '/stats':
        send(res, 200, 'application/json', `${JSON.stringify(await this.getStats())}\n`);
        return;
      default:
        send(res, 404, TEXT, 'not found: /metrics, /healthz, /readyz, /stats\n');
    }
  }
}

/** Every numeric field summed; upstreamErrors summed per code. */
export function sumStats(all: ProxyStats[]): ProxyStats {
  const out: Record<string, unknown> = {};
  const errors: Record<string, number> = {};
  for (const stats of all) {
    for (const [key, value] of Object.entries(stats)) {
      if (typeof value === 'number') out[key] = ((out[key] as number | undefined) ?? 0) + value;
    }
    for (const [code, n] of Object.entries(stats.upstreamErrors)) errors[code] = (errors[code] ?? 0) + n;
  }
  out['upstreamErrors'] = errors;
  return out as unknown as ProxyStats;
}

/**
 * The workers' Prometheus texts as one: each family's HELP and TYPE once, then every worker's
 * samples with a `worker` label (1..N); `sum without (worker)` gives the whole proxy. Plus
 * cmux_proxy_workers and cmux_proxy_worker_restarts_total.
 */
export function mergeMetrics(replies: { slot: number; metrics: string | null }[], live: number, restarts: number): string {
  const families = new Map<string, { head: string[]; samples: string[] }>();
  for (const r of replies) {
    if (r.metrics === null) continue;
    let current: { head: string[]; samples: string[] } | undefined;
    for (const line of r.metrics.split('\n')) {
      if (line === '') continue;
      if (line.startsWith('# ')) {
        const name = line.split(' ')[2]!;
        current = families.get(name);
        if (current === undefined) {
          current = { head: [], samples: [] };
          families.set(name, current);
        }
        if (current.head.length < 2 && !current.head.includes(line)) current.head.push(line);
        continue;
      }
      const brace = line.indexOf('{');
      const space = line.indexOf(' ');
      const label = `worker="${r.slot}"`;
      const labelled = brace !== -1 && brace < space ? `${line.slice(0, brace + 1)}${label},${line.slice(brace + 1)}` : `${line.slice(0, space)}{${label}}${line.slice(space)}`;
      current?.samples.push(labelled);
    }
  }
  const out: string[] = [
    '# HELP cmux_proxy_workers Worker processes running now.',
    '# TYPE cmux_proxy_workers gauge',
    `cmux_proxy_workers ${live}`,
    '# HELP cmux_proxy_worker_restarts_total Workers that died and were started again.',
    '# TYPE cmux_proxy_worker_restarts_total counter',
    `cmux_proxy_worker_restarts_total ${restarts}`,
  ];
  for (const f of families.values()) out.push(...f.head, ...f.samples);
  out.push('');
  return out.join('\n');
}

function ignore(): void {}
