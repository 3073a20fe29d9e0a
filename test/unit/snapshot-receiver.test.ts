// The follower's side of a snapshot stream (src/replication/snapshot.ts) over
// a real store: once the core took a snap message, its staging group is what
// the next persist installs, so no chunk may restart it; a copy the core did
// not take is dropped, and so is an unfinished one when another node leads;
// a copy at or below the applied index is refused. A delta copies the kept
// extents from the follower's own group, takes the changed ones from the
// chunk and leaves the rest a hole; a delta whose base the follower has not
// applied, or a malformed one, is refused before anything is staged.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { MessageType, newMessage } from "../../src/raft/types.js";
import { SnapshotReceiver, type SnapAckEnvelope, type SnapChunkEnvelope } from "../../src/replication/snapshot.js";
import { Store } from "../../src/store/store.js";
import { waitFor } from "../helpers/replica.js";
import { tempDir } from "../helpers/tmp.js";
import { replayed, writesTo } from "../helpers/store-writes.js";

const group = 3;
const sizeBytes = 4 * 1024 * 1024;
const stagingId = group + 2 ** 40;
const leader = 2;

async function setup(
  applied = 0,
  catchUp?: (group: number, leader: number, index: number, term: number) => Promise<void> | undefined,
): Promise<{ store: Store; receiver: SnapshotReceiver; acks: SnapAckEnvelope[]; done(): Promise<void> }> {
  const t = tempDir("snaprecv");
  const store = await Store.open({ disk: new NodeDisk(t.dir), defer: deferImmediate }, [{ groupId: group, sizeBytes }]);
  const acks: SnapAckEnvelope[] = [];
  const ports = {
    store,
    send: (_to: number, env: unknown) => (acks.push(env as SnapAckEnvelope), true),
    reportSnapshot: () => {},
    stillSending: () => true,
    catchUp,
    log: () => {},
  };
  const receiver = new SnapshotReceiver(ports, () => ({ leader, sizeBytes, applied }));
  return { store, receiver, acks, done: async () => (await store.close(), t.remove()) };
}

/** The whole snapshot in one chunk: 4 KiB of `fill` at offset 0. */
function chunk(fill: number): SnapChunkEnvelope {
  return { kind: "snap-chunk", group, index: 10, term: 2, seq: 0, base: 0, baseTerm: 0, extents: [0, 4096], data: Buffer.alloc(4096, fill), keep: [], last: true };
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

const KiB = 1024;

/** The group's bytes at [offset, offset + length) are all `fill` (0: a hole reads as zeroes). */
function holds(store: Store, offset: number, length: number, fill: number): boolean {
  return store.read(group, offset, length).every((x) => x === fill);
}

test("a delta: kept extents come from this node's own group, changed ones from the chunk, the rest is a hole", async () => {
  const { store, receiver, acks, done } = await setup(8);
  // What this node holds at its applied index: 0x11 at [0, 64K), 0x22 at [64K, 128K), 0x33 at [1M, 1M + 64K).
  await writesTo(store).write(group, 0, [Buffer.alloc(64 * KiB, 0x11)], 64 * KiB);
  await writesTo(store).write(group, 64 * KiB, [Buffer.alloc(64 * KiB, 0x22)], 64 * KiB);
  await writesTo(store).write(group, 1024 * KiB, [Buffer.alloc(64 * KiB, 0x33)], 64 * KiB);
  // The leader: [0, 64K) unchanged since index 5, [64K, 68K) rewritten with 0x44, [68K, 128K) unchanged, [1M, 1M + 64K) trimmed, [2M, 2M + 4K) new.
  const delta: SnapChunkEnvelope = {
    ...chunk(0),
    base: 5,
    baseTerm: 2,
    extents: [64 * KiB, 4 * KiB, 2048 * KiB, 4 * KiB],
    data: Buffer.concat([Buffer.alloc(4 * KiB, 0x44), Buffer.alloc(4 * KiB, 0x55)]),
    keep: [0, 64 * KiB, 68 * KiB, 60 * KiB],
  };
  receiver.onChunk(leader, delta);
  await waitFor("the chunk durable", () => acks.length === 1);
  assert.ok(acks[0]!.ok, "the delta is taken: this node applied past its base");
  // This node's group is untouched until the install.
  assert.ok(holds(store, 64 * KiB, 4 * KiB, 0x22) && holds(store, 1024 * KiB, 64 * KiB, 0x33));
  receiver.stepped(group, true);
  await store.installSnapshot(group, 10, 2, { voters: [1, 2, 3], learners: [] });
  receiver.installed(group);
  assert.ok(holds(store, 0, 64 * KiB, 0x11), "kept: its own bytes");
  assert.ok(holds(store, 64 * KiB, 4 * KiB, 0x44), "changed: the leader's bytes");
  assert.ok(holds(store, 68 * KiB, 60 * KiB, 0x22), "kept after a changed extent");
  assert.ok(holds(store, 2048 * KiB, 4 * KiB, 0x55), "a new extent");
  assert.ok(holds(store, 1024 * KiB, 64 * KiB, 0), "trimmed on the leader: neither sent nor kept, so a hole");
  assert.is(store.allocatedBytes(group), 132 * KiB, "and allocated only where the leader is");
  await done();
});

test("a delta whose base this node has not applied, or a malformed one, is refused before anything is staged", async () => {
  const { store, receiver, acks, done } = await setup(4);
  const delta = (over: Partial<SnapChunkEnvelope>): SnapChunkEnvelope => ({ ...chunk(0x44), base: 4, baseTerm: 2, extents: [64 * KiB, 4 * KiB], data: Buffer.alloc(4 * KiB, 0x44), keep: [0, 64 * KiB], ...over });
  const cases: [string, SnapChunkEnvelope][] = [
    ["base past the applied index", delta({ base: 5 })],
    ["kept extents in a full copy", delta({ base: 0 })],
    ["kept extents overlapping the data", delta({ keep: [0, 68 * KiB] })],
    ["kept extents out of order", delta({ keep: [128 * KiB, 4 * KiB, 0, 4 * KiB] })],
    ["kept extents past the volume", delta({ keep: [sizeBytes - 4 * KiB, 8 * KiB] })],
    ["kept extents not in sectors", delta({ keep: [0, 100] })],
    ["no keep list", delta({ keep: undefined as unknown as number[] })],
    ["a negative base", delta({ base: -1 })],
    ["no base term", delta({ baseTerm: undefined as unknown as number })],
  ];
  for (const [what, c] of cases) {
    receiver.onChunk(leader, c);
    assert.is(acks.at(-1)?.ok, false, what);
    assert.not.ok(store.hasGroup(stagingId), `${what}: nothing staged`);
  }
  assert.is(acks.length, cases.length);
  receiver.onChunk(leader, delta({}));
  await waitFor("the delta at the applied index durable", () => acks.length === cases.length + 1);
  assert.ok(acks.at(-1)!.ok, "a base equal to the applied index is taken");
  await done();
});

test("a delta past the applied index waits for this node to apply its own log up to the base, when it holds the leader's entry there", async () => {
  let release: () => void = () => {};
  const asked: number[][] = [];
  const { store, receiver, acks, done } = await setup(3, (g, from, index, term) => {
    asked.push([g, from, index, term]);
    if (term !== 2) return undefined; // not the leader's entry there
    return new Promise<void>((r) => (release = r));
  });
  await writesTo(store).write(group, 0, [Buffer.alloc(64 * KiB, 0x11)], 64 * KiB);
  const delta: SnapChunkEnvelope = { ...chunk(0), base: 5, baseTerm: 3, extents: [], data: Buffer.alloc(0), keep: [0, 64 * KiB] };
  receiver.onChunk(leader, delta);
  assert.is(acks.at(-1)?.ok, false, "refused: its entry 5 is not the leader's");
  assert.not.ok(store.hasGroup(stagingId));
  receiver.onChunk(leader, { ...delta, baseTerm: 2 });
  assert.equal(asked, [
    [group, leader, 5, 3],
    [group, leader, 5, 2],
  ]);
  await new Promise((r) => setTimeout(r, 50));
  assert.is(acks.length, 1, "no acknowledgement before the base is applied: kept extents are copied after that");
  // Applying entries 4 and 5 rewrote the first 4 KiB here.
  await writesTo(store).write(group, 0, [Buffer.alloc(4 * KiB, 0x66)], 4 * KiB);
  release();
  await waitFor("the chunk durable", () => acks.length === 2);
  assert.ok(acks[1]!.ok);
  receiver.stepped(group, true);
  await store.installSnapshot(group, 10, 2, { voters: [1, 2, 3], learners: [] });
  receiver.installed(group);
  assert.ok(holds(store, 0, 4 * KiB, 0x66) && holds(store, 4 * KiB, 60 * KiB, 0x11), "the kept copy is the state at the base");
  await done();
});

test.run();
