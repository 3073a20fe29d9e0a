// /metrics of a real three-node cluster under writes, parsed with an
// independent Prometheus parser: the series the Grafana dashboard queries
// are there with the right types, the node the client writes through counts
// exactly what it was sent, the volume's Raft group is reported by each of its
// replicas with one leader, and a deleted volume's series go away.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { runOk } from "../helpers/run.js";
import { dashboardMetrics, parsePrometheus, type ParsedFamily } from "../helpers/prometheus.js";

let c: Cluster;

test.before(async () => {
  c = await startCluster(3);
});

test.after(async () => {
  await c.dispose();
});

type Scrape = Map<string, ParsedFamily>;

async function scrape(i: number): Promise<Scrape> {
  return parsePrometheus(await c.nodes[i]!.api.metrics());
}

/** The value of the sample of `family` whose labels include `labels`. */
function value(s: Scrape, family: string, labels: Record<string, string> = {}): number | undefined {
  const m = s.get(family)?.metrics.find((x) => Object.entries(labels).every(([k, v]) => x.labels?.[k] === v));
  return m === undefined ? undefined : Number(m.value ?? m.count);
}

const writes = 24;
const writeBytes = 64 * 1024;

test("the dashboard's series are on every node with their types, and the serving node counts each write", async () => {
  await c.nodes[0]!.api.createVolume({ name: "m3", sizeBytes: 64 * 1024 * 1024, repl: 3 });
  const commands: string[] = [];
  for (let i = 0; i < writes; i++) commands.push("-c", `write -P ${0x40 + i} ${i * writeBytes} ${writeBytes}`);
  commands.push("-c", `read -P 0x40 0 ${writeBytes}`);
  await runOk("qemu-io", ["-f", "raw", c.nodes[1]!.uri("m3"), ...commands]);

  const scrapes = await Promise.all(c.nodes.map((_, i) => scrape(i)));
  const kinds: Record<string, ParsedFamily["type"]> = {};
  for (const s of scrapes) for (const f of s.values()) kinds[f.name] = f.type;
  for (const name of dashboardMetrics()) {
    const type = kinds[name];
    assert.ok(type !== undefined, `${name}, which the dashboard queries, is in a node's /metrics`);
    const want = name.endsWith("_total") ? "COUNTER" : /_seconds$/.test(name) ? "HISTOGRAM" : "GAUGE";
    assert.is(type, want, `${name} is a ${want.toLowerCase()}`);
  }

  const serving = scrapes[1]!;
  assert.is(value(serving, "pxd_volume_requests_total", { volume: "m3", op: "write" }), writes);
  assert.is(value(serving, "pxd_volume_written_bytes_total", { volume: "m3" }), writes * writeBytes);
  assert.is(value(serving, "pxd_volume_requests_total", { volume: "m3", op: "read" }), 1);
  assert.is(value(serving, "pxd_volume_read_bytes_total", { volume: "m3" }), writeBytes);
  assert.is(value(serving, "pxd_volume_in_flight_requests", { volume: "m3" }), 0);
  const h = serving.get("pxd_volume_request_duration_seconds")!.metrics.find((m) => m.labels?.["volume"] === "m3" && m.labels["op"] === "write")!;
  assert.is(Number(h.count), writes);
  assert.is(Number(h.buckets!["+Inf"]), writes);
  assert.ok(Number(h.sum) > 0, "writes took time");
  for (const i of [0, 2]) assert.is(value(scrapes[i]!, "pxd_volume_requests_total", { volume: "m3", op: "write" }), undefined, `node ${i} served no I/O of m3`);

  // Each replica reports the group; exactly one leads, and it sees both followers' lag.
  const roles = scrapes.map((s) => s.get("pxd_raft_group_role")?.metrics.find((m) => m.labels?.["volume"] === "m3")?.labels?.["role"]);
  assert.is(roles.filter((r) => r === "leader").length, 1, `roles ${roles.join(", ")}`);
  assert.is(roles.filter((r) => r === "follower").length, 2, `roles ${roles.join(", ")}`);
  const leader = scrapes[roles.indexOf("leader")]!;
  assert.is(leader.get("pxd_raft_group_member_lag_entries")!.metrics.filter((m) => m.labels?.["volume"] === "m3").length, 2);
  assert.ok(value(leader, "pxd_raft_group_commit_index", { volume: "m3" })! >= writes, "every write is a committed entry");
  for (const s of scrapes) {
    assert.is(value(s, "pxd_cluster_nodes", { health: "up" }), 3);
    assert.is(value(s, "pxd_cluster_volumes", { state: "online" }), 1);
    assert.ok(value(s, "pxd_store_group_commits_total")! > 0);
    assert.ok(Number(s.get("pxd_event_loop_delay_seconds")!.metrics[0]!.count) > 0, "the event loop's delay is sampled");
    assert.ok((s.get("pxd_peer_sent_bytes_total")?.metrics.length ?? 0) === 2, "traffic to each of the two peers");
  }
});

test("a deleted volume's series leave /metrics", async () => {
  await c.nodes[0]!.api.deleteVolume("m3");
  await waitUntil("m3's series to leave every node's /metrics", async () => {
    for (const i of [0, 1, 2]) if ((await c.nodes[i]!.api.metrics()).includes('volume="m3"')) return false;
    return true;
  });
});

test.run();
