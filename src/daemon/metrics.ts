// /metrics: one prom-client Registry per daemon (never the library's global
// one: a test process may run several daemons), every metric filled lazily by
// a collect() callback from the plain counters the parts keep, so the request
// path never touches prom-client. Names follow Prometheus' conventions: the
// unit in the name, `_total` on counters, help on every metric. Every metric,
// its labels and the series bound are listed in docs/metrics.md; the Grafana
// dashboard (deploy/grafana/pxd-dashboard.json) uses only names registered here.

import { monitorEventLoopDelay, type IntervalHistogram } from "node:perf_hooks";
import { Counter, Gauge, Histogram, Registry, type LabelValues } from "prom-client";
import type { NbdStats } from "../nbd/server.js";
import type { PeerTransportStats } from "../replication/transport.js";
import type { AdmissionCounters } from "./qos.js";
import { latencyBucketsSec, opNames, type OpCounters, type VolumeStats } from "./volume-stats.js";

/** A Raft group as this node sees it (the driver's public status and, on the leader, progress). */
export interface GroupView {
  volume: string;
  role: string;
  term: number;
  commitIndex: number;
  appliedIndex: number;
  lastIndex: number;
  /** On the leader: each other member's entries behind the leader's last index. */
  memberLag?: { member: string; entries: number }[];
}

/** What the daemon shows /metrics; each read when Prometheus scrapes. */
export interface MetricsView {
  store(): Record<string, number>;
  nbd(): NbdStats | undefined;
  peers(): PeerTransportStats | undefined;
  snapshots(): Record<string, number>;
  repair(): Record<string, number>;
  scrub(): Record<string, number>;
  /** The volumes that carry per-volume series here (at most metricsVolumesMax), with their I/O counters if they had I/O here. */
  volumes(): { name: string; stats: VolumeStats | undefined; admission: AdmissionCounters | undefined; allocatedBytes: number | undefined; connections: number }[];
  /** Every volume's I/O counters on this node, labelled or not: the node's totals. */
  allStats(): Iterable<VolumeStats>;
  /** Volume requests running on this node and waiting for a slot (the fair share between volumes). */
  admission(): { inFlight: number; waiting: number };
  groups(): GroupView[];
  /** Every volume group on this node by role, labelled or not. */
  groupRoles(): Record<string, number>;
  /** The cluster as this node's catalog and connections see it. */
  nodesByHealth(): Record<string, number>;
  volumesByState(): Record<string, number>;
}

type Series = [LabelValues<string>, number][];

/** The store's stats (Store.stats()) as metrics: key, name, type, help. */
const storeMetrics: [string, string, "counter" | "gauge", string][] = [
  ["logBytesAppended", "pxd_store_log_appended_bytes_total", "counter", "Bytes appended to the segment log (records and headers)."],
  ["commits", "pxd_store_group_commits_total", "counter", "Group commits (one write and fdatasync for every record queued meanwhile)."],
  ["recordsCommitted", "pxd_store_records_committed_total", "counter", "Records made durable by group commits; divided by pxd_store_group_commits_total, records per commit."],
  ["segments", "pxd_store_segments", "gauge", "Segment files holding log records."],
  ["freeSegments", "pxd_store_free_segments", "gauge", "Preallocated segment files free for reuse."],
  ["diskBytes", "pxd_store_disk_bytes", "gauge", "Bytes of segment files on disk, used and free."],
  ["liveBytes", "pxd_store_live_bytes", "gauge", "Bytes of log records still referenced by a block map or a Raft log."],
  ["checkpoints", "pxd_store_checkpoints_total", "counter", "Block map checkpoints written."],
  ["gcSegments", "pxd_store_gc_segments_total", "counter", "Segments garbage collection emptied and freed."],
  ["gcBytesMoved", "pxd_store_gc_moved_bytes_total", "counter", "Live bytes garbage collection copied to the log head."],
  ["tornBytesZeroed", "pxd_store_torn_zeroed_bytes_total", "counter", "Bytes of a torn log tail zeroed at start."],
  ["recordsReplayed", "pxd_store_records_replayed_total", "counter", "Log records replayed at start after the last checkpoint."],
  ["snapshotsInstalled", "pxd_store_snapshots_installed_total", "counter", "Raft snapshots (volume copies) installed into this store."],
  ["checksumErrors", "pxd_store_checksum_errors_total", "counter", "Reads (and GC copies) that found a block failing its checksum."],
  ["blocksRepaired", "pxd_store_blocks_repaired_total", "counter", "Blocks rewritten from a good copy."],
  ["blocksPoisoned", "pxd_store_blocks_poisoned_total", "counter", "Blocks marked damaged with no good copy to rewrite them from."],
  ["damagedRecords", "pxd_store_damaged_records_total", "counter", "Acknowledged records recovery found damaged and worked around."],
];

const counterSets: [keyof Pick<MetricsView, "snapshots" | "repair" | "scrub">, string, string, string][] = [
  ["snapshots", "snapshotsStarted", "pxd_raft_snapshots_started_total", "Volume snapshots (copies to a replica behind the log) this node began sending."],
  ["snapshots", "snapshotsSent", "pxd_raft_snapshots_sent_total", "Volume snapshots sent whole and installed by the follower."],
  ["snapshots", "snapshotsFailed", "pxd_raft_snapshots_failed_total", "Volume snapshots given up (started over later)."],
  ["snapshots", "snapshotBytesSent", "pxd_raft_snapshot_sent_bytes_total", "Volume data bytes sent in snapshots."],
  ["snapshots", "snapshotDeltas", "pxd_raft_snapshot_deltas_total", "Snapshots sent as only the ranges changed since the follower left."],
  ["snapshots", "snapshotBytesKept", "pxd_raft_snapshot_kept_bytes_total", "Bytes a delta snapshot let the follower keep from its own copy."],
  ["repair", "blocksRepaired", "pxd_repair_blocks_repaired_total", "Damaged blocks repaired from a replica."],
  ["repair", "blocksUnrepaired", "pxd_repair_blocks_unrepaired_total", "Damaged blocks no replica could repair."],
  ["repair", "repairBytesFetched", "pxd_repair_fetched_bytes_total", "Bytes fetched from replicas to repair blocks."],
  ["repair", "repairRequestsServed", "pxd_repair_requests_served_total", "Repair requests this node answered for other nodes."],
  ["scrub", "scrubPasses", "pxd_scrub_passes_total", "Scrub passes over a volume replica finished."],
  ["scrub", "scrubBytes", "pxd_scrub_bytes_total", "Bytes the scrub read and checked."],
  ["scrub", "scrubBlocksDamaged", "pxd_scrub_blocks_damaged_total", "Blocks the scrub found failing their checksum."],
  ["scrub", "scrubBlocksRepaired", "pxd_scrub_blocks_repaired_total", "Blocks the scrub found damaged and repaired."],
  ["scrub", "scrubBlocksUnrepaired", "pxd_scrub_blocks_unrepaired_total", "Blocks the scrub found damaged and could not repair."],
];

/** Event-loop delay histogram bounds, seconds. */
const loopDelayBucketsSec: readonly number[] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1];
/** monitorEventLoopDelay's sampling interval. */
const loopDelayResolutionMs = 10;

/**
 * A histogram whose buckets live in plain counters (OpCounters, kept by the
 * request path) and are read only when scraped: prom-client's own observe()
 * looks labels up per call, too much for every NBD request.
 */
class CountersHistogram extends Histogram<string> {
  constructor(
    config: { name: string; help: string; labelNames: string[]; buckets: readonly number[]; registers: Registry[] },
    private readonly read: () => Iterable<{ labels: LabelValues<string>; counters: BucketCounts }>,
  ) {
    super({ ...config, buckets: [...config.buckets] });
  }

  override async get(): Promise<Awaited<ReturnType<Histogram<string>["get"]>>> {
    const out = await this.getForPromString();
    return out as unknown as Awaited<ReturnType<Histogram<string>["get"]>>;
  }

  /** What prom-client's Registry formats: a _bucket series per bound and +Inf, then _sum and _count, per label set. */
  async getForPromString(): Promise<{ name: string; help: string; type: string; aggregator: string; values: { metricName: string; labels: LabelValues<string>; value: number }[] }> {
    const values: { metricName: string; labels: LabelValues<string>; value: number }[] = [];
    // Fields prom-client's Metric sets from the configuration (not in its typings).
    const { name, help, upperBounds: bounds } = this as unknown as { name: string; help: string; upperBounds: number[] };
    for (const { labels, counters } of this.read()) {
      let acc = 0;
      bounds.forEach((le, i) => {
        acc += counters.buckets[i] ?? 0;
        values.push({ metricName: `${name}_bucket`, labels: { ...labels, le }, value: acc });
      });
      values.push({ metricName: `${name}_bucket`, labels: { ...labels, le: "+Inf" }, value: counters.count });
      values.push({ metricName: `${name}_sum`, labels, value: counters.sum });
      values.push({ metricName: `${name}_count`, labels, value: counters.count });
    }
    return { name, help, type: "histogram", aggregator: "sum", values };
  }
}

/** Counts per bucket (not cumulative), their total and sum. */
interface BucketCounts {
  buckets: ArrayLike<number>;
  count: number;
  sum: number;
}

function opCounts(c: OpCounters): BucketCounts {
  return { buckets: c.buckets, count: c.requests, sum: c.latencySumSec };
}

export class NodeMetrics {
  readonly registry = new Registry();
  private readonly loopDelay: IntervalHistogram;
  /** The view, each part read once per scrape however many metrics use it (every metric of one scrape sees the same moment). */
  private readonly view: MetricsView;
  private scrape = 0;

  constructor(view: MetricsView) {
    const memo = <T>(f: () => T): (() => T) => {
      let at = -1;
      let value: T;
      return () => {
        if (at !== this.scrape) {
          value = f();
          at = this.scrape;
        }
        return value;
      };
    };
    this.view = {
      store: memo(view.store),
      nbd: memo(view.nbd),
      peers: memo(view.peers),
      snapshots: memo(view.snapshots),
      repair: memo(view.repair),
      scrub: memo(view.scrub),
      volumes: memo(view.volumes),
      allStats: memo(() => [...view.allStats()]),
      admission: memo(view.admission),
      groups: memo(view.groups),
      groupRoles: memo(view.groupRoles),
      nodesByHealth: memo(view.nodesByHealth),
      volumesByState: memo(view.volumesByState),
    };
    this.loopDelay = monitorEventLoopDelay({ resolution: loopDelayResolutionMs });
    this.loopDelay.enable();
    this.nodeMetrics();
    this.volumeMetrics();
    this.raftMetrics();
    this.clusterMetrics();
  }

  /** The text exposition format (what GET /metrics answers). */
  text(): Promise<string> {
    this.scrape++;
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  close(): void {
    this.loopDelay.disable();
  }

  private counter(name: string, help: string, labelNames: string[], read: () => Series): void {
    this.lazy("counter", name, help, labelNames, read);
  }

  private gauge(name: string, help: string, labelNames: string[], read: () => Series): void {
    this.lazy("gauge", name, help, labelNames, read);
  }

  /** A counter or gauge whose samples are `read()` afresh at each scrape. */
  private lazy(kind: "counter" | "gauge", name: string, help: string, labelNames: string[], read: () => Series): void {
    const config = { name, help, labelNames, registers: [this.registry] };
    if (kind === "counter") {
      new Counter({ ...config, collect() { this.reset(); for (const [labels, v] of read()) this.inc(labels, v); } });
    } else {
      new Gauge({ ...config, collect() { this.reset(); for (const [labels, v] of read()) this.set(labels, v); } });
    }
  }

  private nodeMetrics(): void {
    const v = this.view;
    for (const [key, name, type, help] of storeMetrics) {
      const read = (): Series => [[{}, v.store()[key] ?? 0]];
      if (type === "counter") this.counter(name, help, [], read);
      else this.gauge(name, help, [], read);
    }
    for (const [set, key, name, help] of counterSets) this.counter(name, help, [], () => [[{}, v[set]()[key] ?? 0]]);
    const nbd = (k: keyof NbdStats): Series => {
      const s = v.nbd();
      return s === undefined ? [] : [[{}, s[k]]];
    };
    this.gauge("pxd_nbd_connections", "NBD connections open on this node.", [], () => nbd("connections"));
    this.gauge("pxd_nbd_held_bytes", "Bytes NBD connections hold against the node budget (requests and replies in flight).", [], () => nbd("heldBytes"));
    this.gauge("pxd_nbd_held_bytes_peak", "The most bytes NBD connections held against the node budget at once since start.", [], () => nbd("heldBytesPeak"));
    this.gauge("pxd_nbd_waiting_connections", "NBD connections waiting for room in the node budget.", [], () => nbd("waitingConnections"));
    this.counter("pxd_nbd_idle_evictions_total", "Idle NBD connections closed to make room for a new client.", [], () => nbd("idleEvictions"));
    this.counter("pxd_nbd_refused_connections_total", "NBD connections refused at a connection cap.", [], () => nbd("refusedConnections"));
    const peers = (f: (p: PeerTransportStats["peers"][number]) => number): Series => (v.peers()?.peers ?? []).map((p) => [{ peer: String(p.id) }, f(p)]);
    this.counter("pxd_peer_sent_bytes_total", "Bytes sent to each peer node.", ["peer"], () => peers((p) => p.bytesSent));
    this.counter("pxd_peer_received_bytes_total", "Bytes received from each peer node.", ["peer"], () => peers((p) => p.bytesReceived));
    this.counter("pxd_peer_sent_frames_total", "Frames sent to each peer node.", ["peer"], () => peers((p) => p.framesSent));
    this.counter("pxd_peer_received_frames_total", "Frames received from each peer node.", ["peer"], () => peers((p) => p.framesReceived));
    this.counter("pxd_peer_dropped_messages_total", "Messages to each peer dropped (queue full or the peer unreachable).", ["peer"], () => peers((p) => p.messagesDropped));
    this.gauge("pxd_peer_connected", "1 while this node has a connection to the peer.", ["peer"], () => peers((p) => (p.connected ? 1 : 0)));
    this.gauge("pxd_peer_queued_bytes", "Bytes queued for each peer.", ["peer"], () => peers((p) => p.queuedBytes));
    this.counter("pxd_peer_auth_failures_total", "Peer handshakes that failed (wrong secret, cluster or node id, malformed, timed out).", [], () => [[{}, v.peers()?.authFailures ?? 0]]);
    const loop = this.loopDelay;
    new CountersHistogram(
      { name: "pxd_event_loop_delay_seconds", help: "Event-loop delay (perf_hooks.monitorEventLoopDelay), cumulative since start: how long ready work waited for the loop.", labelNames: [], buckets: loopDelayBucketsSec, registers: [this.registry] },
      () => [{ labels: {}, counters: loopDelayCounts(loop) }],
    );
  }

  private volumeMetrics(): void {
    const v = this.view;
    const perOp = (f: (c: OpCounters) => number): (() => Series) => () =>
      v.volumes().flatMap(({ name, stats }) => (stats === undefined ? [] : stats.ops.map((c, op): [LabelValues<string>, number] => [{ volume: name, op: opNames[op]! }, f(c)])));
    this.counter("pxd_volume_requests_total", "NBD requests served for the volume through this node, by operation (read; write, trim and zeroing).", ["volume", "op"], perOp((c) => c.requests));
    this.counter("pxd_volume_request_errors_total", "NBD requests for the volume through this node that failed.", ["volume", "op"], perOp((c) => c.errors));
    this.counter("pxd_volume_read_bytes_total", "Bytes read from the volume through this node.", ["volume"], () =>
      v.volumes().flatMap(({ name, stats }) => (stats === undefined ? [] : [[{ volume: name }, stats.ops[0].bytes] as [LabelValues<string>, number]])),
    );
    this.counter("pxd_volume_written_bytes_total", "Bytes written to the volume through this node.", ["volume"], () =>
      v.volumes().flatMap(({ name, stats }) => (stats === undefined ? [] : [[{ volume: name }, stats.ops[1].bytes] as [LabelValues<string>, number]])),
    );
    this.gauge("pxd_volume_in_flight_requests", "NBD requests for the volume in flight on this node.", ["volume"], () =>
      v.volumes().flatMap(({ name, stats }) => (stats === undefined ? [] : [[{ volume: name }, stats.inFlight] as [LabelValues<string>, number]])),
    );
    new CountersHistogram(
      { name: "pxd_volume_request_duration_seconds", help: "Time from an NBD request's dispatch to its reply being ready, through this node.", labelNames: ["volume", "op"], buckets: latencyBucketsSec, registers: [this.registry] },
      () => v.volumes().flatMap(({ name, stats }) => (stats === undefined ? [] : stats.ops.map((c, op) => ({ labels: { volume: name, op: opNames[op]! }, counters: opCounts(c) })))),
    );
    this.gauge("pxd_volume_allocated_bytes", "Bytes of the volume this node's replica has allocated (written, not trimmed).", ["volume"], () =>
      v.volumes().flatMap(({ name, allocatedBytes }) => (allocatedBytes === undefined ? [] : [[{ volume: name }, allocatedBytes] as [LabelValues<string>, number]])),
    );
    this.gauge("pxd_volume_nbd_connections", "NBD connections to the volume on this node.", ["volume"], () => v.volumes().map(({ name, connections }) => [{ volume: name }, connections]));
    const total = (f: (c: OpCounters) => number): (() => Series) => () => {
      const sums = [0, 0];
      for (const s of v.allStats()) s.ops.forEach((c, op) => (sums[op]! += f(c)));
      return sums.map((n, op) => [{ op: opNames[op]! }, n]);
    };
    this.counter("pxd_node_volume_requests_total", "NBD requests for every volume through this node, labelled or not.", ["op"], total((c) => c.requests));
    this.counter("pxd_node_volume_bytes_total", "Bytes read and written for every volume through this node.", ["op"], total((c) => c.bytes));
    const admitted = (f: (a: AdmissionCounters) => number): (() => Series) => () =>
      v.volumes().flatMap(({ name, admission }) => (admission === undefined ? [] : [[{ volume: name }, f(admission)] as [LabelValues<string>, number]]));
    this.counter("pxd_volume_throttled_requests_total", "NBD requests for the volume through this node that waited for its QoS limits (--max-iops, --max-bandwidth).", ["volume"], admitted((a) => a.throttledRequests));
    this.counter("pxd_volume_throttle_wait_seconds_total", "Seconds NBD requests for the volume through this node waited for its QoS limits, summed.", ["volume"], admitted((a) => a.throttleWaitSec));
    this.gauge("pxd_node_io_in_flight_requests", "Volume requests running on this node (at most ioNodeRequestsInFlightMax; the rest wait for the fair share).", [], () => [[{}, v.admission().inFlight]]);
    this.gauge("pxd_node_io_waiting_requests", "Volume requests waiting on this node for a slot of the fair share between volumes.", [], () => [[{}, v.admission().waiting]]);
  }

  private raftMetrics(): void {
    const v = this.view;
    const per = (f: (g: GroupView) => number): (() => Series) => () => v.groups().map((g) => [{ volume: g.volume }, f(g)]);
    this.gauge("pxd_raft_group_role", "1 for this node's role in the volume's Raft group (follower, pre-candidate, candidate, leader).", ["volume", "role"], () => v.groups().map((g) => [{ volume: g.volume, role: g.role }, 1]));
    this.gauge("pxd_raft_group_term", "The group's current Raft term on this node.", ["volume"], per((g) => g.term));
    this.gauge("pxd_raft_group_commit_index", "The group's commit index on this node.", ["volume"], per((g) => g.commitIndex));
    this.gauge("pxd_raft_group_applied_index", "The group's applied index on this node.", ["volume"], per((g) => g.appliedIndex));
    this.gauge("pxd_raft_group_apply_lag_entries", "Committed entries not yet applied on this node.", ["volume"], per((g) => Math.max(0, g.commitIndex - g.appliedIndex)));
    this.gauge("pxd_raft_group_member_lag_entries", "On the group's leader: entries each other member is behind the leader's last index.", ["volume", "member"], () =>
      v.groups().flatMap((g) => (g.memberLag ?? []).map((m): [LabelValues<string>, number] => [{ volume: g.volume, member: m.member }, m.entries])),
    );
    this.gauge("pxd_raft_groups", "Volume Raft groups on this node by role, labelled or not.", ["role"], () => Object.entries(v.groupRoles()).map(([role, n]) => [{ role }, n]));
  }

  private clusterMetrics(): void {
    const v = this.view;
    this.gauge("pxd_cluster_nodes", "Nodes of the cluster's catalog by health as this node sees them (up: connected).", ["health"], () => Object.entries(v.nodesByHealth()).map(([health, n]) => [{ health }, n]));
    this.gauge("pxd_cluster_volumes", "Volumes in the cluster's catalog by state as this node sees them.", ["state"], () => Object.entries(v.volumesByState()).map(([state, n]) => [{ state }, n]));
  }
}

/** monitorEventLoopDelay keeps a full HDR histogram in nanoseconds; it is read into the few buckets above when scraped. */
function loopDelayCounts(h: IntervalHistogram): BucketCounts {
  const buckets = new Array<number>(loopDelayBucketsSec.length).fill(0);
  let below = 0;
  const count = h.count;
  // percentiles: a map of percentile -> value (ns), ascending; the share of samples at or below each bound.
  loopDelayBucketsSec.forEach((le, i) => {
    let share = 0;
    for (const [p, ns] of h.percentiles) if (ns / 1e9 <= le) share = p;
    const atOrBelow = Math.round((share / 100) * count);
    buckets[i] = Math.max(0, atOrBelow - below);
    below += buckets[i]!;
  });
  return { buckets, count, sum: count > 0 ? (h.mean * count) / 1e9 : 0 };
}
