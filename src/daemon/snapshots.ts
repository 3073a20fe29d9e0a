// Volume snapshots through the control API (docs/architecture.md,
// "Snapshots"). A snapshot is taken by an entry of the volume's own Raft group,
// so every replica takes it at the same log index; then the catalog records
// its name. Creating and deleting run on the catalog's leader, one at a time
// per volume; a rollback runs on the volume's leader, which holds the
// snapshot and proposes the differences as ordinary writes.

import { ApiError, type Caller, type SnapshotScheduleRequest, type CreateSnapshotRequest, type RollbackRequest, type RollbackResult, type SnapshotHolding, type SnapshotInfo } from "../api/types.js";
import { errorKindOf } from "../replication/errors.js";
import type { CatalogSnapshot, CatalogState, CatalogVolume, CloneSource, VolumeEncryption } from "../cluster/index.js";
import { checksumBlockBytes, volumeSnapshotsMax } from "../constants.js";
import { autoSnapshotName, snapshotSchedule } from "../cluster/control.js";
import { NotLeaderError } from "../replication/driver.js";
import type { MultiRaft } from "../replication/driver.js";
import { VolumeOpKind } from "../replication/volume-op.js";
import type { VolumeIo } from "../replication/volume-io.js";
import { snapshotGroupId, type Store } from "../store/store.js";
import { ChecksumError } from "../store/errors.js";
import { isBug } from "../base/fail-stop.js";
import { checkReach, mayReach } from "./access.js";
import { catalogError, type MetaLeader } from "./meta-leader.js";

/** How long a forwarded rollback may run: it proposes what changed since the snapshot, which may be the whole volume. */
const rollbackCallTimeoutMs = 30 * 60 * 1000;
/** How long inspect waits for each replica node's account of a snapshot. */
const holdingAskTimeoutMs = 2000;
/** Bytes of a snapshot a copy (copyMissing) reads from its holder and compares at a time. */
const snapshotCopyStepBytes = 1024 * 1024;

/** [offset, length] runs of `block`-byte blocks where `theirs` differs from `ours` (all of it when ours is undefined). */
export function differingRuns(theirs: Uint8Array, ours: Uint8Array | undefined, block: number): [number, number][] {
  const runs: [number, number][] = [];
  for (let off = 0; off < theirs.length; off += block) {
    const end = Math.min(theirs.length, off + block);
    if (ours !== undefined && Buffer.compare(theirs.subarray(off, end), ours.subarray(off, end)) === 0) continue;
    const last = runs[runs.length - 1];
    if (last !== undefined && last[0] + last[1] === off) last[1] += end - off;
    else runs.push([off, end - off]);
  }
  return runs;
}

export interface SnapshotContext {
  readonly nodeId: number;
  /** The catalog as this node has applied it now. */
  catalog(): CatalogState;
  readonly store: Store;
  readonly io: VolumeIo;
  readonly driver: MultiRaft;
  /** The volume as the catalog knows it, the catalog's leader and the other nodes' APIs; a change forwarded to the leader is answered once this node's catalog has it too (forwarded). */
  readonly meta: Pick<MetaLeader, "knownVolume" | "mustGet" | "metaLeaderApi" | "nodeApi" | "metaCommand" | "forwarded">;
  /** Why the volume may not change under its clients now (attached, or served over NBD by a node, or a node did not answer), or undefined. */
  inUse(volume: CatalogVolume): Promise<string | undefined>;
  /** The NBD URI of an export on this node. */
  nbdUri(exportName: string): string;
  /** An encrypted volume's data key, wrapped for a clone of it named `name` (the key is bound to the volume's name). */
  rewrapKey(v: CatalogVolume, name: string): VolumeEncryption;
  /** Waits until this node's rebuild bandwidth lets `bytes` more of a copy go. */
  paceCopy(bytes: number): Promise<void>;
  log(line: string): void;
}

export class Snapshots {
  /** Snapshot changes of each volume, one at a time (on the catalog's leader): the next id is read, used, then recorded. */
  private readonly queues = new Map<string, Promise<unknown>>();
  /** Per scheduled volume: when (this node's monotonic ms) this leader began counting its interval. */
  private readonly since = new Map<string, number>();

  constructor(private readonly c: SnapshotContext) {}

  async create(volume: string, request: CreateSnapshotRequest, caller: Caller): Promise<SnapshotInfo> {
    checkReach(caller, await this.c.meta.knownVolume(volume));
    const leaderApi = await this.c.meta.metaLeaderApi(caller);
    if (leaderApi) return this.c.meta.forwarded(leaderApi.createSnapshot(volume, request));
    return this.take(volume, request.name);
  }

  /** On the catalog's leader: takes a snapshot through the volume's group, then records it. */
  take(volume: string, name: string): Promise<SnapshotInfo> {
    const request = { name };
    return this.serially(volume, async () => {
      const v = this.mustGet(volume);
      if (v.snapshots.some((s) => s.name === request.name)) throw new ApiError(409, "exists", `volume ${volume} has a snapshot named ${JSON.stringify(request.name)} already; pick another name or delete it first`);
      if (v.snapshots.length >= volumeSnapshotsMax) throw new ApiError(409, "limit", `volume ${volume} has ${v.snapshots.length} snapshots, the most it may; delete some first (pxd snapshot list ${volume})`);
      const id = v.nextSnapshotId;
      await this.groupOp(v, VolumeOpKind.SnapshotCreate, id, `take snapshot ${request.name}`);
      const result = await this.c.meta.metaCommand({ kind: "addSnapshot", name: volume, snapshot: request.name, id, sizeBytes: v.sizeBytes, at: Date.now() });
      if (!result.ok) throw catalogError(result);
      this.c.log(`volume ${volume}: snapshot ${request.name} taken (id ${id})`);
      return this.info(this.mustGet(volume), this.mustSnapshot(this.mustGet(volume), request.name));
    });
  }

  async list(volume: string | undefined, caller: Caller): Promise<SnapshotInfo[]> {
    const volumes = volume === undefined ? [...this.c.catalog().volumes.values()].filter((v) => mayReach(caller, v)) : [await this.c.meta.knownVolume(volume)];
    if (volume !== undefined) checkReach(caller, volumes[0]!);
    return volumes.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).flatMap((v) => v.snapshots.map((s) => this.info(v, s)));
  }

  /** The snapshot, with the nodes that hold it and its space as the first of them counts it. */
  async inspect(volume: string, snapshot: string, caller: Caller): Promise<SnapshotInfo> {
    const v = await this.c.meta.knownVolume(volume);
    checkReach(caller, v);
    const s = this.mustSnapshot(v, snapshot);
    const holders = (await this.holdings(v, s, caller.token)).map(([, h]) => h);
    const first = holders[0];
    return {
      ...this.info(v, s),
      holders: holders.map((h) => h.node),
      ...(first?.allocatedBytes !== undefined ? { allocatedBytes: first.allocatedBytes } : {}),
      ...(first?.exclusiveBytes !== undefined ? { exclusiveBytes: first.exclusiveBytes } : {}),
    };
  }

  /** Each replica node of the volume that answers that it holds the snapshot, with its account, in the volume's node order. */
  private async holdings(v: CatalogVolume, s: CatalogSnapshot, token: string | undefined): Promise<[number, SnapshotHolding][]> {
    const answers = await Promise.all(
      v.nodes.map(async (id): Promise<SnapshotHolding | undefined> => {
        if (id === this.c.nodeId) return this.holding(v, s);
        const n = this.c.catalog().nodes.get(id);
        if (n === undefined) return undefined;
        return this.c.meta.nodeApi(n, holdingAskTimeoutMs, token).snapshotHolding(v.name, s.name).catch(() => undefined);
      }),
    );
    return v.nodes.flatMap((id, i) => (answers[i]?.held === true ? [[id, answers[i]!] as [number, SnapshotHolding]] : []));
  }

  /**
   * On the catalog's leader: makes volume `name` a clone of `volume`@`snapshot`.
   * The seeds are the source's replica nodes that answer that they hold the
   * snapshot (among `nodes` when the caller chose them), at most `repl`; they
   * start the clone from it, sharing its extents. `create` proposes the
   * volume; it runs in the source's snapshot queue, so a delete of the
   * snapshot through this node waits until the clone is in the catalog.
   */
  clone<T>(volume: string, snapshot: string, name: string, repl: number, nodes: number[] | undefined, caller: Caller, create: (source: CloneSource, encryption: VolumeEncryption | undefined) => Promise<T>): Promise<T> {
    return this.serially(volume, async () => {
      const v = this.mustGet(volume);
      checkReach(caller, v);
      const s = this.mustSnapshot(v, snapshot);
      const held = (await this.holdings(v, s, caller.token)).map(([id]) => id);
      const from = `${volume}@${snapshot}`;
      const names = (ids: number[]): string => ids.map((id) => this.c.catalog().nodes.get(id)?.name ?? `node-${id}`).join(", ");
      if (held.length === 0) throw new ApiError(503, "unavailable", `no node holding ${from} answers (its volume's replicas are on ${names(v.nodes)}); bring one back and retry`);
      const seeds = (nodes === undefined ? held : held.filter((id) => nodes.includes(id))).slice(0, repl);
      if (seeds.length === 0) throw new ApiError(409, "conflict", `none of the nodes given (${names(nodes!)}) holds ${from}, which is on ${names(held)}; a clone starts on at least one of them`);
      const source: CloneSource = { volumeId: v.id, snapshotId: s.id, seeds };
      return create(source, v.encryption === null ? undefined : this.c.rewrapKey(v, name));
    });
  }

  async holdingHere(volume: string, snapshot: string, caller: Caller): Promise<SnapshotHolding> {
    const v = await this.c.meta.knownVolume(volume);
    checkReach(caller, v);
    return this.holding(v, this.mustSnapshot(v, snapshot));
  }

  async delete(volume: string, snapshot: string, caller: Caller): Promise<void> {
    checkReach(caller, await this.c.meta.knownVolume(volume));
    const leaderApi = await this.c.meta.metaLeaderApi(caller);
    if (leaderApi) return this.c.meta.forwarded(leaderApi.deleteSnapshot(volume, snapshot));
    await this.drop(volume, snapshot);
  }

  /** On the catalog's leader: drops a snapshot through the volume's group, then from the catalog. */
  drop(volume: string, snapshot: string): Promise<void> {
    return this.serially(volume, async () => {
      const v = this.mustGet(volume);
      const s = this.mustSnapshot(v, snapshot);
      await this.groupOp(v, VolumeOpKind.SnapshotDelete, s.id, `drop snapshot ${snapshot}`);
      const result = await this.c.meta.metaCommand({ kind: "removeSnapshot", name: volume, snapshot });
      if (!result.ok) throw catalogError(result);
      this.c.log(`volume ${volume}: snapshot ${snapshot} deleted (id ${s.id})`);
    });
  }

  /** Sets (everySec 0: clears) the volume's snapshot schedule; on the catalog's leader. */
  async setSchedule(volume: string, request: SnapshotScheduleRequest): Promise<CatalogVolume> {
    const result = await this.c.meta.metaCommand({ kind: "setSnapshotSchedule", name: volume, everyMs: request.everySec * 1000, keep: request.everySec === 0 ? 0 : request.keep });
    if (!result.ok) throw catalogError(result);
    this.c.log(`volume ${volume}: ${request.everySec === 0 ? "no snapshot schedule" : `a snapshot every ${request.everySec} s, the newest ${request.keep} kept`}`);
    return this.mustGet(volume);
  }

  /**
   * On every node: drops the snapshots this node holds that the catalog no
   * longer lists (deleted while this replica was away and then filled by a
   * copy, which carries no snapshot operations). Only ids below the
   * volume's nextSnapshotId: a higher one may be a snapshot being taken now,
   * which the catalog records only after every replica has it.
   */
  dropUnlisted(): void {
    const held = this.c.store.heldSnapshots();
    if (held.size === 0) return;
    const byId = new Map([...this.c.catalog().volumes.values()].map((v) => [v.id, v] as const));
    for (const [group, ids] of held) {
      const v = byId.get(group);
      if (v === undefined) continue; // the volume's group goes with its own reconcile
      for (const id of ids) {
        if (id >= v.nextSnapshotId || v.snapshots.some((s) => s.id === id)) continue;
        this.c.store.dropSnapshot(v.id, id);
        this.c.log(`volume ${v.name}: dropped snapshot id ${id}, which the catalog no longer lists`);
      }
    }
  }

  /**
   * On every node, beside dropUnlisted: copies the snapshots the catalog
   * lists for a volume this node replicates that it never took, because it
   * was filled by a copy of the volume made past the entry that took them (a
   * replica added or replaced later). Without this a snapshot would live
   * only on the replicas that were there when it was taken, and be lost once
   * they have all been replaced. One copy at a time per node, at the node's
   * rebuild bandwidth; the copy starts as a copy-on-write clone of the
   * volume here, and only the blocks where the snapshot differs are written.
   */
  async copyMissing(): Promise<void> {
    if (this.copying) return;
    this.copying = true;
    try {
      const held = this.c.store.heldSnapshots();
      for (const v of this.c.catalog().volumes.values()) {
        if (v.snapshots.length === 0 || !v.nodes.includes(this.c.nodeId) || !this.c.driver.hasGroup(v.id) || !this.c.store.hasGroup(v.id)) continue;
        const mine = held.get(v.id) ?? [];
        for (const s of v.snapshots) {
          if (mine.includes(s.id)) continue;
          const from = await this.holderOf(v, s);
          // This replica applies the entry that takes it when it reaches it.
          if (from === undefined || this.c.store.raftState(v.id).appliedIndex < from.index) continue;
          await this.copyFrom(v, s, from);
        }
      }
    } finally {
      this.copying = false;
    }
  }

  /** A snapshot copy is running here (copyMissing). */
  private copying = false;

  /** Another replica node that holds the snapshot, with the index that took it; undefined when none answers that it does. */
  private async holderOf(v: CatalogVolume, s: CatalogSnapshot): Promise<{ node: string; index: number } | undefined> {
    for (const id of v.nodes) {
      const n = id === this.c.nodeId ? undefined : this.c.catalog().nodes.get(id);
      if (n === undefined) continue;
      const h = await this.c.meta.nodeApi(n, holdingAskTimeoutMs).snapshotHolding(v.name, s.name).catch(() => undefined);
      if (h?.held === true && h.index !== undefined) return { node: h.node, index: h.index };
    }
    return undefined;
  }

  private async copyFrom(v: CatalogVolume, s: CatalogSnapshot, from: { node: string; index: number }): Promise<void> {
    const store = this.c.store;
    this.c.log(`volume ${v.name}: copying snapshot ${s.name} (id ${s.id}, ${s.sizeBytes} bytes) from ${from.node}: this replica was filled past the entry that took it`);
    const staging = store.beginSnapshotCopy(v.id, s.id, s.sizeBytes);
    let written = 0;
    try {
      for (let at = 0; at < s.sizeBytes; at += snapshotCopyStepBytes) {
        const n = Math.min(snapshotCopyStepBytes, s.sizeBytes - at);
        await this.c.paceCopy(n);
        // Holes there are holes here (not zeroes written as data), then the data is compared.
        let hole = at;
        for (const e of await this.c.io.snapshotStatus(v.id, s.id, at, n)) {
          if (e.hole && store.blockStatus(staging, hole, e.lengthBytes).some((x) => !x.hole)) await store.trimStaged(staging, hole, e.lengthBytes);
          hole += e.lengthBytes;
        }
        const theirs = await this.c.io.readSnapshot(v.id, s.id, at, n);
        let ours: Buffer | undefined;
        try {
          ours = store.read(staging, at, n);
        } catch (e) {
          if (!(e instanceof ChecksumError)) throw e;
          ours = undefined; // a damaged block here: the whole step is written from the holder's copy
        }
        for (const [off, len] of differingRuns(theirs, ours, checksumBlockBytes)) {
          await store.writeStaged(staging, at + off, [theirs.subarray(off, off + len)], len);
          written += len;
        }
      }
      await store.finishSnapshotCopy(v.id, s.id, from.index);
      this.c.log(`volume ${v.name}: copied snapshot ${s.name} from ${from.node}: ${written} of its ${s.sizeBytes} bytes differed from the volume here and were written`);
    } catch (e) {
      store.dropSnapshotCopy();
      if (isBug(e)) throw e;
      this.c.log(`volume ${v.name}: the copy of snapshot ${s.name} stopped (${(e as Error).message}); it starts over on the next pass`);
    }
  }

  /**
   * On the catalog's leader, every `scheduleCheckEveryMs`: takes the
   * snapshots volume schedules ask for and drops the scheduled ones past
   * their count (control.ts snapshotSchedule). Intervals run on this node's
   * monotonic clock from when it began leading or last took one: a leader
   * change delays a scheduled snapshot by at most one interval, never takes
   * one early.
   */
  async runSchedules(leading: boolean, nowMs: number, wallMs: number): Promise<void> {
    if (!leading) return this.since.clear();
    const catalog = this.c.catalog();
    const elapsed = new Map<string, number>();
    for (const v of catalog.volumes.values()) {
      if (v.snapshotEveryMs === 0) continue;
      if (!this.since.has(v.name)) this.since.set(v.name, nowMs);
      elapsed.set(v.name, nowMs - this.since.get(v.name)!);
    }
    for (const name of this.since.keys()) if (!elapsed.has(name)) this.since.delete(name);
    const due = snapshotSchedule(catalog, elapsed);
    // Drops first: a volume at its snapshot limit makes room for the one it takes.
    for (const d of due.drop) await this.drop(d.volume, d.snapshot).catch((e: Error) => this.c.log(`volume ${d.volume}: scheduled snapshot ${d.snapshot} not dropped: ${e.message}`));
    for (const volume of due.take) {
      this.since.set(volume, nowMs);
      await this.take(volume, autoSnapshotName(wallMs)).catch((e: Error) => this.c.log(`volume ${volume}: scheduled snapshot not taken: ${e.message}`));
    }
  }

  /**
   * Runs on the volume's leader (forwarded there from any node): refused
   * while the volume is in use, then the differences are proposed.
   */
  async rollback(volume: string, request: RollbackRequest, caller: Caller): Promise<RollbackResult> {
    const v = await this.c.meta.knownVolume(volume);
    checkReach(caller, v);
    const s = this.mustSnapshot(v, request.snapshot);
    const leader = this.c.driver.hasGroup(v.id) ? this.c.driver.leader(v.id) : 0;
    if (leader !== this.c.nodeId) {
      const target = leader !== 0 ? leader : this.c.driver.hasGroup(v.id) ? 0 : v.nodes[0];
      const n = target === undefined || target === 0 ? undefined : this.c.catalog().nodes.get(target);
      if (n === undefined) throw new ApiError(503, "unavailable", `volume ${volume} has no leader right now; retry in a few seconds`);
      return this.c.meta.nodeApi(n, rollbackCallTimeoutMs, caller.token).rollbackVolume(volume, request);
    }
    const busy = await this.c.inUse(v);
    if (busy !== undefined) throw new ApiError(409, "busy", `${busy}; a rollback changes the volume under its clients, so detach it and disconnect them first`);
    this.c.log(`volume ${volume}: rolling back to snapshot ${s.name} (id ${s.id})`);
    try {
      const done = await this.c.io.rollback(v.id, s.id);
      this.c.log(`volume ${volume}: rolled back to snapshot ${s.name}: ${done.writtenBytes} bytes written, ${done.trimmedBytes} trimmed`);
      return { volume, snapshot: s.name, ...done };
    } catch (e) {
      if (e instanceof NotLeaderError) throw new ApiError(503, "unavailable", `volume ${volume}'s leadership moved during the rollback (${e.message}); run it again to finish it`);
      const kind = errorKindOf(e);
      if (kind === "ENOENT") throw new ApiError(409, "not_held", (e as Error).message);
      if (kind !== undefined) throw new ApiError(503, "unavailable", `the rollback of volume ${volume} stopped: ${(e as Error).message}; run it again to finish it`);
      throw e;
    }
  }

  /** The snapshot's group id and size when this node holds it (a SnapshotExport reads it here), else undefined. */
  sizeHere(v: CatalogVolume, s: CatalogSnapshot): number | undefined {
    const id = snapshotGroupId(v.id, s.id);
    return this.c.store.hasGroup(id) ? this.c.store.sizeOf(id) : undefined;
  }

  private holding(v: CatalogVolume, s: CatalogSnapshot): SnapshotHolding {
    const node = this.c.catalog().nodes.get(this.c.nodeId)?.name ?? `node-${this.c.nodeId}`;
    const size = this.sizeHere(v, s);
    if (size === undefined) return { node, held: false };
    return { node, held: true, sizeBytes: size, ...this.c.store.snapshotUsage(v.id, s.id), index: this.c.store.snapshotIndex(v.id, s.id) };
  }

  /** A snapshot entry through the volume's group, on its leader wherever it is; idempotent, so retried across leader changes. */
  private async groupOp(v: CatalogVolume, kind: VolumeOpKind.SnapshotCreate | VolumeOpKind.SnapshotDelete, snapshotId: number, what: string): Promise<void> {
    try {
      await this.c.io.snapshot(v.id, { kind, snapshotId });
    } catch (e) {
      const kind = errorKindOf(e);
      if (kind === undefined) throw e;
      throw new ApiError(503, "unavailable", `volume ${v.name}'s group did not ${what}: ${(e as Error).message}; retry in a few seconds`);
    }
  }

  private serially<T>(volume: string, run: () => Promise<T>): Promise<T> {
    const before = this.queues.get(volume) ?? Promise.resolve();
    const mine = before.catch(() => undefined).then(run);
    const tail = mine.catch(() => undefined);
    this.queues.set(volume, tail);
    void tail.then(() => {
      if (this.queues.get(volume) === tail) this.queues.delete(volume);
    });
    return mine;
  }

  private mustGet(name: string): CatalogVolume {
    return this.c.meta.mustGet(name);
  }

  private mustSnapshot(v: CatalogVolume, name: string): CatalogSnapshot {
    const s = v.snapshots.find((x) => x.name === name);
    if (s === undefined) throw new ApiError(404, "not_found", `volume ${v.name} has no snapshot named "${name}"; see "pxd snapshot list ${v.name}"`);
    return s;
  }

  private info(v: CatalogVolume, s: CatalogSnapshot): SnapshotInfo {
    return { volume: v.name, name: s.name, id: s.id, createdAt: new Date(s.createdAt).toISOString(), sizeBytes: s.sizeBytes, nbdUri: this.c.nbdUri(`${v.name}@${s.name}`) };
  }
}
