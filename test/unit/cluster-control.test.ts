// The cluster's control loops as pure decisions (src/cluster/control.ts):
// failure detection, re-replication, replica reconcile, the catalog's learner
// promotion, admission of a joining node, and the monotonic durations they
// are measured with. Tables of cases: (catalog, observation, elapsed) in,
// one command or change out.

import { test } from "uvu";
import * as assert from "uvu/assert";
import {
  admitNode,
  applyCommand,
  attachmentLeader,
  Durations,
  healthChange,
  leaveDecision,
  metaLearnerToPromote,
  newCatalogState,
  nextMemberChange,
  replicaReplacements,
  autoSnapshotName,
  snapshotSchedule,
  type CatalogCommand,
  type CatalogState,
  type GroupView,
} from "../../src/cluster/index.js";

const GiB = 1024 ** 3;
const downAfterMs = 5000;
const replaceAfterMs = 600_000;

function must(s: CatalogState, c: CatalogCommand): void {
  const r = applyCommand(s, c, s.appliedIndex + 1);
  if (!r.ok) throw new Error(`${c.kind} refused: ${r.error}`);
}

/** Nodes 1..n (zones z1..zn when `zoned`), each with 100 GiB, and volumes as [name, replica nodes]. */
function catalogOf(n: number, volumes: [string, number[]][] = [], zoned = false): CatalogState {
  const s = newCatalogState();
  for (let id = 1; id <= n; id++) {
    must(s, { kind: "addNode", id, name: `n${id}`, address: `127.0.0.${10 + id}`, nbdPort: 10809, apiPort: 9001, peerPort: 9002, capacityBytes: 100 * GiB, labels: zoned ? { zone: `z${id}` } : {}, at: 1 });
  }
  for (const [name, nodes] of volumes) must(s, { kind: "createVolume", name, sizeBytes: GiB, repl: nodes.length, nodes, at: 1 });
  return s;
}

function markDown(s: CatalogState, ...ids: number[]): CatalogState {
  for (const id of ids) must(s, { kind: "updateNode", id, health: "down", at: 2 });
  return s;
}

// ---- snapshot schedules ----

test("snapshot schedules: a volume is due once its interval has passed on the leader's clock; the oldest scheduled snapshots past keep go, hand-taken ones never", () => {
  const s = catalogOf(1, [["a", [1]], ["b", [1]], ["c", [1]]]);
  must(s, { kind: "setSnapshotSchedule", name: "a", everyMs: 3_600_000, keep: 2 });
  must(s, { kind: "setSnapshotSchedule", name: "b", everyMs: 60_000, keep: 1 });
  let id = 1;
  const add = (volume: string, name: string): void => must(s, { kind: "addSnapshot", name: volume, snapshot: name, id: id++, sizeBytes: GiB, at: 1 });
  add("a", "auto-20261206-100000");
  add("a", "by-hand");
  add("a", "auto-20261206-110000");
  add("b", "auto-20261206-110000");
  add("c", "auto-20261206-110000"); // no schedule: never dropped
  const cases: [Map<string, number>, ReturnType<typeof snapshotSchedule>][] = [
    [new Map([["a", 3_599_999], ["b", 59_999]]), { take: [], drop: [] }],
    [new Map([["a", 3_600_000], ["b", 0]]), { take: ["a"], drop: [{ volume: "a", snapshot: "auto-20261206-100000" }] }],
    [new Map([["a", 0], ["b", 60_000], ["c", 10 ** 9]]), { take: ["b"], drop: [{ volume: "b", snapshot: "auto-20261206-110000" }] }],
    [new Map(), { take: [], drop: [] }],
  ];
  for (const [elapsed, want] of cases) assert.equal(snapshotSchedule(s, elapsed), want, JSON.stringify([...elapsed]));
  // keep lowered below what is there: the excess goes at the next pass, oldest first.
  must(s, { kind: "setSnapshotSchedule", name: "a", everyMs: 3_600_000, keep: 1 });
  assert.equal(snapshotSchedule(s, new Map()).drop, [{ volume: "a", snapshot: "auto-20261206-100000" }]);
  assert.is(autoSnapshotName(Date.UTC(2026, 11, 6, 19, 45, 7)), "auto-20261206-194507");
});

// ---- Durations ----

test("durations: measured from when a key entered the condition, on the caller's clock; leaving it starts again from zero", () => {
  const d = new Durations<number>();
  assert.equal([...d.observe([1, 2], 100)], [[1, 0], [2, 0]]);
  assert.equal([...d.observe([1, 2], 350)], [[1, 250], [2, 250]]);
  assert.equal([...d.observe([2], 400)], [[2, 300]]);
  assert.equal([...d.observe([1, 2], 1000)], [[1, 0], [2, 900]]);
  d.clear();
  assert.equal([...d.observe([2], 2000)], [[2, 0]]);
});

test("durations: a clock going back is an assertion failure, not a negative duration", () => {
  const d = new Durations<string>();
  d.observe(["a"], 100);
  assert.throws(() => d.observe(["a"], 99), /monotonic/);
});

// ---- failure detection ----

test("failure detection: a table of (catalog health, unreachable for) -> command", () => {
  const cases: { name: string; down: number[]; unreachable: [number, number][]; want: { id: number; health: string } | undefined }[] = [
    { name: "all reachable and up: nothing", down: [], unreachable: [], want: undefined },
    { name: "unreachable below the threshold: nothing yet", down: [], unreachable: [[2, downAfterMs - 1]], want: undefined },
    { name: "unreachable for the threshold: marked down", down: [], unreachable: [[2, downAfterMs]], want: { id: 2, health: "down" } },
    { name: "marked down and still unreachable: nothing", down: [2], unreachable: [[2, 3 * downAfterMs]], want: undefined },
    { name: "marked down and briefly unreachable again (not long enough to say): stays down", down: [2], unreachable: [[2, 10]], want: undefined },
    { name: "marked down and reachable again: marked up", down: [2], unreachable: [], want: { id: 2, health: "up" } },
    { name: "two to change: one at a time, the first in catalog order", down: [], unreachable: [[3, downAfterMs], [2, downAfterMs]], want: { id: 2, health: "down" } },
    { name: "the deciding node itself is never marked down", down: [], unreachable: [[1, 10 * downAfterMs]], want: undefined },
  ];
  for (const c of cases) {
    const s = markDown(catalogOf(3), ...c.down);
    const got = healthChange(s, 1, new Map(c.unreachable), downAfterMs, 42);
    assert.equal(got === undefined ? undefined : { id: got.id, health: got.health }, c.want, c.name);
    if (got !== undefined) assert.is(got.at, 42, `${c.name}: the wall time is only recorded`);
  }
});

// ---- re-replication ----

test("re-replication: a replica on a node down for the replace delay moves to a node placement picks, guarded by expect", () => {
  const s = markDown(catalogOf(4, [["a", [1, 2, 3]]]), 3);
  assert.equal(replicaReplacements(s, new Map([[3, replaceAfterMs - 1]]), replaceAfterMs), [], "not yet");
  const [d, ...rest] = replicaReplacements(s, new Map([[3, replaceAfterMs]]), replaceAfterMs);
  assert.is(rest.length, 0);
  assert.is(d?.kind, "move");
  if (d?.kind !== "move") return;
  assert.equal(d.command, { kind: "setReplicas", name: "a", nodes: [1, 2, 4], expect: [1, 2, 3] });
  must(s, d.command);
  assert.equal(s.volumes.get("a")!.nodes, [1, 2, 4]);
});

test("re-replication: elapsed time is the deciding node's own: a node the catalog says is up is never replaced, whatever the duration says", () => {
  const s = catalogOf(4, [["a", [1, 2, 3]]]);
  assert.equal(replicaReplacements(s, new Map([[3, 10 * replaceAfterMs]]), replaceAfterMs), []);
});

test("re-replication: disabled with a delay of 0", () => {
  const s = markDown(catalogOf(4, [["a", [1, 2, 3]]]), 3);
  assert.equal(replicaReplacements(s, new Map([[3, 10 * replaceAfterMs]]), 0), []);
});

test("re-replication: a volume whose replica has nowhere to go is reported, and the next volume still moves", () => {
  // "a" is on every node, so its replica on 3 has nowhere to go; "b" can move to 2 or 4.
  const s = markDown(catalogOf(4, [["a", [1, 2, 3, 4]], ["b", [1, 3]]]), 3);
  const got = replicaReplacements(s, new Map([[3, replaceAfterMs]]), replaceAfterMs);
  assert.equal(got.map((d) => [d.kind, d.volume.name, d.from, d.reason]), [["unplaceable", "a", 3, "down"], ["move", "b", 3, "down"]]);
  const move = got[1]!;
  if (move.kind === "move") assert.equal(move.command.nodes, [1, 2]);
});

test("re-replication: a replica on a draining node moves at once, whatever the delay, and only while it drains", () => {
  const s = catalogOf(3, [["a", [1, 2]]]);
  must(s, { kind: "drainNode", id: 2 });
  for (const delay of [replaceAfterMs, 0]) {
    const [d, ...rest] = replicaReplacements(s, new Map(), delay);
    assert.is(rest.length, 0);
    assert.equal(d?.kind === "move" ? [d.from, d.reason, d.command] : d, [2, "draining", { kind: "setReplicas", name: "a", nodes: [1, 3], expect: [1, 2] }], `delay ${delay}`);
  }
  must(s, { kind: "drainNode", id: 2, draining: false });
  assert.equal(replicaReplacements(s, new Map(), replaceAfterMs), []);
});

test("re-replication: a volume with fewer replicas than its count (a node removed with force) gets one more", () => {
  const s = catalogOf(4, [["a", [1, 2, 3]]]);
  must(s, { kind: "removeNode", id: 3, force: true });
  const [d] = replicaReplacements(s, new Map(), 0);
  assert.equal(d?.kind === "move" ? [d.from, d.reason, d.command] : d, [undefined, "missing", { kind: "setReplicas", name: "a", nodes: [1, 2, 4], expect: [1, 2] }]);
  must(s, { kind: "removeNode", id: 4 });
  const [none] = replicaReplacements(s, new Map(), 0);
  assert.equal(none?.kind === "unplaceable" ? [none.from, none.reason] : none, [undefined, "missing"], "nowhere to put it: reported");
});

test("re-replication: one move at a time, even with several volumes on the dead node", () => {
  const s = markDown(catalogOf(4, [["a", [1, 3]], ["b", [2, 3]]]), 3);
  const got = replicaReplacements(s, new Map([[3, replaceAfterMs]]), replaceAfterMs);
  assert.equal(got.map((d) => [d.kind, d.volume.name]), [["move", "a"]]);
});

// ---- replica reconcile ----

function view(voters: number[], learners: number[], commit: number, progress: [number, number, boolean][]): GroupView {
  return { voters, learners, commit, progress: progress.map(([node, match, active]) => ({ node, match, active })) };
}

test("reconcile: a table of (catalog's replica set, group as its leader sees it) -> the next configuration change", () => {
  const caughtUp = 64;
  const cases: { name: string; wanted: number[]; g: GroupView; want: [string, number] | undefined }[] = [
    { name: "members are the replica set: nothing", wanted: [1, 2, 3], g: view([1, 2, 3], [], 100, []), want: undefined },
    { name: "a listed node missing: it joins as a learner", wanted: [1, 2, 4], g: view([1, 2, 3], [], 100, []), want: ["addLearner", 4] },
    { name: "a learner far behind is not promoted; the unlisted voter is removed meanwhile", wanted: [1, 2, 4], g: view([1, 2, 3], [4], 1000, [[4, 10, true]]), want: ["remove", 3] },
    { name: "a learner within the catch-up window and active: promoted first", wanted: [1, 2, 4], g: view([1, 2, 3], [4], 1000, [[4, 1000 - caughtUp, true]]), want: ["promote", 4] },
    { name: "a caught-up learner that is not active: not promoted", wanted: [1, 4], g: view([1], [4], 10, [[4, 10, false]]), want: undefined },
    { name: "a learner the catalog no longer lists: removed", wanted: [1, 2], g: view([1, 2], [5], 10, [[5, 10, true]]), want: ["remove", 5] },
    { name: "the leader itself unlisted: never removes itself (it hands leadership on)", wanted: [2, 3], g: view([1, 2, 3], [], 10, []), want: undefined },
  ];
  for (const c of cases) {
    const got = nextMemberChange(1, c.wanted, c.g, caughtUp);
    assert.equal(got === undefined ? undefined : [got.kind, got.node], c.want, c.name);
  }
});

test("leaving: the leader hands leadership to a listed voter; a follower keeps its replica while a leader may still need its vote to remove it", () => {
  const grace = 10_000;
  const g = (leader: number, voters: number[], learners: number[] = []) => ({ leader, voters, learners });
  const cases: { name: string; args: Parameters<typeof leaveDecision>; want: ReturnType<typeof leaveDecision> }[] = [
    { name: "leading: hand it to a listed voter", args: [1, [2, 3], g(1, [1, 2, 3]), 0, 0, grace], want: { kind: "transfer", to: 2 } },
    { name: "leading, no listed voter to hand to yet", args: [1, [4], g(1, [1, 2, 3]), 99_999, 0, grace], want: { kind: "wait" } },
    { name: "a follower within the grace period", args: [1, [2, 3], g(2, [1, 2, 3]), grace - 1, grace, grace], want: { kind: "wait" } },
    { name: "still a voter with a leader: the leader's removal may need this node's acknowledgement", args: [1, [2], g(2, [1, 2]), 99_999, 0, grace], want: { kind: "wait" } },
    { name: "still a voter, no leader for less than the grace period (an election)", args: [1, [2], g(0, [1, 2]), 99_999, grace - 1, grace], want: { kind: "wait" } },
    { name: "still a voter, no leader for the grace period: removed without hearing of it", args: [1, [2, 3], g(0, [1, 2, 3]), grace, grace, grace], want: { kind: "drop" } },
    { name: "no longer in the configuration it knows", args: [1, [2, 3], g(2, [2, 3]), grace, 0, grace], want: { kind: "drop" } },
    { name: "a learner is a member too", args: [1, [2, 3], g(2, [2, 3], [1]), grace, 0, grace], want: { kind: "wait" } },
  ];
  for (const c of cases) assert.equal(leaveDecision(...c.args), c.want, c.name);
});

test("leadership follows the host: a table of (attachments, group as its leader sees it) -> the node to hand leadership to", () => {
  const g = view([1, 2, 3], [], 100, [[2, 100, true], [3, 100, true]]);
  const attach = (s: CatalogState, host: string, node: string | undefined, readOnly = false): void =>
    must(s, { kind: "attachVolume", name: "db", host, via: "kernel", readOnly, device: "/dev/nbd0", ...(node !== undefined ? { node } : {}), at: 1 });
  const byName = (s: CatalogState) => (name: string) => [...s.nodes.values()].find((n) => n.name === name)?.id;
  const cases: { name: string; setup: (s: CatalogState) => void; g: GroupView; want: number | undefined }[] = [
    { name: "not attached: keep it", setup: () => {}, g, want: undefined },
    { name: "attached through replica n2, caught up: hand it to 2", setup: (s) => attach(s, "h1", "n2"), g, want: 2 },
    { name: "attached through this node: keep it", setup: (s) => attach(s, "h1", "n1"), g, want: undefined },
    { name: "attached through n4, which holds no replica: keep it", setup: (s) => attach(s, "h1", "n4"), g, want: undefined },
    { name: "the serving node is not known: keep it", setup: (s) => attach(s, "h1", undefined), g, want: undefined },
    { name: "read-only attachment: keep it", setup: (s) => attach(s, "h1", "n2", true), g, want: undefined },
    { name: "n2 behind the commit index: not yet", setup: (s) => attach(s, "h1", "n2"), g: view([1, 2, 3], [], 100, [[2, 99, true], [3, 100, true]]), want: undefined },
    { name: "n2 not connected: not yet", setup: (s) => attach(s, "h1", "n2"), g: view([1, 2, 3], [], 100, [[2, 100, false], [3, 100, true]]), want: undefined },
    { name: "n2 a learner: not yet", setup: (s) => attach(s, "h1", "n2"), g: view([1, 3], [2], 100, [[2, 100, true], [3, 100, true]]), want: undefined },
  ];
  for (const c of cases) {
    const s = catalogOf(4, [["db", [1, 2, 3]]]);
    c.setup(s);
    assert.is(attachmentLeader(1, s.volumes.get("db")!, byName(s), c.g), c.want, c.name);
  }
  const shared = catalogOf(3);
  must(shared, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 3, nodes: [1, 2, 3], shared: true, at: 1 });
  attach(shared, "h1", "n2");
  attach(shared, "h2", "n3");
  assert.is(attachmentLeader(1, shared.volumes.get("db")!, byName(shared), g), undefined, "two read-write hosts of a shared volume: keep it");
});

// ---- the catalog's own group ----

test("meta learners: promoted once caught up to the last index and active, while voters are fewer than the maximum", () => {
  assert.is(metaLearnerToPromote(view([1], [2], 0, [[1, 50, true], [2, 50, true]]), 50, 5), 2);
  assert.is(metaLearnerToPromote(view([1], [2], 0, [[2, 49, true]]), 50, 5), undefined, "behind");
  assert.is(metaLearnerToPromote(view([1], [2], 0, [[2, 50, false]]), 50, 5), undefined, "not active");
  assert.is(metaLearnerToPromote(view([1, 3, 4, 5, 6], [2], 0, [[2, 50, true]]), 50, 5), undefined, "voters at the maximum");
  assert.is(metaLearnerToPromote(view([1, 2], [], 0, [[2, 50, true]]), 50, 5), undefined, "already a voter");
});

test("join: a valid request becomes one addNode command; an invalid one is refused with the catalog's sentence", () => {
  const fields = { id: 7, name: "n7", address: "127.0.0.17", nbdPort: 10809, apiPort: 9001, peerPort: 9002, capacityBytes: 100 * GiB, labels: {} };
  const ok = admitNode(fields, 123);
  assert.ok("command" in ok);
  if ("command" in ok) assert.equal(ok.command, { kind: "addNode", ...fields, at: 123 });
  const bad = admitNode({ ...fields, name: "" }, 123);
  assert.ok("error" in bad && bad.error.length > 0, JSON.stringify(bad));
  const badPort = admitNode({ ...fields, peerPort: 70000 }, 123);
  assert.ok("error" in badPort, JSON.stringify(badPort));
});

test.run();
