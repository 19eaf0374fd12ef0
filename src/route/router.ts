import { ErrorCodes } from '../errors.js';
import { hostName, matchHost, parsePort } from './host-patterns.js';
import { tcpTarget, type Target } from './target.js';
import { workspaceIp } from './workspace-ip.js';

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

export type Route = Target | RouteError | ContainerRoute | null;

function routeError(status: number, code: string, message: string): RouteError {
  return Object.freeze({ kind: 'error', status, code, message });
}

export const ERR_EMPTY_HEADER = routeError(400, ErrorCodes.EMPTY_HEADER, 'header value cannot be empty');
export const ERR_INVALID_PORT = routeError(400, ErrorCodes.INVALID_PORT, 'invalid port in X-Cmux-Port-Internal');
export const ERR_INVALID_WORKSPACE = routeError(400, ErrorCodes.INVALID_WORKSPACE, 'invalid workspace: its number does not fit in 32 bits');
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

/** What routing reads of a request head. Absent headers are `undefined`. */
export interface RouteInput {
  portHeader: string | undefined;
  workspaceHeader: string | undefined;
  /** Host header, or the authority of an absolute-form target / `:authority` (which wins). */
  host: string | undefined;
}

export interface RouterConfig {
  headerRoutingEnabled: boolean;
  workspaceIsolation: boolean;
}

function workspaceTarget(config: RouterConfig, workspace: string, port: number): Target | RouteError {
  if (!config.workspaceIsolation) return tcpTarget(LOCAL_HOST, port);
  const ip = workspaceIp(workspace);
  return ip === null ? ERR_INVALID_WORKSPACE : tcpTarget(ip, port);
}

/**
 * SPEC §3, rules 1-5: a pure function of the head. `null` means no rule matched (fallback or 400).
 * Container routes come back unresolved when a resolver must be asked.
 */
export function route(config: RouterConfig, input: RouteInput, hasResolver: boolean): Route {
  if (config.headerRoutingEnabled && input.portHeader !== undefined) {
    const portText = input.portHeader.trim();
    if (portText === '') return ERR_EMPTY_HEADER;
    const port = parsePort(portText);
    if (!port) return ERR_INVALID_PORT;
    const workspace = input.workspaceHeader;
    if (workspace !== undefined && config.workspaceIsolation) {
      const name = workspace.trim();
      if (name === '') return ERR_EMPTY_HEADER;
      return workspaceTarget(config, name, port);
    }
    return tcpTarget(LOCAL_HOST, port);
  }
  const host = input.host;
  if (host === undefined || host === '') return null;
  const matched = matchHost(hostName(host));
  if (matched === null) return null;
  switch (matched.kind) {
    case 'local':
      return tcpTarget(LOCAL_HOST, matched.port);
    case 'workspace':
      return workspaceTarget(config, matched.workspace, matched.port);
    case 'container':
      return hasResolver ? { kind: 'container', container: matched.container, port: matched.port } : tcpTarget(LOCAL_HOST, matched.port);
  }
}
