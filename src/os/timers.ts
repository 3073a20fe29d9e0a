// Timers for the pure layers, over Node's: a cancellable timeout and a defer
// that runs after the I/O callbacks of this event-loop turn (setImmediate),
// which is what lets requests of one turn share a group commit or a writev.

export interface Timers {
  /** Runs fn once after ms; returns a function that cancels it. */
  setTimeout(fn: () => void, ms: number): () => void;
  defer(fn: () => void): void;
}

export const nodeTimers: Timers = {
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  },
  defer(fn) {
    setImmediate(fn);
  },
};

/** Milliseconds on this process's monotonic clock: for durations on one node, never for comparing with another node's times. */
export function monotonicMs(): number {
  return performance.now();
}
