// /metrics without a cluster: the names the Grafana dashboard queries are
// registered, every family has help and a type, counters end in _total, the
// text parses with an independent parser, and the per-volume I/O counters
// (histogram buckets, the console's sample ring) count what they are told.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { NodeMetrics, type MetricsView } from "../../src/daemon/metrics.js";
import { latencyBucketsSec, metricsSeriesPerVolumeMax, opRead, opWrite, VolumeStats, volumeSamplesMax } from "../../src/daemon/volume-stats.js";
import { dashboardMetrics, parsePrometheus } from "../helpers/prometheus.js";

function viewOf(stats: VolumeStats[]): MetricsView {
  return {
    store: () => ({ commits: 3, logBytesAppended: 4096 }),
    nbd: () => undefined,
    peers: () => undefined,
    snapshots: () => ({}),
    repair: () => ({}),
    scrub: () => ({}),
    volumes: () => stats.map((s) => ({ name: s.name, stats: s, admission: { throttledRequests: 2, throttleWaitSec: 0.5, queuedRequests: 0, queueWaitSec: 0 }, allocatedBytes: 0, connections: 1 })),
    allStats: () => stats,
    admission: () => ({ inFlight: 1, waiting: 0 }),
    groups: () => [{ volume: "db", role: "leader", term: 2, commitIndex: 10, appliedIndex: 9, lastIndex: 10, memberLag: [{ member: "n2", entries: 1 }] }],
    groupRoles: () => ({ leader: 1 }),
    nodesByHealth: () => ({ up: 3, down: 0 }),
    volumesByState: () => ({ online: 1, damaged: 0 }),
  };
}

test("every metric the Grafana dashboard queries is registered, with help, and counters end in _total", () => {
  const m = new NodeMetrics(viewOf([]));
  try {
    const registered = new Map(m.registry.getMetricsAsArray().map((x) => [(x as unknown as { name: string }).name, x as unknown as { help: string; type: string }]));
    const used = dashboardMetrics();
    assert.ok(used.size >= 15, `the dashboard queries ${used.size} metrics`);
    const missing = [...used].filter((n) => !registered.has(n));
    assert.equal(missing, [], `the dashboard queries metrics the code does not register: ${missing.join(", ")}`);
    for (const [name, x] of registered) {
      assert.ok(x.help.length > 10, `${name} has help`);
      assert.ok(/^pxd_[a-z0-9_]+$/.test(name), `${name} is snake case under pxd_`);
      if (x.type === "counter") assert.ok(name.endsWith("_total"), `counter ${name} ends in _total`);
      else assert.not.ok(name.endsWith("_total"), `${x.type} ${name} does not end in _total`);
    }
  } finally {
    m.close();
  }
});

test("a volume's requests land in its counters and latency histogram, and the text parses with its types", async () => {
  const s = new VolumeStats("db");
  s.done(opWrite, 4096, s.begin(0), 0.2, false); // 0.2 ms: the first bucket
  s.done(opWrite, 4096, s.begin(0), 3, false); // 3 ms: the 5 ms bucket
  s.done(opRead, 512, s.begin(0), 2000, true); // 2 s: above every bound
  assert.is(s.inFlight, 0);
  const m = new NodeMetrics(viewOf([s]));
  try {
    const fams = parsePrometheus(await m.text());
    const req = fams.get("pxd_volume_requests_total")!;
    assert.is(req.type, "COUNTER");
    const byOp = Object.fromEntries(req.metrics.map((x) => [x.labels!["op"], Number(x.value)]));
    assert.equal(byOp, { read: 1, write: 2 });
    assert.is(Number(fams.get("pxd_volume_written_bytes_total")!.metrics[0]!.value), 8192);
    assert.is(Number(fams.get("pxd_volume_request_errors_total")!.metrics.find((x) => x.labels!["op"] === "read")!.value), 1);
    const h = fams.get("pxd_volume_request_duration_seconds")!;
    assert.is(h.type, "HISTOGRAM");
    const w = h.metrics.find((x) => x.labels!["op"] === "write")!;
    assert.is(Object.keys(w.buckets!).length, latencyBucketsSec.length + 1);
    assert.is(Number(w.buckets!["0.0005"]), 1);
    assert.is(Number(w.buckets!["0.0025"]), 1);
    assert.is(Number(w.buckets!["0.005"]), 2);
    assert.is(Number(w.buckets!["+Inf"]), 2);
    assert.is(Number(w.count), 2);
    const r = h.metrics.find((x) => x.labels!["op"] === "read")!;
    assert.is(Number(r.buckets!["1"]), 0);
    assert.is(Number(r.buckets!["+Inf"]), 1);
    assert.is(fams.get("pxd_store_group_commits_total")!.type, "COUNTER");
    assert.is(fams.get("pxd_store_segments")!.type, "GAUGE");
    assert.is(Number(fams.get("pxd_raft_group_member_lag_entries")!.metrics[0]!.value), 1);
    assert.is(fams.get("pxd_event_loop_delay_seconds")!.type, "HISTOGRAM");
  } finally {
    m.close();
  }
});

test("a volume with everything (I/O here, a replica here, the leader of five) adds metricsSeriesPerVolumeMax series", async () => {
  const s = new VolumeStats("db");
  const view = viewOf([s]);
  const members = ["n2", "n3", "n4", "n5"].map((member) => ({ member, entries: 0 }));
  view.groups = () => [{ volume: "db", role: "leader", term: 2, commitIndex: 10, appliedIndex: 9, lastIndex: 10, memberLag: members }];
  const m = new NodeMetrics(view);
  try {
    const series = (await m.text()).split("\n").filter((l) => l.includes('volume="db"'));
    assert.is(series.length, metricsSeriesPerVolumeMax);
  } finally {
    m.close();
  }
});

test("the console's sample ring keeps the latest volumeSamplesMax seconds, oldest first", () => {
  const s = new VolumeStats("db");
  s.sample(0, 1000); // the baseline
  for (let i = 1; i <= volumeSamplesMax + 5; i++) {
    for (let k = 0; k < i; k++) s.done(opWrite, 4096, s.begin(0), 1, false);
    s.sample(i * 1000, 1000 + i * 1000);
  }
  const samples = s.samples();
  assert.is(samples.length, volumeSamplesMax);
  assert.is(samples[0]!.at, 6000);
  assert.is(samples[0]!.writeIops, 6);
  assert.is(samples.at(-1)!.writeIops, volumeSamplesMax + 5);
  assert.is(samples.at(-1)!.writeBytesPerSec, (volumeSamplesMax + 5) * 4096);
  assert.ok(Math.abs(samples.at(-1)!.writeLatencyMs - 1) < 1e-9);
  assert.is(s.idleSamples, 0);
  s.sample(999_000, 999_000);
  s.sample(1_000_000, 1_000_000);
  assert.is(s.idleSamples, 2, "seconds without a request count toward dropping the counters");
});

test.run();
