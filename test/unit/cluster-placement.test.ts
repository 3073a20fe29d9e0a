// Placement (src/cluster/placement.ts): distinct healthy nodes, most
// unpromised space first, ties by id, zones required or preferred, explicit
// node lists checked, and the messages a user sees when it cannot be done.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Prng } from "../../src/base/prng.js";
import { place, roomBytes, type PlacementNode, type PlacementRequest } from "../../src/cluster/placement.js";
import { volumeReplicasMax } from "../../src/constants.js";

const GiB = 1024 ** 3;

function node(id: number, over: Partial<PlacementNode> = {}): PlacementNode {
  return { id, name: `n${id}`, up: true, draining: false, capacityBytes: 100 * GiB, promisedBytes: 0, ...over };
}

function req(over: Partial<PlacementRequest> = {}): PlacementRequest {
  return { volume: "db", sizeBytes: GiB, repl: 3, ...over };
}

function ok(r: ReturnType<typeof place>): number[] {
  if ("error" in r) throw new Error(`expected a placement, got: ${r.error}`);
  return r.nodes;
}

function err(r: ReturnType<typeof place>): string {
  if (!("error" in r)) throw new Error(`expected an error, got nodes ${r.nodes.join(",")}`);
  return r.error;
}

test("too few nodes up: the exact message, with the count and what to do", () => {
  const nodes = [node(1), node(2), node(3, { up: false })];
  assert.is(err(place(nodes, req())), 'volume "db" needs 3 replicas but only 2 nodes are up; add a node or use --repl 2');
  assert.is(err(place([node(1)], req({ repl: 2 }))), 'volume "db" needs 2 replicas but only 1 node is up; add a node or use --repl 1');
  assert.is(err(place([node(1, { up: false })], req({ repl: 1 }))), 'volume "db" needs 1 replica but no node is up; add a node or bring one back up');
  assert.is(err(place([], req({ repl: 1 }))), 'volume "db" needs 1 replica but no node is up; add a node or bring one back up');
});

test("draining nodes are not chosen, and the message names them", () => {
  const nodes = [node(1), node(2, { draining: true }), node(3), node(4)];
  assert.equal(ok(place(nodes, req())), [1, 3, 4]);
  const two = [node(1), node(2, { draining: true }), node(3)];
  assert.is(
    err(place(two, req())),
    'volume "db" needs 3 replicas but only 2 of the 3 nodes that are up are not draining (draining: 2); undrain a node, add one or use --repl 2',
  );
  assert.is(
    err(place([node(1, { draining: true })], req({ repl: 1 }))),
    'volume "db" needs 1 replica but only 0 of the 1 nodes that are up are not draining (draining: 1); undrain a node or add one',
  );
});

test("down nodes are never chosen even with the most space", () => {
  const nodes = [node(1, { up: false, capacityBytes: 1000 * GiB }), node(2), node(3), node(4)];
  assert.equal(ok(place(nodes, req())), [2, 3, 4]);
});

test("most unpromised space first, ties by lower id", () => {
  const nodes = [node(5), node(4, { promisedBytes: 10 * GiB }), node(3, { capacityBytes: 200 * GiB }), node(2), node(1, { promisedBytes: 1 })];
  assert.equal(ok(place(nodes, req())), [3, 2, 5]);
  assert.equal(ok(place(nodes, req({ repl: 5 }))), [3, 2, 5, 1, 4]);
});

test("order comes from capacity minus promised bytes, not from the input order", () => {
  const a = [node(1), node(2), node(3), node(4)];
  const b = [...a].reverse();
  assert.equal(ok(place(a, req({ repl: 2 }))), ok(place(b, req({ repl: 2 }))));
  assert.equal(ok(place(a, req({ repl: 2 }))), [1, 2]);
});

test("promised bytes steer consecutive placements onto different nodes", () => {
  const nodes = [node(1), node(2), node(3), node(4)];
  const first = ok(place(nodes, req({ repl: 2, sizeBytes: 10 * GiB })));
  for (const id of first) nodes.find((n) => n.id === id)!.promisedBytes += 10 * GiB;
  const second = ok(place(nodes, req({ repl: 2, sizeBytes: 10 * GiB })));
  assert.equal(first, [1, 2]);
  assert.equal(second, [3, 4]);
});

test("a node without room for the volume is skipped; none with room says how much there is", () => {
  const nodes = [node(1, { promisedBytes: 95 * GiB }), node(2), node(3), node(4)];
  assert.equal(ok(place(nodes, req({ sizeBytes: 10 * GiB }))), [2, 3, 4]);
  const full = [node(1, { promisedBytes: 95 * GiB }), node(2), node(3)];
  assert.is(
    err(place(full, req({ sizeBytes: 10 * GiB }))),
    'volume "db" needs 3 replicas of 10.0 GiB but only 2 nodes have 10.0 GiB unpromised (the most any node has is 100 GiB on node 2); add capacity, make the volume smaller, use --repl 2 or raise the setting overcommitPercent',
  );
  assert.is(
    err(place([node(1, { capacityBytes: GiB })], req({ repl: 1, sizeBytes: 2 * GiB }))),
    'volume "db" needs 1 replica of 2.00 GiB but no node has 2.00 GiB unpromised (the most any node has is 1.00 GiB on node 1); add capacity, make the volume smaller or raise the setting overcommitPercent',
  );
});

test("overcommitPercent lets promised bytes pass capacity, by exactly that ratio", () => {
  const n = node(1, { capacityBytes: 100 * GiB, promisedBytes: 100 * GiB });
  assert.is(roomBytes(n), 0);
  assert.is(roomBytes(n, 150), 50 * GiB);
  assert.ok("error" in place([n], req({ repl: 1, sizeBytes: GiB })));
  assert.equal(ok(place([n], req({ repl: 1, sizeBytes: 50 * GiB, overcommitPercent: 150 }))), [1]);
  assert.ok("error" in place([n], req({ repl: 1, sizeBytes: 50 * GiB + 1, overcommitPercent: 150 })));
});

test("a zero-byte request fits a full node; a node whose capacity shrank below its promises has none", () => {
  assert.equal(ok(place([node(1, { promisedBytes: 100 * GiB })], req({ repl: 1, sizeBytes: 0 }))), [1]);
  assert.is(roomBytes(node(1, { capacityBytes: GiB, promisedBytes: 2 * GiB })), -GiB);
});

test("zones required: one replica per zone, the best node of each, best zones first", () => {
  const nodes = [
    node(1, { zone: "a" }),
    node(2, { zone: "a", capacityBytes: 300 * GiB }),
    node(3, { zone: "b" }),
    node(4, { zone: "b", promisedBytes: GiB }),
    node(5, { zone: "c", capacityBytes: 150 * GiB }),
    node(6),
  ];
  assert.equal(ok(place(nodes, req({ zones: true }))), [2, 5, 3]);
});

test("zones required: too few zones and no labels give messages that say so", () => {
  const nodes = [node(1, { zone: "a" }), node(2, { zone: "a" }), node(3, { zone: "b" }), node(4)];
  assert.is(
    err(place(nodes, req({ zones: true }))),
    'volume "db" needs 3 replicas in distinct zones but the nodes that can take it span only 2 zones (a, b); add a node in another zone, drop --zones or use --repl 2',
  );
  assert.is(
    err(place([node(1), node(2), node(3)], req({ zones: true }))),
    'volume "db" needs 3 replicas in distinct zones but no node that can take it has a zone label; label nodes with a zone or drop --zones',
  );
  // A zone whose only node is draining does not count.
  const drained = [node(1, { zone: "a" }), node(2, { zone: "b" }), node(3, { zone: "c", draining: true }), node(4, { zone: "a" })];
  assert.match(err(place(drained, req({ zones: true }))), "span only 2 zones (a, b)");
});

test("zones preferred when labelled: distinct zones beat free space, then racks, then the rest", () => {
  const nodes = [
    node(1, { zone: "a", rack: "r1", capacityBytes: 500 * GiB }),
    node(2, { zone: "a", rack: "r1", capacityBytes: 400 * GiB }),
    node(3, { zone: "a", rack: "r2", capacityBytes: 300 * GiB }),
    node(4, { zone: "b", rack: "r1" }),
  ];
  assert.equal(ok(place(nodes, req({ repl: 2 }))), [1, 4], "zone b despite less space");
  assert.equal(ok(place(nodes, req({ repl: 3 }))), [1, 4, 3], "then another rack");
  assert.equal(ok(place(nodes, req({ repl: 4 }))), [1, 4, 3, 2], "then the rest");
});

test("without labels placement is plain free-space order", () => {
  const nodes = [node(1), node(2, { capacityBytes: 120 * GiB }), node(3, { capacityBytes: 110 * GiB })];
  assert.equal(ok(place(nodes, req({ repl: 2 }))), [2, 3]);
});

test("explicit nodes are used as given when they qualify", () => {
  const nodes = [node(1), node(2), node(3), node(4)];
  assert.equal(ok(place(nodes, req({ nodes: [4, 1, 3] }))), [4, 1, 3]);
});

test("explicit nodes: count, unknown, duplicate, down, draining, room and zones are refused with the reason", () => {
  const nodes = [node(1, { zone: "a" }), node(2, { zone: "a" }), node(3, { up: false }), node(4, { draining: true }), node(5, { promisedBytes: 100 * GiB }), node(6)];
  assert.is(err(place(nodes, req({ nodes: [1, 2] }))), 'volume "db" needs 3 replicas but --nodes names 2 (1, 2); name 3 nodes or use --repl 2');
  assert.is(err(place(nodes, req({ nodes: [1, 9, 2] }))), 'volume "db": node 9 in --nodes is not in the cluster; pxd node list shows the nodes');
  assert.is(err(place(nodes, req({ nodes: [1, 2, 1] }))), 'volume "db": node 1 is named twice in --nodes; name each node once');
  assert.is(err(place(nodes, req({ nodes: [1, 2, 3] }))), 'volume "db": node 3 (n3) in --nodes is down; pick a node that is up or bring it back');
  assert.is(err(place(nodes, req({ nodes: [1, 2, 4] }))), 'volume "db": node 4 (n4) in --nodes is draining; pick another node or undrain it');
  assert.is(
    err(place(nodes, req({ nodes: [1, 2, 5] }))),
    'volume "db": node 5 (n5) in --nodes has 0 B unpromised and the volume needs 1.00 GiB; pick another node, add capacity or raise the setting overcommitPercent',
  );
  assert.is(
    err(place(nodes, req({ nodes: [1, 2], repl: 2, zones: true }))),
    'volume "db": nodes 1 and 2 in --nodes are both in zone "a" and --zones asks for distinct zones; pick nodes in different zones or drop --zones',
  );
  assert.is(
    err(place(nodes, req({ nodes: [1, 6], repl: 2, zones: true }))),
    'volume "db": node 6 (n6) in --nodes has no zone label and --zones asks for distinct zones; label it or drop --zones',
  );
});

test("names longer than the error's list limit are summarised", () => {
  const nodes = [1, 2, 3, 4, 5, 6, 7].map((id) => node(id, { draining: true }));
  nodes.push(node(8));
  assert.match(err(place(nodes, req({ repl: 2 }))), "(draining: 1, 2, 3, 4, 5 and 2 more)");
});

// Property test: random clusters and requests; every answer obeys the rules,
// and the same input in any order gives the same answer.
test("property: random clusters obey every placement rule (seeded)", () => {
  const seeds = 400;
  for (let seed = 1; seed <= seeds; seed++) {
    const rng = new Prng(seed);
    const count = rng.int(9);
    const zones = ["a", "b", "c"];
    const nodes: PlacementNode[] = [];
    for (let i = 0; i < count; i++) {
      const n = node(1 + rng.int(50) * 10 + i, {
        up: rng.chance(0.8),
        draining: rng.chance(0.15),
        capacityBytes: (1 + rng.int(8)) * 10 * GiB,
        promisedBytes: rng.int(6) * 10 * GiB,
      });
      if (rng.chance(0.7)) n.zone = zones[rng.int(zones.length)]!;
      nodes.push(n);
    }
    const r = req({ repl: 1 + rng.int(volumeReplicasMax), sizeBytes: (1 + rng.int(30)) * GiB, zones: rng.chance(0.3) });
    const got = place(nodes, r);
    const shuffled = [...nodes];
    for (let i = shuffled.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
    }
    assert.equal(place(shuffled, r), got, `seed ${seed}: input order does not matter`);
    const eligible = nodes.filter((n) => n.up && !n.draining && roomBytes(n) >= r.sizeBytes);
    if ("error" in got) {
      const zoneCount = new Set(eligible.flatMap((n) => (n.zone === undefined ? [] : [n.zone]))).size;
      assert.ok(eligible.length < r.repl || (r.zones === true && zoneCount < r.repl), `seed ${seed}: refused only when impossible: ${got.error}`);
      continue;
    }
    assert.is(got.nodes.length, r.repl, `seed ${seed}: repl replicas`);
    assert.is(new Set(got.nodes).size, r.repl, `seed ${seed}: distinct`);
    for (const id of got.nodes) assert.ok(eligible.some((n) => n.id === id), `seed ${seed}: node ${id} is up, not draining, with room`);
    const picked = got.nodes.map((id) => nodes.find((n) => n.id === id)!);
    if (r.zones === true) assert.is(new Set(picked.map((n) => n.zone)).size, r.repl, `seed ${seed}: distinct zones`);
    // Zone spreading is maximal: as many distinct zones as repl and the labels allow.
    const zoneKeys = new Set(eligible.map((n) => n.zone ?? ""));
    assert.is(new Set(picked.map((n) => n.zone ?? "")).size, Math.min(r.repl, zoneKeys.size), `seed ${seed}: zones spread`);
    if (r.zones !== true && zoneKeys.size === 1) {
      const best = [...eligible].sort((a, b) => b.capacityBytes - b.promisedBytes - (a.capacityBytes - a.promisedBytes) || a.id - b.id);
      assert.equal(got.nodes, best.slice(0, r.repl).map((n) => n.id), `seed ${seed}: free-space order`);
    }
  }
});

test.run();
