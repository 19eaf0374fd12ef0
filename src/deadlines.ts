import { ChurnSet } from './churn-set.js';

/** Something with a deadline that a sweep may expire. */
export interface Expirable {
  /** When it expires (ms since the epoch); 0 when not armed. */
  deadline: number;
  /** Set while the sweep holds it (owned by DeadlineSweep). */
  inSweep: boolean;
  expire(): void;
}

/**
 * Coarse deadlines for many objects on one unref'd interval (STYLE habit 9): arming writes a
 * number (and adds the item to the set once), disarming writes 0; the sweep drops disarmed items
 * when it passes. A keep-alive connection that arms and disarms on every request therefore costs
 * no Set traffic on the hot path, where `socket.setTimeout()` would allocate a timer per call.
 * Deadlines fire up to `intervalMs` late; a disarmed item stays referenced until the next sweep.
 * Items come and go with connections: the set is a ChurnSet.
 */
export class DeadlineSweep {
  private readonly items = new ChurnSet<Expirable>();
  private readonly intervalMs: number;
  private timer: NodeJS.Timeout | null = null;

  constructor(intervalMs: number) {
    this.intervalMs = intervalMs;
  }

  arm(item: Expirable, timeoutMs: number): void {
    item.deadline = Date.now() + timeoutMs;
    if (item.inSweep) return;
    item.inSweep = true;
    this.items.add(item);
    if (this.timer === null) {
      this.timer = setInterval(sweepTick, this.intervalMs, this);
      this.timer.unref();
    }
  }

  disarm(item: Expirable): void {
    item.deadline = 0;
  }

  sweep(): void {
    const now = Date.now();
    for (const item of this.items) {
      const deadline = item.deadline;
      if (deadline === 0) {
        this.items.delete(item);
        item.inSweep = false;
      } else if (deadline <= now) {
        this.items.delete(item);
        item.inSweep = false;
        item.deadline = 0;
        item.expire();
      }
    }
    if (this.items.size === 0) this.stop();
  }

  /** Stops the sweep; with `forget`, drops every deadline too (shutdown). */
  stop(forget = false): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    if (!forget) return;
    for (const item of this.items) {
      item.inSweep = false;
      item.deadline = 0;
    }
    this.items.clear();
  }
}

function sweepTick(sweep: DeadlineSweep): void {
  sweep.sweep();
}
