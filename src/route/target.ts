/** Where an exchange goes. Interned: one object per address, so routing allocates nothing on hits. */
export interface Target {
  readonly host: string;
  readonly port: number;
  /** Unix socket path; when set, host/port are only descriptive. */
  readonly socketPath: string | undefined;
  /** Pool key and log label. */
  readonly key: string;
}

const byHost = new Map<string, Map<number, Target>>();
const bySocket = new Map<string, Target>();
const MAX_INTERNED_HOSTS = 65_536;

export function tcpTarget(host: string, port: number): Target {
  let ports = byHost.get(host);
  if (ports === undefined) {
    // Workspace IPs are bounded (127.18.0.0/16), but hosts from resolvers are not: stay bounded.
    if (byHost.size >= MAX_INTERNED_HOSTS) byHost.clear();
    ports = new Map();
    byHost.set(host, ports);
  }
  let target = ports.get(port);
  if (target === undefined) {
    target = { host, port, socketPath: undefined, key: host.includes(':') ? `[${host}]:${port}` : `${host}:${port}` };
    ports.set(port, target);
  }
  return target;
}

export function socketTarget(path: string): Target {
  let target = bySocket.get(path);
  if (target === undefined) {
    target = { host: 'localhost', port: 0, socketPath: path, key: `unix:${path}` };
    bySocket.set(path, target);
  }
  return target;
}
