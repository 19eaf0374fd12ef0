import net from 'node:net';
import type tls from 'node:tls';
import { tls as loadTls } from '../builtins.js';
import { hostName } from '../route/host-patterns.js';
import type { Target } from '../route/target.js';
import { SOCKET_WRITES } from '../socket-shape.js';

/** ALPN lists offered to TLS upstreams. */
export const ALPN_HTTP1: readonly string[] = ['http/1.1'];
export const ALPN_H2: readonly string[] = ['h2'];
export const ALPN_ANY: readonly string[] = ['h2', 'http/1.1'];

/** How the proxy checks the certificates of TLS upstreams. */
export interface UpstreamTlsConfig {
  /** Refuse certificates that do not verify (chain to a trusted CA, name the upstream, in date). */
  rejectUnauthorized: boolean;
  /** Accept certificates that do not verify from loopback upstreams only (self-signed dev servers). */
  insecureLoopback: boolean;
  /** Extra trusted CA certificates (PEM), added to Node's root store; undefined: the roots only. */
  ca: string | undefined;
}

/** Upstream error codes for a TLS handshake that failed (`upstreamErrors`, the 502 text). */
export const UPSTREAM_TLS_CERT = 'UPSTREAM_TLS_CERT';
export const UPSTREAM_TLS_HANDSHAKE = 'UPSTREAM_TLS_HANDSHAKE';

/** Certificate verification failures (OpenSSL's X509_V_ERR_* names, and Node's name check). */
const CERT_ERRORS: ReadonlySet<string> = new Set([
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'ERROR_IN_CERT_NOT_BEFORE_FIELD',
  'ERROR_IN_CERT_NOT_AFTER_FIELD',
  'CERT_CHAIN_TOO_LONG',
  'CERT_REVOKED',
  'INVALID_CA',
  'PATH_LENGTH_EXCEEDED',
  'INVALID_PURPOSE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'HOSTNAME_MISMATCH',
]);

const kTlsUpstream = Symbol('cmux.upstream.tls');

/** What a TLS upstream socket went through: TCP connected, handshake done. */
interface TlsUpstreamState {
  readonly connector: UpstreamConnector;
  readonly cacheKey: string;
  tcp: boolean;
  secure: boolean;
}
type UpstreamTlsSocket = tls.TLSSocket & { [kTlsUpstream]?: TlsUpstreamState };

/**
 * The code for an error on an upstream socket: a failed TLS handshake becomes
 * UPSTREAM_TLS_CERT (the certificate did not verify) or UPSTREAM_TLS_HANDSHAKE (no TLS, a
 * protocol error, or the connection closed before the handshake ended); anything else keeps its
 * own code (`fallback` when it has none).
 */
export function upstreamErrorCode(socket: net.Socket | null, err: NodeJS.ErrnoException, fallback: string): string {
  const code = err.code;
  if (code !== undefined && CERT_ERRORS.has(code)) return UPSTREAM_TLS_CERT;
  const state = socket === null ? undefined : (socket as UpstreamTlsSocket)[kTlsUpstream];
  if (state !== undefined && state.tcp && !state.secure) {
    // Connected at TCP level, not through the handshake (ERR_SSL_WRONG_VERSION_NUMBER from a
    // cleartext server, ECONNRESET from one that hung up on the ClientHello, ...). A refused
    // connect keeps its own code (ECONNREFUSED: nothing listens there).
    return UPSTREAM_TLS_HANDSHAKE;
  }
  if (code !== undefined && code.startsWith('ERR_SSL_')) return UPSTREAM_TLS_HANDSHAKE;
  return code ?? fallback;
}

/** The event that says a new upstream socket is ready for bytes: the end of the TLS handshake, or the TCP connect. */
export function readyEvent(target: Target): 'secureConnect' | 'connect' {
  return target.tls ? 'secureConnect' : 'connect';
}

/** An address in 127.0.0.0/8, ::1 or `localhost`: this machine. */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost' || host === '::1') return true;
  return host.startsWith('127.') && net.isIPv4(host);
}

/** Most TLS sessions kept for resumption (one per target and server name). */
const SESSION_CACHE_MAX = 1024;

/**
 * The server name (SNI) for a client's Host: its host name when it is a DNS name; undefined for
 * an address, an empty or a non-ASCII name (no SNI is sent then).
 */
export function serverNameFor(host: string | undefined): string | undefined {
  if (host === undefined || host === '') return undefined;
  const name = hostName(host);
  const len = name.length;
  if (len === 0 || len > 253 || net.isIP(name) !== 0) return undefined;
  for (let i = 0; i < len; i++) {
    const c = name.charCodeAt(i);
    // Letters, digits, '-', '.', '_' (lower-cased already).
    if (!((c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 45 || c === 46 || c === 95)) return undefined;
  }
  return name;
}

/**
 * The pool key of `target` for a client's Host: a TLS connection carries the server name it was
 * opened (and its certificate checked) for, so it serves that server name only; a cleartext one
 * serves any Host.
 */
export function poolKey(target: Target, host: string | undefined): string {
  return target.tls ? `${target.key}|${serverNameFor(host) ?? ''}` : target.key;
}

/**
 * Opens connections to routed targets: TCP, a unix socket, or TLS (a target with `tls`) with
 * ALPN, the client's Host as SNI, the proxy's certificate rules, and TLS session resumption.
 */
export class UpstreamConnector {
  readonly tls: UpstreamTlsConfig;
  private readonly ca: string[] | undefined;
  /** Last TLS session per target and server name (insertion order: oldest first). */
  private readonly sessions = new Map<string, Buffer>();

  constructor(config: UpstreamTlsConfig) {
    this.tls = config;
    this.ca = config.ca === undefined ? undefined : [...loadTls().rootCertificates, config.ca];
  }

  /** A connection to `target`; `host` is the client's Host (SNI), `alpn` what to offer over TLS. */
  connect(target: Target, host: string | undefined, alpn: readonly string[]): net.Socket {
    // Every key net.Socket's constructor writes is already in the options (see socket-shape.ts).
    if (target.socketPath !== undefined) return net.connect({ path: target.socketPath, ...SOCKET_WRITES });
    if (!target.tls) return net.connect({ host: target.host, port: target.port, ...SOCKET_WRITES });
    const servername = serverNameFor(host);
    const cacheKey = `${target.key}|${servername ?? ''}|${alpn.join(',')}`;
    const config = this.tls;
    const socket = loadTls().connect({
      host: target.host,
      port: target.port,
      servername,
      ALPNProtocols: alpn as string[],
      rejectUnauthorized: config.rejectUnauthorized && !(config.insecureLoopback && isLoopbackHost(target.host)),
      ca: this.ca,
      session: this.sessions.get(cacheKey),
      checkServerIdentity: (name, cert) => checkUpstreamIdentity(target, name, cert),
    }) as UpstreamTlsSocket;
    socket[kTlsUpstream] = { connector: this, cacheKey, tcp: false, secure: false };
    socket.on('connect', upstreamOnTcpConnect);
    socket.on('secureConnect', upstreamOnSecureConnect);
    socket.on('session', upstreamOnSession);
    return socket;
  }

  /** Keeps a TLS session for the next connection with the same key. */
  storeSession(cacheKey: string, session: Buffer): void {
    const sessions = this.sessions;
    sessions.delete(cacheKey);
    sessions.set(cacheKey, session);
    if (sessions.size > SESSION_CACHE_MAX) sessions.delete(sessions.keys().next().value!);
  }

  /** A failed handshake must not be resumed from: its session is forgotten. */
  forgetSessions(): void {
    this.sessions.clear();
  }

  /**
   * Asks a TLS upstream which protocol it picks from `h2` and `http/1.1` (ALPN): resolves true
   * for `h2`. False for anything else, a failed handshake or no answer within `timeoutMs` (the
   * request then goes over HTTP/1.1, and meets the same failure there with its own error).
   */
  probeAlpn(target: Target, host: string | undefined, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const socket = this.connect(target, host, ALPN_ANY);
      const finish = (answer: boolean): void => {
        clearTimeout(timer);
        socket.removeAllListeners('secureConnect');
        // Let a session ticket that is on its way arrive before closing (TLS 1.3 sends it after the handshake).
        socket.end();
        socket.on('error', ignore);
        resolve(answer);
      };
      const timer = setTimeout(() => {
        socket.destroy();
        finish(false);
      }, timeoutMs);
      socket.once('secureConnect', () => finish((socket as tls.TLSSocket).alpnProtocol === 'h2'));
      socket.once('error', () => finish(false));
    });
  }
}

function ignore(): void {}

function upstreamOnTcpConnect(this: UpstreamTlsSocket): void {
  const state = this[kTlsUpstream];
  if (state !== undefined) state.tcp = true;
}

function upstreamOnSecureConnect(this: UpstreamTlsSocket): void {
  const state = this[kTlsUpstream];
  if (state !== undefined) state.secure = true;
}

function upstreamOnSession(this: UpstreamTlsSocket, session: Buffer): void {
  const state = this[kTlsUpstream];
  if (state !== undefined) state.connector.storeSession(state.cacheKey, session);
}

/**
 * An upstream's certificate must name the Host the client asked for (the SNI), the target's
 * address, or — for a loopback target — `localhost`: each names the machine the proxy dialled.
 */
function checkUpstreamIdentity(target: Target, servername: string, cert: tls.PeerCertificate): Error | undefined {
  const first = loadTls().checkServerIdentity(servername !== '' ? servername : target.host, cert);
  if (first === undefined) return undefined;
  if (loadTls().checkServerIdentity(target.host, cert) === undefined) return undefined;
  if (isLoopbackHost(target.host) && loadTls().checkServerIdentity('localhost', cert) === undefined) return undefined;
  return first;
}
