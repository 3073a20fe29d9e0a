// The cluster events a node derives from what it sees a second apart, and
// the ring that keeps the latest eventsMax of them.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { EventRing, eventsMax, viewChanges, type ClusterView } from "../../src/daemon/events.js";

function view(nodes: [number, string, boolean][], volumes: [string, number[], number][]): ClusterView {
  return {
    nodes: new Map(nodes.map(([id, name, up]) => [id, { name, up }])),
    volumes: new Map(volumes.map(([v, ns, leader]) => [v, { nodes: ns, leader }])),
  };
}

const three: [number, string, boolean][] = [[1, "n1", true], [2, "n2", true], [3, "n3", true]];

test("a node going down and up, a volume created, its replica moved, its leader changed, then deleted", () => {
  const a = view(three, []);
  const b = view([[1, "n1", true], [2, "n2", false], [3, "n3", true]], [["db", [1, 2], 1]]);
  assert.equal(viewChanges(a, b).map((e) => e.kind), ["node-down", "volume-created"]);
  assert.is(viewChanges(a, b)[1]!.message, "volume db was created, replicas on n1, n2");
  const c = view([[1, "n1", true], [2, "n2", true], [3, "n3", true]], [["db", [1, 3], 3]]);
  const bc = viewChanges(b, c);
  assert.equal(bc.map((e) => e.kind), ["node-up", "replica-moved", "leader-changed"]);
  assert.is(bc[1]!.message, "volume db: replica moved from n2 to n3");
  assert.is(bc[2]!.message, "volume db: n3 leads (was n1)");
  assert.equal(viewChanges(c, view(three, [["db", [1, 3], 0]])), [], "a leader this node no longer knows is no event");
  assert.equal(viewChanges(c, view(three, [])).map((e) => e.kind), ["volume-deleted"]);
  assert.equal(viewChanges(view(three, []), view([...three, [4, "n4", true]], [])).map((e) => e.message), ["node n4 joined the cluster"]);
});

test("the ring starts from its first view, numbers events, answers since a number and keeps eventsMax", () => {
  const r = new EventRing();
  r.observe(view(three, []), 0);
  assert.equal(r.since(0), [], "the first view is the baseline");
  let up = true;
  for (let i = 1; i <= eventsMax + 10; i++) {
    up = !up;
    r.observe(view([[1, "n1", true], [2, "n2", up]], []), i * 1000);
  }
  const all = r.since(0);
  assert.is(all.length, eventsMax);
  assert.is(all.at(-1)!.seq, eventsMax + 11, "one for n3's removal, then one per turn");
  assert.is(r.since(all.at(-1)!.seq - 2).length, 2);
  assert.is(all.at(-1)!.at, new Date((eventsMax + 10) * 1000).toISOString());
});

test.run();
