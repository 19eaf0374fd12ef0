#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { createProxyServer } from './server.js';
import type { FallbackOption, ProxyOptions } from './options.js';
import type { LogLevel } from './log.js';

/**
 * Flags -> createProxyServer. Every flag also reads CMUX_PROXY_<NAME> (`--idle-timeout-ms` ->
 * CMUX_PROXY_IDLE_TIMEOUT_MS; `--no-http2` -> CMUX_PROXY_NO_HTTP2=1). No proxy logic here.
 */
type Kind = 'int' | 'string' | 'flag';
interface Flag {
  name: string;
  kind: Kind;
  help: string;
  option?: keyof ProxyOptions;
  /** For `--no-*` flags: the option they set to false. */
  negates?: keyof ProxyOptions;
  /** For other flags: the option they set to true. */
  enables?: keyof ProxyOptions;
}

const FLAGS: Flag[] = [
  { name: 'port', kind: 'int', option: 'listenPort', help: 'port to listen on; 0 picks a free one [9776]' },
  { name: 'host', kind: 'string', option: 'listenHost', help: 'address to bind [127.0.0.1]' },
  { name: 'no-http2', kind: 'flag', negates: 'enableHttp2', help: 'refuse HTTP/2 (h2c preface gets 505)' },
  { name: 'no-websockets', kind: 'flag', negates: 'enableWebsockets', help: 'refuse WebSocket upgrades (501)' },
  { name: 'max-connections', kind: 'int', option: 'maxConnections', help: 'client connections served at once [1000]' },
  { name: 'connection-queue-timeout-ms', kind: 'int', option: 'connectionQueueTimeoutMs', help: 'how long a connection past the limit waits before 503 [10000]' },
  { name: 'idle-timeout-ms', kind: 'int', option: 'idleTimeoutMs', help: 'idle client and pooled upstream connections close after this [120000]' },
  { name: 'client-idle-timeout-ms', kind: 'int', option: 'clientIdleTimeoutMs', help: 'idle client connections [idle-timeout-ms]' },
  { name: 'upstream-idle-timeout-ms', kind: 'int', option: 'upstreamIdleTimeoutMs', help: 'idle pooled upstream sockets [idle-timeout-ms]' },
  { name: 'keepalive-ms', kind: 'int', option: 'keepaliveMs', help: 'TCP keep-alive and HTTP/2 PING interval [30000]' },
  { name: 'no-header-routing', kind: 'flag', negates: 'headerRoutingEnabled', help: 'ignore X-Cmux-Port-Internal / X-Cmux-Workspace-Internal' },
  { name: 'no-workspace-isolation', kind: 'flag', negates: 'workspaceIsolation', help: 'route workspaces to 127.0.0.1 instead of 127.18.x.y' },
  { name: 'no-preserve-host', kind: 'flag', negates: 'preserveHost', help: 'rewrite Host to the target (like changeOrigin)' },
  { name: 'upstream-protocol', kind: 'string', option: 'upstreamProtocol', help: 'upstream protocol: http1, h2c (prior knowledge) or auto (probe once, remembered) [http1]' },
  { name: 'upstream-connect-timeout-ms', kind: 'int', option: 'upstreamConnectTimeoutMs', help: 'upstream connect timeout [5000]' },
  { name: 'upstream-response-timeout-ms', kind: 'int', option: 'upstreamResponseTimeoutMs', help: 'wait for the upstream response head [120000]' },
  { name: 'request-headers-timeout-ms', kind: 'int', option: 'requestHeadersTimeoutMs', help: 'time a client has to send a request head [30000]' },
  { name: 'drain-timeout-ms', kind: 'int', option: 'drainTimeoutMs', help: 'graceful stop: time in-flight exchanges get [10000]' },
  { name: 'max-header-size', kind: 'int', option: 'maxHeaderSize', help: 'largest request head in bytes (431 past it) [16384]' },
  { name: 'max-headers-count', kind: 'int', option: 'maxHeadersCount', help: 'most header fields in a request (431 past it) [200]' },
  { name: 'max-sockets-per-upstream', kind: 'int', option: 'maxSocketsPerUpstream', help: 'sockets per upstream; more requests wait [1024]' },
  { name: 'http2-max-concurrent-streams', kind: 'int', option: 'http2MaxConcurrentStreams', help: 'HTTP/2 streams one client connection may have open at once [100]' },
  { name: 'fallback-port', kind: 'int', help: 'send unrouted requests to this local port (the embedding app)' },
  { name: 'fallback-socket', kind: 'string', help: 'send unrouted requests to this unix socket' },
  { name: 'docker-socket', kind: 'string', option: 'dockerSocketPath', help: 'resolve <container>.<port>.localhost via the Docker Engine API at this socket' },
  { name: 'port-cache-ttl-ms', kind: 'int', option: 'portResolverCacheTtlMs', help: 'container port look-ups are cached this long [2000]' },
  { name: 'tls-cert', kind: 'string', help: 'PEM certificate: terminate TLS on the same port (ALPN h2, http/1.1); reloaded on change' },
  { name: 'tls-key', kind: 'string', help: 'PEM private key for --tls-cert' },
  { name: 'admin-port', kind: 'int', option: 'adminPort', help: 'serve /metrics, /healthz, /readyz and /stats on this port [off]' },
  { name: 'admin-host', kind: 'string', option: 'adminHost', help: 'address the admin listener binds [127.0.0.1]' },
  { name: 'access-log', kind: 'string', option: 'accessLog', help: "one JSON line per exchange to 'stdout' or this file (appended; SIGUSR1 reopens it) [off]" },
  { name: 'access-log-query', kind: 'flag', enables: 'accessLogQuery', help: 'log paths with their query string' },
  { name: 'log-level', kind: 'string', option: 'logLevel', help: 'silent, error, warn, info or debug [info]; CMUX_PROXY_LOG=debug also works' },
];

function envName(flag: string): string {
  return `CMUX_PROXY_${flag.replace(/-/g, '_').toUpperCase()}`;
}

function usage(): string {
  const lines = FLAGS.map((f) => {
    const arg = f.kind === 'flag' ? '' : f.kind === 'int' ? ' <n>' : ' <value>';
    return `  --${f.name}${arg}`.padEnd(44) + `${f.help}\n${' '.repeat(44)}env ${envName(f.name)}`;
  });
  return `Usage: cmux-proxy [options]\n\nOne port for HTTP/1.1, HTTP/2 (h2c) and TLS, routed by X-Cmux-Port-Internal and Host.\n\nOptions:\n${lines.join('\n')}\n  --help, -h                                  this text\n`;
}

class UsageError extends Error {}

function parseInt10(name: string, text: string): number {
  if (!/^-?\d+$/.test(text.trim())) throw new UsageError(`--${name} expects an integer, got ${JSON.stringify(text)}`);
  return Number(text.trim());
}

function truthy(name: string, text: string): boolean {
  const t = text.trim().toLowerCase();
  if (t === '1' || t === 'true' || t === 'yes') return true;
  if (t === '0' || t === 'false' || t === 'no' || t === '') return false;
  throw new UsageError(`${envName(name)} expects 1/true or 0/false, got ${JSON.stringify(text)}`);
}

export function optionsFromArgs(argv: string[], env: NodeJS.ProcessEnv): ProxyOptions | 'help' {
  const spec: Record<string, { type: 'string' | 'boolean'; short?: string }> = { help: { type: 'boolean', short: 'h' } };
  for (const f of FLAGS) spec[f.name] = { type: f.kind === 'flag' ? 'boolean' : 'string' };
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: argv, options: spec, strict: true, allowPositionals: false }).values as Record<string, string | boolean | undefined>;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values['help'] === true) return 'help';
  const options: Record<string, unknown> = { listenPort: 9776 };
  let fallbackPort: number | undefined;
  let fallbackSocket: string | undefined;
  let tlsCert: string | undefined;
  let tlsKey: string | undefined;
  for (const f of FLAGS) {
    const fromFlag = values[f.name];
    const fromEnv = env[envName(f.name)];
    if (fromFlag === undefined && fromEnv === undefined) continue;
    if (f.kind === 'flag') {
      const on = fromFlag === true || (fromFlag === undefined && truthy(f.name, fromEnv!));
      if (on && f.negates !== undefined) options[f.negates] = false;
      if (on && f.enables !== undefined) options[f.enables] = true;
      continue;
    }
    const text = typeof fromFlag === 'string' ? fromFlag : fromEnv!;
    const value = f.kind === 'int' ? parseInt10(f.name, text) : text;
    if (f.name === 'fallback-port') fallbackPort = value as number;
    else if (f.name === 'fallback-socket') fallbackSocket = value as string;
    else if (f.name === 'tls-cert') tlsCert = value as string;
    else if (f.name === 'tls-key') tlsKey = value as string;
    else if (f.option !== undefined) options[f.option] = value;
  }
  if (fallbackPort !== undefined && fallbackSocket !== undefined) throw new UsageError('--fallback-port and --fallback-socket exclude each other');
  if (fallbackPort !== undefined) options['fallback'] = { port: fallbackPort } satisfies FallbackOption;
  if (fallbackSocket !== undefined) options['fallback'] = { socketPath: fallbackSocket } satisfies FallbackOption;
  if ((tlsCert === undefined) !== (tlsKey === undefined)) throw new UsageError('--tls-cert and --tls-key go together');
  if (tlsCert !== undefined && tlsKey !== undefined) options['tls'] = { certFile: tlsCert, keyFile: tlsKey };
  if (options['logLevel'] === undefined && env['CMUX_PROXY_LOG'] !== undefined) options['logLevel'] = env['CMUX_PROXY_LOG'] as LogLevel;
  return options as unknown as ProxyOptions;
}

async function main(): Promise<void> {
  let options: ProxyOptions | 'help';
  try {
    options = optionsFromArgs(process.argv.slice(2), process.env);
  } catch (err) {
    process.stderr.write(`cmux-proxy: ${(err as Error).message} (see --help)\n`);
    process.exit(2);
  }
  if (options === 'help') {
    process.stdout.write(usage());
    return;
  }
  let proxy: ReturnType<typeof createProxyServer>;
  try {
    proxy = createProxyServer(options);
  } catch (err) {
    process.stderr.write(`cmux-proxy: ${(err as Error).message}\n`);
    process.exit(1);
  }
  // Handlers go in before listening: a signal right after the listening line must still stop cleanly.
  let stopping = false;
  let started: Promise<void> = Promise.resolve();
  const stop = (signal: string): void => {
    if (stopping) {
      process.stderr.write(`cmux-proxy: second ${signal}, exiting now\n`);
      process.exit(1);
    }
    stopping = true;
    started
      .then(() => proxy.stop())
      .then(
        () => process.exit(0),
        (err: unknown) => {
          process.stderr.write(`cmux-proxy: stop failed: ${(err as Error).message}\n`);
          process.exit(1);
        },
      );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  if (typeof options.accessLog === 'string' && options.accessLog !== 'stdout') {
    // Log rotation: the file was moved away; write to a new one under the same name.
    process.on('SIGUSR1', () => {
      try {
        proxy.reopenAccessLog();
      } catch (err) {
        process.stderr.write(`cmux-proxy: cannot reopen the access log: ${(err as Error).message}\n`);
      }
    });
  }
  started = proxy.start();
  try {
    await started;
  } catch (err) {
    process.stderr.write(`cmux-proxy: ${(err as Error).message}\n`);
    process.exit(1);
  }
  if (options.logLevel !== 'silent') {
    const address = proxy.address();
    if (address !== null) {
      const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      const protocols = options.enableHttp2 === false ? 'HTTP/1.1' : 'HTTP/1.1, h2c';
      process.stderr.write(`cmux-proxy: listening on ${host}:${address.port} (${protocols}${options.tls ? ', TLS' : ''})\n`);
    }
    const admin = proxy.adminAddress();
    if (admin !== null) process.stderr.write(`cmux-proxy: admin on ${admin.family === 'IPv6' ? `[${admin.address}]` : admin.address}:${admin.port}\n`);
  }
}

void main();
