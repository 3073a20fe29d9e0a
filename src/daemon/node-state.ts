// What a node keeps about itself, in LevelDB under DIR/node (docs/formats/node-state.md).
// The cluster's catalog is the meta group's state; this is only the node's own
// identity and the caches it needs before the meta log has been replayed:
//   self:id            this node's Raft id (random at first start, never changes)
//   cluster:id         the cluster it belongs to
//   cluster:voters     the meta group's initial voters (JSON array)
//   peers              last known peer addresses (JSON [{id, host, port}])
//   group:<id>         a volume group hosted here (JSON {id, sizeBytes, voters})
//   scrub:last         when the last scheduled scrub of everything here finished (ms since the epoch; first start: then)
// Every write is synced: a group the node reported as hosted survives a crash.

import { randomInt } from "node:crypto";
import { ClassicLevel } from "classic-level";

import type { HostedGroup, HostingState, PeerEntry } from "../node/cluster-node.js";

export type { HostedGroup, PeerEntry };

export class NodeState implements HostingState {
  readonly hosted = new Map<number, HostedGroup>();
  nodeId = 0;
  clusterId = "";
  metaVoters: number[] = [];
  peers: PeerEntry[] = [];
  scrubbedAt = 0;

  private constructor(private readonly db: ClassicLevel<string, string>) {}

  static async open(path: string): Promise<NodeState> {
    const db = new ClassicLevel<string, string>(path, { valueEncoding: "utf8" });
    try {
      await db.open();
    } catch (e) {
      const cause = (e as { cause?: Error }).cause?.message ?? (e as Error).message;
      throw new Error(`cannot open the node state at ${path}: ${cause}; is another pxd daemon using this data dir?`);
    }
    const s = new NodeState(db);
    s.nodeId = Number((await db.get("self:id")) ?? "0");
    if (s.nodeId === 0) {
      s.nodeId = randomInt(1, 2 ** 31);
      await db.put("self:id", String(s.nodeId), { sync: true });
    }
    s.clusterId = (await db.get("cluster:id")) ?? "";
    s.metaVoters = JSON.parse((await db.get("cluster:voters")) ?? "[]") as number[];
    s.peers = JSON.parse((await db.get("peers")) ?? "[]") as PeerEntry[];
    s.scrubbedAt = Number((await db.get("scrub:last")) ?? "0");
    if (!(s.scrubbedAt > 0)) await s.setScrubbedAt(Date.now()); // the schedule counts from the first start
    for await (const [, value] of db.iterator({ gte: "group:", lt: "group;" })) {
      const g = JSON.parse(value) as HostedGroup;
      s.hosted.set(g.id, g);
    }
    return s;
  }

  async setCluster(clusterId: string, metaVoters: number[]): Promise<void> {
    this.clusterId = clusterId;
    this.metaVoters = [...metaVoters];
    await this.db.batch(
      [
        { type: "put", key: "cluster:id", value: clusterId },
        { type: "put", key: "cluster:voters", value: JSON.stringify(metaVoters) },
      ],
      { sync: true },
    );
  }

  async setPeers(peers: PeerEntry[]): Promise<void> {
    this.peers = peers.map((p) => ({ ...p }));
    await this.db.put("peers", JSON.stringify(this.peers), { sync: true });
  }

  async setScrubbedAt(ms: number): Promise<void> {
    this.scrubbedAt = ms;
    await this.db.put("scrub:last", String(ms), { sync: true });
  }

  async host(g: HostedGroup): Promise<void> {
    this.hosted.set(g.id, g);
    await this.db.put(`group:${g.id}`, JSON.stringify(g), { sync: true });
  }

  async unhost(id: number): Promise<void> {
    this.hosted.delete(id);
    await this.db.del(`group:${id}`, { sync: true });
  }

  async close(): Promise<void> {
    await this.db.close();
  }
}
