import type net from 'node:net';
import type { Logger } from '../log.js';
import type { ResolvedRoute, ResolvedUpstream } from '../options.js';
import { hostName } from '../route/host-patterns.js';
import { socketTarget, tcpTarget, tlsTarget, type Target } from '../route/target.js';
import { ALPN_HTTP1, readyEvent, type UpstreamConnector } from './connect.js';
import type { RouteUpstreamStats, StatsCounters } from '../stats.js';
import { RateLimiter } from '../rate-limit.js';

/** Circuit states of one upstream of a group. */
export const CIRCUIT_CLOSED = 0;
export const CIRCUIT_OPEN = 1;
export const CIRCUIT_HALF_OPEN = 2;
const STATE_NAMES = ['closed', 'open', 'half-open'] as const;

/** How an exchange with a group member ended, for passive health. */
export const OUTCOME_OK = 0;
export const OUTCOME_FAILED = 1;
/** Nothing learnt about the upstream (client went away, the proxy's own limits). */
export const OUTCOME_NEUTRAL = 2;

const BALANCE_RR = 0;
const BALANCE_LEAST = 1;
const BALANCE_HASH = 2;

/** 32-bit FNV-1a of a string's UTF-16 code units. */
function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** murmur3's 32-bit finaliser: spreads every input bit over the output. */
function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

/** One upstream of a route's group: its target, load and circuit state. */
export class GroupMember {
  readonly group: UpstreamGroup;
  readonly address: string;
  readonly target: Target;
  readonly weight: number;
  /** Rendezvous-hash seed: from the address, so a key maps the same way after a reload. */
  readonly seed: number;
  /** Exchanges in flight and tunnels open to it (least-connections). */
  inFlight = 0;
  /** Smooth weighted round-robin's running weight. */
  current = 0;
  state = CIRCUIT_CLOSED;
  /** Failures in a row while closed. */
  failures = 0;
  /** Times opened in a row without a success: the open time doubles with each. */
  opens = 0;
  /** Date.now() until which an open circuit refuses requests. */
  openUntil = 0;
  /** Requests let through while half-open. */
  probes = 0;
  /** The last active check failed. */
  activeDown = false;
  /** Times the circuit opened (stats). */
  openings = 0;

  constructor(group: UpstreamGroup, address: string, target: Target, weight: number) {
    this.group = group;
    this.address = address;
    this.target = target;
    this.weight = weight;
    this.seed = fnv1a(address);
  }
}


/** The shared state of every group: counters and the logger. */
export interface GroupContext {
  readonly stats: StatsCounters;
  readonly log: Logger;
  /** Opens the active checks' connections (TLS ones with the proxy's certificate rules). */
  readonly connector: UpstreamConnector;
  /** The `upstreamTls` option: the default for upstreams that do not say. */
  readonly options: { readonly upstreamTls: boolean };
}

/**
 * A route's upstreams with their balancing policy, passive health (a circuit per upstream) and
 * optional active checks.
 */
export class UpstreamGroup {
  readonly kind = 'group';
  readonly label: string;
  readonly members: GroupMember[];
  private readonly balance: number;
  readonly hashHeader: string | null;
  private readonly failureThreshold: number;
  private readonly openMs: number;
  private readonly maxOpenMs: number;
  private readonly halfOpenProbes: number;
  readonly healthCheck: ResolvedRoute['healthCheck'];
  private readonly ctx: GroupContext;
  /** Opens the active checks' connections. */
  readonly connector: UpstreamConnector;
  /** Members whose circuit is not closed: the clock is read only when some are. */
  private notClosed = 0;
  /** Least-connections: where the scan for the least loaded starts (spreads ties). */
  private cursor = 0;
  private checkTimer: NodeJS.Timeout | null = null;
  /** The route's own `rateLimit` buckets, or null. */
  readonly rateLimiter: RateLimiter | null;

  constructor(route: ResolvedRoute, ctx: GroupContext) {
    this.label = route.host + route.pathPrefix;
    this.ctx = ctx;
    this.connector = ctx.connector;
    this.balance = route.balance === 'hash' ? BALANCE_HASH : route.balance === 'least-connections' ? BALANCE_LEAST : BALANCE_RR;
    this.hashHeader = route.hashHeader;
    const cb = route.circuitBreaker;
    this.failureThreshold = cb.failures;
    this.openMs = cb.openMs;
    this.maxOpenMs = cb.maxOpenMs;
    this.halfOpenProbes = cb.halfOpenProbes;
    this.healthCheck = route.healthCheck;
    this.rateLimiter = route.rateLimit === undefined ? null : new RateLimiter(route.rateLimit, 'route');
    this.members = route.upstreams.map(
      (u) => new GroupMember(this, u.address, memberTarget(u, ctx.options.upstreamTls), u.weight),
    );
  }

  /** Whether `m` may take a request now (moves an open circuit whose time is up to half-open). */
  private available(m: GroupMember, now: number): boolean {
    if (m.activeDown) return false;
    switch (m.state) {
      case CIRCUIT_CLOSED:
        return true;
      case CIRCUIT_OPEN:
        if (now < m.openUntil) return false;
        m.state = CIRCUIT_HALF_OPEN;
        m.probes = 0;
        this.ctx.log.info(`route ${this.label}: upstream ${m.address} half-open`);
        return true;
      default:
        return m.probes < this.halfOpenProbes;
    }
  }

  /**
   * The member for a request, or null when none is available (every circuit open or every
   * active check failing). `exclude` lists members already tried for this request.
   */
  pick(clientAddress: string, raw: readonly string[], exclude: readonly GroupMember[] | null): GroupMember | null {
    const members = this.members;
    const n = members.length;
    const now = this.notClosed > 0 ? Date.now() : 0;
    let best: GroupMember | null = null;
    if (this.balance === BALANCE_RR) {
      // Smooth weighted round-robin (nginx): every available member gains its weight, the
      // highest runs, and gives back the total.
      let total = 0;
      for (let i = 0; i < n; i++) {
        const m = members[i]!;
        if (!this.available(m, now) || (exclude !== null && exclude.includes(m))) continue;
        m.current += m.weight;
        total += m.weight;
        if (best === null || m.current > best.current) best = m;
      }
      if (best !== null) best.current -= total;
    } else if (this.balance === BALANCE_LEAST) {
      // Fewest in flight per unit of weight; the scan starts one further each time so ties rotate.
      const start = this.cursor++ % n;
      if (this.cursor >= n) this.cursor = 0;
      let bestLoad = Infinity;
      for (let k = 0; k < n; k++) {
        const m = members[(start + k) % n]!;
        if (!this.available(m, now) || (exclude !== null && exclude.includes(m))) continue;
        const load = m.inFlight / m.weight;
        if (load < bestLoad) {
          bestLoad = load;
          best = m;
        }
      }
    } else {
      // Weighted rendezvous hashing: the highest score for this key wins, so adding or removing
      // an upstream moves only the keys it wins or held.
      const h = fnv1a(this.hashKey(clientAddress, raw));
      let bestScore = -1;
      for (let i = 0; i < n; i++) {
        const m = members[i]!;
        if (!this.available(m, now) || (exclude !== null && exclude.includes(m))) continue;
        const u = (mix32(h ^ m.seed) + 1) / 4294967297;
        const score = m.weight / -Math.log(u);
        if (score > bestScore) {
          bestScore = score;
          best = m;
        }
      }
    }
    if (best === null) return null;
    if (best.state === CIRCUIT_HALF_OPEN) best.probes++;
    best.inFlight++;
    return best;
  }

  /**
   * The hash key: the header's value (several fields of that name joined with ", ", as a list
   * field combines, RFC 9110 §5.3), else the client address.
   */
  private hashKey(clientAddress: string, raw: readonly string[]): string {
    const name = this.hashHeader;
    if (name === null) return clientAddress;
    let key: string | null = null;
    for (let i = 0; i < raw.length; i += 2) {
      const field = raw[i]!;
      if (field.length !== name.length || field.toLowerCase() !== name) continue;
      key = key === null ? raw[i + 1]! : `${key}, ${raw[i + 1]!}`;
    }
    return key ?? clientAddress;
  }

  /** Seconds until some member may be tried again (Retry-After for `503 no healthy upstream`). */
  retryAfterSeconds(): number {
    const now = Date.now();
    let soonest = Infinity;
    for (const m of this.members) {
      if (m.state === CIRCUIT_OPEN && !m.activeDown) soonest = Math.min(soonest, m.openUntil - now);
    }
    if (soonest === Infinity) soonest = this.healthCheck?.intervalMs ?? 1000;
    return Math.max(1, Math.ceil(soonest / 1000));
  }

  /** A request (or tunnel) on `m` is over: load and passive health. */
  finish(m: GroupMember, outcome: number): void {
    if (m.inFlight > 0) m.inFlight--;
    if (m.state === CIRCUIT_HALF_OPEN && m.probes > 0 && outcome !== OUTCOME_OK) m.probes--;
    if (outcome === OUTCOME_OK) this.succeeded(m);
    else if (outcome === OUTCOME_FAILED) this.failed(m);
  }

  private succeeded(m: GroupMember): void {
    m.failures = 0;
    if (m.state === CIRCUIT_CLOSED) return;
    if (m.state === CIRCUIT_HALF_OPEN) {
      m.state = CIRCUIT_CLOSED;
      m.opens = 0;
      m.probes = 0;
      this.notClosed--;
      this.ctx.stats.circuitCloses++;
      this.ctx.log.info(`route ${this.label}: upstream ${m.address} closed (healthy again)`);
    }
    // OPEN: a request that started before the circuit opened; the circuit keeps its time.
  }

  private failed(m: GroupMember): void {
    if (m.state === CIRCUIT_OPEN) return;
    if (m.state === CIRCUIT_CLOSED && ++m.failures < this.failureThreshold) return;
    this.open(m);
  }

  private open(m: GroupMember): void {
    if (m.state === CIRCUIT_CLOSED) this.notClosed++;
    // The open time doubles with each opening in a row (capped): an upstream that keeps
    // failing is asked less and less often.
    const ms = Math.min(this.maxOpenMs, this.openMs * 2 ** Math.min(m.opens, 30));
    m.state = CIRCUIT_OPEN;
    m.openUntil = Date.now() + ms;
    m.opens++;
    m.openings++;
    m.failures = 0;
    m.probes = 0;
    this.ctx.stats.circuitOpenings++;
    this.ctx.log.warn(`route ${this.label}: upstream ${m.address} open for ${ms} ms after failing`);
  }

  /**
   * Takes over the health of the same upstreams in `old` (the same route before a reload): an
   * open circuit stays open for the rest of its time, a failing active check stays failing until
   * the next check. Load is not carried: exchanges running on `old` finish there.
   */
  inherit(old: UpstreamGroup): void {
    for (const m of this.members) {
      const prev = old.members.find((p) => p.address === m.address);
      if (prev === undefined) continue;
      m.failures = prev.failures;
      m.opens = prev.opens;
      m.openings = prev.openings;
      m.activeDown = prev.activeDown;
      if (prev.state !== CIRCUIT_CLOSED) {
        // A half-open circuit starts its probes again.
        m.state = CIRCUIT_OPEN;
        m.openUntil = prev.state === CIRCUIT_OPEN ? prev.openUntil : 0;
        this.notClosed++;
      }
    }
  }

  /** Starts the active checks (when configured). */
  startChecks(): void {
    const hc = this.healthCheck;
    if (hc === null || this.checkTimer !== null) return;
    this.checkTimer = setInterval(runChecks, hc.intervalMs, this);
    this.checkTimer.unref();
    runChecks(this);
  }

  stopChecks(): void {
    if (this.checkTimer === null) return;
    clearInterval(this.checkTimer);
    this.checkTimer = null;
  }

  /** One active check's answer. */
  checked(m: GroupMember, healthy: boolean, why: string): void {
    if (this.checkTimer === null || m.activeDown === !healthy) return;
    m.activeDown = !healthy;
    this.ctx.stats.activeCheckChanges++;
    if (healthy) this.ctx.log.info(`route ${this.label}: upstream ${m.address} passes its health check again`);
    else this.ctx.log.warn(`route ${this.label}: upstream ${m.address} fails its health check (${why})`);
  }

  stats(out: RouteUpstreamStats[]): void {
    for (const m of this.members) {
      out.push({ route: this.label, upstream: m.address, state: STATE_NAMES[m.state]!, healthy: !m.activeDown, inFlight: m.inFlight, openings: m.openings });
    }
  }
}

function memberTarget(u: ResolvedUpstream, upstreamTls: boolean): Target {
  if (u.socketPath !== undefined) return socketTarget(u.socketPath);
  const target = tcpTarget(u.host, u.port);
  return u.tls ?? upstreamTls ? tlsTarget(target) : target;
}

function runChecks(group: UpstreamGroup): void {
  for (const m of group.members) checkOnce(group, m);
}

/** HTTP/1.1 GET of the check path; 2xx/3xx status line within the timeout is healthy. */
function checkOnce(group: UpstreamGroup, m: GroupMember): void {
  const hc = group.healthCheck!;
  const target = m.target;
  const socket = group.connector.connect(target, undefined, ALPN_HTTP1);
  let head = '';
  let done = false;
  const finish = (healthy: boolean, why: string): void => {
    if (done) return;
    done = true;
    clearTimeout(deadline);
    socket.destroy();
    group.checked(m, healthy, why);
  };
  // A fixed deadline for the whole check (connect, handshake, status line), not an idle timeout
  // that each byte restarts: a status line dripped a byte at a time must not keep a check open
  // (and the checks of the next intervals piling up behind it).
  const deadline = setTimeout(() => finish(false, 'timeout'), hc.timeoutMs);
  socket.on('error', (err: NodeJS.ErrnoException) => finish(false, err.code ?? 'error'));
  socket.on('close', () => finish(false, 'closed before a status line'));
  socket.on(readyEvent(target), () => {
    // The address as a Host: a TLS target's key is `tls:` and that address.
    const host = target.socketPath !== undefined ? 'localhost' : target.tls ? target.key.slice(4) : target.key;
    socket.write(`GET ${hc.path} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: cmux-proxy-health-check\r\nConnection: close\r\n\r\n`, 'latin1');
  });
  socket.on('data', (chunk: Buffer) => {
    head += chunk.toString('latin1');
    const eol = head.indexOf('\r\n');
    if (eol === -1) {
      if (head.length > 1024) finish(false, 'no status line');
      return;
    }
    const m2 = /^HTTP\/1\.[01] ([0-9]{3})(?: |$)/.exec(head.slice(0, eol));
    const status = m2 === null ? 0 : Number(m2[1]);
    finish(status >= 200 && status < 400, status === 0 ? 'no status line' : `status ${status}`);
  });
}

const kMember = Symbol('cmux.groupMember');
type MemberSocket = net.Socket & { [kMember]?: GroupMember | undefined };

/**
 * A WebSocket or tunnel keeps counting in its member's load until its upstream socket closes;
 * one that received bytes counts as a success.
 */
export function holdMemberUntilClose(socket: net.Socket, member: GroupMember): void {
  (socket as MemberSocket)[kMember] = member;
  socket.once('close', memberSocketOnClose);
}

function memberSocketOnClose(this: MemberSocket): void {
  const member = this[kMember];
  if (member === undefined) return;
  this[kMember] = undefined;
  member.group.finish(member, this.bytesRead > 0 ? OUTCOME_OK : OUTCOME_NEUTRAL);
}

/**
 * The `routes` option compiled: exact hosts in a Map, `*.suffix` routes in a Map by suffix, each
 * with its routes in configuration order. A look-up costs one Map get for the host and one per
 * dot in it — never a scan of the table, never a regular expression.
 */
export class RouteTable {
  private readonly exact = new Map<string, { index: number; prefix: string; group: UpstreamGroup }[]>();
  private readonly suffix = new Map<string, { index: number; prefix: string; group: UpstreamGroup }[]>();
  readonly groups: UpstreamGroup[] = [];

  constructor(routes: readonly ResolvedRoute[], ctx: GroupContext, previous: RouteTable | null = null) {
    const before = previous === null ? null : new Map(previous.groups.map((g) => [g.label, g]));
    for (let index = 0; index < routes.length; index++) {
      const route = routes[index]!;
      const group = new UpstreamGroup(route, ctx);
      const old = before?.get(group.label);
      if (old !== undefined) group.inherit(old);
      this.groups.push(group);
      const wildcard = route.host.startsWith('*.');
      const map = wildcard ? this.suffix : this.exact;
      const key = wildcard ? route.host.slice(1) : route.host;
      let list = map.get(key);
      if (list === undefined) map.set(key, (list = []));
      list.push({ index, prefix: route.pathPrefix, group });
    }
  }

  get size(): number {
    return this.groups.length;
  }

  /** The first route (in configuration order) matching the Host and path, or null. */
  match(host: string | undefined, path: string): UpstreamGroup | null {
    if (host === undefined || host === '') return null;
    const name = hostName(host);
    let bestIndex = Infinity;
    let best: UpstreamGroup | null = null;
    const exact = this.exact.get(name);
    if (exact !== undefined) {
      for (const r of exact) {
        if (r.prefix === '' || path.startsWith(r.prefix)) {
          bestIndex = r.index;
          best = r.group;
          break;
        }
      }
    }
    if (this.suffix.size > 0) {
      // `*.b.c` matches `a.b.c` and `x.a.b.c`: try every suffix starting at a dot.
      for (let dot = name.indexOf('.'); dot > 0; dot = name.indexOf('.', dot + 1)) {
        const list = this.suffix.get(name.slice(dot));
        if (list === undefined) continue;
        for (const r of list) {
          if (r.index >= bestIndex) break;
          if (r.prefix === '' || path.startsWith(r.prefix)) {
            bestIndex = r.index;
            best = r.group;
            break;
          }
        }
      }
    }
    return best;
  }

  startChecks(): void {
    for (const g of this.groups) g.startChecks();
  }

  stopChecks(): void {
    for (const g of this.groups) g.stopChecks();
  }

  stats(): RouteUpstreamStats[] {
    const out: RouteUpstreamStats[] = [];
    for (const g of this.groups) g.stats(out);
    return out;
  }
}
