import type http2 from 'node:http2';
import { ChurnSet } from '../churn-set.js';
import { symbolHolding } from './node-internals.js';

/**
 * node:http2 keeps each session's streams in a Map (`streams`) and a Set (`pendingStreams`) of
 * its internal state. Every stream is added to both and deleted again, the churn that chains
 * their hash tables through the old generation (churn-set.ts): every stream of the session, and
 * all it reaches, is then promoted and freed only by a mark-compact. Under `h2load -c10 -m10` a
 * bare node:http2 server promotes ~0.7 MB per scavenge this way and runs a mark-compact every
 * ~20 scavenges; the proxy, whose streams also reach their exchanges, fell into the same state
 * for seconds at a time.
 *
 * After each major collection every watched session's state gets fresh copies of the two
 * collections (same entries, same order), which ends the chain. Node's internals are found by
 * shape and left alone where they differ; only their own constructors are used.
 */

interface StreamTables {
  streams: Map<unknown, unknown>;
  pendingStreams: Set<unknown>;
}

type AnySession = http2.Http2Session & Record<symbol, unknown>;

const toTag = Object.prototype.toString;
/** The state's symbol on sessions: undefined until looked for, null when this Node has none of that shape. */
let stateKey: symbol | null | undefined;

/** The watched sessions: after each major collection the set, and each session's stream tables, are renewed. */
class SessionsWithTables extends ChurnSet<http2.Http2Session> {
  override renew(): void {
    super.renew();
    for (const session of this) renewStreamTables(session);
  }
}
const watched = new SessionsWithTables();

function isStreamTables(value: unknown): value is StreamTables {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Partial<StreamTables>;
  return toTag.call(v.streams) === '[object Map]' && toTag.call(v.pendingStreams) === '[object Set]';
}

function tablesOf(session: AnySession): StreamTables | null {
  if (stateKey === undefined) stateKey = symbolHolding(session, isStreamTables);
  if (stateKey === null) return null;
  const state = session[stateKey];
  return isStreamTables(state) ? state : null;
}

/** Gives a session's state fresh copies of its stream collections (same entries, same order). */
function renewStreamTables(session: http2.Http2Session): void {
  if (session.destroyed) return;
  const tables = tablesOf(session as AnySession);
  if (tables === null) return;
  const streams = new (tables.streams.constructor as MapConstructor)(tables.streams);
  const pending = new (tables.pendingStreams.constructor as SetConstructor)(tables.pendingStreams);
  if (streams.size !== tables.streams.size || pending.size !== tables.pendingStreams.size) return;
  tables.streams = streams;
  tables.pendingStreams = pending;
}

/** The session's open streams as node:http2 keeps them; null when this Node keeps them otherwise. */
export function openStreams(session: http2.Http2Session): Iterable<unknown> | null {
  const tables = tablesOf(session as AnySession);
  return tables === null ? null : tables.streams.values();
}

/** Renews the session's stream collections after each major collection, until it closes. */
export function watchStreamTables(session: http2.Http2Session): void {
  if (session.destroyed || tablesOf(session as AnySession) === null) return;
  watched.add(session);
  session.once('close', unwatch);
}

function unwatch(this: http2.Http2Session): void {
  watched.delete(this);
}
