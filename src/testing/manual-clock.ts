import type { Clock } from '../base/clock';

/** A Clock that moves only when a test calls advance(): timers fire in deadline order. */
export class ManualClock implements Clock {
  /** One clock for every thread a test has. */
  readonly timeOriginMs = 0;
  private now = 0;
  private nextId = 0;
  private readonly timers = new Map<number, { readonly dueMs: number; readonly fire: () => void }>();

  nowMs(): number {
    return this.now;
  }

  setTimer(delayMs: number, fire: () => void): () => void {
    const id = this.nextId++;
    this.timers.set(id, { dueMs: this.now + Math.max(0, delayMs), fire });
    return () => this.timers.delete(id);
  }

  /** Timers not yet fired. */
  get pendingTimerCount(): number {
    return this.timers.size;
  }

  /** Move time forward by `ms`, firing each timer that falls due at its own deadline. */
  advance(ms: number): void {
    const end = this.now + ms;
    for (;;) {
      let next: [number, { dueMs: number; fire: () => void }] | undefined;
      for (const entry of this.timers) if (entry[1].dueMs <= end && (next === undefined || entry[1].dueMs < next[1].dueMs)) next = entry;
      if (next === undefined) break;
      this.timers.delete(next[0]);
      this.now = Math.max(this.now, next[1].dueMs);
      next[1].fire();
    }
    this.now = end;
  }
}
