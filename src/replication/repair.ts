// Repair of damaged blocks from another replica (docs/architecture.md,
// "Checksums and repair").
//
// The store checks every block it reads against the checksum written with
// it. When a block fails, the Repairer asks the volume's other replicas for
// it, in turn: each answers with the blocks as it holds them, its own
// damaged ones zeroed (Store.readForRepair), so nothing unchecked crosses the
// network. A block is accepted if its bytes match the checksum *here* (the
// data this replica's block map says the block holds), or if the answering
// replica had applied exactly as much of the Raft log as this one has and
// vouched for the block (Store.repairBlocks): that mends a block whose
// checksum a partial write over damage inverted. A replica at another point
// of the log (behind or ahead on a write to that block) does not match, and
// is tried again after a short wait.
// Accepted blocks are rewritten locally (Store.repairBlocks) and the read is
// served from the good copy. A volume with no other replica cannot be
// repaired: the read fails with EIO and the damage is logged once a minute
// per block, naming the volume, the offset and the log segment.

import { assert } from "../base/assert.js";
import { failStop } from "../base/fail-stop.js";
import { checksumBlockBytes, repairFetchBytesMax, repairRoundsMax, repairRoundDelayMs, repairAnswerTimeoutMs, segmentBytes } from "../constants.js";
import type { NodeId } from "../raft/types.js";
import { ChecksumError, StoreError } from "../store/errors.js";
import type { Store } from "../store/store.js";

/** Requester -> replica: blocks [firstBlock, firstBlock + count) of `group`, as that replica holds them. */
export interface RepairGetEnvelope {
  kind: "repair-get";
  id: number;
  group: number;
  firstBlock: number;
  count: number;
}

/** Replica -> requester: the blocks (its damaged ones zeroed and listed, and the Raft index they are the state after), or why not. */
export interface RepairDataEnvelope {
  kind: "repair-data";
  id: number;
  data: Uint8Array | null;
  damaged: number[];
  applied: number;
  error: string | null;
}

export interface RepairPorts {
  nodeId: NodeId;
  store: Store;
  send(to: NodeId, m: RepairGetEnvelope | RepairDataEnvelope): boolean;
  /** Every node holding a replica of the group (from the catalog); this node is skipped. */
  replicasOf(group: number): NodeId[];
  /** A volume's name for log lines. */
  nameOf(group: number): string;
  /** Runs fn after ms; returns a function that cancels it. */
  after(ms: number, fn: () => void): () => void;
  /** Monotonic milliseconds (rate-limits the log). */
  now(): number;
  log(line: string): void;
}

export interface RepairOutcome {
  /** Blocks that failed their checksum when the repair began (and still did). */
  damaged: number;
  repaired: number;
  /** Damaged blocks no replica had a good copy of. */
  unrepaired: number;
}

/** The same block is logged as damaged at most this often. */
const damageLogEveryMs = 60_000;
/** Blocks remembered for that rate limit; past it the oldest are forgotten (bounded memory under widespread damage). */
const damageLogEntriesMax = 4096;

export class Repairer {
  readonly counters = { checksumErrors: 0, blocksRepaired: 0, blocksUnrepaired: 0, repairBytesFetched: 0, repairRequestsServed: 0 };
  private nextId = 1;
  private readonly waiting = new Map<number, (m: RepairDataEnvelope | undefined) => void>();
  /** One repair at a time per group: a second one finds the blocks the first mended already good. */
  private readonly tails = new Map<number, Promise<unknown>>();
  private readonly loggedAt = new Map<string, number>();
  /** Blocks known damaged with no good copy anywhere, per group (bounded like the log's rate limit). */
  private readonly lost = new Map<number, Set<number>>();

  constructor(private readonly p: RepairPorts) {}

  /**
   * Reads like Store.read. Blocks that fail their checksum are repaired from
   * another replica first; the read then returns the good copy, or throws the
   * ChecksumError (EIO) if some block had none. Synchronous when nothing is
   * damaged (the common case costs nothing extra), except a large read that
   * the store checks on another thread (Store.readOffThread), whose promise
   * resolves to `into`; after a repair the result is a fresh buffer. The
   * caller leaves `into` alone until a promise settles.
   */
  read(group: number, offsetBytes: number, lengthBytes: number, into?: Buffer): Buffer | Promise<Buffer> {
    try {
      // A large read may be checked on another thread (Store.readOffThread): its damage arrives as a rejection.
      const r = this.p.store.readOffThread(group, offsetBytes, lengthBytes, into);
      return r instanceof Promise ? r.catch((e: unknown) => this.readRepaired(e, group, offsetBytes, lengthBytes)) : r;
    } catch (e) {
      return this.readRepaired(e, group, offsetBytes, lengthBytes);
    }
  }

  /** After a read found damage (any other error goes on): the blocks repaired, the range read again into a fresh buffer. */
  private readRepaired(e: unknown, group: number, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    if (!(e instanceof ChecksumError)) throw e;
    return this.repair(e).then(() => this.p.store.read(group, offsetBytes, lengthBytes));
  }

  /** Repairs what a ChecksumError names (any caller: a read, GC, a snapshot stream, the scrub). */
  repair(e: ChecksumError): Promise<RepairOutcome> {
    this.counters.checksumErrors++;
    const run = (): Promise<RepairOutcome> => this.repairBlocks(e.groupId, [...e.blocks], e);
    const tail = (this.tails.get(e.groupId) ?? Promise.resolve()).then(run, run);
    const settled = tail.catch(() => {});
    this.tails.set(e.groupId, settled);
    void settled.then(() => {
      if (this.tails.get(e.groupId) === settled) this.tails.delete(e.groupId);
    });
    return tail;
  }

  /** A repair request or answer from a peer. */
  receive(from: NodeId, m: RepairGetEnvelope | RepairDataEnvelope): void {
    if (m.kind === "repair-data") {
      const resolve = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      resolve?.(m);
      return;
    }
    this.counters.repairRequestsServed++;
    this.p.send(from, this.answer(m));
  }

  private answer(m: RepairGetEnvelope): RepairDataEnvelope {
    const no = (error: string): RepairDataEnvelope => ({ kind: "repair-data", id: m.id, data: null, damaged: [], applied: 0, error });
    const store = this.p.store;
    if (!isIndex(m.group) || !isIndex(m.firstBlock) || !isIndex(m.count) || m.count < 1 || m.count * checksumBlockBytes > repairFetchBytesMax) return no("malformed request");
    if (!store.hasGroup(m.group)) return no(`no replica of group ${m.group} here`);
    if (m.firstBlock + m.count > Math.ceil(store.sizeOf(m.group) / checksumBlockBytes)) return no("blocks past the end of the volume");
    const { data, damaged, applied } = store.readForRepair(m.group, m.firstBlock, m.count);
    if (damaged.length > 0) this.p.log(`repair: ${this.p.nameOf(m.group)}: asked for blocks ${m.firstBlock}+${m.count}; ${damaged.length} of them are damaged here too (sent as zeroes)`);
    return { kind: "repair-data", id: m.id, data, damaged, applied, error: null };
  }

  private async repairBlocks(group: number, blocks: number[], cause: ChecksumError): Promise<RepairOutcome> {
    const store = this.p.store;
    if (!store.hasGroup(group)) return { damaged: 0, repaired: 0, unrepaired: 0 };
    let left = this.stillDamaged(group, blocks);
    const damaged = left.length;
    const peers = this.p.replicasOf(group).filter((n) => n !== this.p.nodeId);
    for (let round = 0; left.length > 0 && peers.length > 0 && round < repairRoundsMax; round++) {
      if (round > 0) {
        // A replica behind (or ahead) on a write to these blocks holds other bytes; it moves on soon.
        await new Promise<void>((resolve) => this.p.after(repairRoundDelayMs, resolve));
        left = this.stillDamaged(group, left);
      }
      for (const peer of peers) {
        if (left.length === 0 || !store.hasGroup(group)) break;
        left = await this.fetchFrom(peer, group, left);
      }
    }
    const repaired = damaged - left.length;
    this.remember(group, blocks, left);
    this.counters.blocksRepaired += repaired;
    this.counters.blocksUnrepaired += left.length;
    const name = this.p.nameOf(group);
    if (repaired > 0) this.p.log(`repair: volume ${name}: ${repaired} damaged block(s) of ${checksumBlockBytes} bytes rewritten from another replica (${cause.message})`);
    if (left.length > 0) this.logUnrepaired(group, name, left, peers.length, cause);
    return { damaged, repaired, unrepaired: left.length };
  }

  /** Per group, how many of its blocks are known damaged here with no good copy anywhere (reads of them fail). */
  unrepaired(): Map<number, number> {
    return new Map([...this.lost].map(([g, s]) => [g, s.size]));
  }

  /** After a repair of `tried`: those in `left` have no good copy; the others are good now. */
  private remember(group: number, tried: readonly number[], left: readonly number[]): void {
    const set = this.lost.get(group) ?? new Set<number>();
    for (const b of tried) set.delete(b);
    for (const b of left) if (set.size < damageLogEntriesMax) set.add(b);
    if (set.size === 0) this.lost.delete(group);
    else this.lost.set(group, set);
  }

  /** The blocks of `blocks` that still fail here (a write may have replaced some meanwhile). */
  private stillDamaged(group: number, blocks: readonly number[]): number[] {
    const out: number[] = [];
    for (const [first, count] of blockRuns(blocks, repairFetchBytesMax / checksumBlockBytes)) out.push(...this.p.store.checkBlocks(group, first, count));
    return out;
  }

  /** Asks one replica for the blocks in runs of at most repairFetchBytesMax; returns those still damaged. */
  private async fetchFrom(peer: NodeId, group: number, blocks: number[]): Promise<number[]> {
    const left: number[] = [];
    for (const [first, count] of blockRuns(blocks, repairFetchBytesMax / checksumBlockBytes)) {
      const answer = await this.ask(peer, { kind: "repair-get", id: this.nextId++, group, firstBlock: first, count });
      const want = blocks.filter((b) => b >= first && b < first + count);
      const expected = this.p.store.hasGroup(group) ? Math.min(this.p.store.sizeOf(group), (first + count) * checksumBlockBytes) - first * checksumBlockBytes : -1;
      if (answer?.data == null || !(answer.data instanceof Uint8Array) || answer.data.length !== expected || !isIndex(answer.applied) || !Array.isArray(answer.damaged) || answer.damaged.length > count || !answer.damaged.every(isIndex)) {
        left.push(...want);
        continue;
      }
      this.counters.repairBytesFetched += answer.data.length;
      let mended: Set<number>;
      try {
        mended = new Set(await this.p.store.repairBlocks(group, first, count, { data: answer.data, damaged: answer.damaged, applied: answer.applied }));
      } catch (e) {
        // The store stopped taking writes (no room, a failed disk): the good copy cannot be written here.
        if (!(e instanceof StoreError)) failStop(e, `repair: writing blocks of group ${group}`);
        left.push(...want);
        continue;
      }
      for (const b of want) if (!mended.has(b) && this.p.store.checkBlocks(group, b, 1).length > 0) left.push(b);
    }
    return left;
  }

  private ask(peer: NodeId, m: RepairGetEnvelope): Promise<RepairDataEnvelope | undefined> {
    return new Promise((resolve) => {
      const cancel = this.p.after(repairAnswerTimeoutMs, () => {
        this.waiting.delete(m.id);
        resolve(undefined);
      });
      this.waiting.set(m.id, (answer) => {
        cancel();
        resolve(answer);
      });
      if (!this.p.send(peer, m)) {
        this.waiting.delete(m.id);
        cancel();
        resolve(undefined);
      }
    });
  }

  private logUnrepaired(group: number, name: string, blocks: number[], peers: number, cause: ChecksumError): void {
    const now = this.p.now();
    const fresh = blocks.filter((b) => {
      const key = `${group}/${b}`;
      const at = this.loggedAt.get(key);
      if (at !== undefined && now - at < damageLogEveryMs) return false;
      this.loggedAt.delete(key);
      this.loggedAt.set(key, now);
      return true;
    });
    while (this.loggedAt.size > damageLogEntriesMax) this.loggedAt.delete(this.loggedAt.keys().next().value!);
    if (fresh.length === 0) return;
    const first = fresh[0]!;
    const i = cause.blocks.indexOf(first);
    const address = i >= 0 ? cause.addresses[i]! : 0;
    const where = address > 0 ? `, log segment ${Math.floor(address / segmentBytes)} byte ${address % segmentBytes}` : "";
    const why = peers === 0 ? "it has no other replica" : `none of its ${peers} other replica(s) had a copy matching its checksum`;
    this.p.log(
      `DATA DAMAGED: volume ${name}: ${fresh.length} block(s) of ${checksumBlockBytes} bytes fail their checksum and cannot be repaired (${why}); the first at volume offset ${first * checksumBlockBytes}${where}. Reads of them fail with EIO until the blocks are rewritten or the volume is restored from a backup.`,
    );
  }
}

/** Ascending runs [first, count] of consecutive block numbers, each at most `countMax` long. */
function blockRuns(blocks: readonly number[], countMax: number): [number, number][] {
  assert(countMax >= 1, "a run holds a block");
  const sorted = [...new Set(blocks)].sort((a, b) => a - b);
  const out: [number, number][] = [];
  for (const b of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && last[0] + last[1] === b && last[1] < countMax) last[1]++;
    else out.push([b, 1]);
  }
  return out;
}

function isIndex(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
}
