import { readdirSync, readFileSync } from 'node:fs';

/**
 * Descriptors kept free for client connections: past this many from the limit, no new upstream
 * socket is opened (the request gets 502 FD_LIMIT), so a client that connects while upstreams
 * hold nearly every descriptor is still accepted and answered instead of being dropped.
 */
const CLIENT_RESERVE = 64;
/**
 * Past this many from the limit a new client is answered 503 and closed at once. libuv accepts
 * and closes, without a word, every pending connection once accept() fails with EMFILE, so the
 * last descriptors are kept for accepting and refusing.
 */
const ACCEPT_RESERVE = 8;

/**
 * The process's file-descriptor budget (RLIMIT_NOFILE, read from /proc on Linux; no guard where
 * it cannot be read). The proxy counts its own client and upstream sockets; everything else the
 * process holds is `other`, measured at start and raised whenever the kernel says EMFILE, so the
 * count errs toward refusing early rather than failing an accept.
 */
export class FdBudget {
  /** Soft limit; 0 when unknown (then every check passes). */
  limit = 0;
  other = 0;
  /** Accepted client sockets still open. */
  clients = 0;
  /** Upstream sockets the pool opened (exchanges and tunnels) still open. */
  upstream = 0;

  /** Reads the limit and what the process holds already (called once, when the listener is up). */
  measure(): void {
    try {
      const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'latin1'));
      if (m === null) return;
      // readdir holds one descriptor of its own while it lists.
      const open = readdirSync('/proc/self/fd').length - 1;
      this.limit = Number(m[1]);
      this.other = Math.max(0, open - this.clients - this.upstream);
    } catch {
      this.limit = 0;
    }
  }

  upstreamAllowed(): boolean {
    return this.limit === 0 || this.other + this.clients + this.upstream < this.limit - CLIENT_RESERVE;
  }

  clientAllowed(): boolean {
    return this.limit === 0 || this.other + this.clients + this.upstream < this.limit - ACCEPT_RESERVE;
  }

  /** The kernel refused a descriptor: whatever the proxy does not count is the rest of the table. */
  exhausted(): void {
    if (this.limit > 0) this.other = Math.max(this.other, this.limit - this.clients - this.upstream);
  }
}
