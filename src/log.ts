export type LogLevel = 'silent' | 'error' | 'warn' | 'info' | 'debug';

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

const RANK: Record<LogLevel, number> = { silent: 0, error: 1, warn: 2, info: 3, debug: 4 };
function noop(): void {}

/**
 * Wraps a sink so that messages above `level` cost one no-op call. `CMUX_PROXY_LOG=debug`
 * raises the level at run time. Logs carry heads and codes, never bodies.
 */
export function createLogger(level: LogLevel, sink?: Logger): Logger & { readonly debugEnabled: boolean } {
  const env = process.env['CMUX_PROXY_LOG'];
  const effective: LogLevel = env !== undefined && env in RANK ? (env as LogLevel) : level;
  const rank = RANK[effective];
  const out: Logger = sink ?? {
    debug: (m) => process.stderr.write(`cmux-proxy debug: ${m}\n`),
    info: (m) => process.stderr.write(`cmux-proxy: ${m}\n`),
    warn: (m) => process.stderr.write(`cmux-proxy warn: ${m}\n`),
    error: (m) => process.stderr.write(`cmux-proxy error: ${m}\n`),
  };
  return {
    debugEnabled: rank >= RANK.debug,
    debug: rank >= RANK.debug ? (m) => out.debug(m) : noop,
    info: rank >= RANK.info ? (m) => out.info(m) : noop,
    warn: rank >= RANK.warn ? (m) => out.warn(m) : noop,
    error: rank >= RANK.error ? (m) => out.error(m) : noop,
  };
}
