// Raft entries of replicated groups in the store: persisted with the hard
// state in the shared group commit, read back for followers, truncated on
// conflict, recovered after a crash, applied without copying, and kept from
// GC until compacted.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Prng } from "../../src/base/prng.js";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { closeSync, openSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { ChecksumError, DamagedEntryError } from "../../src/store/errors.js";
import { segmentName } from "../../src/store/segment-names.js";
import { Store, type RaftEntryInput } from "../../src/store/store.js";
import { StoreRaftStorage } from "../../src/replication/raft-storage.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;
const a = { groupId: 1, sizeBytes: 16 * MiB };
const b = { groupId: 2, sizeBytes: 16 * MiB };

function open(dir: string, specs = [a, b]): Promise<Store> {
  return Store.open({ disk: new NodeDisk(dir), defer: deferImmediate }, specs);
}

function entry(index: number, term: number, fill: number, length = 4096): RaftEntryInput {
  return { index, term, type: 0, data: [Buffer.alloc(length, fill)] };
}

test("entries of two groups and their hard states persist in one commit and read back", async () => {
  const t = tempDir("raft");
  const store = await open(t.dir);
  const commitsBefore = store.stats().commits!;
  await Promise.all([
    store.appendRaftEntries(a.groupId, [entry(1, 1, 0xa1), entry(2, 1, 0xa2)], { term: 1, vote: 3, commit: 1 }),
    store.appendRaftEntries(b.groupId, [entry(1, 2, 0xb1)], { term: 2, vote: 0, commit: 0 }),
  ]);
  assert.is(store.stats().commits! - commitsBefore, 1, "one fdatasync for both groups");
  const got = store.raftEntries(a.groupId, 1, 3, 1 << 30);
  assert.equal(got.map((e) => [e.index, e.term, e.data[0], e.data.length]), [
    [1, 1, 0xa1, 4096],
    [2, 1, 0xa2, 4096],
  ]);
  assert.equal(store.raftState(a.groupId).hardState, { term: 1, vote: 3, commit: 1 });
  assert.equal(store.raftState(b.groupId), { firstIndex: 1, lastIndex: 1, snapshotIndex: 0, snapshotTerm: 0, hardState: { term: 2, vote: 0, commit: 0 }, appliedIndex: 0, recoverUntil: 0, damagedApplied: [] });
  assert.is(store.raftEntries(a.groupId, 1, 3, 100).length, 1, "maxBytes stops after the first entry");
  assert.throws(() => store.raftEntries(a.groupId, 2, 4, 1 << 30), /outside the log/);
  await store.close();
  t.remove();
});

test("a conflicting suffix is replaced, in memory and after a crash", async () => {
  const t = tempDir("raft");
  let store = await open(t.dir);
  await store.appendRaftEntries(a.groupId, [1, 2, 3, 4, 5].map((i) => entry(i, 1, i)));
  await store.appendRaftEntries(a.groupId, [entry(4, 2, 0x44), entry(5, 2, 0x55), entry(6, 2, 0x66)], { term: 2, vote: 1, commit: 3 });
  const expect = [
    [1, 1, 1],
    [2, 1, 2],
    [3, 1, 3],
    [4, 2, 0x44],
    [5, 2, 0x55],
    [6, 2, 0x66],
  ];
  const view = (s: Store): number[][] => s.raftEntries(a.groupId, 1, 7, 1 << 30).map((e) => [e.index, e.term, e.data[0]!]);
  assert.equal(view(store), expect);
  await store.closeWithoutCheckpoint();
  store = await open(t.dir);
  assert.equal(view(store), expect, "replay applies the truncation in log order");
  assert.equal(store.raftState(a.groupId).hardState, { term: 2, vote: 1, commit: 3 });
  await store.close();
  store = await open(t.dir);
  assert.equal(view(store), expect, "and so does a checkpoint");
  await store.close();
  t.remove();
});

test("applying a committed write points the volume at the entry's data without copying", async () => {
  const t = tempDir("raft");
  let store = await open(t.dir);
  const data = Buffer.alloc(8192 + 24);
  new Prng(5).fill(data);
  await store.appendRaftEntries(a.groupId, [{ index: 1, term: 1, type: 0, data: [data] }], { term: 1, vote: 1, commit: 1 });
  const before = store.stats().logBytesAppended!;
  applyWrite(store, 1, 4096, 8192);
  assert.is(store.stats().logBytesAppended, before, "applying writes nothing");
  assert.ok(store.read(a.groupId, 4096, 8192).equals(data.subarray(0, 8192)));
  assert.is(store.raftState(a.groupId).appliedIndex, 1);
  await store.appendRaftEntries(a.groupId, [entry(2, 1, 0)]);
  store.applyEntryTrim(a.groupId, 2, 4096, 4096);
  assert.ok(store.read(a.groupId, 4096, 4096).equals(Buffer.alloc(4096)));
  assert.equal(store.blockStatus(a.groupId, 0, 16384).map((e) => e.hole), [true, false, true]);
  await store.close();
  store = await open(t.dir);
  assert.ok(store.read(a.groupId, 8192, 4096).equals(data.subarray(4096, 8192)), "applied state comes back from the checkpoint");
  assert.is(store.raftState(a.groupId).appliedIndex, 2);
  await store.close();
  t.remove();
});

test("the Raft storage serves persisted entries from memory until released, then the same entries from the log", async () => {
  const t = tempDir("raft");
  const store = await open(t.dir);
  const storage = new StoreRaftStorage(store, a.groupId, { voters: [1], learners: [] });
  const entries = [1, 2, 3, 4].map((i) => ({ index: i, term: 1, type: 0 as const, data: Buffer.alloc(4096, i) }));
  for (const e of entries) storage.remember(e);
  await store.appendRaftEntries(a.groupId, entries.map((e) => ({ ...e, data: [e.data] })), { term: 1, vote: 1, commit: 4 });
  const served = (): { same: boolean; index: number; fill: number }[] =>
    storage.entries(1, 5, 1 << 30).map((e, k) => ({ same: e === entries[k], index: e.index, fill: e.data[4095]! }));
  assert.equal(served().map((x) => x.same), [true, true, true, true], "all four from memory");
  storage.releaseThrough(2);
  assert.equal(served(), [
    { same: false, index: 1, fill: 1 },
    { same: false, index: 2, fill: 2 },
    { same: false, index: 3, fill: 3 },
    { same: false, index: 4, fill: 4 },
  ], "a miss at the front reads the whole range back");
  assert.equal(storage.entries(3, 5, 1 << 30).map((e, k) => e === entries[k + 2]), [true, true], "3 and 4 are still in memory");
  storage.releaseThrough(10);
  assert.is(storage.entries(4, 5, 1 << 30)[0] === entries[3], false, "released past the end: nothing left in memory");
  storage.remember({ index: 5, term: 1, type: 0, data: Buffer.alloc(4096, 5) });
  await store.appendRaftEntries(a.groupId, [entry(5, 1, 5)]);
  assert.equal(storage.entries(4, 6, 1 << 30).map((e) => [e.index, e.data[0]]), [[4, 4], [5, 5]], "a new entry after a full release is cached and served");
  await store.close();
  t.remove();
});

test("segments holding uncompacted entries are never collected; after compaction they are, and applied data survives", async () => {
  const t = tempDir("raft");
  const store = await open(t.dir);
  const entries = 200; // 1 MiB each: about three segments
  for (let i = 1; i <= entries; i += 10) {
    const batch: RaftEntryInput[] = [];
    for (let j = i; j < i + 10; j++) batch.push(entry(j, 1, j % 251, MiB));
    await store.appendRaftEntries(a.groupId, batch, { term: 1, vote: 1, commit: i + 9 });
    for (const e of batch) applyWrite(store, e.index, 0, MiB); // all over the same MiB: only the last one is live
  }
  await store.checkpoint();
  store.maintain();
  await store.settle();
  assert.is(store.stats().gcSegments, 0, "pinned segments stay");
  assert.ok(store.stats().segments! >= 3);
  store.compactRaftLog(a.groupId, entries);
  await store.settle();
  assert.ok(store.stats().gcSegments! >= 2, `compacted segments are collected (${store.stats().gcSegments})`);
  assert.ok(store.read(a.groupId, 0, MiB).equals(Buffer.alloc(MiB, entries % 251)));
  assert.is(store.raftState(a.groupId).firstIndex, entries + 1);
  await store.closeWithoutCheckpoint();
  const again = await open(t.dir);
  assert.ok(again.read(a.groupId, 0, MiB).equals(Buffer.alloc(MiB, entries % 251)), "and after a crash");
  // Every entry recovery still knows (from the checkpoint and the log) must be readable: GC may not
  // have freed a segment that the last checkpoint's Raft index points into.
  const st = again.raftState(a.groupId);
  const back = again.raftEntries(a.groupId, st.firstIndex, st.lastIndex + 1, 1 << 30);
  assert.is(back.length, st.lastIndex - st.firstIndex + 1);
  for (const e of back) assert.is(e.data[0], e.index % 251, `entry ${e.index}`);
  await again.close();
  t.remove();
});

/** Flips a bit in the first copy of `needle` in the store's first segment, `at` bytes into it. */
function damage(dir: string, needle: Buffer, into = 99): void {
  const file = join(dir, segmentName(1));
  const bytes = readFileSync(file);
  const at = bytes.indexOf(needle);
  assert.ok(at >= 0, "the entry's data is in segment 1");
  const fd = openSync(file, "r+");
  writeSync(fd, Buffer.from([bytes[at + into]! ^ 1]), 0, 1, at + into);
  closeSync(fd);
}

test("a damaged entry in the log after the checkpoint: the log is cut before it, and the node owes its vote until the log is back", async () => {
  const t = tempDir("raft");
  let store = await open(t.dir);
  await store.appendRaftEntries(a.groupId, [1, 2, 3, 4, 5, 6].map((i) => entry(i, 1, 0x10 + i)), { term: 1, vote: 2, commit: 3 });
  // Later commits (of another group): they prove the damaged one was acknowledged, not torn.
  for (let i = 1; i <= 4; i++) await store.appendRaftEntries(b.groupId, [entry(i, 1, 0x50 + i)]);
  await store.closeWithoutCheckpoint();
  damage(t.dir, Buffer.alloc(4096, 0x14));
  store = await open(t.dir);
  let st = store.raftState(a.groupId);
  assert.equal([st.lastIndex, st.recoverUntil, st.hardState.commit], [3, 6, 3], "cut before entry 4; entries up to 6 may have been acknowledged");
  assert.is(store.stats().damagedRecords, 1);
  // A checkpoint while the debt is open keeps it.
  await store.close();
  store = await open(t.dir);
  assert.equal([store.raftState(a.groupId).lastIndex, store.raftState(a.groupId).recoverUntil], [3, 6]);
  // The leader resends 4..6: the debt is paid.
  await store.appendRaftEntries(a.groupId, [4, 5].map((i) => entry(i, 2, 0x20 + i)), { term: 2, vote: 2, commit: 3 });
  assert.is(store.raftState(a.groupId).recoverUntil, 6);
  await store.appendRaftEntries(a.groupId, [entry(6, 2, 0x26)]);
  st = store.raftState(a.groupId);
  assert.equal([st.lastIndex, st.recoverUntil], [6, 0]);
  await store.close();
  store = await open(t.dir);
  assert.equal(store.raftEntries(a.groupId, 4, 7, 1 << 30).map((e) => e.data[0]), [0x24, 0x25, 0x26]);
  assert.is(store.raftState(a.groupId).recoverUntil, 0);
  await store.close();
  t.remove();
});

test("damaged entries the checkpoint lists: one not applied cuts the log, one applied is reported for compaction; reading one back throws", async () => {
  const t = tempDir("raft");
  let store = await open(t.dir);
  await store.appendRaftEntries(a.groupId, [1, 2, 3, 4, 5, 6].map((i) => entry(i, 1, 0x30 + i)), { term: 1, vote: 2, commit: 3 });
  for (const i of [1, 2, 3]) applyWrite(store, i, (i - 1) * 4096, 4096);
  await store.close(); // the checkpoint lists entries 1..6, applied up to 3
  damage(t.dir, Buffer.alloc(4096, 0x32));
  damage(t.dir, Buffer.alloc(4096, 0x35));
  store = await open(t.dir);
  const st = store.raftState(a.groupId);
  assert.equal([st.lastIndex, st.recoverUntil, st.damagedApplied], [4, 6, [2]]);
  assert.throws(() => store.raftEntries(a.groupId, 1, 4, 1 << 30), (e: Error) => e instanceof DamagedEntryError && e.index === 2);
  // What the driver does before it starts the group: compact past the damage.
  store.compactRaftLog(a.groupId, 3);
  assert.equal(store.raftState(a.groupId).damagedApplied, []);
  // The log is the data: the applied entry's bytes are the volume's, and a read finds them damaged (a replica repairs them).
  assert.throws(() => store.read(a.groupId, 4096, 4096), (e: Error) => e instanceof ChecksumError);
  assert.ok(store.read(a.groupId, 0, 4096).equals(Buffer.alloc(4096, 0x31)));
  await store.close();
  t.remove();
});

test("a damaged entry whose header names its range is kept as lost: applied as lost its blocks fail their checksums, a lost trim still unmaps, later entries are whole; cutRaftLog owes the vote instead", async () => {
  const t = tempDir("raft");
  let store = await open(t.dir);
  // Entries 1..6 of group a: writes of one block each at block i - 1, with their ranges; entry 5 a trim of block 0 (no data).
  const ranged = (i: number): RaftEntryInput => (i === 5 ? { ...entry(i, 1, 0, 16), range: { offsetBytes: 0, lengthBytes: 4096 } } : { ...entry(i, 1, 0x60 + i), range: { offsetBytes: (i - 1) * 4096, lengthBytes: 4096 } });
  await store.appendRaftEntries(a.groupId, [1, 2].map(ranged), { term: 1, vote: 1, commit: 2 });
  for (const i of [1, 2]) applyWrite(store, i, (i - 1) * 4096, 4096);
  await store.close(); // the checkpoint lists entries 1 and 2, applied
  store = await open(t.dir);
  await store.appendRaftEntries(a.groupId, [3, 4, 5, 6].map(ranged), { term: 1, vote: 1, commit: 6 });
  for (let i = 1; i <= 4; i++) await store.appendRaftEntries(b.groupId, [entry(i, 1, 0x50 + i)]);
  await store.closeWithoutCheckpoint();
  damage(t.dir, Buffer.alloc(4096, 0x64)); // entry 4, after the checkpoint
  store = await open(t.dir);
  let st = store.raftState(a.groupId);
  assert.equal([st.lastIndex, st.recoverUntil, st.appliedIndex], [6, 0, 2], "nothing is cut");
  assert.equal(store.lostRaftEntries(a.groupId), [{ index: 4, range: { offsetBytes: 3 * 4096, lengthBytes: 4096 } }]);
  // What the driver does for the group's only voter: apply the log to its end, the lost entry as lost.
  applyWrite(store, 3, 2 * 4096, 4096);
  assert.is(store.applyLostEntry(a.groupId, 4), 1, "one block lost");
  store.applyEntryTrim(a.groupId, 5, 0, 4096);
  applyWrite(store, 6, 5 * 4096, 4096);
  assert.throws(() => store.read(a.groupId, 3 * 4096, 4096), (e: Error) => e instanceof ChecksumError, "the lost write's block is not returned");
  assert.ok(store.read(a.groupId, 5 * 4096, 4096).equals(Buffer.alloc(4096, 0x66)), "the write after it is whole");
  assert.ok(store.read(a.groupId, 0, 4096).equals(Buffer.alloc(4096)), "the trim after it applied");
  assert.equal(store.lostRaftEntries(a.groupId), []);
  await store.close();
  // A lost trim applies as the trim it was.
  store = await open(t.dir);
  await store.appendRaftEntries(a.groupId, [{ ...entry(7, 1, 0x77), range: { offsetBytes: 4096, lengthBytes: 4096 } }, { ...entry(8, 1, 0x3c, 16), range: { offsetBytes: 4096, lengthBytes: 4096 } }]);
  for (let i = 5; i <= 8; i++) await store.appendRaftEntries(b.groupId, [entry(i, 1, 0x50 + i)]);
  await store.closeWithoutCheckpoint();
  damage(t.dir, Buffer.alloc(16, 0x3c), 5); // entry 8: its 16 bytes are all it has
  store = await open(t.dir);
  assert.equal(store.lostRaftEntries(a.groupId), [{ index: 8, range: { offsetBytes: 4096, lengthBytes: 4096 } }]);
  applyWrite(store, 7, 4096, 4096);
  assert.is(store.applyLostEntry(a.groupId, 8), 0, "a trim loses nothing");
  assert.ok(store.read(a.groupId, 4096, 4096).equals(Buffer.alloc(4096)));
  // A replica with peers cuts before the lost entry instead, and owes its vote up to the last index it held.
  await store.appendRaftEntries(a.groupId, [9, 10].map((i) => ({ ...entry(i, 1, 0x70 + i), range: { offsetBytes: 0, lengthBytes: 4096 } })));
  store.cutRaftLog(a.groupId, 9);
  st = store.raftState(a.groupId);
  assert.equal([st.lastIndex, st.recoverUntil], [8, 10]);
  await store.close();
  store = await open(t.dir);
  assert.equal([store.raftState(a.groupId).lastIndex, store.raftState(a.groupId).recoverUntil], [8, 10], "the debt is in the checkpoint");
  await store.close();
  t.remove();
});

test.run();

/** Applies entry `index` as a write of its first `length` bytes at `offset`, its data read back from the log (as the driver does after a restart). */
function applyWrite(store: Store, index: number, offset: number, length: number): void {
  const [e] = store.raftEntries(a.groupId, index, index + 1, Number.MAX_SAFE_INTEGER);
  store.applyEntryWrite(a.groupId, index, offset, length, e!.data.subarray(0, length));
}
