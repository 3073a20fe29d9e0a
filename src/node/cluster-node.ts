// One node's part in the cluster, without the OS: the catalog (the meta
// group's state machine), the volume replicas the catalog places here, and
// the control loops that act on both: registering this node, promoting
// catalog learners, failure detection, re-replication and the replica
// reconcile (decisions from the pure functions of src/cluster/control.ts).
// The composition root (src/daemon) gives it its ports and calls each loop
// on its own period; the cluster simulation (test/sim/cluster-sim.ts) does
// the same on simulated time.

import { assert } from "../base/assert.js";
import { failStop, isBug } from "../base/fail-stop.js";
import { formatSize } from "../base/sizes.js";
import {
  CatalogMachine,
  Durations,
  cloneSourceName,
  volumeWithId,
  encodeCommand,
  attachmentLeader,
  healthChange,
  leaveDecision,
  metaLearnerToPromote,
  nextMemberChange,
  replicaReplacements,
  type ApplyResult,
  type CatalogCommand,
  type CatalogState,
  type CatalogVolume,
  type GroupView,
  type MemberChange,
} from "../cluster/index.js";
import { metaVotersMax } from "../constants.js";
import { ConfChangeType, type ConfChange } from "../raft/confchange.js";
import type { NodeId } from "../raft/types.js";
import { NotLeaderError, ProposalDroppedError, type MultiRaft } from "../replication/driver.js";
import { encodeResize } from "../replication/volume-op.js";
import { VolumeReplica } from "../replication/volume-replica.js";
import type { Store } from "../store/store.js";

/** The meta group's Raft group id; volume ids start at 1. */
export const metaGroupId = 0;

/** A volume replica this node holds, as its node state records it. */
export interface HostedGroup {
  id: number;
  sizeBytes: number;
  /** The voters the group started with (empty: it joins, and its leader adds it). */
  voters: number[];
  /** A clone this node seeds: the snapshot it starts from. A restart that finds the group without its first state (it stopped before the store's checkpoint held it) starts it from there again. */
  clone?: { volumeId: number; snapshotId: number };
}

/** A peer's address, as the node state records it. */
export interface PeerEntry {
  id: number;
  host: string;
  port: number;
}

/** What this node records durably about itself (src/daemon/node-state.ts on disk). */
export interface HostingState {
  readonly hosted: ReadonlyMap<number, HostedGroup>;
  readonly peers: readonly PeerEntry[];
  host(g: HostedGroup): Promise<void>;
  unhost(id: number): Promise<void>;
  setPeers(peers: PeerEntry[]): Promise<void>;
}

/** The addNode fields this node registers itself with. */
export type SelfDescription = Omit<Extract<CatalogCommand, { kind: "addNode" }>, "kind" | "at">;

export interface ClusterNodeLogger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export interface ClusterNodePorts {
  nodeId: NodeId;
  store: Store;
  driver: MultiRaft;
  state: HostingState;
  self(): SelfDescription;
  /** Whether this node has a connection to the peer now (the failure detector's observation). */
  isConnected(id: NodeId): boolean;
  /** The peers the transport may talk to. */
  setTransportPeers(peers: PeerEntry[]): void;
  /** The catalog deleted a volume (the daemon lifts its NBD fence). */
  volumeGone(name: string): void;
  /**
   * This node leads a volume's group, which is larger than the catalog says
   * (a resize stopped after the group took it): asks the meta leader to
   * record the size (the API's resize, which finds the group grown already).
   * Undefined in the simulation: nothing there resizes.
   */
  growCatalog?(name: string, sizeBytes: number): Promise<void>;
  /** This node's monotonic clock, for every duration; the wall clock only for timestamps written into the catalog. */
  monotonicMs(): number;
  wallMs(): number;
  replaceDownAfterMs: number;
  /** Runs fn after ms on this node's timers; returns a function that cancels it. */
  after(ms: number, fn: () => void): () => void;
  log: ClusterNodeLogger;
}

/** A replica the catalog no longer lists is dropped after this long (its leader removes it from the group meanwhile). */
export const replicaDropGraceMs = 10000;
/** A learner is promoted to voter once its log is within this many entries of the leader's commit index. */
export const learnerCaughtUpEntries = 64;
/** A volume's leader hands leadership to its host's serving node at most this often (a transfer that fails is not retried at once). */
export const attachLeaderRetryMs = 30_000;
/** A volume group larger than the catalog says for this long (a resize stopped half-way) has its leader ask the catalog to record its size; at most once per this long. */
export const catalogSizeBehindMs = 5000;
/** A node the meta leader has had no peer connection to for this long is marked down in the catalog (placement avoids it). */
export const nodeDownAfterMs = 5000;

export class ClusterNode {
  /** The meta group's state machine; what this node does with what it applied is in appliedMeta and restoredCatalog. */
  readonly catalogMachine = new CatalogMachine({
    applied: (index, result) => this.appliedMeta(index, result),
    restored: (index, atStart) => this.restoredCatalog(index, atStart),
  });

  /** Replaced whole when a snapshot is restored. */
  get catalog(): CatalogState {
    return this.catalogMachine.state;
  }
  /**
   * How this node rebuilt its catalog at start: the snapshot it loaded (0:
   * none), the entries after it it applied from its own log, up to the last
   * one it held (`replayTo`).
   */
  readonly catalogStart = { snapshotIndex: 0, replayTo: 0, replayedEntries: 0, done: false };
  private readonly metaResults = new Map<number, ApplyResult>();
  /** Volumes whose replica on a down node had nowhere to go (logged once per dead node). */
  private readonly unplaceable = new Map<number, number>();
  /** Groups with a configuration change in flight (one at a time per group). */
  private readonly reconciling = new Set<number>();
  /** When this node last handed each volume's leadership to its host's node (monotonic). */
  private readonly leaderMoves = new Map<number, number>();
  /** Groups with a resize proposed by growGroup in flight. */
  private readonly resizing = new Set<number>();
  /** Groups this node leads that are larger than the catalog says, and for how long (monotonic). */
  private readonly sizeBehind = new Durations<number>();
  /** Volumes whose size this node asked the catalog to record, and when (monotonic): one request in flight, retried after catalogSizeBehindMs. */
  private readonly sizeAsked = new Map<number, number>();
  /** Hosted groups the catalog no longer lists this node for, and for how long (monotonic). */
  private readonly excluded = new Durations<number>();
  /** Groups this node is leaving that it knows no leader of, and for how long. */
  private readonly leaderless = new Durations<number>();
  /** Clone replicas being started from their snapshot here (hostClone, seedClone). */
  private readonly seeding = new Set<number>();
  /** On the meta leader: how long it has had no connection to each node, on its monotonic clock. */
  private readonly unreachable = new Durations<number>();
  /** On the meta leader: how long it has seen each node marked down in the catalog, on its monotonic clock. */
  private readonly markedDown = new Durations<number>();
  /** A catalog change of the failure detector or re-replication is in flight (one at a time). */
  private healthProposal = false;
  /** A catalog learner's promotion is in flight. */
  private promoting = false;
  /** Callers waiting for the catalog to reach a state (whenCatalog); as many as the API and NBD handshakes that wait, each bounded by its timeout. */
  private readonly catalogWaiters = new Set<() => void>();

  constructor(private readonly p: ClusterNodePorts) {}

  /**
   * Starts the groups this node runs: the meta group (its catalog rebuilt
   * from the latest snapshot and the log after it) with `metaVoters` as its
   * first configuration, and every volume replica the node state records.
   * The store has these groups open already.
   */
  start(metaVoters: readonly NodeId[]): void {
    this.catalogStart.replayTo = this.p.store.raftState(metaGroupId).lastIndex;
    this.p.driver.addGroup(metaGroupId, [...metaVoters], this.catalogMachine);
    for (const g of this.p.state.hosted.values()) {
      if (g.clone !== undefined && this.unseeded(g.id)) this.seedClone(g, `group ${g.id}`);
      else this.p.driver.addGroup(g.id, g.voters, new VolumeReplica(this.p.store, g.id));
    }
    if (this.catalogStart.snapshotIndex > 0) this.hostFromCatalog();
    this.countReplayed(this.catalogStart.snapshotIndex);
  }

  /**
   * On the meta leader: admits a node (its validated addNode command) into
   * the catalog and makes it a learner of the meta group (promoteLearners
   * makes it a voter once it caught up, up to metaVotersMax). Rejects as
   * proposeCommand does; resolves with the catalog's answer to the addNode.
   */
  async admit(command: Extract<CatalogCommand, { kind: "addNode" }>): Promise<ApplyResult> {
    const added = await this.proposeCommand(encodeCommand(command));
    if (!added.ok) return added;
    const members = [...this.p.driver.voters(metaGroupId), ...this.p.driver.learners(metaGroupId)];
    if (!members.includes(command.id)) await this.p.driver.proposeConfChange(metaGroupId, { type: ConfChangeType.addLearner, nodeId: command.id });
    return added;
  }

  /**
   * Resolves true once the catalog satisfies `ready` (checked after every
   * entry applied and snapshot restored), or false after `timeoutMs`.
   */
  whenCatalog(ready: (c: CatalogState) => boolean, timeoutMs: number): Promise<boolean> {
    if (ready(this.catalog)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const check = (): void => {
        if (!ready(this.catalog)) return;
        done(true);
      };
      const done = (ok: boolean): void => {
        this.catalogWaiters.delete(check);
        cancel();
        resolve(ok);
      };
      const cancel = this.p.after(timeoutMs, () => done(false));
      this.catalogWaiters.add(check);
    });
  }

  private catalogChanged(): void {
    for (const check of [...this.catalogWaiters]) check();
  }

  /**
   * Proposes an encoded catalog entry on the meta leader (this node) and
   * resolves with how it applied; rejects with NotLeaderError or
   * ProposalDroppedError when the catalog did not take it.
   */
  async proposeCommand(data: Uint8Array): Promise<ApplyResult> {
    const index = await this.p.driver.proposeData(metaGroupId, data);
    const result = this.metaResults.get(index);
    assert(result !== undefined, () => `catalog entry ${index} applied without a result`);
    this.metaResults.delete(index);
    return result;
  }

  /** The catalog applied a committed meta entry (result: undefined for one without a command): acts on what changed for this node. */
  private appliedMeta(index: number, result: ApplyResult | undefined): void {
    this.countReplayed(index);
    if (result !== undefined) this.actOnMeta(index, result);
    this.catalogChanged();
  }

  private actOnMeta(index: number, result: ApplyResult): void {
    this.metaResults.set(index, result);
    if (this.metaResults.size > 1024) this.metaResults.delete(this.metaResults.keys().next().value!);
    if (!result.ok) return;
    if (result.node) this.refreshPeers(this.catalog.nodes.has(result.node.id) ? undefined : result.node.id);
    const v = result.volume;
    if (v === undefined) return;
    const live = this.catalog.volumes.get(v.name);
    // A replica added to an existing volume (setReplicas) starts with no configuration: the
    // group's leader makes it a learner and sends it a snapshot; it must not campaign before.
    const seed = result.kind === "createVolume" && live?.source?.seeds.includes(this.p.nodeId) === true;
    if (live !== undefined && live.id === v.id && seed) this.hostClone(live);
    else if (live !== undefined && live.id === v.id && live.nodes.includes(this.p.nodeId)) this.hostGroup(live, result.kind === "setReplicas" || live.source !== null);
    if (live === undefined) this.p.volumeGone(v.name);
    if (live === undefined && this.p.state.hosted.has(v.id)) this.unhostGroup(v.id);
  }

  /**
   * A snapshot replaced the catalog: at start the latest one this node saved
   * (a damaged or inconsistent one stops the start with the reason), later
   * one the meta leader sent because this node was behind its log.
   */
  private restoredCatalog(index: number, atStart: boolean): void {
    const state = this.catalog;
    this.metaResults.clear();
    this.catalogChanged();
    if (atStart) {
      this.catalogStart.snapshotIndex = index;
      return; // wire() hosts from it once every group this node had is running again
    }
    this.catalogStart.done = true;
    this.p.log.info(`catalog: installed the meta leader's snapshot at index ${index} (${state.nodes.size} nodes, ${state.volumes.size} volumes)`);
    this.hostFromCatalog();
    this.refreshPeers();
  }

  /**
   * After a snapshot replaced the catalog, the entries that started or
   * dropped this node's replicas before it were not applied here: starts a
   * replica of each volume that lists this node (as a member joining: its
   * leader sends it a copy), and drops each replica of a volume the catalog
   * deleted. Volume ids are never reused, so a hosted id below nextVolumeId
   * that the catalog lacks was deleted; a higher one was created after the
   * snapshot, and the log after it still creates it.
   */
  hostFromCatalog(): void {
    for (const v of this.catalog.volumes.values()) if (v.nodes.includes(this.p.nodeId)) this.hostGroup(v, true);
    for (const id of [...this.p.state.hosted.keys()]) if (id < this.catalog.nextVolumeId && this.volumeById(id) === undefined) this.unhostGroup(id);
  }

  /** Counts the entries a start replays after its catalog snapshot, and logs the count once it reached the last one on disk. */
  countReplayed(index: number): void {
    const s = this.catalogStart;
    if (s.done) return;
    if (index > s.snapshotIndex && index <= s.replayTo) s.replayedEntries++;
    if (index < s.replayTo) return;
    s.done = true;
    const from = s.snapshotIndex > 0 ? `loaded the snapshot at index ${s.snapshotIndex}` : "no snapshot";
    this.p.log.info(`catalog: ${from}, replayed ${s.replayedEntries} entries (to index ${Math.max(s.replayTo, s.snapshotIndex)})`);
  }

  /** Starts this node's replica of a volume: the node state records it durably before the group persists anything. */
  private hostGroup(v: CatalogVolume, joining = false): void {
    if (this.p.driver.hasGroup(v.id) || this.p.store.hasGroup(v.id) || this.seeding.has(v.id)) return;
    const g: HostedGroup = { id: v.id, sizeBytes: v.sizeBytes, voters: joining ? [] : [...v.nodes] };
    this.p.store.addGroup({ groupId: v.id, sizeBytes: v.sizeBytes });
    this.p.state.host(g).then(
      () => {
        if (this.p.store.hasGroup(v.id) && !this.p.driver.hasGroup(v.id)) this.p.driver.addGroup(v.id, g.voters, new VolumeReplica(this.p.store, v.id));
        const members = joining ? "joining: its leader adds it and sends it a copy" : `replicas on nodes ${g.voters.join(", ")}`;
        this.p.log.info(`volume ${v.name} (group ${v.id}): replica started here, ${formatSize(v.sizeBytes)}, ${members}`);
      },
      (e: Error) => this.p.log.error(`volume ${v.name}: cannot record its replica: ${e.message}`),
    );
  }

  /**
   * Starts this node's replica of a clone it seeds (CloneSource). The node
   * state records the replica first, marked as a clone of the snapshot; then
   * the store starts the group from its copy of the snapshot and a checkpoint
   * holds it (seedClone). A restart in between finds the group without its
   * first state and seeds it again (start). A seed without the snapshot (it
   * dropped it after the clone was asked for) joins as other replicas do and
   * gets a copy from a seed that has it.
   */
  private hostClone(v: CatalogVolume): void {
    const s = v.source!;
    if (this.p.driver.hasGroup(v.id) || this.p.store.hasGroup(v.id) || this.seeding.has(v.id)) return;
    if (!this.holdsSnapshot(s.volumeId, s.snapshotId)) {
      this.p.log.warn(`volume ${v.name} (group ${v.id}): this node was to start it from ${cloneSourceName(this.catalog, s)}, which it no longer holds; it joins and gets a copy instead`);
      return this.hostGroup(v, true);
    }
    const g: HostedGroup = { id: v.id, sizeBytes: v.sizeBytes, voters: [...s.seeds], clone: { volumeId: s.volumeId, snapshotId: s.snapshotId } };
    this.seeding.add(v.id);
    this.p.state.host(g).then(
      () => this.seedClone(g, `volume ${v.name} (group ${v.id})`),
      (e: Error) => {
        this.seeding.delete(v.id);
        this.p.log.error(`volume ${v.name}: cannot record its replica: ${e.message}`);
      },
    );
  }

  /** The store has the group as Store.open made it from the node state alone: no checkpoint or log record of it. */
  private unseeded(id: number): boolean {
    const st = this.p.store.raftState(id);
    return st.snapshotIndex === 0 && st.lastIndex === 0;
  }

  private holdsSnapshot(volumeId: number, snapshotId: number): boolean {
    return this.p.store.hasGroup(volumeId) && this.p.store.snapshotIds(volumeId).includes(snapshotId);
  }

  /** Starts a recorded clone replica from its snapshot (Store.cloneFromSnapshot), then runs its group; without the snapshot here, it runs as a member joining. */
  private seedClone(g: HostedGroup, what: string): void {
    const c = g.clone!;
    if (!this.p.state.hosted.has(g.id)) return void this.seeding.delete(g.id); // dropped while it was being recorded
    this.seeding.add(g.id);
    if (this.p.store.hasGroup(g.id)) this.p.store.dropGroup(g.id); // Store.open's empty group from the node state
    const run = (voters: number[]): void => {
      this.seeding.delete(g.id);
      if (!this.p.driver.hasGroup(g.id) && this.p.state.hosted.has(g.id)) this.p.driver.addGroup(g.id, voters, new VolumeReplica(this.p.store, g.id));
    };
    if (!this.holdsSnapshot(c.volumeId, c.snapshotId)) {
      this.p.log.warn(`${what}: its snapshot (id ${c.snapshotId} of group ${c.volumeId}) is not here any more; it joins and gets a copy instead`);
      this.p.store.addGroup({ groupId: g.id, sizeBytes: g.sizeBytes });
      return run([]);
    }
    this.p.store.cloneFromSnapshot(g.id, c.volumeId, c.snapshotId, { voters: [...g.voters].sort((a, b) => a - b), learners: [] }).then(
      () => {
        run(g.voters);
        this.p.log.info(`${what}: replica started here from snapshot id ${c.snapshotId} of group ${c.volumeId} (its extents shared, nothing copied), ${formatSize(g.sizeBytes)}; started on nodes ${g.voters.join(", ")}`);
      },
      (e: Error) => {
        this.seeding.delete(g.id);
        this.p.log.error(`${what}: cannot start its replica from its snapshot: ${e.message}`);
      },
    );
  }

  unhostGroup(id: number): void {
    this.p.driver.removeGroup(id);
    this.p.store.dropGroup(id);
    this.p.state.unhost(id).catch((e: Error) => this.p.log.error(`group ${id}: cannot forget it: ${e.message}`));
    this.p.log.info(`group ${id}: replica removed from this node`);
  }

  /**
   * The peer set grows with the catalog and shrinks only when a node is
   * removed. At start the catalog is replayed from the meta log only up to
   * the commit index this node had on disk, which may predate nodes that
   * joined later; dropping those from the peer set would refuse the very
   * node that leads the catalog and could teach it the rest.
   */
  private refreshPeers(removed?: number): void {
    const byId = new Map(this.p.state.peers.map((p) => [p.id, p]));
    if (removed !== undefined) byId.delete(removed);
    for (const n of this.catalog.nodes.values()) byId.set(n.id, { id: n.id, host: n.address, port: n.peerPort });
    const peers = [...byId.values()];
    this.p.setTransportPeers(peers);
    this.p.state.setPeers(peers).catch((e: Error) => this.p.log.error(`cannot record peers: ${e.message}`));
  }

  /** Until this node is in the catalog, its meta leader proposes it (the bootstrap node registers itself). */
  registerSelf(): void {
    if (this.catalog.nodes.has(this.p.nodeId) || this.p.driver.leader(metaGroupId) !== this.p.nodeId) return;
    this.p.driver.proposeData(metaGroupId, encodeCommand({ kind: "addNode", ...this.p.self(), at: this.p.wallMs() })).catch(this.notTaken("registering this node in the catalog"));
  }

  promoteLearners(): void {
    if (this.promoting || this.p.driver.leader(metaGroupId) !== this.p.nodeId) return;
    const ready = metaLearnerToPromote(this.groupView(metaGroupId), this.p.driver.status(metaGroupId)?.lastIndex ?? 0, metaVotersMax);
    if (ready === undefined) return;
    this.promoting = true;
    this.p.driver
      .proposeConfChange(metaGroupId, { type: ConfChangeType.addVoter, nodeId: ready })
      .then(() => this.p.log.info(`node ${ready} is now a voter of the catalog's group`))
      .catch(this.notTaken(`promoting node ${ready} to a voter of the catalog's group`))
      .finally(() => (this.promoting = false));
  }

  /** A group as this node, its leader, sees it (members, commit, progress). */
  groupView(groupId: number): GroupView {
    return {
      voters: this.p.driver.voters(groupId),
      learners: this.p.driver.learners(groupId),
      commit: this.p.driver.status(groupId)?.commit ?? 0,
      progress: this.p.driver.progress(groupId) ?? [],
    };
  }

  /**
   * On the meta leader: the failure detector (healthChange) and, when it has
   * nothing to change, re-replication (replicaReplacements); one catalog
   * change at a time.
   */
  detectFailures(): void {
    if (this.healthProposal || this.p.driver.leader(metaGroupId) !== this.p.nodeId) {
      this.unreachable.clear();
      this.markedDown.clear();
      return;
    }
    const now = this.p.monotonicMs();
    const nodes = [...this.catalog.nodes.values()];
    const unreachableMs = this.unreachable.observe(nodes.filter((n) => n.id !== this.p.nodeId && !this.p.isConnected(n.id)).map((n) => n.id), now);
    const downMs = this.markedDown.observe(nodes.filter((n) => n.health === "down").map((n) => n.id), now);
    const change = healthChange(this.catalog, this.p.nodeId, unreachableMs, nodeDownAfterMs, this.p.wallMs());
    if (change !== undefined) {
      const n = this.catalog.nodes.get(change.id)!;
      this.p.log.warn(`node ${n.id} (${n.name}) is ${change.health === "down" ? `unreachable for ${nodeDownAfterMs / 1000} s: marking it down` : "reachable again: marking it up"}`);
      this.healthProposal = true;
      this.p.driver
        .proposeData(metaGroupId, encodeCommand(change))
        .catch(this.notTaken(`marking node ${n.id} ${change.health}`))
        .finally(() => (this.healthProposal = false));
      return;
    }
    this.moveReplicas(downMs);
  }

  /**
   * Re-replication, on the meta leader: a replica on a node that has been
   * down for replaceDownAfterMs, or on a node being drained, moves to
   * another node, and a volume with fewer replicas than its count (a node
   * was removed with --force) gets one more (setReplicas with `expect`, one
   * volume at a time); the volume's leader then adds the new node (a
   * snapshot fills it) and removes the old one, as for ha-update.
   */
  private moveReplicas(downMs: ReadonlyMap<number, number>): void {
    for (const d of replicaReplacements(this.catalog, downMs, this.p.replaceDownAfterMs)) {
      const v = d.volume;
      const n = d.from === undefined ? undefined : this.catalog.nodes.get(d.from);
      const why =
        d.reason === "missing"
          ? `has ${v.nodes.length} of its ${v.repl} replicas`
          : d.reason === "draining"
            ? `has a replica on node ${d.from} (${n?.name ?? "?"}), which is draining`
            : `has a replica on node ${d.from}, down for ${Math.round((downMs.get(d.from ?? 0) ?? 0) / 1000)} s`;
      if (d.kind === "unplaceable") {
        if (this.unplaceable.get(v.id) !== (d.from ?? 0)) this.p.log.warn(`volume ${v.name} ${why}, and no node can take another: ${d.error}`);
        this.unplaceable.set(v.id, d.from ?? 0);
        continue;
      }
      this.healthProposal = true;
      this.p.log.warn(`volume ${v.name} ${why}: ${d.from === undefined ? "adding" : "moving it to"} a replica on node ${d.command.nodes[d.command.nodes.length - 1]}`);
      this.proposeCommand(encodeCommand(d.command))
        .then((r) => r.ok || this.p.log.info(`volume ${v.name}: replica move not applied: ${r.error}`), this.notTaken(`moving a replica of volume ${v.name}`))
        .finally(() => (this.healthProposal = false));
    }
  }

  /**
   * The catalog says which nodes hold each volume; the leader of the volume's
   * group converges the group's configuration to that, one change at a time:
   * a node missing from the group joins as a learner (it gets a snapshot), a
   * learner that has caught up becomes a voter, a member the catalog no longer
   * lists is removed. A node dropped from a volume hands leadership on and,
   * after a grace period, drops its replica.
   */
  reconcileReplicas(): void {
    const now = this.p.monotonicMs();
    const excluded = this.excluded.observe([...this.catalog.volumes.values()].filter((v) => this.p.driver.hasGroup(v.id) && !v.nodes.includes(this.p.nodeId)).map((v) => v.id), now);
    const leaderless = this.leaderless.observe([...excluded.keys()].filter((id) => this.p.driver.leader(id) === 0), now);
    const grown = [...this.catalog.volumes.values()].filter((v) => this.p.driver.leader(v.id) === this.p.nodeId && this.p.store.hasGroup(v.id) && this.p.store.sizeOf(v.id) > v.sizeBytes);
    const behind = this.sizeBehind.observe(grown.map((v) => v.id), now);
    for (const id of this.sizeAsked.keys()) if (!behind.has(id)) this.sizeAsked.delete(id);
    for (const v of this.catalog.volumes.values()) {
      if (!this.p.driver.hasGroup(v.id)) continue;
      const excludedMs = excluded.get(v.id);
      if (excludedMs !== undefined) {
        this.leaveGroup(v, excludedMs, leaderless.get(v.id) ?? 0);
        continue;
      }
      if (this.p.driver.leader(v.id) !== this.p.nodeId) continue;
      this.catalogSize(v, behind.get(v.id), now);
      if (this.reconciling.has(v.id)) continue;
      this.followAttachment(v, now);
      const next = nextMemberChange(this.p.nodeId, v.nodes, this.groupView(v.id), learnerCaughtUpEntries);
      const change = next === undefined ? undefined : confChangeOf(next);
      if (change === undefined) continue;
      this.reconciling.add(v.id);
      const what = `${change.type === ConfChangeType.addLearner ? "add learner" : change.type === ConfChangeType.addVoter ? "promote learner" : "remove node"} ${change.nodeId}`;
      this.p.driver
        .proposeConfChange(v.id, change)
        .then(
          () => this.p.log.info(`volume ${v.name} (group ${v.id}): ${what} done; voters ${this.p.driver.voters(v.id).join(", ")}, learners ${this.p.driver.learners(v.id).join(", ") || "none"}`),
          (e: Error) => this.p.log.info(`volume ${v.name} (group ${v.id}): ${what} not done yet: ${e.message}`),
        )
        .finally(() => this.reconciling.delete(v.id));
    }
  }

  /**
   * The group this node leads has been larger than the catalog's size for
   * catalogSizeBehindMs: a resize stopped after the group took it (the meta
   * leader died in between). The catalog is brought up to the group, one
   * request at a time per volume; a refusal (no room any more) is logged and
   * asked again later.
   */
  private catalogSize(v: CatalogVolume, behindMs: number | undefined, now: number): void {
    if (this.p.store.sizeOf(v.id) < v.sizeBytes) return this.growGroup(v);
    const grow = this.p.growCatalog;
    if (grow === undefined || behindMs === undefined || behindMs < catalogSizeBehindMs) return;
    const asked = this.sizeAsked.get(v.id);
    if (asked !== undefined && now - asked < catalogSizeBehindMs) return;
    this.sizeAsked.set(v.id, now);
    const size = this.p.store.sizeOf(v.id);
    this.p.log.warn(`volume ${v.name} (group ${v.id}): its replicas are ${formatSize(size)} but the catalog says ${formatSize(v.sizeBytes)} (a resize stopped half-way); asking the catalog to record ${formatSize(size)}`);
    grow(v.name, size).then(
      () => this.p.log.info(`volume ${v.name}: the catalog now records ${formatSize(size)}`),
      (e: Error) => {
        if (isBug(e)) failStop(e, `control loop: recording the size of volume ${v.name}`);
        this.p.log.warn(`volume ${v.name}: the catalog did not record ${formatSize(size)} yet (${e.message}); asked again in ${catalogSizeBehindMs / 1000} s`);
      },
    );
  }

  /**
   * The catalog says the volume is larger than its group, which the API's
   * resize never leaves (the group grows first), but a catalog entry
   * committed by other means can (an older pxd, the fault-injection hook):
   * the catalog's size is what is wanted, so the group's leader proposes the
   * resize. One at a time per group.
   */
  private growGroup(v: CatalogVolume): void {
    if (this.resizing.has(v.id)) return;
    this.resizing.add(v.id);
    this.p.log.warn(`volume ${v.name} (group ${v.id}): the catalog says ${formatSize(v.sizeBytes)} but the group is ${formatSize(this.p.store.sizeOf(v.id))}; growing the group`);
    this.p.driver
      .propose(v.id, encodeResize(v.sizeBytes))
      .then(() => this.p.log.info(`volume ${v.name} (group ${v.id}): grown to ${formatSize(v.sizeBytes)}`), this.notTaken(`growing volume ${v.name} to ${formatSize(v.sizeBytes)}`))
      .finally(() => this.resizing.delete(v.id));
  }

  /** Hands the volume's leadership to the replica node its read-write host attached through; at most once per attachLeaderRetryMs per volume. */
  private followAttachment(v: CatalogVolume, now: number): void {
    const byName = (name: string): number | undefined => [...this.catalog.nodes.values()].find((n) => n.name === name)?.id;
    const to = attachmentLeader(this.p.nodeId, v, byName, this.groupView(v.id));
    if (to === undefined) return;
    const last = this.leaderMoves.get(v.id);
    if (last !== undefined && now - last < attachLeaderRetryMs) return;
    this.leaderMoves.set(v.id, now);
    this.p.log.info(`volume ${v.name} (group ${v.id}): handing leadership to node ${to}, which serves the host it is attached to`);
    this.p.driver.transferLeadership(v.id, to);
  }

  /** This node is no longer one of the volume's replicas: hand leadership to a listed voter, then drop the replica after the grace period. */
  private leaveGroup(v: CatalogVolume, excludedMs: number, leaderlessMs: number): void {
    const group = { leader: this.p.driver.leader(v.id), voters: this.p.driver.voters(v.id), learners: this.p.driver.learners(v.id) };
    const d = leaveDecision(this.p.nodeId, v.nodes, group, excludedMs, leaderlessMs, replicaDropGraceMs);
    if (d.kind === "transfer") this.p.driver.transferLeadership(v.id, d.to);
    if (d.kind !== "drop") return;
    this.p.log.info(`volume ${v.name} (group ${v.id}): this node is no longer one of its replicas (now on nodes ${v.nodes.join(", ")}); dropping the replica here`);
    this.unhostGroup(v.id);
  }

  /** The catalog's volume whose Raft group is `id`. */
  volumeById(id: number): CatalogVolume | undefined {
    return volumeWithId(this.catalog, id);
  }

  /** A proposal of a control loop the catalog or a group did not take (leadership moved, the group stopped): logged; the loop tries again on its next turn. */
  private notTaken(what: string): (e: unknown) => void {
    return (e) => {
      if (!(e instanceof NotLeaderError || e instanceof ProposalDroppedError)) failStop(e, `control loop: ${what}`);
      this.p.log.info(`${what}: not taken yet (${e.message}); tried again on the next turn`);
    };
  }
}

/** The Raft change that makes a group's membership step (src/cluster says what, in its own terms). */
export function confChangeOf(c: MemberChange): ConfChange {
  const type = c.kind === "addLearner" ? ConfChangeType.addLearner : c.kind === "promote" ? ConfChangeType.addVoter : ConfChangeType.removeNode;
  return { type, nodeId: c.node };
}
