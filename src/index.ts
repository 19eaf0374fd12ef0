export { createProxyServer, ProxyServer, type ProxyAddress } from './server.js';
export type { ProxyOptions, FallbackOption, ContainerPortResolver, UpstreamProtocol, RouteOption, RouteUpstreamOption } from './options.js';
export { DEFAULTS, OptionError } from './options.js';
export type { ProxyStats, RouteUpstreamStats } from './stats.js';
export type { AccessLogEntry, AccessLogOption } from './access-log.js';
export type { Logger, LogLevel } from './log.js';
export { ProxyError, ErrorCodes, UPSTREAM_NOT_DELIVERED, type ErrorCode } from './errors.js';
export { createDockerPortResolver } from './route/docker-resolver.js';
export { workspaceIp } from './route/workspace-ip.js';
