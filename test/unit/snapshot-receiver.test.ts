// The follower's side of a snapshot stream (src/replication/snapshot.ts) over
// a real store: once the core took a snap message, its staging group is what
// the next persist installs, so no chunk may restart it; a copy the core did
// not take is dropped, and so is an unfinished one when another node leads;
// a copy at or below the applied index is refused.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { MessageType, newMessage } from "../../src/raft/types.js";
import { SnapshotReceiver, type SnapAckEnvelope, type SnapChunkEnvelope } from "../../src/replication/snapshot.js";
import { Store } from "../../src/store/store.js";
import { waitFor } from "../helpers/replica.js";
import { tempDir } from "../helpers/tmp.js";

const group = 3;
const sizeBytes = 4 * 1024 * 1024;
const stagingId = group + 2 ** 40;
const leader = 2;

async function setup(applied = 0): Promise<{ store: Store; receiver: SnapshotReceiver; acks: SnapAckEnvelope[]; done(): Promise<void> }> {
  const t = tempDir("snaprecv");
  const store = await Store.open({ disk: new NodeDisk(t.dir), defer: deferImmediate }, [{ groupId: group, sizeBytes }]);
  const acks: SnapAckEnvelope[] = [];
  const ports = {
    store,
    send: (_to: number, env: unknown) => (acks.push(env as SnapAckEnvelope), true),
    reportSnapshot: () => {},
    stillSending: () => true,
    log: () => {},
  };
  const receiver = new SnapshotReceiver(ports, () => ({ leader, sizeBytes, applied }));
  return { store, receiver, acks, done: async () => (await store.close(), t.remove()) };
}

/** The whole snapshot in one chunk: 4 KiB of `fill` at offset 0. */
function chunk(fill: number): SnapChunkEnvelope {
  return { kind: "snap-chunk", group, index: 10, term: 2, seq: 0, extents: [0, 4096], data: Buffer.alloc(4096, fill), last: true };
}

function snapMessage(): ReturnType<typeof newMessage> {
  const m = newMessage(MessageType.snap, leader, 1, 2);
  m.snapshot = { meta: { index: 10, term: 2, conf: { voters: [1, 2, 3], learners: [] } }, data: new Uint8Array(0) };
  return m;
}

test("a snapshot the core took is not restarted by a chunk 0 before it is installed", async () => {
  const { store, receiver, acks, done } = await setup();
  receiver.onChunk(leader, chunk(0xaa));
  await waitFor("the chunk durable", () => acks.length === 1);
  assert.ok(acks[0]!.ok && receiver.ready(group, leader, snapMessage()));
  receiver.stepped(group, true);
  receiver.onChunk(leader, chunk(0xbb)); // a replayed or new chunk 0
  assert.is(acks.length, 2);
  assert.is(acks[1]!.ok, false, "refused while the install is pending");
  await store.installSnapshot(group, 10, 2, { voters: [1, 2, 3], learners: [] });
  receiver.installed(group);
  assert.ok(store.read(group, 0, 4096).every((x) => x === 0xaa), "the copy the core took is the one installed");
  await done();
});

test("a complete copy the core did not take is dropped with its staging group", async () => {
  const { store, receiver, acks, done } = await setup();
  receiver.onChunk(leader, chunk(0xaa));
  await waitFor("the chunk durable", () => acks.length === 1);
  assert.ok(store.hasGroup(stagingId));
  receiver.stepped(group, false);
  assert.not.ok(store.hasGroup(stagingId), "the staging group is gone");
  assert.not.ok(receiver.ready(group, leader, snapMessage()));
  await done();
});

test("an unfinished copy is dropped when the core follows another leader, kept while no leader is known", async () => {
  const { store, receiver, acks, done } = await setup();
  receiver.onChunk(leader, { ...chunk(0xaa), last: false });
  await waitFor("the chunk durable", () => acks.length === 1);
  receiver.leaderIs(group, 0);
  assert.ok(store.hasGroup(stagingId), "an election without a winner yet leaves it");
  receiver.leaderIs(group, leader);
  assert.ok(store.hasGroup(stagingId));
  receiver.leaderIs(group, leader + 1);
  assert.not.ok(store.hasGroup(stagingId), "the staging group is gone");
  await done();
});

test("a copy at or below the applied index is refused before anything is staged", async () => {
  const { store, receiver, acks, done } = await setup(10);
  receiver.onChunk(leader, chunk(0xaa));
  assert.is(acks.length, 1);
  assert.is(acks[0]!.ok, false);
  assert.not.ok(store.hasGroup(stagingId));
  await done();
});

test.run();
