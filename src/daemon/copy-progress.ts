// How far, how fast and how long to go for each copy of a volume (a Raft
// snapshot) this node streams to a replica: the sender says where each copy
// is (SnapshotSender.copies); the rate is counted from the first time the
// copy was seen here, once a second or when someone asks.

import type { CopyProgress } from "../api/types.js";

/** A copy as the sender reports it. */
export interface CopyAt {
  to: number;
  cursorBytes: number;
  sizeBytes: number;
  delta: boolean;
}

interface Seen {
  atMs: number;
  cursorBytes: number;
  lastBytes: number;
}

/** Under this long since a copy was first seen its rate says little: none is given. */
const rateAfterMs = 500;

export class CopyRates {
  /** By "group/to": when and where each copy was first seen, and where last; at most one per copy the sender holds. */
  private seen = new Map<string, Seen>();

  constructor(
    private readonly copies: (group: number) => CopyAt[],
    private readonly now: () => number,
  ) {}

  /** Remembers the start of each copy of these groups and forgets the copies that ended. */
  track(groups: Iterable<number>): void {
    const next = new Map<string, Seen>();
    for (const group of groups) for (const c of this.copies(group)) next.set(`${group}/${c.to}`, this.first(group, c));
    this.seen = next;
  }

  /** The copy of `group` to node `to`, if one is under way. */
  progress(group: number, to: number): CopyProgress | undefined {
    const c = this.copies(group).find((x) => x.to === to);
    if (c === undefined) return undefined;
    const first = this.first(group, c);
    this.seen.set(`${group}/${to}`, first);
    const ms = this.now() - first.atMs;
    const bytesPerSec = ms < rateAfterMs ? 0 : ((c.cursorBytes - first.cursorBytes) * 1000) / ms;
    return {
      doneBytes: c.cursorBytes,
      totalBytes: c.sizeBytes,
      bytesPerSec,
      ...(bytesPerSec > 0 ? { etaSec: (c.sizeBytes - c.cursorBytes) / bytesPerSec } : {}),
      delta: c.delta,
    };
  }

  /** Where the copy was first seen, now seen at its cursor; a copy whose cursor went back is a new copy. */
  private first(group: number, c: CopyAt): Seen {
    const seen = this.seen.get(`${group}/${c.to}`);
    if (seen !== undefined && seen.lastBytes <= c.cursorBytes) return { ...seen, lastBytes: c.cursorBytes };
    return { atMs: this.now(), cursorBytes: c.cursorBytes, lastBytes: c.cursorBytes };
  }
}
