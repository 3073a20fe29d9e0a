// A resize cut short converges (docs/architecture.md, "Resize"): the leader of
// a volume's group whose group is larger than the catalog says asks the
// catalog to record its size, once it has seen that for catalogSizeBehindMs
// and at most that often; one whose group is smaller proposes the resize
// itself. ClusterNode's reconcile round on fakes of the driver and the store.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { applyCommand } from "../../src/cluster/catalog.js";
import { catalogSizeBehindMs, ClusterNode, type ClusterNodePorts } from "../../src/node/cluster-node.js";
import type { MultiRaft } from "../../src/replication/driver.js";
import { decodeOp, resizeBytesOf } from "../../src/replication/volume-op.js";
import type { Store } from "../../src/store/store.js";

const MiB = 1024 * 1024;

function setup(groupBytes: number) {
  let now = 0;
  const store = { size: groupBytes };
  const asked: [string, number][] = [];
  const proposed: number[] = [];
  let answer: Promise<void> = Promise.resolve();
  const driver = {
    hasGroup: () => true,
    leader: (id: number) => (id === 0 ? 0 : 1),
    voters: () => [1],
    learners: () => [],
    status: () => ({ commit: 5, lastIndex: 5 }),
    progress: () => [],
    propose: (_group: number, data: Uint8Array) => {
      proposed.push(resizeBytesOf(decodeOp(data)!));
      return Promise.resolve();
    },
  } as unknown as MultiRaft;
  const ports = {
    nodeId: 1,
    store: { hasGroup: () => true, sizeOf: () => store.size } as unknown as Store,
    driver,
    monotonicMs: () => now,
    wallMs: () => now,
    growCatalog: (name: string, sizeBytes: number) => {
      asked.push([name, sizeBytes]);
      return answer;
    },
    log: { info: () => {}, warn: () => {}, error: () => {} },
  } as unknown as ClusterNodePorts;
  const node = new ClusterNode(ports);
  const at = 1_700_000_000_000;
  const add = { kind: "addNode", id: 1, name: "n1", address: "127.0.0.11", nbdPort: 10809, apiPort: 9001, peerPort: 9002, capacityBytes: 1024 * MiB, labels: {}, at };
  assert.ok(applyCommand(node.catalog, add, 1).ok);
  assert.ok(applyCommand(node.catalog, { kind: "createVolume", name: "v", sizeBytes: 8 * MiB, repl: 1, at }, 2).ok);
  return {
    node,
    store,
    asked,
    proposed,
    advance: (ms: number) => (now += ms),
    refuse: () => (answer = Promise.reject(new Error("no room"))),
  };
}

const flush = (): Promise<void> => new Promise((r) => setImmediate(r));

test("a group larger than the catalog: its leader asks the catalog to record the size after catalogSizeBehindMs, then at most that often", async () => {
  const s = setup(16 * MiB);
  s.node.reconcileReplicas();
  s.advance(catalogSizeBehindMs - 1);
  s.node.reconcileReplicas();
  assert.equal(s.asked, [], "a resize under way (group first, then the catalog) is not mistaken for one cut short");
  s.advance(1);
  s.node.reconcileReplicas();
  assert.equal(s.asked, [["v", 16 * MiB]]);
  s.refuse();
  s.advance(500);
  s.node.reconcileReplicas();
  assert.is(s.asked.length, 1, "not again within catalogSizeBehindMs");
  s.advance(catalogSizeBehindMs);
  s.node.reconcileReplicas();
  await flush();
  assert.is(s.asked.length, 2, "asked again after a refusal");
  assert.equal(s.proposed, [], "the group is not resized");
});

test("a group smaller than the catalog: its leader proposes the resize, once while it is in flight", async () => {
  const s = setup(4 * MiB);
  s.node.reconcileReplicas();
  assert.equal(s.proposed, [8 * MiB]);
  s.store.size = 8 * MiB;
  await flush();
  s.node.reconcileReplicas();
  assert.equal(s.proposed, [8 * MiB], "the group has the size now");
  assert.equal(s.asked, []);
});

test.run();
