/** Where an exchange goes. Interned: one object per address, so routing allocates nothing on hits. */
export interface Target {
  readonly host: string;
  readonly port: number;
  /** Unix socket path; when set, host/port are only descriptive. */
  readonly socketPath: string | undefined;
  /** Pool key and log label (`tls:` in front for a TLS target: TLS and cleartext never share a pool entry). */
  readonly key: string;
  /** Spoken to over TLS. */
  readonly tls: boolean;
  /** The TLS target for the same address (made on first use; see `tlsTarget`). */
  twin: Target | undefined;
}

type TargetTable = Map<string, Map<number, Target>>;

/**
 * Clients choose the address (any workspace x any port: 65,536 x 65,535 pairs), so the interned
 * targets are bounded: two generations of at most this many each. A lookup that misses the young
 * generation takes the target from the old one (same object) or makes it; when the young one is
 * full it becomes the old one and the previous old one is dropped. Targets in use every
 * generation keep their identity; the rest are only garbage once no exchange holds them (pools
 * key by `target.key`, so a re-made object for the same address finds the same pool entry).
 */
const GENERATION_MAX = 4096;
let young: TargetTable = new Map();
let youngCount = 0;
let old: TargetTable = new Map();
/** Targets compared by identity (the fallback): never evicted. */
const pinned: TargetTable = new Map();

function lookup(table: TargetTable, host: string, port: number): Target | undefined {
  return table.get(host)?.get(port);
}

function insert(table: TargetTable, target: Target): void {
  let ports = table.get(target.host);
  if (ports === undefined) {
    ports = new Map();
    table.set(target.host, ports);
  }
  ports.set(target.port, target);
}

function makeTcpTarget(host: string, port: number): Target {
  return { host, port, socketPath: undefined, key: host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`, tls: false, twin: undefined };
}

/**
 * The TLS target for the address of a cleartext TCP target: one object per cleartext target
 * (kept on it, so it lives and is evicted with it), with its own pool key.
 */
export function tlsTarget(target: Target): Target {
  if (target.tls || target.socketPath !== undefined) return target;
  let twin = target.twin;
  if (twin === undefined) {
    twin = { host: target.host, port: target.port, socketPath: undefined, key: `tls:${target.key}`, tls: true, twin: target };
    target.twin = twin;
  }
  return twin;
}

export function tcpTarget(host: string, port: number): Target {
  const hit = young.get(host)?.get(port);
  if (hit !== undefined) return hit;
  const target = lookup(old, host, port) ?? lookup(pinned, host, port) ?? makeTcpTarget(host, port);
  if (youngCount >= GENERATION_MAX) {
    old = young;
    young = new Map();
    youngCount = 0;
  }
  insert(young, target);
  youngCount++;
  return target;
}

/**
 * The same as `tcpTarget`, and the object stays the one `tcpTarget` returns for this address for
 * the life of the process: for targets that code compares by identity (the fallback).
 */
export function pinnedTcpTarget(host: string, port: number): Target {
  let target = lookup(pinned, host, port);
  if (target === undefined) {
    target = lookup(young, host, port) ?? lookup(old, host, port) ?? makeTcpTarget(host, port);
    insert(pinned, target);
  }
  return target;
}

/** How many targets the evictable generations hold (tests check the bound). */
export function internedTargetCount(): number {
  let n = 0;
  for (const ports of young.values()) n += ports.size;
  for (const ports of old.values()) n += ports.size;
  return n;
}

// Unix socket targets come only from the options (the fallback's socket path), never from a
// client, so this table stays as small as the configuration.
const bySocket = new Map<string, Target>();

export function socketTarget(path: string): Target {
  let target = bySocket.get(path);
  if (target === undefined) {
    target = { host: 'localhost', port: 0, socketPath: path, key: `unix:${path}`, tls: false, twin: undefined };
    bySocket.set(path, target);
  }
  return target;
}
