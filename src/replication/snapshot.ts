// Raft snapshots of volume groups, streamed as a full copy or as the changes
// since the follower's state (DESIGN §4, docs/formats/peer-protocol.md
// "Snapshots").
//
// A leader whose log no longer reaches back to a follower's next entry (it was
// compacted while the follower was down) gets a `snap` message from its core.
// The driver does not send that message at once: the SnapshotSender first
// streams every allocated extent of the volume in chunks, a few in flight,
// each acknowledged once durable on the follower; then it sends the core's
// message. The SnapshotReceiver writes the chunks into a staging group (the
// follower's own group stays a consistent, lagging replica meanwhile) and lets
// the core take the `snap` message only once every chunk of that snapshot is
// on disk; the driver's persist then swaps the staging group in with one
// record (Store.installSnapshot).
//
// A delta: when the leader kept a ChangeMap from index `base` on (the match
// of the member it left behind, or its compaction point after an election;
// src/replication/changes.ts), a chunk carries data only for the extents that
// changed since `base`, and lists the other allocated extents as `keep`: the
// follower copies those from its own group into the staging group. That is
// right only once the follower applied at least `base` (then its blocks
// outside the changes are the leader's). A follower behind it whose entry
// `base` has the leader's term (`baseTerm`) first applies its own log that
// far (the driver's catchUp port); any other refuses the delta, and the
// leader's next try is a full copy. The follower's group only moves forward
// while the stream runs (the leader sends it no entries), and a block it
// copies is one no entry after `base` touched.
//
// The copy is fuzzy: chunks are read from the live volume while writes go on,
// so a chunk may already hold writes after the snapshot's index. That is
// safe because the follower then replays every entry after the index, and
// writes and trims are idempotent physical redo: a block ends up with the
// last write to it, whichever state the chunk caught. The leader keeps those
// entries (it does not compact its log past a snapshot being sent).
//
// Every copy a node sends draws its chunks from one rate (the `pace` port,
// pxd daemon --resync-bandwidth), so a rebuild leaves client I/O the rest.

import { failStop, isBug } from "../base/fail-stop.js";
import { raftAppendBytesMax, sectorBytes, snapshotChunkBytes, snapshotChunkExtentsMax, snapshotChunkKeepBytes, snapshotWindowChunks, volumeBytesMax } from "../constants.js";
import type { Message, NodeId } from "../raft/types.js";
import { ChecksumError, StoreError } from "../store/errors.js";
import type { Store } from "../store/store.js";
import type { ChangeMap } from "./changes.js";

/** Leader -> follower: allocated extents [offset, length] pairs (bytes) and their data, in order. */
export interface SnapChunkEnvelope {
  kind: "snap-chunk";
  group: number;
  /** The snapshot's index and term (what the core's snap message will carry). */
  index: number;
  term: number;
  seq: number;
  /** 0: a full copy. Else a delta: `keep` extents hold what the follower has once it applied `base`. */
  base: number;
  /** The term of entry `base` on the leader (0 in a full copy). */
  baseTerm: number;
  extents: number[];
  data: Uint8Array;
  /** Allocated extents [offset, length] pairs (bytes) unchanged since `base`: the follower copies its own. */
  keep: number[];
  last: boolean;
  /**
   * The volume's size on the leader when the stream began (at least its size
   * at the snapshot's index: volumes only grow); the follower's staging group
   * takes it. Absent from an older leader: the follower's own size.
   */
  sizeBytes?: number;
}

/** Follower -> leader: chunks up to `seq` are durable (ok), or the stream is refused. */
export interface SnapAckEnvelope {
  kind: "snap-ack";
  group: number;
  index: number;
  seq: number;
  ok: boolean;
  /** On a refusal because the follower applied the group up to `applied`, at or past the copy's index: it needs no copy. */
  applied?: number;
}

export interface SnapshotPorts {
  store: Store;
  send(to: NodeId, envelope: SnapChunkEnvelope | SnapAckEnvelope | { kind: "raft"; group: number; message: Message }): boolean;
  /** The core gives up on (ok = false) or is told about the snapshot to `to`. */
  reportSnapshot(group: number, to: NodeId, ok: boolean): void;
  /** Whether this node still leads the group and the core still has `to` in snapshot state. */
  stillSending(group: number, to: NodeId): boolean;
  /**
   * Follower: its entry `index` has the leader's term there, so its log up to
   * it is the leader's, committed: apply it that far. Resolves once applied;
   * undefined when the entry is not here with that term.
   */
  catchUp?(group: number, leader: NodeId, index: number, term: number): Promise<void> | undefined;
  /** Blocks of this node's copy failed their checksum while being read for a snapshot: repair them (the stream is given up meanwhile). */
  damaged?(e: ChecksumError): void;
  /** The node's rebuild bandwidth, shared by every copy it sends (pxd daemon --resync-bandwidth); absent: no limit. */
  pace?: ResyncPacer;
  log(line: string): void;
}

/** Paces the chunks of every copy a node sends to one rate (docs/architecture.md, "QoS and rebuild limits"). */
export interface ResyncPacer {
  /** Milliseconds until the next chunk may go (0: now). */
  waitMs(): number;
  /** A chunk of `bytes` of volume data went. */
  sent(bytes: number): void;
  /** Runs fn once after ms; returns a function that cancels it. */
  after(ms: number, fn: () => void): () => void;
}

/** Ticks a stream waits for an acknowledgement (or, after the last chunk, for the follower to install) before it gives up. */
const streamStallTicks = 100;
/** Bytes of the volume one blockStatus call scans while a chunk is gathered. */
const scanBytes = 64 * 1024 * 1024;

interface OutStream {
  group: number;
  to: NodeId;
  index: number;
  term: number;
  /** The core's snap message, sent after the last chunk is acknowledged. */
  message: Message;
  /** A delta: what changed since changes.base. */
  changes: ChangeMap | undefined;
  cursor: number;
  sizeBytes: number;
  nextSeq: number;
  /** Chunks below this are acknowledged. */
  acked: number;
  lastSeq: number;
  finalSent: boolean;
  idleTicks: number;
  /** Waiting for the node's rebuild bandwidth: cancels the timer that pumps it again. */
  paced: (() => void) | undefined;
}

/** A leader streams at most one snapshot per group and follower. */
function streamKey(group: number, to: NodeId): string {
  return `${group}/${to}`;
}

export class SnapshotSender {
  private readonly streams = new Map<string, OutStream>();
  /** Followers whose last stream was a delta that failed: their next one is a full copy. */
  private readonly fullNext = new Set<string>();
  readonly counters = { snapshotsStarted: 0, snapshotsSent: 0, snapshotsFailed: 0, snapshotBytesSent: 0, snapshotDeltas: 0, snapshotBytesKept: 0 };

  constructor(private readonly p: SnapshotPorts) {}

  /** The core wants a snapshot sent: stream the volume (or what changed since `changes.base`), then `message`. */
  start(group: number, sizeBytes: number, message: Message, changes?: ChangeMap): void {
    const snap = message.snapshot;
    if (snap === null) return;
    const key = streamKey(group, message.to);
    this.streams.delete(key);
    const delta = changes !== undefined && changes.base < snap.meta.index && !this.fullNext.has(key) ? changes : undefined;
    if (sizeBytes <= 0) {
      // Not a volume this node knows the size of: a copy of nothing would install an empty volume there.
      this.p.log(`snapshot: group ${group}: no volume size known here; not sending a copy to node ${message.to}`);
      this.p.reportSnapshot(group, message.to, false);
      return;
    }
    const s: OutStream = {
      group,
      to: message.to,
      index: snap.meta.index,
      term: snap.meta.term,
      message,
      changes: delta,
      cursor: 0,
      sizeBytes,
      nextSeq: 0,
      acked: 0,
      lastSeq: -1,
      finalSent: false,
      idleTicks: 0,
      paced: undefined,
    };
    this.streams.set(key, s);
    this.counters.snapshotsStarted++;
    if (delta !== undefined) this.counters.snapshotDeltas++;
    const what = delta === undefined ? "a full copy" : `what changed since index ${delta.base} (${delta.changedBlocks} blocks of 4 KiB)`;
    this.p.log(`snapshot: group ${group}: sending ${what} at index ${s.index} to node ${s.to}`);
    // Pumped once the driver's pass over the Ready that asked for it is done.
    queueMicrotask(() => {
      if (this.streams.get(key) === s) this.pump(s);
    });
  }

  /** Copies under way in the group, for progress reports (read-only): the follower, how far through the volume's bytes the copy is, and whether it sends only changes. */
  copies(group: number): { to: NodeId; cursorBytes: number; sizeBytes: number; delta: boolean }[] {
    const out: { to: NodeId; cursorBytes: number; sizeBytes: number; delta: boolean }[] = [];
    for (const s of this.streams.values()) if (s.group === group) out.push({ to: s.to, cursorBytes: s.cursor, sizeBytes: s.sizeBytes, delta: s.changes !== undefined });
    return out;
  }

  /** The lowest snapshot index being sent in the group: its log must keep every entry after it. */
  holdIndex(group: number): number {
    let min = Infinity;
    for (const s of this.streams.values()) if (s.group === group) min = Math.min(min, s.index);
    return min;
  }

  onAck(from: NodeId, a: SnapAckEnvelope): void {
    const s = this.streams.get(streamKey(a.group, from));
    if (s === undefined || s.index !== a.index || !Number.isSafeInteger(a.seq)) return;
    // The group left this node or this node no longer leads it: reading it for the next chunk would fail.
    if (!this.p.stillSending(s.group, s.to)) {
      this.streams.delete(streamKey(s.group, s.to));
      return;
    }
    if (!a.ok && a.applied !== undefined && a.applied >= s.index) {
      // The follower holds the state the copy would give it (it applied it from its own log meanwhile): as good as installed.
      this.streams.delete(streamKey(s.group, s.to));
      this.p.log(`snapshot: group ${s.group}: node ${s.to} already applied up to index ${a.applied}, past the copy at ${s.index}; it needs no copy, the log goes on from there`);
      this.p.reportSnapshot(s.group, s.to, true);
      return;
    }
    if (!a.ok) return this.abort(s, "the follower refused a chunk");
    if (a.seq < s.acked || a.seq >= s.nextSeq) return;
    s.acked = a.seq + 1;
    s.idleTicks = 0;
    if (s.acked - 1 === s.lastSeq) {
      // Every chunk is durable there: now the core's message, which installs it.
      s.finalSent = true;
      if (!this.p.send(s.to, { kind: "raft", group: s.group, message: s.message })) this.abort(s, "the peer is unreachable");
      return;
    }
    this.pump(s);
  }

  tick(): void {
    for (const s of [...this.streams.values()]) {
      if (!this.p.stillSending(s.group, s.to)) {
        // Installed (the core moved on), or this node no longer leads.
        if (s.finalSent) {
          this.counters.snapshotsSent++;
          this.fullNext.delete(streamKey(s.group, s.to));
        }
        this.streams.delete(streamKey(s.group, s.to));
        continue;
      }
      // A stream waiting for the node's rebuild bandwidth is not stalled: its follower has nothing to acknowledge.
      if (s.paced === undefined && ++s.idleTicks > streamStallTicks) this.abort(s, s.finalSent ? "the follower did not install it" : "no acknowledgement");
    }
  }

  private abort(s: OutStream, why: string): void {
    this.streams.delete(streamKey(s.group, s.to));
    s.paced?.();
    s.paced = undefined;
    // Refused (the follower applied less than the base) or lost: a full copy next time is always right.
    if (s.changes !== undefined) this.fullNext.add(streamKey(s.group, s.to));
    this.counters.snapshotsFailed++;
    this.p.log(`snapshot: group ${s.group} to node ${s.to} at index ${s.index} given up (${why}); the leader will try again`);
    this.p.reportSnapshot(s.group, s.to, false);
  }

  /** Sends chunks while the window has room and the node's rebuild bandwidth allows. */
  private pump(s: OutStream): void {
    if (s.paced !== undefined) return; // its timer pumps it
    while (s.lastSeq < 0 && s.nextSeq - s.acked < snapshotWindowChunks) {
      const waitMs = this.p.pace?.waitMs() ?? 0;
      if (waitMs > 0) {
        s.paced = this.p.pace!.after(Math.ceil(waitMs), () => {
          s.paced = undefined;
          s.idleTicks = 0;
          if (this.streams.get(streamKey(s.group, s.to)) === s) this.pump(s);
        });
        return;
      }
      let chunk: SnapChunkEnvelope;
      try {
        chunk = this.nextChunk(s);
      } catch (e) {
        if (e instanceof ChecksumError) {
          // Damaged data must not travel: mend this copy first; the core asks for the snapshot again.
          this.p.damaged?.(e);
          return this.abort(s, `this node's copy is damaged (${e.message}); repairing it`);
        }
        // The disk failed a read (or the group left the store): no copy from here now. Anything else is a bug.
        if (e instanceof StoreError) return this.abort(s, `this node cannot read its copy (${e.message})`);
        throw e;
      }
      if (!this.p.send(s.to, chunk)) return this.abort(s, "the peer is unreachable");
      this.counters.snapshotBytesSent += chunk.data.length;
      this.p.pace?.sent(chunk.data.length);
      if (chunk.last) s.lastSeq = chunk.seq;
    }
  }

  /**
   * The allocated extents from the cursor on, up to a chunk's worth of data;
   * reads them from the live volume. In a delta, extents that did not change
   * since the base go in `keep` (up to snapshotChunkKeepBytes) instead.
   */
  private nextChunk(s: OutStream): SnapChunkEnvelope {
    const store = this.p.store;
    const extents: number[] = [];
    const keep: number[] = [];
    const parts: Buffer[] = [];
    let bytes = 0;
    let keepBytes = 0;
    const full = (): boolean =>
      bytes >= snapshotChunkBytes || keepBytes >= snapshotChunkKeepBytes || extents.length >= 2 * snapshotChunkExtentsMax || keep.length >= 2 * snapshotChunkExtentsMax;
    scan: while (s.cursor < s.sizeBytes && !full()) {
      const runs = store.blockStatus(s.group, s.cursor, Math.min(scanBytes, s.sizeBytes - s.cursor));
      for (const r of runs) {
        if (r.hole) {
          s.cursor += r.lengthBytes;
          continue;
        }
        const runEnd = s.cursor + r.lengthBytes;
        while (s.cursor < runEnd) {
          if (full()) break scan;
          const piece = s.changes?.runAt(s.cursor, runEnd - s.cursor) ?? { changed: true, lengthBytes: runEnd - s.cursor };
          if (piece.changed) {
            const take = Math.min(piece.lengthBytes, snapshotChunkBytes - bytes);
            parts.push(store.read(s.group, s.cursor, take));
            extents.push(s.cursor, take);
            bytes += take;
            s.cursor += take;
          } else {
            const take = Math.min(piece.lengthBytes, snapshotChunkKeepBytes - keepBytes);
            // Neighbouring runs (other log records) join one kept extent.
            if (keep.length > 0 && keep[keep.length - 2]! + keep[keep.length - 1]! === s.cursor) keep[keep.length - 1] = keep[keep.length - 1]! + take;
            else keep.push(s.cursor, take);
            keepBytes += take;
            s.cursor += take;
          }
        }
      }
    }
    this.counters.snapshotBytesKept += keepBytes;
    return {
      kind: "snap-chunk",
      group: s.group,
      index: s.index,
      term: s.term,
      seq: s.nextSeq++,
      base: s.changes?.base ?? 0,
      baseTerm: s.changes?.baseTerm ?? 0,
      extents,
      data: parts.length === 1 ? parts[0]! : Buffer.concat(parts),
      keep,
      last: s.cursor >= s.sizeBytes,
      sizeBytes: s.sizeBytes,
    };
  }
}

interface InStream {
  from: NodeId;
  index: number;
  term: number;
  /** The delta's base (0: a full copy). */
  base: number;
  /** Kept extents are copied once this node applied the base. */
  baseApplied: Promise<void>;
  stagingId: number;
  nextSeq: number;
  /** The chunk marked last has arrived (its writes may still be in flight). */
  ended: boolean;
  /** Every chunk including the last is durable in the staging group. */
  complete: boolean;
  failed: boolean;
  /** The core took its snap message: its next persist installs this staging group, so nothing may restart it. */
  installing: boolean;
}

export class SnapshotReceiver {
  private readonly streams = new Map<number, InStream>();

  constructor(
    private readonly p: SnapshotPorts,
    /** The group's leader as this node's core knows it (0: none), the volume size and the applied index; undefined if not hosted here. */
    private readonly groupInfo: (group: number) => { leader: NodeId; sizeBytes: number; applied: number } | undefined,
  ) {}

  onChunk(from: NodeId, c: SnapChunkEnvelope): void {
    const info = this.groupInfo(c.group);
    if (info === undefined) return;
    const refuse = (why: string, applied?: number): void => {
      this.p.log(`snapshot: group ${c.group}: chunk ${c.seq} from node ${from} refused: ${why}`);
      const s = this.streams.get(c.group);
      if (s !== undefined && s.from === from) s.failed = true;
      this.p.send(from, { kind: "snap-ack", group: c.group, index: c.index, seq: c.seq, ok: false, ...(applied !== undefined ? { applied } : {}) });
    };
    const bad = checkChunk(c, info.sizeBytes);
    if (bad !== undefined) return refuse(bad);
    if (from !== info.leader) return refuse(`node ${from} is not the leader this node follows (${info.leader || "none"})`);
    let s = this.streams.get(c.group);
    if (s?.installing) return refuse("a snapshot is being installed");
    // The core never installs a snapshot at or below its commit: such a copy would only linger.
    if (c.seq === 0 && c.index <= info.applied) return refuse(`this node already applied up to index ${info.applied}`, info.applied);
    if (c.seq === 0) {
      // The staging group takes the leader's size when it is larger (the volume grew while this replica was away).
      // A delta holds only what changed after its base: this node's own blocks are right for the rest only once it applied the base.
      // If it has not (it learned the commit index too late before it went down), its log up to the base may still be the leader's.
      const baseApplied = c.base <= info.applied ? Promise.resolve() : this.p.catchUp?.(c.group, from, c.base, c.baseTerm);
      if (baseApplied === undefined) return refuse(`a copy of the changes since index ${c.base}, but this node applied only up to ${info.applied} and does not hold the leader's entry ${c.base}; it needs a full copy`);
      s = { from, index: c.index, term: c.term, base: c.base, baseApplied, stagingId: this.p.store.beginStaging(c.group, Math.max(info.sizeBytes, c.sizeBytes ?? 0)), nextSeq: 0, ended: false, complete: false, failed: false, installing: false };
      this.streams.set(c.group, s);
    }
    if (s === undefined || s.failed || s.from !== from || s.index !== c.index || s.term !== c.term || s.base !== c.base || s.nextSeq !== c.seq) {
      return refuse("out of order");
    }
    if (s.ended) return refuse("a chunk after the last one");
    s.nextSeq++;
    if (c.last) s.ended = true;
    const writes: Promise<void>[] = [];
    let at = 0;
    try {
      for (let i = 0; i < c.extents.length; i += 2) {
        const offset = c.extents[i]!;
        const length = c.extents[i + 1]!;
        writes.push(this.p.store.writeStaged(s.stagingId, offset, [c.data.subarray(at, at + length)], length));
        at += length;
      }
      // Unchanged since the base: this node's own data, once its group is at or past the base (no entry after it touched these).
      const stagingId = s.stagingId;
      for (let i = 0; i < c.keep.length; i += 2) {
        const offset = c.keep[i]!;
        const length = c.keep[i + 1]!;
        writes.push(s.baseApplied.then(() => this.p.store.writeStaged(stagingId, offset, [this.p.store.read(c.group, offset, length)], length)));
      }
    } catch (e) {
      // The store refused (stopped: no room, a failed disk): the leader gives up and tries again later.
      if (isBug(e)) failStop(e, `snapshot: storing chunk ${c.seq} of group ${c.group}`);
      return refuse(`cannot store it: ${(e as Error).message}`);
    }
    const stream = s;
    Promise.all(writes).then(
      () => {
        if (this.streams.get(c.group) !== stream || stream.failed) return;
        if (c.last) stream.complete = true;
        this.p.send(from, { kind: "snap-ack", group: c.group, index: c.index, seq: c.seq, ok: true });
      },
      (e: Error) => {
        // A store that stopped, damage in the kept data, or the group's own catch-up cut short (leadership moved).
        if (isBug(e)) failStop(e, `snapshot: storing chunk ${c.seq} of group ${c.group}`);
        if (e instanceof ChecksumError) this.p.damaged?.(e);
        refuse(`cannot store it: ${e.message}`);
      },
    );
  }

  /** Whether the core may take this snap message: every chunk of exactly this snapshot is durable here. */
  ready(group: number, from: NodeId, m: Message): boolean {
    const s = this.streams.get(group);
    const meta = m.snapshot?.meta;
    return s !== undefined && s.complete && !s.failed && s.from === from && meta !== undefined && meta.index === s.index && meta.term === s.term;
  }

  /**
   * The driver stepped a snap message that ready() allowed. If the core took
   * it, the staging group is what its next persist installs; if not (it was
   * stale, or the core already has that state), the copy is of no use.
   */
  stepped(group: number, taken: boolean): void {
    const s = this.streams.get(group);
    if (s === undefined || s.installing) return;
    if (taken) s.installing = true;
    else this.forget(group);
  }

  /**
   * The core follows `leader` now. A stream from another node will not go on
   * (a new leader starts its own at chunk 0, or has the log the follower
   * needs), so its staging group is dropped rather than kept until a restart.
   */
  leaderIs(group: number, leader: NodeId): void {
    const s = this.streams.get(group);
    if (s !== undefined && leader !== 0 && s.from !== leader && !s.installing) this.forget(group);
  }

  /** The install record is durable: the staging group is now the group. */
  installed(group: number): void {
    this.streams.delete(group);
  }

  /** The group left this node. */
  forget(group: number): void {
    if (this.streams.delete(group)) this.p.store.dropStaging(group);
  }
}

/** A non-negative safe integer (an index, term, offset or length from the network). */
function isIndex(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
}

/** Bounds and shape of a chunk from the network, before anything is allocated or written. */
function checkChunk(c: SnapChunkEnvelope, ownSizeBytes: number): string | undefined {
  if (!isIndex(c.index) || !isIndex(c.term) || !isIndex(c.seq) || typeof c.last !== "boolean") return "malformed header";
  if (c.sizeBytes !== undefined && (!isIndex(c.sizeBytes) || c.sizeBytes === 0 || c.sizeBytes % sectorBytes !== 0 || c.sizeBytes > volumeBytesMax)) return "volume size not whole sectors up to the volume limit";
  const sizeBytes = Math.max(ownSizeBytes, c.sizeBytes ?? 0);
  if (!(c.data instanceof Uint8Array) || c.data.length > Math.max(snapshotChunkBytes, raftAppendBytesMax)) return "data missing or too large";
  if (!isIndex(c.base) || !isIndex(c.baseTerm)) return "malformed base";
  const data = checkExtents(c.extents, sizeBytes);
  if (typeof data === "string") return data;
  if (data !== c.data.length) return "extents do not match the data";
  const kept = checkExtents(c.keep, sizeBytes);
  if (typeof kept === "string") return `keep: ${kept}`;
  if (kept > 0 && c.base === 0) return "kept extents in a full copy";
  if (kept > snapshotChunkKeepBytes) return "too many kept bytes";
  if (overlap(c.extents, c.keep)) return "kept extents overlap the data";
  return undefined;
}

/** Whether two ascending lists of [offset, length] pairs share a byte. */
function overlap(a: readonly number[], b: readonly number[]): boolean {
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i]! + a[i + 1]! <= b[j]!) i += 2;
    else if (b[j]! + b[j + 1]! <= a[i]!) j += 2;
    else return true;
  }
  return false;
}

/** Flat [offset, length, ...] pairs in whole sectors, ascending, inside the volume: their total bytes, or what is wrong. */
function checkExtents(extents: unknown, sizeBytes: number): number | string {
  if (!Array.isArray(extents) || extents.length % 2 !== 0 || extents.length > 2 * snapshotChunkExtentsMax) return "malformed extents";
  let total = 0;
  let end = 0;
  for (let i = 0; i < extents.length; i += 2) {
    const offset: unknown = extents[i];
    const length: unknown = extents[i + 1];
    if (!isIndex(offset) || !isIndex(length) || length === 0 || offset % sectorBytes !== 0 || length % sectorBytes !== 0) return "extent not in whole sectors";
    if (offset < end || offset + length > sizeBytes) return "extents out of order or past the volume";
    end = offset + length;
    total += length;
  }
  return total;
}
