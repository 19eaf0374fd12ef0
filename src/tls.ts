import { readFileSync, unwatchFile, watchFile } from 'node:fs';
import type tls from 'node:tls';
import { tls as loadTls } from './builtins.js';
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
  private readonly watched: string[] = [];
  readonly sniCallback: (servername: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void) => void;

  constructor(option: TlsOption, log: Logger) {
    this.option = option;
    this.log = log;
    // Fail fast at construction on unreadable or mismatched files.
    this.defaultPem = readPem(option);
    this.defaultContext = loadTls().createSecureContext(this.defaultPem);
    this.loadSni();
    this.sniCallback = (servername, cb) => cb(null, this.contextFor(servername));
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
      const context = load(files);
      const lower = name.toLowerCase();
      if (lower.startsWith('*.')) wildcard.set(lower.slice(2), context);
      else exact.set(lower, context);
    }
    this.exact = exact;
    this.wildcard = wildcard;
  }

  /** Re-reads every file; on any error the certificates in use stay as they are. */
  reload(): boolean {
    try {
      const pem = readPem(this.option);
      const next = loadTls().createSecureContext(pem);
      this.loadSni();
      this.defaultPem = pem;
      this.defaultContext = next;
      this.onReload?.();
      this.log.info('TLS certificates reloaded');
      return true;
    } catch (err) {
      this.log.error(`TLS certificate reload failed, keeping the current ones: ${(err as Error).message}`);
      return false;
    }
  }

  watch(): void {
    const files = [this.option.certFile, this.option.keyFile];
    for (const f of Object.values(this.option.sni ?? {})) files.push(f.certFile, f.keyFile);
    for (const file of new Set(files)) {
      const watcher = watchFile(file, { interval: WATCH_INTERVAL_MS, persistent: false }, (curr, prev) => {
        if (curr.mtimeMs !== prev.mtimeMs || curr.size !== prev.size) this.reload();
      });
      watcher.unref?.();
      this.watched.push(file);
    }
  }

  unwatch(): void {
    for (const file of this.watched.splice(0)) unwatchFile(file);
  }
}

function readPem(files: CertificateFiles): { cert: Buffer; key: Buffer } {
  return { cert: readFileSync(files.certFile), key: readFileSync(files.keyFile) };
}

function load(files: CertificateFiles): tls.SecureContext {
  return loadTls().createSecureContext(readPem(files));
}
