// Installing a Raft snapshot in the store: data arrives in a staging group
// while the group keeps its old state and log; one record swaps them. After a
// crash the store holds either the old group (staging dropped) or the new one,
// never a mix; with or without a checkpoint in between.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { Store, type RaftEntryInput } from "../../src/store/store.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;
const conf = { voters: [1, 2, 5], learners: [7] };
const a = { groupId: 1, sizeBytes: 8 * MiB };

function open(dir: string): Promise<Store> {
  return Store.open({ disk: new NodeDisk(dir), defer: deferImmediate }, [a]);
}

function entry(index: number, term: number, fill: number): RaftEntryInput {
  return { index, term, type: 0, data: [Buffer.alloc(4096, fill)] };
}

/** Old state: entries 1..3 (term 1) applied as writes of 4 KiB at 0, 4K, 8K; block 12K written too. */
async function oldState(store: Store): Promise<void> {
  await store.appendRaftEntries(a.groupId, [entry(1, 1, 0x01), entry(2, 1, 0x02), entry(3, 1, 0x03)], { term: 1, vote: 2, commit: 3 });
  for (const i of [1, 2, 3]) applyWrite(store, i, (i - 1) * 4096, 4096);
  await store.appendRaftEntries(a.groupId, [entry(4, 1, 0x04)], { term: 1, vote: 2, commit: 4 });
  applyWrite(store, 4, 12288, 4096);
}

/** The snapshot: 0x5a at [4K, 8K) and 0x6b at [1M, 1M + 64K); everything else a hole. */
async function stage(store: Store): Promise<void> {
  const s = store.beginStaging(a.groupId);
  await store.writeStaged(s, 4096, [Buffer.alloc(4096, 0x5a)], 4096);
  await store.writeStaged(s, MiB, [Buffer.alloc(65536, 0x6b)], 65536);
}

/** What the driver does at start: apply the committed entries past the applied index (all are writes here). */
function reapply(store: Store): void {
  const st = store.raftState(a.groupId);
  const at = [0, 0, 4096, 8192, 12288];
  for (let i = st.appliedIndex + 1; i <= st.hardState.commit; i++) applyWrite(store, i, at[i]!, 4096);
}

function assertOld(store: Store, what: string): void {
  assert.equal(store.read(a.groupId, 0, 16384), Buffer.concat([1, 2, 3, 4].map((f) => Buffer.alloc(4096, f))), what);
  assert.is(store.raftState(a.groupId).lastIndex, 4, what);
}

function assertNew(store: Store, what: string): void {
  const expected = Buffer.alloc(2 * MiB);
  expected.fill(0x5a, 4096, 8192);
  expected.fill(0x6b, MiB, MiB + 65536);
  assert.ok(store.read(a.groupId, 0, 2 * MiB).equals(expected), `${what}: the volume is exactly the snapshot`);
  assert.is(store.allocatedBytes(a.groupId), 4096 + 65536, `${what}: holes of the snapshot are holes`);
  const st = store.raftState(a.groupId);
  assert.equal([st.snapshotIndex, st.snapshotTerm, st.firstIndex, st.lastIndex, st.appliedIndex], [10, 3, 11, 10, 10], `${what}: log restarts after the snapshot`);
  assert.ok(st.hardState.commit >= 10, what);
  assert.equal(store.raftSnapshotConf(a.groupId), conf, `${what}: the snapshot's configuration is kept with the log`);
}

test("staged data is invisible until the install; then the group is exactly the snapshot and its log restarts", async () => {
  const t = tempDir("snap");
  const store = await open(t.dir);
  await oldState(store);
  await stage(store);
  assertOld(store, "before install");
  await store.installSnapshot(a.groupId, 10, 3, conf);
  assertNew(store, "after install");
  assert.is(store.stats().snapshotsInstalled, 1);
  // The log goes on after the snapshot.
  await store.appendRaftEntries(a.groupId, [entry(11, 3, 0x11)], { term: 3, vote: 2, commit: 11 });
  assert.is(store.raftState(a.groupId).lastIndex, 11);
  await store.close();
  t.remove();
});

test("a crash before the install drops the staged data: the old group and log are intact", async () => {
  for (const checkpointBetween of [false, true]) {
    const t = tempDir("snap");
    let store = await open(t.dir);
    await oldState(store);
    await stage(store);
    if (checkpointBetween) await store.checkpoint();
    await store.closeWithoutCheckpoint();
    store = await open(t.dir);
    reapply(store);
    assertOld(store, `crash mid-snapshot (checkpoint between: ${checkpointBetween})`);
    assert.is(store.raftState(a.groupId).hardState.commit, 4);
    // A new snapshot can start over.
    await stage(store);
    await store.installSnapshot(a.groupId, 10, 3, conf);
    assertNew(store, "second attempt");
    await store.close();
    t.remove();
  }
});

test("a crash after the install replays it: with or without a checkpoint, before or after the staged data", async () => {
  for (const checkpointAt of ["none", "after-staging", "after-install"]) {
    const t = tempDir("snap");
    let store = await open(t.dir);
    await oldState(store);
    await stage(store);
    if (checkpointAt === "after-staging") await store.checkpoint();
    await store.installSnapshot(a.groupId, 10, 3, conf);
    if (checkpointAt === "after-install") await store.checkpoint();
    await store.appendRaftEntries(a.groupId, [entry(11, 3, 0x11)], { term: 3, vote: 2, commit: 10 });
    await store.closeWithoutCheckpoint();
    store = await open(t.dir);
    assert.is(store.raftState(a.groupId).lastIndex, 11, `checkpoint ${checkpointAt}: entries after the snapshot recovered`);
    applyWrite(store, 11, 0, 4096);
    const head = store.read(a.groupId, 0, 8192);
    assert.ok(head.subarray(0, 4096).every((x) => x === 0x11) && head.subarray(4096).every((x) => x === 0x5a), `checkpoint ${checkpointAt}`);
    assert.ok(store.read(a.groupId, MiB, 65536).every((x) => x === 0x6b), `checkpoint ${checkpointAt}`);
    assert.ok(store.read(a.groupId, 12288, 4096).every((x) => x === 0), `checkpoint ${checkpointAt}: old data outside the snapshot is gone`);
    await store.close();
    t.remove();
  }
});

test("a snapshot started over: recovery installs only the last attempt, not blocks an abandoned one staged", async () => {
  for (const between of ["nothing", "a crash", "a checkpoint"]) {
    const t = tempDir("snap");
    let store = await open(t.dir);
    await oldState(store);
    // The abandoned attempt staged a block the final snapshot has as a hole.
    const abandoned = store.beginStaging(a.groupId);
    await store.writeStaged(abandoned, 1536 * 1024, [Buffer.alloc(4096, 0xee)], 4096);
    if (between === "a crash") {
      await store.closeWithoutCheckpoint();
      store = await open(t.dir);
      reapply(store);
    }
    if (between === "a checkpoint") await store.checkpoint();
    await stage(store);
    await store.installSnapshot(a.groupId, 10, 3, conf);
    assertNew(store, `after install (${between} between the attempts)`);
    await store.closeWithoutCheckpoint();
    store = await open(t.dir);
    assertNew(store, `after recovery (${between} between the attempts)`);
    await store.close();
    t.remove();
  }
});

test("GC after an install reclaims the old state and keeps the snapshot's data", async () => {
  const t = tempDir("snap");
  const store = await open(t.dir);
  await oldState(store);
  await stage(store);
  await store.installSnapshot(a.groupId, 10, 3, conf);
  const live = store.stats().liveBytes;
  assert.is(live, 4096 + 65536, "only the installed data is live: the old map and the staging group's own entry are not counted twice");
  await store.close();
  t.remove();
});

test("the configuration at the compaction point survives a checkpoint and a restart, with its index", async () => {
  const t = tempDir("snap");
  let store = await open(t.dir);
  await oldState(store);
  assert.is(store.raftSnapshotConf(a.groupId), undefined, "nothing recorded: the group's initial configuration applies");
  store.compactRaftLog(a.groupId, 2, { voters: [1, 2, 3], learners: [] });
  await store.checkpoint();
  store.compactRaftLog(a.groupId, 3, { voters: [1, 2, 3], learners: [9] });
  await store.closeWithoutCheckpoint();
  store = await open(t.dir);
  // Recovery starts from the checkpoint: the compaction to 3 was not saved, and neither is its configuration.
  assert.equal([store.raftState(a.groupId).snapshotIndex, store.raftSnapshotConf(a.groupId)], [2, { voters: [1, 2, 3], learners: [] }]);
  reapply(store);
  store.compactRaftLog(a.groupId, 3, { voters: [1, 2, 3], learners: [9] });
  await store.close();
  store = await open(t.dir);
  assert.equal([store.raftState(a.groupId).snapshotIndex, store.raftSnapshotConf(a.groupId)], [3, { voters: [1, 2, 3], learners: [9] }]);
  await store.close();
  t.remove();
});

test.run();

/** Applies entry `index` as a write of its first `length` bytes at `offset`, its data read back from the log (as the driver does after a restart). */
function applyWrite(store: Store, index: number, offset: number, length: number): void {
  const [e] = store.raftEntries(a.groupId, index, index + 1, Number.MAX_SAFE_INTEGER);
  store.applyEntryWrite(a.groupId, index, offset, length, e!.data.subarray(0, length));
}
