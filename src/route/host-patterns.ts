/**
 * The Host-based routing rules (README "Routing", rules 2-4), as pure functions of a lower-cased host name (port
 * already stripped). Each returns a `HostRoute` or `null` when its shape does not match.
 */
export const KNOWN_PORT_NAMES: ReadonlyMap<string, number> = new Map([
  ['vscode', 39378],
  ['worker', 39377],
  ['extension', 39376],
  ['proxy', 39379],
  ['vnc', 39380],
  ['cdp', 39381],
]);

export type HostRoute =
  | { kind: 'container'; container: string; port: number }
  | { kind: 'workspace'; workspace: string; port: number }
  | { kind: 'local'; port: number };

/** A decimal port 1-65535 made only of digits, else 0. */
export function parsePort(text: string): number {
  const len = text.length;
  if (len === 0 || len > 5) return 0;
  let n = 0;
  for (let i = 0; i < len; i++) {
    const c = text.charCodeAt(i);
    if (c < 48 || c > 57) return 0;
    n = n * 10 + (c - 48);
  }
  return n >= 1 && n <= 65535 ? n : 0;
}

function portOrName(label: string): number {
  return parsePort(label) || (KNOWN_PORT_NAMES.get(label) ?? 0);
}

const LOCALHOST_SUFFIX = '.localhost';
const CMUX_SUFFIXES = ['.cmux.sh', '.cmux.local', '.cmux.dev'] as const;

/** Strips `:port` (and IPv6 brackets) from a Host value and lower-cases it. */
export function hostName(host: string): string {
  let end = host.length;
  if (host.charCodeAt(0) === 91 /* [ */) {
    const close = host.indexOf(']');
    return (close === -1 ? host : host.slice(0, close + 1)).toLowerCase();
  }
  const colon = host.lastIndexOf(':');
  if (colon !== -1) end = colon;
  // A trailing dot names the same host (RFC 1034 §3.1).
  if (end > 0 && host.charCodeAt(end - 1) === 46) end--;
  return host.slice(0, end).toLowerCase();
}

function matchLocalhost(name: string): HostRoute | null {
  const prefix = name.slice(0, name.length - LOCALHOST_SUFFIX.length);
  if (prefix === '') return null;
  const dot = prefix.lastIndexOf('.');
  if (dot !== -1) {
    // Rule 2: <container>.<port>.localhost; the container may itself contain dots.
    const container = prefix.slice(0, dot);
    const port = portOrName(prefix.slice(dot + 1));
    return port && container !== '' ? { kind: 'container', container, port } : null;
  }
  // Rule 3: <workspace>-<port>.localhost, split at the last '-'.
  const dash = prefix.lastIndexOf('-');
  if (dash <= 0) return null;
  const port = parsePort(prefix.slice(dash + 1));
  return port ? { kind: 'workspace', workspace: prefix.slice(0, dash), port } : null;
}

function matchCmuxLabel(label: string): HostRoute | null {
  // <port>.cmux.sh
  const direct = parsePort(label);
  if (direct) return { kind: 'local', port: direct };
  const parts = label.split('-');
  // port-<port>-<id>.cmux.sh
  if (parts[0] === 'port' && parts.length >= 3) {
    const port = parsePort(parts[1]!);
    return port ? { kind: 'local', port } : null;
  }
  // cmux-<id>-<scope>-<port>.cmux.sh; no scope or scope "base" -> 127.0.0.1
  if (parts[0] === 'cmux' && parts.length >= 3 && parts[1] !== '') {
    const port = parsePort(parts[parts.length - 1]!);
    if (!port) return null;
    const scope = parts.slice(2, -1).join('-');
    return scope === '' || scope === 'base' ? { kind: 'local', port } : { kind: 'workspace', workspace: scope, port };
  }
  return null;
}

/** Applies rules 2-4 to a lower-cased host name without port. */
export function matchHost(name: string): HostRoute | null {
  if (name.endsWith(LOCALHOST_SUFFIX)) return matchLocalhost(name);
  for (const suffix of CMUX_SUFFIXES) {
    if (name.endsWith(suffix)) {
      const label = name.slice(0, name.length - suffix.length);
      return label === '' || label.includes('.') ? null : matchCmuxLabel(label);
    }
  }
  return null;
}
