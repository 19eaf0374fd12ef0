#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { createProxyServer } from './server.js';
import { resolveWorkers, startCluster } from './cluster.js';
import { loadTracingOnlyWhenRegistered } from './tracing.js';
import { tuneHeapForConnections } from './gc-tuning.js';
import { OptionError, describeValue, resolveOptions, type ProxyOptions } from './options.js';

/**
 * Flags -> createProxyServer. Each flag sets one API option (`--port` -> `listenPort`,
 * `--fallback-port` -> `fallback.port`) and also reads CMUX_PROXY_<NAME> (`--idle-timeout-ms` ->
 * CMUX_PROXY_IDLE_TIMEOUT_MS; `--no-http2` -> CMUX_PROXY_NO_HTTP2=1). `--config <file.json>`
 * takes the API's option names. Precedence: flags > environment > config file > defaults.
 * Anything wrong in what the user wrote exits 2; a failure to start (certificate files, a taken
 * port) exits 1. No proxy logic here.
 */
type Kind = 'int' | 'string' | 'flag';
interface Flag {
  name: string;
  kind: Kind;
  help: string;
  /** The option it sets: a name, or `fallback.port` style for a field of an object option. */
  option: string;
  /** What the value looks like in --help. */
  arg?: string;
  /** More environment variables read after CMUX_PROXY_<NAME>, in order. */
  moreEnv?: string[];
  /** A plain flag that turns its option on (the others are `--no-*` flags that turn one off). */
  enables?: true;
}

const FLAGS: Flag[] = [
  { name: 'port', kind: 'int', option: 'listenPort', help: 'port to listen on; 0 picks a free one [9776]' },
  { name: 'host', kind: 'string', option: 'listenHost', arg: '<address>', help: 'address to bind [127.0.0.1]' },
  { name: 'no-http2', kind: 'flag', option: 'enableHttp2', help: 'refuse HTTP/2 (h2c preface gets 505)' },
  { name: 'no-websockets', kind: 'flag', option: 'enableWebsockets', help: 'refuse WebSocket upgrades (501)' },
  { name: 'max-connections', kind: 'int', option: 'maxConnections', help: 'client connections served at once [1000]' },
  { name: 'connection-queue-timeout-ms', kind: 'int', option: 'connectionQueueTimeoutMs', help: 'how long a connection past the limit waits before 503 [10000]' },
  { name: 'max-queued-connections', kind: 'int', option: 'maxQueuedConnections', help: 'connections allowed to wait; past it 503 at once [1000]' },
  { name: 'idle-timeout-ms', kind: 'int', option: 'idleTimeoutMs', help: 'idle client and pooled upstream connections close after this [120000]' },
  { name: 'client-idle-timeout-ms', kind: 'int', option: 'clientIdleTimeoutMs', help: 'idle client connections [idle-timeout-ms]' },
  { name: 'upstream-idle-timeout-ms', kind: 'int', option: 'upstreamIdleTimeoutMs', help: 'idle pooled upstream sockets [idle-timeout-ms]' },
  { name: 'keepalive-ms', kind: 'int', option: 'keepaliveMs', help: 'TCP keep-alive and HTTP/2 PING interval [30000]' },
  { name: 'no-header-routing', kind: 'flag', option: 'headerRoutingEnabled', help: 'ignore X-Cmux-Port-Internal / X-Cmux-Workspace-Internal' },
  { name: 'no-workspace-isolation', kind: 'flag', option: 'workspaceIsolation', help: 'route workspaces to 127.0.0.1 instead of 127.18.x.y' },
  { name: 'no-preserve-host', kind: 'flag', option: 'preserveHost', help: 'rewrite Host to the target (like changeOrigin)' },
  { name: 'upstream-protocol', kind: 'string', option: 'upstreamProtocol', arg: '<protocol>', help: 'http1, h2c (prior knowledge) or auto (probe once, remembered) [http1]' },
  { name: 'upstream-protocol-cache-ttl-ms', kind: 'int', option: 'upstreamProtocolCacheTtlMs', help: 'how long auto remembers what an upstream speaks [300000]' },
  { name: 'upstream-tls', kind: 'flag', option: 'upstreamTls', enables: true, help: 'speak TLS to routed upstreams (X-Cmux-Upstream-Scheme decides per request)' },
  { name: 'upstream-ca', kind: 'string', option: 'upstreamCa', arg: '<file>', help: 'PEM CA certificates trusted for TLS upstreams, besides the system roots' },
  { name: 'upstream-tls-insecure-loopback', kind: 'flag', option: 'upstreamTlsInsecureLoopback', enables: true, help: 'accept unverified (self-signed) certificates from loopback upstreams' },
  { name: 'no-upstream-tls-verify', kind: 'flag', option: 'upstreamTlsRejectUnauthorized', help: 'accept unverified upstream certificates from any upstream (unsafe)' },
  { name: 'max-sessions-per-upstream', kind: 'int', option: 'maxSessionsPerUpstream', help: 'HTTP/2 sessions per h2c upstream; more streams wait [8]' },
  { name: 'upstream-connect-timeout-ms', kind: 'int', option: 'upstreamConnectTimeoutMs', help: 'upstream connect timeout [5000]' },
  { name: 'upstream-response-timeout-ms', kind: 'int', option: 'upstreamResponseTimeoutMs', help: 'wait for the upstream response head [120000]' },
  { name: 'request-headers-timeout-ms', kind: 'int', option: 'requestHeadersTimeoutMs', help: 'time a client has to send a request head [30000]' },
  { name: 'drain-timeout-ms', kind: 'int', option: 'drainTimeoutMs', help: 'graceful stop: time in-flight exchanges get [10000]' },
  { name: 'max-header-size', kind: 'int', option: 'maxHeaderSize', help: 'largest request head in bytes (431 past it) [16384]' },
  { name: 'max-headers-count', kind: 'int', option: 'maxHeadersCount', help: 'most header fields in a request (431 past it) [200]' },
  { name: 'max-sockets-per-upstream', kind: 'int', option: 'maxSocketsPerUpstream', help: 'sockets per upstream; more requests wait [1024, or --max-connections if larger]' },
  { name: 'max-idle-sockets-per-upstream', kind: 'int', option: 'maxIdleSocketsPerUpstream', help: 'idle keep-alive sockets kept per upstream [256]' },
  { name: 'http2-max-concurrent-streams', kind: 'int', option: 'http2MaxConcurrentStreams', help: 'HTTP/2 streams one client connection may have open at once [100]' },
  { name: 'http2-max-session-memory-mb', kind: 'int', option: 'http2MaxSessionMemoryMb', help: 'memory (MiB) one HTTP/2 client connection may hold before its new streams are refused and it is closed [64]' },
  { name: 'fallback-port', kind: 'int', option: 'fallback.port', help: 'send unrouted requests to this local port (the embedding app)' },
  { name: 'fallback-socket', kind: 'string', option: 'fallback.socketPath', arg: '<path>', help: 'send unrouted requests to this unix socket' },
  { name: 'docker-socket', kind: 'string', option: 'dockerSocketPath', arg: '<path>', help: 'resolve <container>.<port>.localhost via the Docker Engine API here' },
  { name: 'port-cache-ttl-ms', kind: 'int', option: 'portResolverCacheTtlMs', help: 'container port look-ups are cached this long [2000]' },
  { name: 'tls-cert', kind: 'string', option: 'tls.certFile', arg: '<file>', help: 'PEM certificate: TLS on the same port (ALPN h2, http/1.1); reloaded on change' },
  { name: 'tls-key', kind: 'string', option: 'tls.keyFile', arg: '<file>', help: 'PEM private key for --tls-cert' },
  { name: 'admin-port', kind: 'int', option: 'adminPort', help: 'serve /metrics, /healthz, /readyz and /stats on this port [off]' },
  { name: 'admin-host', kind: 'string', option: 'adminHost', arg: '<address>', help: 'address the admin listener binds [127.0.0.1]' },
  { name: 'access-log', kind: 'string', option: 'accessLog', arg: '<stdout|file>', help: "one JSON line per exchange to 'stdout' or this file (appended; SIGUSR1 reopens it) [off]" },
  { name: 'access-log-query', kind: 'flag', option: 'accessLogQuery', enables: true, help: 'log paths with their query string' },
  { name: 'accept-proxy-protocol', kind: 'string', option: 'acceptProxyProtocol', arg: '<v1|v2|any>', help: 'every connection starts with a PROXY protocol header (from a load balancer) [off]' },
  { name: 'workers', kind: 'string', option: 'workers', arg: '<n|auto>', help: 'worker processes on the one port (auto: one per CPU), supervised by this one [off: one process]' },
  { name: 'log-level', kind: 'string', option: 'logLevel', arg: '<level>', moreEnv: ['CMUX_PROXY_LOG'], help: 'silent, error, warn, info or debug [info]' },
];

/** Flags that are not options. */
const CONFIG_FLAG = { name: 'config', arg: '<file.json>', help: 'options by their API names (tls.sni, fallback.host, routes, ...); flags and env win; SIGHUP reloads its routes' };
const BY_NAME = new Map(FLAGS.map((f) => [f.name, f]));

function envName(flag: string): string {
  return `CMUX_PROXY_${flag.replace(/-/g, '_').toUpperCase()}`;
}

function argOf(f: Flag): string {
  if (f.kind === 'flag') return '';
  return ` ${f.arg ?? (f.name.endsWith('-ms') ? '<ms>' : '<n>')}`;
}

/** --help: flags in one column, what they do in the next, env and option name below. */
export function usage(): string {
  const rows: [string, string, string][] = FLAGS.map((f) => [
    `--${f.name}${argOf(f)}`,
    f.help,
    `env ${[envName(f.name), ...(f.moreEnv ?? [])].join(', ')}; option ${f.option}`,
  ]);
  rows.push([`--${CONFIG_FLAG.name} ${CONFIG_FLAG.arg}`, CONFIG_FLAG.help, `env ${envName(CONFIG_FLAG.name)}`]);
  rows.push(['--version', 'print the version and exit', '']);
  rows.push(['--help, -h', 'this text', '']);
  const width = Math.max(...rows.map((r) => r[0].length)) + 4;
  const pad = ' '.repeat(width);
  const lines = rows.map(([left, help, more]) => `  ${left.padEnd(width - 2)}${help}${more === '' ? '' : `\n${pad}${more}`}`);
  return (
    'Usage: cmux-proxy [options]\n\n' +
    'One port for HTTP/1.1, HTTP/2 (h2c) and TLS, routed by X-Cmux-Port-Internal and Host.\n' +
    'Precedence: flags > environment variables > --config file > defaults.\n' +
    'Exit status: 2 for a bad flag, variable or config file; 1 when the proxy cannot start.\n\n' +
    `Options:\n${lines.join('\n')}\n`
  );
}

/** Something wrong in what the user wrote: exit 2. `hint` adds "(see --help)". */
class UsageError extends Error {
  readonly hint: boolean;
  constructor(message: string, hint = true) {
    super(message);
    this.hint = hint;
  }
}

type Parsed = { kind: 'help' } | { kind: 'version' } | { kind: 'run'; options: ProxyOptions; configFile?: string; workers?: number | 'auto' };

/** Reads argv by hand: one-line errors, and `--port -1` is a value, not a missing one. */
function parseArgv(argv: string[]): Parsed | Map<string, string | true> {
  const values = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--help' || arg === '-h') return { kind: 'help' };
    if (arg === '--version') return { kind: 'version' };
    if (!arg.startsWith('--') || arg === '--') throw new UsageError(`unexpected argument ${JSON.stringify(arg)}`);
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
    const flag = name === CONFIG_FLAG.name ? null : BY_NAME.get(name);
    if (flag === undefined) throw new UsageError(`unknown option --${name}`);
    if (flag !== null && flag.kind === 'flag') {
      if (eq !== -1) throw new UsageError(`--${name} takes no value, got ${JSON.stringify(arg.slice(eq + 1))}`);
      values.set(name, true);
      continue;
    }
    const value = eq !== -1 ? arg.slice(eq + 1) : argv[i + 1];
    if (value === undefined || (eq === -1 && value.startsWith('--'))) throw new UsageError(`--${name} needs a value`);
    if (eq === -1) i++;
    values.set(name, value);
  }
  return values;
}

/** Env values: unset and empty are the same. */
function fromEnv(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value === '' ? undefined : value;
}

function truthy(label: string, text: string): boolean {
  const t = text.trim().toLowerCase();
  if (t === '1' || t === 'true' || t === 'yes') return true;
  if (t === '0' || t === 'false' || t === 'no') return false;
  throw new UsageError(`${label}: expected 1/true/yes or 0/false/no`);
}

/** `position 57` in a JSON.parse message -> `line 3, column 5`. */
function jsonError(text: string, err: Error): string {
  const m = /at position (\d+)/.exec(err.message);
  if (m === null) return err.message;
  const before = text.slice(0, Number(m[1]));
  const line = before.split('\n').length;
  const column = before.length - before.lastIndexOf('\n');
  return `${err.message.slice(0, m.index).trim()} at line ${line}, column ${column}`;
}

function readConfig(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new UsageError(`${file}: cannot read the config file (${(e.message.split(', ')[0] ?? e.message).trim()})`, false);
  }
  let value: unknown;
  try {
    value = JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
  } catch (err) {
    throw new UsageError(`${file}: invalid JSON: ${jsonError(text, err as Error)}`, false);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new UsageError(`${file}: expected a JSON object of options, got ${describeValue(value)}`, false);
  }
  return value as Record<string, unknown>;
}

/**
 * argv + environment + config file -> validated options (by resolveOptions, the API's own
 * checks). Throws UsageError with one line naming the flag, variable or file entry at fault.
 */
export function parseCommandLine(argv: string[], env: NodeJS.ProcessEnv): Parsed {
  const values = parseArgv(argv);
  if (!(values instanceof Map)) return values;
  const configFile = (values.get(CONFIG_FLAG.name) as string | undefined) ?? fromEnv(env, envName(CONFIG_FLAG.name));
  const options: Record<string, unknown> = { listenPort: 9776, ...(configFile === undefined ? {} : readConfig(configFile)) };
  /** Option path -> how the user wrote it (`--port -1`, `CMUX_PROXY_PORT=-1`). */
  const sources = new Map<string, string>();
  let fallbackFrom: string | undefined;
  let tlsFrom: string | undefined;
  for (const f of FLAGS) {
    let text: string | true | undefined = values.get(f.name);
    let label = `--${f.name}${typeof text === 'string' ? ` ${text}` : ''}`;
    if (text === undefined) {
      for (const name of [envName(f.name), ...(f.moreEnv ?? [])]) {
        text = fromEnv(env, name);
        label = `${name}=${text}`;
        if (text !== undefined) break;
      }
      if (text === undefined) continue;
    }
    let value: unknown;
    if (f.kind === 'flag') {
      // A --no-* flag turns its option off; its variable set to 0/false turns it back on (over a
      // config file that turned it off). An `enables` flag works the other way round.
      const on = text === true || truthy(label, text);
      value = f.enables === true ? on : !on;
    } else {
      const trimmed = (text as string).trim();
      value = f.kind === 'int' && /^[+-]?\d+$/.test(trimmed) ? Number(trimmed) : f.kind === 'int' ? text : trimmed;
      // `any` (either version) is the API's `true`; `off` its `false`.
      if (f.option === 'acceptProxyProtocol') value = trimmed === 'any' ? true : trimmed === 'off' ? false : trimmed;
      if (f.option === 'workers' && /^\d+$/.test(trimmed)) value = Number(trimmed);
    }
    sources.set(f.option, label);
    const dot = f.option.indexOf('.');
    if (dot === -1) {
      options[f.option] = value;
      continue;
    }
    const group = f.option.slice(0, dot);
    if (group === 'fallback') {
      // A fallback from flags or env replaces the config file's.
      if (fallbackFrom !== undefined) throw new UsageError(`${fallbackFrom} and ${label} exclude each other`);
      fallbackFrom = label;
      options['fallback'] = {};
    } else if (group === 'tls') {
      // Certificate flags replace the config file's files and keep its `sni`.
      tlsFrom ??= label;
      const tls = options['tls'];
      options['tls'] = typeof tls === 'object' && tls !== null && !Array.isArray(tls) ? { ...tls } : {};
    }
    (options[group] as Record<string, unknown>)[f.option.slice(dot + 1)] = value;
  }
  if (tlsFrom !== undefined) {
    const tls = options['tls'] as Record<string, unknown>;
    if (tls['certFile'] === undefined) throw new UsageError(`${tlsFrom} needs --tls-cert too`);
    if (tls['keyFile'] === undefined) throw new UsageError(`${tlsFrom} needs --tls-key too`);
  }
  // Not a createProxyServer option: it chooses between one process and a cluster.
  const workers = options['workers'] as number | 'auto' | undefined;
  delete options['workers'];
  if (workers !== undefined) {
    try {
      resolveWorkers(workers);
    } catch (err) {
      const label = sources.get('workers');
      const expected = (err as OptionError).expected ?? '';
      if (label !== undefined) throw new UsageError(`${label}: expected ${expected}`);
      throw new UsageError(`${configFile}: workers: ${describeValue(workers)} (expected ${expected})`, false);
    }
  }
  try {
    resolveOptions(options as unknown as ProxyOptions);
  } catch (err) {
    if (!(err instanceof OptionError)) throw err;
    const reason = err.expected === undefined ? 'unknown option' : `expected ${err.expected}`;
    const label = sources.get(err.option);
    if (label !== undefined) throw new UsageError(`${label}: ${reason}`);
    if (configFile !== undefined) {
      throw new UsageError(`${configFile}: ${err.option}: ${err.expected === undefined ? reason : `${describeValue(err.value)} (${reason})`}`, false);
    }
    throw new UsageError(err.message);
  }
  const run: Parsed = { kind: 'run', options: options as unknown as ProxyOptions };
  if (configFile !== undefined) run.configFile = configFile;
  if (workers !== undefined) run.workers = workers;
  return run;
}

function version(): string {
  // dist/cli.js and the bundle dist/cmux-proxy.js both sit one level below package.json.
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function main(): Promise<void> {
  tuneHeapForConnections();
  loadTracingOnlyWhenRegistered();
  let parsed: Parsed;
  try {
    parsed = parseCommandLine(process.argv.slice(2), process.env);
  } catch (err) {
    const hint = err instanceof UsageError && !err.hint ? '' : ' (see --help)';
    process.stderr.write(`cmux-proxy: ${(err as Error).message}${hint}\n`);
    process.exit(2);
  }
  if (parsed.kind === 'help') {
    process.stdout.write(usage());
    return;
  }
  if (parsed.kind === 'version') {
    process.stdout.write(`cmux-proxy ${version()}\n`);
    return;
  }
  const options = parsed.options;
  if (parsed.workers !== undefined) {
    // The primary and each worker run this same script: startCluster() tells them apart. The
    // workers read the log level from their environment as this process did; CMUX_PROXY_LOG must
    // not override a --log-level in their loggers (see below), so the level goes in as the flag's variable.
    if (options.logLevel !== undefined) process.env['CMUX_PROXY_LOG_LEVEL'] = options.logLevel;
    delete process.env['CMUX_PROXY_LOG'];
    try {
      await startCluster({ ...options, workers: parsed.workers });
    } catch (err) {
      process.stderr.write(`cmux-proxy: ${(err as Error).message}\n`);
      process.exit(1);
    }
    return;
  }
  // The log level above already weighed CMUX_PROXY_LOG against the flags; the logger must not
  // apply it again over a flag.
  delete process.env['CMUX_PROXY_LOG'];
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
  const configFile = parsed.configFile;
  if (configFile !== undefined) {
    // Route reload: the config file's `routes` replace the table; a bad file keeps the old one.
    process.on('SIGHUP', () => {
      try {
        const routes = readConfig(configFile)['routes'] ?? [];
        proxy.updateRoutes(routes);
        process.stderr.write(`cmux-proxy: routes reloaded from ${configFile} (${Array.isArray(routes) ? routes.length : 0})\n`);
      } catch (err) {
        const reason = err instanceof OptionError ? `${err.option}: ${err.expected === undefined ? 'unknown option' : `${describeValue(err.value)} (expected ${err.expected})`}` : (err as Error).message;
        process.stderr.write(`cmux-proxy: routes not reloaded, keeping the old ones: ${reason}\n`);
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
  // The proxy logs where it listens at info level; below that the CLI still says it, once.
  if (options.logLevel === 'warn' || options.logLevel === 'error') {
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
