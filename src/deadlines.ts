/** Something with a deadline that a sweep may expire. */
export interface Expirable {
  deadline: number;
  expire(): void;
}

/**
 * Coarse deadlines for many objects on one unref'd interval (STYLE habit 9): arming is a Set
 * insert and a clock read, where `socket.setTimeout()` allocates a timer and a bound function on
 * every call. Deadlines fire up to `intervalMs` late.
 */
export class DeadlineSweep {
  private readonly items = new Set<Expirable>();
  private readonly intervalMs: number;
  private timer: NodeJS.Timeout | null = null;

  constructor(intervalMs: number) {
    this.intervalMs = intervalMs;
  }

  arm(item: Expirable, timeoutMs: number): void {
    item.deadline = Date.now() + timeoutMs;
    this.items.add(item);
    if (this.timer === null) {
      this.timer = setInterval(sweepTick, this.intervalMs, this);
      this.timer.unref();
    }
  }

  disarm(item: Expirable): void {
    this.items.delete(item);
  }

  sweep(): void {
    const now = Date.now();
    for (const item of this.items) {
      if (item.deadline <= now) {
        this.items.delete(item);
        item.expire();
      }
    }
    if (this.items.size === 0) this.stop();
  }

  /** Stops the sweep; with `forget`, drops every deadline too (shutdown). */
  stop(forget = false): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    if (forget) this.items.clear();
  }
}

function sweepTick(sweep: DeadlineSweep): void {
  sweep.sweep();
}
