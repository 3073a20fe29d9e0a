// The node and the cluster as the control API shows and changes them: this
// node's status and health (pxd status), the catalog's nodes, draining and
// removing a node, and the catalog's settings. Changes are made on the
// catalog's leader (MetaLeader.onMetaLeader).

import { statfsSync } from "node:fs";
import { ApiError, type Caller, type DrainNodeRequest, type IntegrityStatus, type NodeInfo, type NodeStatus, type SetSettingRequest, type SettingInfo } from "../api/types.js";
import { catalogSettings, type CatalogState, type CatalogVolume } from "../cluster/index.js";
import { metaGroupId } from "../node/cluster-node.js";
import { packageVersion } from "../os/package-version.js";
import { ConfChangeType } from "../raft/confchange.js";
import type { MultiRaft } from "../replication/driver.js";
import type { Repairer } from "../replication/repair.js";
import type { Store } from "../store/store.js";
import { healthReasons, type HealthFacts } from "./health.js";
import { catalogError, type MetaLeader } from "./meta-leader.js";

/** What the node administration needs of its node. */
export interface NodeAdminContext {
  readonly nodeId: number;
  readonly dataDir: string;
  /** --listen, as given. */
  readonly listen: string;
  readonly peerPort: number;
  /** When the daemon started (process.hrtime). */
  readonly startedAt: bigint;
  /** The ports the NBD and API servers bound. */
  nbdPort(): number;
  apiPort(): number;
  clusterId(): string;
  /** The catalog as this node has applied it now. */
  catalog(): CatalogState;
  /** How the catalog was rebuilt at start (ClusterNode.catalogStart). */
  catalogStart(): { snapshotIndex: number; replayedEntries: number };
  /** The last meta entry applied to the catalog. */
  catalogIndex(): number;
  volumeById(id: number): CatalogVolume | undefined;
  /** A node is up, as this node sees it, when it is this node or connected to it. */
  isUp(id: number): boolean;
  readonly meta: Pick<MetaLeader, "onMetaLeader" | "metaCommand">;
  readonly driver: Pick<MultiRaft, "leader" | "status" | "voters" | "learners" | "stoppedGroups" | "withholdingVotes" | "proposeConfChange">;
  readonly store: Pick<Store, "stats" | "failure" | "counters" | "stateSnapshot" | "raftFirstIndex">;
  readonly repairer: Pick<Repairer, "counters" | "unrepaired">;
  /** The scrubs' summary for pxd status (ScrubControl.summary). */
  scrubSummary(): IntegrityStatus["scrub"];
  log: { info(line: string): void };
}

export class NodeAdmin {
  constructor(private readonly c: NodeAdminContext) {}

  async status(): Promise<NodeStatus> {
    const { c } = this;
    const fsStat = statfsSync(c.dataDir);
    const stats = c.store.stats();
    const nodes = await this.listNodes();
    const up = nodes.filter((n) => n.health === "up");
    const disk = { totalBytes: fsStat.blocks * fsStat.bsize, freeBytes: fsStat.bavail * fsStat.bsize };
    const reasons = healthReasons({
      ...this.stoppedGroups(),
      ...this.damagedGroups(),
      nodesDown: nodes.filter((n) => n.health !== "up").map((n) => n.name),
      storeFailure: c.store.failure?.message,
      disk,
    });
    return {
      nodeId: String(c.nodeId),
      version: packageVersion,
      dataDir: c.dataDir,
      listen: c.listen,
      nbdPort: c.nbdPort(),
      apiPort: c.apiPort(),
      peerPort: c.peerPort,
      uptimeSec: Math.floor(Number(process.hrtime.bigint() - c.startedAt) / 1e9),
      health: reasons.length === 0 ? "online" : "degraded",
      reasons,
      capacity: { ...disk, usedBytes: stats.diskBytes ?? 0 },
      volumeCount: c.catalog().volumes.size,
      store: stats,
      clusterId: c.clusterId(),
      catalog: {
        leader: c.driver.leader(metaGroupId),
        commitIndex: c.driver.status(metaGroupId)?.commit ?? 0,
        appliedIndex: c.catalogIndex(),
        snapshotIndex: c.store.stateSnapshot(metaGroupId)?.index ?? 0,
        logFirstIndex: c.store.raftFirstIndex(metaGroupId),
        startSnapshotIndex: c.catalogStart().snapshotIndex,
        startReplayedEntries: c.catalogStart().replayedEntries,
        refusals: c.catalog().refusals.map((r) => ({ ...r })),
      },
      nodes,
      pool: {
        totalBytes: up.reduce((a, n) => a + n.capacityBytes, 0),
        usedBytes: up.reduce((a, n) => a + n.usedBytes, 0),
        freeBytes: up.reduce((a, n) => a + n.freeBytes, 0),
      },
      integrity: {
        checksumErrors: c.store.counters.checksumErrors,
        blocksRepaired: c.repairer.counters.blocksRepaired,
        blocksUnrepaired: c.repairer.counters.blocksUnrepaired,
        scrub: c.scrubSummary(),
      },
    };
  }

  /** A group as health reasons name it: its volume, or the catalog. */
  private groupName(id: number): string {
    return id === metaGroupId ? "the catalog" : (this.c.volumeById(id)?.name ?? `group ${id}`);
  }

  /** Volume blocks no replica could repair here, and groups withholding their votes after damage found at start-up. */
  private damagedGroups(): Pick<HealthFacts, "volumesDamaged" | "volumesRecovering"> {
    return {
      volumesDamaged: [...this.c.repairer.unrepaired()].map(([id, blocks]) => ({ name: this.groupName(id), blocks })),
      volumesRecovering: this.c.driver.withholdingVotes().map((id) => this.groupName(id)),
    };
  }

  /** Groups the driver stopped here (their log could not be persisted), the catalog's apart from the volumes'. */
  private stoppedGroups(): Pick<HealthFacts, "catalogStopped" | "volumesStopped"> {
    const stopped = [...this.c.driver.stoppedGroups()];
    return {
      catalogStopped: stopped.find(([id]) => id === metaGroupId)?.[1],
      volumesStopped: stopped.filter(([id]) => id !== metaGroupId).map(([id, why]) => ({ name: this.groupName(id), why })),
    };
  }

  async listNodes(): Promise<NodeInfo[]> {
    const metaLeader = this.c.driver.leader(metaGroupId);
    const voters = new Set(this.c.driver.voters(metaGroupId));
    return [...this.c.catalog().nodes.values()].map((n) => ({
      id: n.id,
      name: n.name,
      address: n.address,
      nbdPort: n.nbdPort,
      apiPort: n.apiPort,
      peerPort: n.peerPort,
      health: this.c.isUp(n.id) ? "up" : "down",
      catalogHealth: n.health,
      capacityBytes: n.capacityBytes,
      freeBytes: n.freeBytes,
      usedBytes: n.usedBytes,
      labels: { ...n.labels },
      draining: n.draining,
      metaVoter: voters.has(n.id),
      metaLeader: n.id === metaLeader,
    }));
  }

  /** On the meta leader: marks the node draining (or not); moveReplicas then moves its replicas off, one volume at a time. */
  async drainNode(ref: string, request: DrainNodeRequest, caller?: Caller): Promise<NodeInfo> {
    return this.c.meta.onMetaLeader(caller, (api) => api.drainNode(ref, request), async () => {
      const id = nodeByRef(this.c.catalog(), ref);
      const draining = request.draining ?? true;
      const result = await this.c.meta.metaCommand({ kind: "drainNode", id, draining });
      if (!result.ok) throw catalogError(result);
      if (result.changed) this.c.log.info(`node ${id} (${result.node?.name ?? "?"}) ${draining ? "is draining: its replicas move to other nodes" : "is no longer draining"}`);
      return (await this.listNodes()).find((n) => n.id === id)!;
    });
  }

  /**
   * On the meta leader: removes a node that is down from the catalog (the
   * catalog refuses while it holds replicas, unless forced: they are then
   * dropped from their replica sets and moveReplicas places new ones), then
   * from the catalog's Raft group, so it no longer counts toward its quorum.
   * A node out of the catalog but still in the group (the second step failed)
   * is removed from the group when asked again by its id.
   */
  async removeNode(ref: string, options: { force: boolean }, caller?: Caller): Promise<void> {
    return this.c.meta.onMetaLeader(caller, (api) => api.removeNode(ref, options), async () => {
      const { driver } = this.c;
      const catalog = this.c.catalog();
      const members = [...driver.voters(metaGroupId), ...driver.learners(metaGroupId)];
      const leftover = members.find((id) => String(id) === ref && !catalog.nodes.has(id));
      const id = leftover ?? nodeByRef(catalog, ref);
      const n = catalog.nodes.get(id);
      if (n !== undefined) {
        if (id === this.c.nodeId || n.health !== "down") {
          throw new ApiError(409, "conflict", `node ${id} (${n.name}) is up; stop its daemon first and remove it once pxd node list shows it down (pxd node drain moves its replicas off while it runs)`);
        }
        const result = await this.c.meta.metaCommand({ kind: "removeNode", id, ...(options.force ? { force: true } : {}) });
        if (!result.ok) throw catalogError(result);
      }
      if (members.includes(id)) {
        try {
          await driver.proposeConfChange(metaGroupId, { type: ConfChangeType.removeNode, nodeId: id });
        } catch (e) {
          throw new ApiError(503, "unavailable", `node ${id} left the catalog but is still a member of the catalog's Raft group (${(e as Error).message}); run pxd node remove ${id} again`);
        }
      }
      this.c.log.info(`node ${id}${n === undefined ? "" : ` (${n.name})`} removed from the cluster`);
    });
  }

  /** Every setting the catalog knows, with its value here. */
  async listSettings(): Promise<SettingInfo[]> {
    return Object.keys(catalogSettings).map((key) => this.settingInfo(key));
  }

  private settingInfo(key: string): SettingInfo {
    const spec = catalogSettings[key]!;
    const value = this.c.catalog().settings.get(key);
    return { key, value: value ?? spec.defaultValue, defaultValue: spec.defaultValue, set: value !== undefined, doc: spec.doc };
  }

  /** On the meta leader: sets a setting (null: back to its default); the catalog refuses an unknown key or a value out of its range (400). */
  async setSetting(key: string, request: SetSettingRequest, caller?: Caller): Promise<SettingInfo> {
    return this.c.meta.onMetaLeader(caller, (api) => api.setSetting(key, request.value), async () => {
      const result = await this.c.meta.metaCommand({ kind: "setSetting", key, value: request.value });
      if (!result.ok) throw catalogError(result);
      return this.settingInfo(key);
    });
  }
}

/** A node named by its name or its id (as pxd node list shows them). */
export function nodeByRef(catalog: CatalogState, ref: string): number {
  for (const n of catalog.nodes.values()) if (n.name === ref || String(n.id) === ref) return n.id;
  throw new ApiError(404, "not_found", `no node named or numbered ${JSON.stringify(ref)}; pxd node list shows the nodes`);
}
