import { createRequire } from 'node:module';
import type Http from 'node:http';
import type Http2 from 'node:http2';
import type Tls from 'node:tls';
import type Crypto from 'node:crypto';

/**
 * Builtins only some deployments need, loaded on first use. `node:http2`, `node:tls`,
 * `node:crypto` and `node:http` together cost a fresh process about 6 MiB of RSS; a proxy that
 * serves only HTTP/1.1 in cleartext never pays it (SPEC: idle RSS ≤ bare node + 10 MiB).
 * `require` keeps the first use synchronous.
 */
const requireBuiltin = createRequire(import.meta.url);

let http2Module: typeof Http2 | undefined;
let tlsModule: typeof Tls | undefined;
let cryptoModule: typeof Crypto | undefined;
let httpModule: typeof Http | undefined;

export function http2(): typeof Http2 {
  return (http2Module ??= requireBuiltin('node:http2') as typeof Http2);
}

export function tls(): typeof Tls {
  return (tlsModule ??= requireBuiltin('node:tls') as typeof Tls);
}

export function crypto(): typeof Crypto {
  return (cryptoModule ??= requireBuiltin('node:crypto') as typeof Crypto);
}

export function http(): typeof Http {
  return (httpModule ??= requireBuiltin('node:http') as typeof Http);
}
