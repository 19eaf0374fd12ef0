import { readFileSync, stat, statSync, type Stats } from 'node:fs';
import type tls from 'node:tls';
import { crypto as loadCrypto, tls as loadTls } from './builtins.js';
import type { Logger } from './log.js';

/** A certificate and its key, as PEM files. */
export interface CertificateFiles {
  certFile: string;
  keyFile: string;
}

/**
 * TLS termination on the proxy's port: a default certificate, more by SNI name (exact, or
 * `*.example` covering one label), reloaded from disk when the files change.
 */
export interface TlsOption extends CertificateFiles {
  /** More certificates by server name: `{ 'app.example.test': {...}, '*.3000.localhost': {...} }`. */
  sni?: Record<string, CertificateFiles>;
}

const WATCH_INTERVAL_MS = 2_000;

/** Holds the secure contexts and swaps them in place when the files change. */
export class TlsContexts {
  private readonly option: TlsOption;
  private readonly log: Logger;
  private defaultContext: tls.SecureContext;
  /** The default certificate's PEM, for `tls.Server#setSecureContext` (clients without SNI). */
  defaultPem: { cert: Buffer; key: Buffer };
  /** Called after a successful reload. */
  onReload: (() => void) | null = null;
  private exact = new Map<string, tls.SecureContext>();
  private wildcard = new Map<string, tls.SecureContext>();
  private watched: string[] = [];
  /** `mtime/size` (or the stat error) of each watched file when last polled. */
  private stamps = new Map<string, string>();
  private pollTimer: NodeJS.Timeout | null = null;
  private polling = false;
  readonly sniCallback: (servername: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void) => void;

  /**
   * With it (cluster workers share one), every certificate's session ticket keys are derived from
   * it and the certificate: a ticket one worker issued resumes on any other, and never under
   * another certificate. Without it, each context has Node's random keys.
   */
  private readonly ticketSecret: Buffer | undefined;

  constructor(option: TlsOption, log: Logger, ticketSecret?: Buffer) {
    this.option = option;
    this.log = log;
    this.ticketSecret = ticketSecret;
    // Fail fast at construction on unreadable or mismatched files.
    const pair = loadPair(option, ticketSecret);
    this.defaultPem = pair.pem;
    this.defaultContext = pair.context;
    this.loadSni();
    this.sniCallback = (servername, cb) => cb(null, this.contextFor(servername));
  }

  /** Options for the tls.Server's own context (clients without SNI): the default certificate. */
  defaultOptions(): tls.SecureContextOptions {
    const { cert, key } = this.defaultPem;
    return this.ticketSecret === undefined ? { cert, key } : { cert, key, ticketKeys: ticketKeysFor(this.ticketSecret, cert) };
  }

  get context(): tls.SecureContext {
    return this.defaultContext;
  }

  contextFor(servername: string): tls.SecureContext {
    const name = servername.toLowerCase();
    const exact = this.exact.get(name);
    if (exact !== undefined) return exact;
    const dot = name.indexOf('.');
    if (dot !== -1) {
      const wild = this.wildcard.get(name.slice(dot + 1));
      if (wild !== undefined) return wild;
    }
    return this.defaultContext;
  }

  /**
   * Builds the SNI tables aside and swaps them in only when every file loaded: a half-written
   * key (the watcher sees the file mid-write) must leave the names served as they were.
   */
  private loadSni(): void {
    const exact = new Map<string, tls.SecureContext>();
    const wildcard = new Map<string, tls.SecureContext>();
    for (const [name, files] of Object.entries(this.option.sni ?? {})) {
      const context = loadPair(files, this.ticketSecret).context;
      const lower = name.toLowerCase();
      if (lower.startsWith('*.')) wildcard.set(lower.slice(2), context);
      else exact.set(lower, context);
    }
    this.exact = exact;
    this.wildcard = wildcard;
  }

  /**
   * Re-reads every file; on any error the certificates in use stay as they are. Logs one line
   * either way, naming the files that changed (when known) or the file that failed.
   */
  reload(changed?: readonly string[]): boolean {
    try {
      const pair = loadPair(this.option, this.ticketSecret);
      this.loadSni();
      this.defaultPem = pair.pem;
      this.defaultContext = pair.context;
      this.onReload?.();
      this.log.info(changed === undefined ? 'TLS certificates reloaded' : `TLS certificates reloaded (${changed.join(', ')} changed)`);
      return true;
    } catch (err) {
      this.log.error(`TLS certificate reload failed, keeping the current ones: ${(err as Error).message}`);
      return false;
    }
  }

  /**
   * Polls every certificate and key file (size and mtime) together every 2 s, so a renewal that
   * rewrites a certificate and its key is one reload, not one per file.
   */
  watch(): void {
    if (this.pollTimer !== null) return;
    const files = [this.option.certFile, this.option.keyFile];
    for (const f of Object.values(this.option.sni ?? {})) files.push(f.certFile, f.keyFile);
    this.watched = [...new Set(files)];
    this.stamps = new Map();
    for (const file of this.watched) {
      try {
        this.stamps.set(file, stampOf(null, statSync(file)));
      } catch (err) {
        this.stamps.set(file, stampOf(err as NodeJS.ErrnoException, null));
      }
    }
    this.pollTimer = setInterval(() => this.poll(), WATCH_INTERVAL_MS);
    this.pollTimer.unref();
  }

  unwatch(): void {
    if (this.pollTimer !== null) clearInterval(this.pollTimer);
    this.pollTimer = null;
    this.watched = [];
  }

  private poll(): void {
    if (this.polling || this.watched.length === 0) return;
    this.polling = true;
    const files = this.watched;
    const changed: string[] = [];
    let pending = files.length;
    for (const file of files) {
      stat(file, (err, st) => {
        const stamp = stampOf(err, st);
        if (this.stamps.get(file) !== stamp) {
          this.stamps.set(file, stamp);
          changed.push(file);
        }
        if (--pending > 0) return;
        this.polling = false;
        if (changed.length > 0 && this.watched === files) this.reload(files.filter((f) => changed.includes(f)));
      });
    }
  }
}

function stampOf(err: NodeJS.ErrnoException | null, st: Stats | null): string {
  return err === null && st !== null ? `${st.mtimeMs}/${st.size}` : `error ${err?.code ?? ''}`;
}

/** A certificate or key file that cannot be used; the message names the file. */
export class CertificateFileError extends Error {
  readonly file: string;
  readonly code: string;
  constructor(file: string, code: string, message: string, cause: unknown) {
    super(message, { cause });
    this.name = 'CertificateFileError';
    this.file = file;
    this.code = code;
  }
}

function readOne(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const reason = (e.message.split(', ')[0] ?? e.message).trim();
    throw new CertificateFileError(file, e.code ?? 'EIO', `cannot read TLS ${what} file ${file} (${reason})`, err);
  }
}

interface LoadedPair {
  pem: { cert: Buffer; key: Buffer };
  context: tls.SecureContext;
}

/** 48 bytes of session ticket keys (name, HMAC and AES keys) for one certificate. */
function ticketKeysFor(secret: Buffer, cert: Buffer): Buffer {
  return loadCrypto().createHmac('sha384', secret).update(cert).digest();
}

/** Reads and checks a certificate and its key, so every error names the file at fault. */
function loadPair(files: CertificateFiles, ticketSecret: Buffer | undefined): LoadedPair {
  const cert = readOne(files.certFile, 'certificate');
  const key = readOne(files.keyFile, 'key');
  const crypto = loadCrypto();
  try {
    new crypto.X509Certificate(cert);
  } catch (err) {
    throw new CertificateFileError(files.certFile, 'ERR_TLS_CERT_FILE', `TLS certificate file ${files.certFile} holds no valid PEM certificate (${(err as Error).message})`, err);
  }
  try {
    crypto.createPrivateKey(key);
  } catch (err) {
    throw new CertificateFileError(files.keyFile, 'ERR_TLS_KEY_FILE', `TLS key file ${files.keyFile} holds no valid PEM private key (${(err as Error).message})`, err);
  }
  try {
    const ticketKeys = ticketSecret === undefined ? undefined : ticketKeysFor(ticketSecret, cert);
    return { pem: { cert, key }, context: loadTls().createSecureContext({ cert, key, ticketKeys }) };
  } catch (err) {
    throw new CertificateFileError(
      files.certFile,
      'ERR_TLS_CERT_KEY_MISMATCH',
      `TLS certificate file ${files.certFile} and key file ${files.keyFile} cannot be used together (${(err as Error).message})`,
      err,
    );
  }
}
