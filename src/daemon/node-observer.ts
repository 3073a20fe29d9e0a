// What a node shows of itself while it runs (docs/architecture.md, "Seeing
// it"): /metrics (src/daemon/metrics.ts, over the counters the parts keep and
// each volume's NBD I/O counters here), the console's one-second samples of
// each volume (src/daemon/volume-stats.ts), the events it derives from what it
// sees second by second (src/daemon/events.ts), and the progress of the volume
// copies it streams (src/daemon/copy-progress.ts). everySecond() is its clock.

import type { ApiClient } from "../api/client.js";
import type { Caller, CopyProgress, EventsResponse, VolumeInfo, VolumeStatsResponse } from "../api/types.js";
import type { CatalogNode, CatalogState, CatalogVolume } from "../cluster/index.js";
import type { MultiRaft } from "../replication/driver.js";
import { roleNames } from "../raft/types.js";
import { checkReach } from "./access.js";
import { CopyRates, type CopyAt } from "./copy-progress.js";
import { EventRing, type ClusterView } from "./events.js";
import { NodeMetrics, type GroupView, type MetricsView } from "./metrics.js";
import type { NodeAdmission } from "./qos.js";
import { metricsVolumesMax, sumSamples, VolumeStats, volumeStatsIdleSec } from "./volume-stats.js";

/** How long the node a stats request reached waits for each other node's samples. */
const statsAskTimeoutMs = 1000;

/** What the observer needs of its node. */
export interface ObserverContext {
  readonly nodeId: number;
  /** false with --no-metrics: no per-volume I/O counters on the request path. */
  readonly countIo: boolean;
  /** The catalog as this node has applied it now. */
  catalog(): CatalogState;
  /** This node's name in the catalog. */
  selfName(): string;
  /** The volume, after this node's catalog caught up with the leader if it did not know the name; else ApiError 404. */
  knownVolume(name: string): Promise<CatalogVolume>;
  nodeApi(n: CatalogNode, timeoutMs: number): ApiClient;
  /** The volume groups this node holds a replica of, by id. */
  hostedVolumes(): number[];
  volumeById(groupId: number): CatalogVolume | undefined;
  /** NBD connections open to the export on this node. */
  connections(exportName: string): number;
  /** A node is up as this node sees it. */
  isUp(nodeId: number): boolean;
  volumeState(v: CatalogVolume): VolumeInfo["state"];
  /** Bytes the replica here holds; undefined when there is none here. */
  allocatedBytes(groupId: number): number | undefined;
  /** The copies of a volume this node streams to replicas now, where each is. */
  copies(groupId: number): CopyAt[];
  readonly groups: Pick<MultiRaft, "status" | "progress" | "hasGroup" | "leader">;
  readonly admission: Pick<NodeAdmission, "counters" | "load" | "prune">;
  /** The other parts' own counters, read when /metrics is scraped. */
  readonly parts: Pick<MetricsView, "store" | "nbd" | "peers" | "snapshots" | "repair" | "scrub">;
  /** Wall-clock and monotonic milliseconds. */
  wallMs(): number;
  monoMs(): number;
}

export class NodeObserver {
  /** Each volume's NBD I/O through this node, from its first connection here until the catalog drops it; empty with --no-metrics. */
  private readonly ioStats = new Map<string, VolumeStats>();
  private readonly eventRing = new EventRing();
  /** The copies this node streams to replicas, with their rates. */
  private readonly copyRates: CopyRates;
  private readonly registry: NodeMetrics;

  constructor(private readonly c: ObserverContext) {
    this.copyRates = new CopyRates((group) => c.copies(group), () => c.monoMs());
    this.registry = new NodeMetrics(this.metricsView());
  }

  close(): void {
    this.registry.close();
  }

  /** The Prometheus text of /metrics. */
  metrics(): Promise<string> {
    return this.registry.text();
  }

  /** The volume's I/O counters on this node (made at its first NBD connection here); undefined with --no-metrics. */
  statsFor(name: string): VolumeStats | undefined {
    if (!this.c.countIo) return undefined;
    let s = this.ioStats.get(name);
    if (s === undefined) this.ioStats.set(name, (s = new VolumeStats(name)));
    return s;
  }

  /** Once a second: each volume's sample for the console (a volume the catalog dropped, or idle here for volumeStatsIdleSec, loses its counters and series), the events since the last turn, and the copies under way. */
  everySecond(): void {
    const { c } = this;
    const wall = c.wallMs();
    const mono = c.monoMs();
    const catalog = c.catalog();
    for (const [name, s] of this.ioStats) {
      const idle = c.connections(name) === 0 && s.idleSamples >= volumeStatsIdleSec;
      if (!catalog.volumes.has(name) || idle) this.ioStats.delete(name);
      else s.sample(wall, mono);
    }
    // A volume's throttle lives as long as its counters, or its connections here with --no-metrics.
    c.admission.prune((name) => catalog.volumes.has(name) && (this.ioStats.has(name) || c.connections(name) > 0));
    this.eventRing.observe(this.clusterView(), wall);
    this.copyRates.track(c.hostedVolumes());
  }

  /** Where the leader's copy of the volume to that replica is, and how fast it goes; undefined when none runs. */
  copyProgress(groupId: number, to: number): CopyProgress | undefined {
    return this.copyRates.progress(groupId, to);
  }

  async events(sinceSeq: number): Promise<EventsResponse> {
    return { node: this.c.selfName(), events: this.eventRing.since(sinceSeq) };
  }

  /** This node's samples of the volume, or every node's summed second by second (a node that does not answer within a second is named in `silent`). */
  async volumeStats(name: string, local: boolean, caller: Caller): Promise<VolumeStatsResponse> {
    const { c } = this;
    const v = await c.knownVolume(name);
    checkReach(caller, v);
    const self = c.selfName();
    const mine = this.ioStats.get(v.name)?.samples() ?? [];
    if (local) return { volume: v.name, samples: mine, nodes: [self], silent: [] };
    const answers = await Promise.all(
      [...c.catalog().nodes.values()]
        .filter((n) => n.id !== c.nodeId)
        .map(async (n) => {
          try {
            return { node: n.name, samples: (await c.nodeApi(n, statsAskTimeoutMs).volumeStats(v.name, true)).samples };
          } catch {
            return { node: n.name, samples: undefined };
          }
        }),
    );
    const heard = answers.filter((a) => a.samples !== undefined);
    return {
      volume: v.name,
      samples: sumSamples([mine, ...heard.map((a) => a.samples!)]),
      nodes: [self, ...heard.map((a) => a.node)],
      silent: answers.filter((a) => a.samples === undefined).map((a) => a.node),
    };
  }

  private clusterView(): ClusterView {
    const { c } = this;
    const catalog = c.catalog();
    return {
      nodes: new Map([...catalog.nodes.values()].map((n) => [n.id, { name: n.name, up: c.isUp(n.id) }])),
      volumes: new Map([...catalog.volumes.values()].map((v) => [v.name, { nodes: [...v.nodes], leader: c.groups.hasGroup(v.id) ? c.groups.leader(v.id) : 0 }])),
    };
  }

  /** The volumes that carry per-volume series here: those with I/O through this node first, then those with a replica here, at most metricsVolumesMax. */
  private labelledVolumes(): CatalogVolume[] {
    const { c } = this;
    const withIo = [...this.ioStats.keys()].sort().map((n) => c.catalog().volumes.get(n)).filter((v): v is CatalogVolume => v !== undefined);
    const hosted = c.hostedVolumes().map((id) => c.volumeById(id)).filter((v): v is CatalogVolume => v !== undefined && !this.ioStats.has(v.name));
    return [...withIo, ...hosted].slice(0, metricsVolumesMax);
  }

  private groupView(v: CatalogVolume): GroupView | undefined {
    const { c } = this;
    const s = c.groups.status(v.id);
    if (s === undefined) return undefined;
    const progress = c.groups.progress(v.id);
    return {
      volume: v.name,
      role: roleNames[s.role],
      term: s.term,
      commitIndex: s.commit,
      appliedIndex: s.applied,
      lastIndex: s.lastIndex,
      ...(progress === undefined
        ? {}
        : { memberLag: progress.filter((p) => p.node !== c.nodeId).map((p) => ({ member: c.catalog().nodes.get(p.node)?.name ?? `node-${p.node}`, entries: Math.max(0, s.lastIndex - p.match) })) }),
    };
  }

  private metricsView(): MetricsView {
    const { c } = this;
    const count = <T>(items: Iterable<T>, key: (x: T) => string): Record<string, number> => {
      const out: Record<string, number> = {};
      for (const x of items) out[key(x)] = (out[key(x)] ?? 0) + 1;
      return out;
    };
    return {
      ...c.parts,
      volumes: () =>
        this.labelledVolumes().map((v) => ({
          name: v.name,
          stats: this.ioStats.get(v.name),
          admission: c.admission.counters(v.name),
          allocatedBytes: c.allocatedBytes(v.id),
          connections: c.connections(v.name),
        })),
      allStats: () => this.ioStats.values(),
      admission: () => c.admission.load,
      groups: () => this.labelledVolumes().flatMap((v) => this.groupView(v) ?? []),
      groupRoles: () =>
        count(
          c.hostedVolumes().flatMap((id) => c.groups.status(id) ?? []),
          (s) => roleNames[s.role],
        ),
      nodesByHealth: () => ({ up: 0, down: 0, ...count([...c.catalog().nodes.values()], (n) => (c.isUp(n.id) ? "up" : "down")) }),
      volumesByState: () => ({ online: 0, damaged: 0, ...count(c.catalog().volumes.values(), (v) => c.volumeState(v)) }),
    };
  }
}
