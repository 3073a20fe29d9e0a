// Growing a volume (docs/architecture.md, "Resize"): a resize is a Raft entry
// of the volume's group, so a replica grows when it applies it, in log order
// with the writes around it; a restart applies it again from the log until a
// checkpoint holds the new size; a snapshot from a larger leader gives the
// follower the leader's size, also across a crash after the install.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { encodeResize, encodeWrite } from "../../src/replication/volume-op.js";
import { VolumeReplica } from "../../src/replication/volume-replica.js";
import { StoreError } from "../../src/store/errors.js";
import { Store } from "../../src/store/store.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;

function open(dir: string, sizeBytes: number): Promise<Store> {
  return Store.open({ disk: new NodeDisk(dir), defer: deferImmediate }, [{ groupId: 1, sizeBytes }]);
}

async function append(store: Store, commands: Uint8Array[], from: number): Promise<void> {
  const entries = commands.map((c, i) => ({ index: from + i, term: 1, type: 0, data: [c] }));
  await store.appendRaftEntries(1, entries, { term: 1, vote: 1, commit: from + commands.length - 1 });
}

/** What the driver does at start: apply the committed entries past the applied index, read back from the log. */
function reapply(store: Store): void {
  const replica = new VolumeReplica(store, 1);
  const st = store.raftState(1);
  for (const e of store.raftEntries(1, st.appliedIndex + 1, st.hardState.commit + 1, Number.MAX_SAFE_INTEGER)) replica.apply(e.index, e.data);
}

function outside(store: Store, offset: number): boolean {
  try {
    store.read(1, offset, 4096);
    return false;
  } catch (e) {
    return e instanceof StoreError && e.code === "EINVAL";
  }
}

test("a replica grows when it applies the resize, in log order; a restart applies it again from the log, a checkpoint keeps it", async () => {
  const t = tempDir("resize");
  let store = await open(t.dir, 8 * MiB);
  const before = Buffer.alloc(4096, 0x11);
  const after = Buffer.alloc(4096, 0x22);
  await append(store, [encodeWrite(0, [before], 4096), encodeResize(16 * MiB), encodeWrite(12 * MiB, [after], 4096)], 1);
  const replica = new VolumeReplica(store, 1);
  const [w1, resize, w3] = store.raftEntries(1, 1, 4, Number.MAX_SAFE_INTEGER);
  replica.apply(1, w1!.data);
  assert.ok(outside(store, 12 * MiB), "past the old end before the resize is applied");
  assert.throws(() => replica.apply(3, w3!.data), (e: unknown) => e instanceof StoreError && e.code === "EINVAL", "a write past the end is refused by a replica that has not applied the resize");
  replica.apply(2, resize!.data);
  assert.is(store.sizeOf(1), 16 * MiB);
  replica.apply(3, w3!.data);
  assert.ok(store.read(1, 12 * MiB, 4096).equals(after));
  replica.apply(2, resize!.data); // applied again (a snapshot had it): nothing changes
  assert.is(store.sizeOf(1), 16 * MiB);

  // A crash before any checkpoint: the node state still says 8 MiB; the log grows it again.
  await store.closeWithoutCheckpoint();
  store = await open(t.dir, 8 * MiB);
  assert.is(store.sizeOf(1), 8 * MiB, "the size of the last checkpoint (none: the size the replica started with)");
  reapply(store);
  assert.is(store.sizeOf(1), 16 * MiB, "the resize is applied again from the Raft log");
  assert.ok(store.read(1, 12 * MiB, 4096).equals(after) && store.read(1, 0, 4096).equals(before));

  // An orderly stop checkpoints: the size comes back without the log.
  await store.close();
  store = await open(t.dir, 8 * MiB);
  assert.is(store.raftState(1).appliedIndex, 3);
  assert.is(store.sizeOf(1), 16 * MiB, "the checkpoint holds the grown size");
  assert.ok(store.read(1, 12 * MiB, 4096).equals(after));
  await store.close();
  t.remove();
});

test("a volume whose last block is short grows with that block's checksum covering the zeroes after the old end", async () => {
  const t = tempDir("resize");
  const size = 8 * MiB + 1024; // the last 4 KiB block holds 2 sectors
  let store = await open(t.dir, size);
  const tail = Buffer.alloc(1024, 0x77);
  await append(store, [encodeWrite(8 * MiB, [tail], 1024), encodeResize(8 * MiB + 8192)], 1);
  reapply(store);
  const expected = Buffer.alloc(8192);
  tail.copy(expected);
  assert.ok(store.read(1, 8 * MiB, 8192).equals(expected), "old bytes, then zeroes; the block's checksum matches");
  await store.close();
  store = await open(t.dir, size);
  assert.ok(store.read(1, 8 * MiB, 8192).equals(expected), "the same after a restart from the checkpoint");
  await store.close();
  t.remove();
});

test("a copy from a larger leader: the staging group and then the group take its size, also when recovery replays the install", async () => {
  for (const checkpointAt of ["none", "after-staging", "after-install"]) {
    const t = tempDir("resize");
    let store = await open(t.dir, 8 * MiB);
    const data = Buffer.alloc(65536, 0x5a);
    const s = store.beginStaging(1, 24 * MiB);
    await store.writeStaged(s, 20 * MiB, [data], data.length);
    assert.is(store.sizeOf(1), 8 * MiB, "the group keeps its size until the install");
    if (checkpointAt === "after-staging") await store.checkpoint();
    await store.installSnapshot(1, 10, 2, { voters: [1, 2, 3], learners: [] });
    if (checkpointAt === "after-install") await store.checkpoint();
    assert.is(store.sizeOf(1), 24 * MiB);
    await store.closeWithoutCheckpoint();
    store = await open(t.dir, 8 * MiB);
    assert.is(store.sizeOf(1), 24 * MiB, `checkpoint ${checkpointAt}: the installed copy's size`);
    assert.ok(store.read(1, 20 * MiB, data.length).equals(data), `checkpoint ${checkpointAt}: the data past the old end`);
    await store.close();
    t.remove();
  }
});

test.run();
