// Volumes' lifecycle as the control API drives it: create (a new volume or
// a clone of a snapshot), update (resize, QoS, replica count), delete, list
// and inspect. Catalog changes are made on the catalog's leader
// (MetaLeader.onMetaLeader); a volume's description (info) joins the
// catalog's record with what this node knows of its group and replicas.

import { ApiError, type Caller, type CopyProgress, type CreateVolumeRequest, type DeleteVolumeOptions, type ReplicaInfo, type SnapshotScheduleRequest, type UpdateVolumeRequest, type VolumeInfo } from "../api/types.js";
import { formatSize } from "../base/sizes.js";
import {
  attachedProblem,
  cloneSourceName,
  listNames,
  qosSummary,
  replicaSetFor,
  resizeRefusal,
  settingValue,
  type CatalogState,
  type CatalogVolume,
  type CloneSource,
  type VolumeEncryption,
} from "../cluster/index.js";
import type { MultiRaft } from "../replication/driver.js";
import { errorKindOf } from "../replication/errors.js";
import type { VolumeIo } from "../replication/volume-io.js";
import type { Store } from "../store/store.js";
import { checkReach, mayReach, ownerFor } from "./access.js";
import { catalogError, type MetaLeader } from "./meta-leader.js";
import { nodeByRef } from "./node-admin.js";
import type { AdmissionCounters } from "./qos.js";
import type { Snapshots } from "./snapshots.js";
import { attachmentInfos } from "./volume-attachments.js";
import { busyProblem, type VolumeConnections } from "./volume-connections.js";

/** What the volume administration needs of its node. */
export interface VolumeAdminContext {
  readonly nodeId: number;
  /** The catalog as this node has applied it now. */
  catalog(): CatalogState;
  readonly meta: Pick<MetaLeader, "onMetaLeader" | "metaCommand" | "metaLeaderApi" | "nodeApi" | "knownVolume" | "mustGet">;
  readonly driver: Pick<MultiRaft, "leader" | "progress" | "status" | "learners" | "hasGroup">;
  readonly store: Pick<Store, "hasGroup" | "allocatedBytes" | "raftState">;
  readonly io: Pick<VolumeIo, "resize">;
  readonly connections: Pick<VolumeConnections, "askEveryNode" | "here" | "disconnectHere">;
  readonly snapshots: Pick<Snapshots, "clone" | "setSchedule">;
  /** The export's NBD URI on this node. */
  nbdUri(exportName: string): string;
  /** NBD connections open to the export on this node. */
  exportConnections(exportName: string): number;
  /** A node is up, as this node sees it, when it is this node or connected to it. */
  isUp(id: number): boolean;
  /** Volume groups with blocks the repairer could not repair here, by id. */
  unrepaired(): ReadonlyMap<number, number>;
  /** The copy this node (the group's leader) is sending to a replica, if one is under way. */
  copyProgress(groupId: number, to: number): CopyProgress | undefined;
  /** Each replica's last scrub, for inspect (ScrubControl.replicaScrubs). */
  replicaScrubs(v: CatalogVolume): Promise<NonNullable<VolumeInfo["scrub"]>>;
  /** How much the volume's QoS held its requests back on this node. */
  throttled(volume: string): AdmissionCounters | undefined;
  /** This node's name in the catalog. */
  selfName(): string;
  /** A new data key for an encrypted volume of that name (VolumeKeys.newEncryption). */
  newEncryption(volume: string): VolumeEncryption;
  log: { info(line: string): void };
}

export class VolumeAdmin {
  constructor(private readonly c: VolumeAdminContext) {}

  async listVolumes(caller: Caller): Promise<VolumeInfo[]> {
    return [...this.c.catalog().volumes.values()].filter((v) => mayReach(caller, v)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map((v) => this.info(v));
  }

  /** Replica states come from the volume's leader, which tracks every replica's progress; asked when it is another node. */
  async inspectVolume(name: string, caller: Caller): Promise<VolumeInfo> {
    const v = await this.c.meta.knownVolume(name);
    checkReach(caller, v);
    const [info, scrub] = await Promise.all([this.replicaStates(v), this.c.replicaScrubs(v)]);
    const waited = this.c.throttled(v.name);
    const node = this.c.selfName();
    return { ...info, scrub, ...(waited !== undefined ? { throttle: { node, ...waited } } : {}) };
  }

  /**
   * The volume with its replicas' states as its group's leader sees them: on
   * a node in the group, asked of the leader it knows (none known: what
   * this node knows); on another node, asked of the first replica node that
   * answers, which asks its leader in turn. A node in the group never asks
   * one that is not its leader, so the questions cannot go round in a loop.
   */
  private async replicaStates(v: CatalogVolume): Promise<VolumeInfo> {
    const mine = this.info(v);
    const leader = this.c.driver.leader(v.id);
    const ask = !this.c.driver.hasGroup(v.id) ? v.nodes.filter((id) => id !== this.c.nodeId) : leader === this.c.nodeId ? [] : [leader];
    for (const id of ask) {
      const n = this.c.catalog().nodes.get(id);
      if (n === undefined) continue;
      try {
        const remote = await this.c.meta.nodeApi(n, 2000).inspectVolume(v.name);
        return { ...mine, replicas: remote.replicas, allocatedBytes: remote.allocatedBytes, ...(remote.log ? { log: remote.log } : {}) };
      } catch {
        // that node did not answer: the next one, or what this node knows
      }
    }
    return mine;
  }

  async createVolume(request: CreateVolumeRequest, caller: Caller): Promise<VolumeInfo> {
    const owner = ownerFor(caller, request.owner);
    return this.c.meta.onMetaLeader(caller, (api) => api.createVolume(request), () => this.createVolumeOnLeader(request, owner, caller));
  }

  private async createVolumeOnLeader(request: CreateVolumeRequest, owner: string, caller: Caller): Promise<VolumeInfo> {
    const nodes = request.nodes?.map((ref) => nodeByRef(this.c.catalog(), ref));
    const repl = request.repl ?? nodes?.length ?? Number(settingValue(this.c.catalog(), "defaultRepl"));
    const c = request.clone;
    const create = (source?: CloneSource, encryption?: VolumeEncryption): Promise<VolumeInfo> => this.createVolumeHere(request, owner, repl, nodes, source, encryption);
    return c === undefined ? create() : this.c.snapshots.clone(c.volume, c.snapshot, request.name, repl, nodes, caller, create);
  }

  private async createVolumeHere(request: CreateVolumeRequest, owner: string, repl: number, nodes: number[] | undefined, source?: CloneSource, encryption?: VolumeEncryption): Promise<VolumeInfo> {
    const result = await this.c.meta.metaCommand({
      kind: "createVolume",
      name: request.name,
      sizeBytes: request.sizeBytes,
      repl,
      ...(nodes !== undefined ? { nodes } : {}),
      ...(request.zones === true ? { zones: true } : {}),
      ...(request.shared === true ? { shared: true } : {}),
      owner,
      ...(request.maxIops !== undefined ? { maxIops: request.maxIops } : {}),
      ...(request.maxBandwidthBytesPerSec !== undefined ? { maxBandwidthBytes: request.maxBandwidthBytesPerSec } : {}),
      ...(request.burstSec !== undefined ? { burstSec: request.burstSec } : {}),
      ...(request.encrypted === true ? { encryption: this.c.newEncryption(request.name) } : encryption !== undefined ? { encryption } : {}),
      ...(source !== undefined ? { source } : {}),
      at: Date.now(),
    });
    if (!result.ok) throw catalogError(result);
    const v = this.c.catalog().volumes.get(request.name)!;
    const from = source === undefined ? "" : `, a clone of ${request.clone!.volume}@${request.clone!.snapshot} started on nodes ${source.seeds.join(", ")}`;
    this.c.log.info(`volume ${v.name} created: ${formatSize(v.sizeBytes)}, id ${v.id}, replicas on nodes ${v.nodes.join(", ")}${from}${v.encryption !== null ? `, encrypted (${v.encryption.cipher})` : ""}`);
    return this.info(v);
  }

  /**
   * On the catalog's leader: asks every node whether it serves the volume and
   * refuses while any does or does not answer; forced, has every node
   * disconnect its clients first. Then the catalog drops the volume.
   */
  async deleteVolume(name: string, options: DeleteVolumeOptions, caller: Caller): Promise<void> {
    checkReach(caller, await this.c.meta.knownVolume(name));
    return this.c.meta.onMetaLeader(caller, (api) => api.deleteVolume(name, options), () => this.deleteVolumeOnLeader(name, options));
  }

  private async deleteVolumeOnLeader(name: string, options: DeleteVolumeOptions): Promise<void> {
    const force = options.force === true;
    // Before the nodes are asked about their clients: an attached volume's refusal names its hosts.
    const attached = attachedProblem(this.c.meta.mustGet(name));
    if (attached !== undefined && !force) throw new ApiError(409, "attached", attached);
    const answers = await this.c.connections.askEveryNode(
      (api) => (force ? api.disconnectVolume(name) : api.volumeConnections(name)),
      () => (force ? this.c.connections.disconnectHere(name) : this.c.connections.here(name)),
    );
    const busy = busyProblem(name, answers, force);
    if (busy !== undefined) throw new ApiError(409, "busy", busy);
    const result = await this.c.meta.metaCommand({ kind: "deleteVolume", name, ...(force ? { force: true } : {}) });
    if (!result.ok) throw catalogError(result);
    const closed = answers.reduce((n, a) => n + (a.connections ?? 0), 0);
    const silent = answers.filter((a) => a.connections === undefined).map((a) => a.node);
    this.c.log.info(`volume ${name} deleted${force ? `; --force closed ${closed} NBD connection(s)${silent.length > 0 ? `, and ${listNames(silent)} did not answer` : ""}` : ""}`);
  }

  // ---- replica changes (ha-update) ----

  /** On the meta leader: a resize (first, so new replicas are placed with the new size counted), then a replica count. */
  async updateVolume(name: string, request: UpdateVolumeRequest, caller: Caller): Promise<VolumeInfo> {
    checkReach(caller, await this.c.meta.knownVolume(name));
    return this.c.meta.onMetaLeader(caller, (api) => api.updateVolume(name, request), () => this.updateVolumeOnLeader(name, request));
  }

  private async updateVolumeOnLeader(name: string, request: UpdateVolumeRequest): Promise<VolumeInfo> {
    if (request.sizeBytes !== undefined) await this.resizeVolume(name, request.sizeBytes);
    if (request.maxIops !== undefined || request.maxBandwidthBytesPerSec !== undefined || request.burstSec !== undefined) await this.setVolumeQos(name, request);
    if (request.repl !== undefined) await this.setRepl(name, request.repl);
    return this.info(this.c.meta.mustGet(name));
  }

  private async setRepl(name: string, repl: number): Promise<void> {
    const was = [...this.c.meta.mustGet(name).nodes];
    const set = replicaSetFor(this.c.catalog(), name, repl);
    if ("error" in set) throw new ApiError(409, "placement", set.error);
    const result = await this.c.meta.metaCommand({ kind: "setReplicas", name, nodes: set.nodes, repl, expect: was });
    if (!result.ok) throw catalogError(result);
    this.c.log.info(`volume ${name}: ${repl} replicas wanted, on nodes ${this.c.meta.mustGet(name).nodes.join(", ")} (were ${was.join(", ")})`);
  }

  /**
   * On the meta leader: grows a volume (docs/architecture.md, "Resize"). The
   * volume's group takes the resize first, so every replica grows at one log
   * index; then the catalog records the size, and only then do NBD handshakes
   * and inspect show it, so a client never sees a size its replicas refuse.
   * The catalog's rule (grow only, room on every replica's node) is checked
   * before the group grows. A stop in between leaves the group larger than
   * the catalog: the group's leader then asks for the catalog's change
   * itself (ClusterNode.reconcileReplicas, growCatalog).
   */
  private async resizeVolume(name: string, sizeBytes: number): Promise<void> {
    const v = this.c.meta.mustGet(name);
    const refused = resizeRefusal(this.c.catalog(), name, sizeBytes);
    if (refused !== undefined) throw catalogError(refused);
    if (sizeBytes === v.sizeBytes) return;
    try {
      await this.c.io.resize(v.id, sizeBytes);
    } catch (e) {
      const kind = errorKindOf(e);
      if (kind === undefined) throw e;
      throw new ApiError(503, "unavailable", `volume "${name}" did not grow: its replicas did not take the resize (${kind}: ${(e as Error).message}); retry, and see "pxd volume inspect ${name}" if it keeps failing`);
    }
    const result = await this.c.meta.metaCommand({ kind: "resizeVolume", name, sizeBytes });
    if (!result.ok) throw catalogError(result);
    this.c.log.info(`volume ${name}: grown from ${formatSize(v.sizeBytes)} to ${formatSize(sizeBytes)}`);
  }

  /** A volume group's leader found its group larger than the catalog says (a resize stopped between the two): asks the meta leader to record it. */
  async growCatalog(name: string, sizeBytes: number): Promise<void> {
    const api = await this.c.meta.metaLeaderApi(undefined);
    if (api === undefined) await this.resizeVolume(name, sizeBytes);
    else await api.updateVolume(name, { sizeBytes });
  }

  private async setVolumeQos(name: string, request: UpdateVolumeRequest): Promise<void> {
    const result = await this.c.meta.metaCommand({
      kind: "setVolumeQos",
      name,
      ...(request.maxIops !== undefined ? { maxIops: request.maxIops } : {}),
      ...(request.maxBandwidthBytesPerSec !== undefined ? { maxBandwidthBytes: request.maxBandwidthBytesPerSec } : {}),
      ...(request.burstSec !== undefined ? { burstSec: request.burstSec } : {}),
    });
    if (!result.ok) throw catalogError(result);
    if (result.changed) this.c.log.info(`volume ${name}: QoS ${((q) => qosSummary(q.maxIops, q.maxBandwidthBytes, q.burstSec))(this.c.meta.mustGet(name).qos)}`);
  }

  async setSnapshotSchedule(volume: string, request: SnapshotScheduleRequest, caller: Caller): Promise<VolumeInfo> {
    checkReach(caller, await this.c.meta.knownVolume(volume));
    return this.c.meta.onMetaLeader(caller, (api) => api.setSnapshotSchedule(volume, request), async () => this.info(await this.c.snapshots.setSchedule(volume, request)));
  }

  volumeState(v: CatalogVolume): VolumeInfo["state"] {
    return this.c.unrepaired().has(v.id) ? "damaged" : "online";
  }

  info(v: CatalogVolume): VolumeInfo {
    const { store } = this.c;
    const leader = this.c.driver.leader(v.id);
    return {
      id: v.id,
      name: v.name,
      sizeBytes: v.sizeBytes,
      repl: v.repl,
      createdAt: new Date(v.createdAt).toISOString(),
      state: this.volumeState(v),
      allocatedBytes: store.hasGroup(v.id) ? store.allocatedBytes(v.id) : 0,
      nbdUri: this.c.nbdUri(v.name),
      connections: this.c.exportConnections(v.name),
      replicas: this.replicas(v, leader),
      shared: v.shared,
      encrypted: v.encryption !== null,
      ...(v.source !== null ? { clonedFrom: cloneSourceName(this.c.catalog(), v.source) } : {}),
      owner: v.owner,
      attachments: attachmentInfos(v),
      snapshots: v.snapshots.length,
      ...(v.snapshotEveryMs > 0 ? { snapshotSchedule: { everySec: v.snapshotEveryMs / 1000, keep: v.snapshotKeep } } : {}),
      qos: { maxIops: v.qos.maxIops, maxBandwidthBytesPerSec: v.qos.maxBandwidthBytes, burstSec: v.qos.burstSec },
      ...(store.hasGroup(v.id) ? { log: (({ firstIndex, lastIndex }) => ({ firstIndex, lastIndex }))(store.raftState(v.id)) } : {}),
    };
  }

  private replicas(v: CatalogVolume, leader: number): ReplicaInfo[] {
    const { driver } = this.c;
    const progress = driver.progress(v.id);
    const last = driver.status(v.id)?.lastIndex ?? 0;
    const learners = driver.learners(v.id);
    return v.nodes.map((id) => {
      const name = this.c.catalog().nodes.get(id)?.name ?? `node-${id}`;
      const p = progress?.find((x) => x.node === id);
      const connected = this.c.isUp(id);
      let state: ReplicaInfo["state"] = connected ? "unknown" : "down";
      let detail: string | undefined;
      if (p !== undefined) {
        // A learner (being added by ha-update) is not yet a copy the volume can count on.
        state = !p.active ? "down" : p.match >= last && !learners.includes(id) ? "in-sync" : "catching-up";
        if (state === "catching-up") detail = learners.includes(id) ? `${p.match}/${last}, learner` : `${p.match}/${last}`;
      } else if (progress !== undefined && connected) {
        // Listed by the catalog, not yet in the group: the leader is adding it (ha-update).
        state = "catching-up";
        detail = `0/${last}`;
      }
      const copy = state === "catching-up" && leader === this.c.nodeId ? this.c.copyProgress(v.id, id) : undefined;
      return { node: name, nodeId: id, state, ...(detail ? { progress: detail } : {}), ...(copy ? { copy } : {}), leader: id === leader };
    });
  }
}
