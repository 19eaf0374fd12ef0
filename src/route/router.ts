import { ErrorCodes } from '../errors.js';
import { REPEATED_PORT, REPEATED_SCHEME, REPEATED_WORKSPACE } from '../headers.js';
import { hostName, matchHost, parsePort } from './host-patterns.js';
import { tcpTarget, type Target } from './target.js';
import type { RouteTable, UpstreamGroup } from '../upstream/group.js';
import { WS_NOT_ASCII, WS_OVERFLOW, decodeWireUtf8, workspaceIp, workspaceIpFromWire } from './workspace-ip.js';

export const LOCAL_HOST = '127.0.0.1';

export interface RouteError {
  readonly kind: 'error';
  readonly status: number;
  readonly code: string;
  readonly message: string;
}

/** A container route that needs the port resolver before it has a target. */
export interface ContainerRoute {
  readonly kind: 'container';
  readonly container: string;
  readonly port: number;
}

export type Route = Target | RouteError | ContainerRoute | UpstreamGroup | null;

export function routeError(status: number, code: string, message: string): RouteError {
  return Object.freeze({ kind: 'error', status, code, message });
}

export const ERR_EMPTY_HEADER = routeError(400, ErrorCodes.EMPTY_HEADER, 'header value cannot be empty');
export const ERR_INVALID_PORT = routeError(400, ErrorCodes.INVALID_PORT, 'invalid port in X-Cmux-Port-Internal');
export const ERR_INVALID_WORKSPACE = routeError(400, ErrorCodes.INVALID_WORKSPACE, 'invalid workspace: its number does not fit in 32 bits');
export const ERR_WORKSPACE_TOO_LONG = routeError(
  400,
  ErrorCodes.INVALID_WORKSPACE,
  'invalid workspace: the name is longer than 255 bytes or its last segment longer than 63',
);
export const ERR_WORKSPACE_NOT_UTF8 = routeError(400, ErrorCodes.INVALID_WORKSPACE, 'invalid workspace: the name is not UTF-8');
export const ERR_REPEATED_PORT = routeError(400, ErrorCodes.BAD_REQUEST, 'X-Cmux-Port-Internal given more than once');
export const ERR_REPEATED_WORKSPACE = routeError(400, ErrorCodes.BAD_REQUEST, 'X-Cmux-Workspace-Internal given more than once');
export const ERR_REPEATED_HOST_OVERRIDE = routeError(400, ErrorCodes.BAD_REQUEST, 'X-Cmux-Host-Override given more than once');
export const ERR_REPEATED_SCHEME = routeError(400, ErrorCodes.BAD_REQUEST, 'X-Cmux-Upstream-Scheme given more than once');
export const ERR_CONTAINER_NOT_FOUND = routeError(404, ErrorCodes.CONTAINER_NOT_FOUND, 'container not found');
export const ERR_RESOLVER_FAILED = routeError(502, ErrorCodes.RESOLVER_FAILED, 'container port resolver failed');
export const ERR_LOOP = routeError(508, ErrorCodes.LOOP_DETECTED, 'Loop detected in proxy');
export const ERR_NO_ROUTE = routeError(
  400,
  ErrorCodes.NO_ROUTE,
  'no route for this request: send X-Cmux-Port-Internal: <port> (and optionally X-Cmux-Workspace-Internal: <workspace>), ' +
    'or use a host like <container>.<port>.localhost, <workspace>-<port>.localhost or <port>.cmux.local',
);

export function isRouteError(route: Route): route is RouteError {
  return route !== null && (route as RouteError).kind === 'error';
}
export function isContainerRoute(route: Route): route is ContainerRoute {
  return route !== null && (route as ContainerRoute).kind === 'container';
}
export function isGroupRoute(route: Route): route is UpstreamGroup {
  return route !== null && (route as UpstreamGroup).kind === 'group';
}

/** What routing reads of a request head. Absent headers are `undefined`. */
export interface RouteInput {
  portHeader: string | undefined;
  workspaceHeader: string | undefined;
  /** Host header, or the authority of an absolute-form target / `:authority` (which wins). */
  host: string | undefined;
  /** `RequestHeadFacts.repeatedRouting`: routing headers given more than once. */
  repeated: number;
  /** Origin-form path (route path prefixes). */
  path: string;
}

export interface RouterConfig {
  headerRoutingEnabled: boolean;
  workspaceIsolation: boolean;
}

/**
 * Strips the optional whitespace around a field value (SP and HTAB, RFC 9110 §5.5) and nothing
 * else: `String.prototype.trim` would also strip bytes such as 0xA0 that are part of a UTF-8
 * name, or accept `80\xA0` as a port. No copy when there is nothing to strip (the usual case:
 * both parsers strip it already).
 */
function trimOws(value: string): string {
  let start = 0;
  let end = value.length;
  let c: number;
  while (start < end && ((c = value.charCodeAt(start)) === 32 || c === 9)) start++;
  while (end > start && ((c = value.charCodeAt(end - 1)) === 32 || c === 9)) end--;
  return start === 0 && end === value.length ? value : value.slice(start, end);
}

function repeatedError(repeated: number): RouteError {
  if ((repeated & REPEATED_PORT) !== 0) return ERR_REPEATED_PORT;
  if ((repeated & REPEATED_WORKSPACE) !== 0) return ERR_REPEATED_WORKSPACE;
  return (repeated & REPEATED_SCHEME) !== 0 ? ERR_REPEATED_SCHEME : ERR_REPEATED_HOST_OVERRIDE;
}

/** The target for a workspace IP lookup's answer, or `WS_NOT_ASCII` for the caller to decode. */
function workspaceTarget(name: string, port: number): Target | RouteError | number {
  const ip = workspaceIpFromWire(name);
  if (typeof ip === 'string') return tcpTarget(ip, port);
  return ip === WS_OVERFLOW ? ERR_INVALID_WORKSPACE : ip === WS_NOT_ASCII ? WS_NOT_ASCII : ERR_WORKSPACE_TOO_LONG;
}

/** A non-ASCII workspace name from a header: its wire bytes decoded as UTF-8, then hashed. */
function unicodeWorkspaceTarget(wireName: string, port: number): Target | RouteError {
  const name = decodeWireUtf8(wireName);
  if (name === null) return ERR_WORKSPACE_NOT_UTF8;
  const ip = workspaceIp(name);
  return ip === null ? ERR_INVALID_WORKSPACE : tcpTarget(ip, port);
}

/**
 * A Host whose workspace part is not ASCII: `hostName` lower-cased it byte by byte, which is
 * wrong for UTF-8 (0xC3 would become 0xE3), so the rules run again on the decoded host.
 */
function unicodeHostRoute(wireHost: string): Target | RouteError | null {
  const host = decodeWireUtf8(wireHost);
  if (host === null) return ERR_WORKSPACE_NOT_UTF8;
  const matched = matchHost(hostName(host));
  if (matched === null || matched.kind !== 'workspace') return null;
  const ip = workspaceIp(matched.workspace);
  return ip === null ? ERR_INVALID_WORKSPACE : tcpTarget(ip, matched.port);
}

/**
 * Routing rules 1-5 (with the `routes` table between the header rules and the Host patterns) as a pure function of the head. `null` means no rule matched (fallback or
 * 400). Container routes come back unresolved when a resolver must be asked.
 */
export function route(config: RouterConfig, input: RouteInput, hasResolver: boolean, table: RouteTable | null = null): Route {
  if (input.repeated > 0) return repeatedError(input.repeated);
  if (config.headerRoutingEnabled && input.portHeader !== undefined) {
    const portText = trimOws(input.portHeader);
    if (portText === '') return ERR_EMPTY_HEADER;
    const port = parsePort(portText);
    if (!port) return ERR_INVALID_PORT;
    const workspace = input.workspaceHeader;
    if (workspace !== undefined && config.workspaceIsolation) {
      const name = trimOws(workspace);
      if (name === '') return ERR_EMPTY_HEADER;
      const target = workspaceTarget(name, port);
      return typeof target === 'number' ? unicodeWorkspaceTarget(name, port) : target;
    }
    return tcpTarget(LOCAL_HOST, port);
  }
  const host = input.host;
  if (host === undefined || host === '') return null;
  if (table !== null) {
    // The `routes` option: after the header routes, before the built-in Host patterns.
    const group = table.match(host, input.path);
    if (group !== null) return group;
  }
  const matched = matchHost(hostName(host));
  if (matched === null) return null;
  switch (matched.kind) {
    case 'local':
      return tcpTarget(LOCAL_HOST, matched.port);
    case 'workspace': {
      if (!config.workspaceIsolation) return tcpTarget(LOCAL_HOST, matched.port);
      const target = workspaceTarget(matched.workspace, matched.port);
      return typeof target === 'number' ? unicodeHostRoute(host) : target;
    }
    case 'container':
      return hasResolver ? { kind: 'container', container: matched.container, port: matched.port } : tcpTarget(LOCAL_HOST, matched.port);
  }
}
