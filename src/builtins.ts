import { createRequire } from 'node:module';
import type Http from 'node:http';
import type Http2 from 'node:http2';
import type Tls from 'node:tls';
import type Crypto from 'node:crypto';
import type Cluster from 'node:cluster';
import type V8 from 'node:v8';

/**
 * Builtins only some deployments need, loaded on first use. `node:http2`, `node:tls`,
 * `node:crypto` and `node:http` together cost a fresh process about 6 MiB of RSS; a proxy that
 * serves only HTTP/1.1 in cleartext never pays it (idle RSS stays within 10 MiB of a bare node process).
 * `require` keeps the first use synchronous.
 */
export const requireBuiltin = createRequire(import.meta.url);

/** A getter that requires `id` the first time it is called. */
function lazyBuiltin<T>(id: string): () => T {
  let module: T | undefined;
  return () => (module ??= requireBuiltin(id) as T);
}

export const http2 = lazyBuiltin<typeof Http2>('node:http2');
export const tls = lazyBuiltin<typeof Tls>('node:tls');
export const crypto = lazyBuiltin<typeof Crypto>('node:crypto');
export const http = lazyBuiltin<typeof Http>('node:http');
/** Only `--workers` / `startCluster()` use it (with `child_process` and `dgram` it costs ~1 MiB). */
export const cluster = lazyBuiltin<typeof Cluster>('node:cluster');
export const v8 = lazyBuiltin<typeof V8>('node:v8');
