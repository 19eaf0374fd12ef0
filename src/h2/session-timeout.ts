import type http2 from 'node:http2';
import { symbolHolding } from './node-internals.js';

/**
 * node:http2 marks a session destroyed before its close path calls `session.setTimeout(0)`, and
 * `setTimeout` returns at once on a destroyed session (Node 20, 22 and 24): the idle timer of a
 * session that was given one stays in node's timer list until it fires, and holds the closed
 * session, its socket and everything they reach until then: `clientIdleTimeoutMs` (120 s by
 * default) for client sessions, ~5.4 KB of heap per closed h2c session. The proxy clears that
 * timer itself once the session has closed. Node keeps the Timeout under a symbol of its own; it
 * is found by shape, and left alone where there is none.
 */

type AnySession = http2.Http2Session & Record<symbol, unknown>;

/** The symbol node keeps a session's Timeout under, once seen (undefined until then). */
let timeoutKey: symbol | undefined;

function isTimeout(value: unknown): value is NodeJS.Timeout {
  if (typeof value !== 'object' || value === null) return false;
  const t = value as { _onTimeout?: unknown; _idleTimeout?: unknown; refresh?: unknown };
  return typeof t._onTimeout === 'function' && typeof t._idleTimeout === 'number' && typeof t.refresh === 'function';
}

function sessionTimer(session: AnySession): NodeJS.Timeout | null {
  // Looked for until found: the property holds null while no timer is set.
  timeoutKey ??= symbolHolding(session, isTimeout) ?? undefined;
  if (timeoutKey === undefined) return null;
  const value = session[timeoutKey];
  return isTimeout(value) ? value : null;
}

/** Clears the session's idle timer when it closes (node leaves it armed, see above). */
export function releaseTimerOnClose(session: http2.Http2Session): void {
  session.once('close', clearClosedSessionTimer);
}

function clearClosedSessionTimer(this: http2.Http2Session): void {
  const timer = sessionTimer(this as AnySession);
  if (timer !== null) clearTimeout(timer);
}
