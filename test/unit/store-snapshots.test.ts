// Volume snapshots in the store (docs/architecture.md, "Snapshots"): a
// snapshot shares its volume's block map chunk by chunk until either changes,
// keeps its content across a checkpointed restart and across a crash before
// any checkpoint (the volume's log takes it again), keeps what GC would move,
// starts a clone that shares its extents, and a rollback rewrites only what
// changed since it.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Prng } from "../../src/base/prng.js";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { VolumeOpKind } from "../../src/replication/volume-op.js";
import { snapshotGroupId, Store } from "../../src/store/store.js";
import { segmentBytes } from "../../src/constants.js";
import { replayed, writesTo } from "../helpers/store-writes.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;

function open(dir: string, specs: { groupId: number; sizeBytes: number }[]): Promise<Store> {
  return Store.open({ disk: new NodeDisk(dir), defer: deferImmediate }, specs).then((s) => replayed(s, specs.map((sp) => sp.groupId)));
}

function random(prng: Prng, n: number): Buffer {
  const b = Buffer.alloc(n);
  prng.fill(b);
  return b;
}

function assertReads(store: Store, groupId: number, want: Buffer, what: string): void {
  const step = 4 * MiB;
  for (let at = 0; at < want.length; at += step) {
    const got = store.read(groupId, at, Math.min(step, want.length - at));
    if (got.equals(want.subarray(at, at + got.length))) continue;
    let i = 0;
    while (got[i] === want[at + i]) i++;
    assert.unreachable(`${what}: byte ${at + i} is ${got[i]}, not ${want[at + i]}`);
  }
}

const take = (id: number) => ({ kind: VolumeOpKind.SnapshotCreate as const, snapshotId: id });
const drop = (id: number) => ({ kind: VolumeOpKind.SnapshotDelete as const, snapshotId: id });

test("a snapshot keeps the volume as it was at its entry; the volume goes on changing; only changed data is its own", async () => {
  const t = tempDir("snap");
  const spec = { groupId: 3, sizeBytes: 16 * MiB };
  let store = await open(t.dir, [spec]);
  const w = writesTo(store);
  const prng = new Prng(1);
  const before = Buffer.alloc(spec.sizeBytes);
  random(prng, 8 * MiB).copy(before, 0); // the second half is a hole
  await w.write(spec.groupId, 0, [before.subarray(0, 8 * MiB)], 8 * MiB);
  await w.snapshot(spec.groupId, take(1));
  const snap = snapshotGroupId(spec.groupId, 1);
  assert.equal(store.snapshotIds(spec.groupId), [1]);
  assert.equal(store.snapshotUsage(spec.groupId, 1), { allocatedBytes: 8 * MiB, exclusiveBytes: 0 }, "shares everything with the volume");

  const now = Buffer.from(before);
  const b = random(prng, MiB);
  b.copy(now, 2 * MiB);
  await w.write(spec.groupId, 2 * MiB, [b], MiB);
  await w.trim(spec.groupId, 5 * MiB, MiB);
  now.fill(0, 5 * MiB, 6 * MiB);
  const c = random(prng, 512 * 1024);
  c.copy(now, 12 * MiB);
  await w.write(spec.groupId, 12 * MiB, [c], c.length);
  assertReads(store, spec.groupId, now, "volume");
  assertReads(store, snap, before, "snapshot");
  assert.equal(store.snapshotUsage(spec.groupId, 1), { allocatedBytes: 8 * MiB, exclusiveBytes: 2 * MiB }, "the overwritten and the trimmed MiB are the snapshot's alone");
  assert.equal(store.blockStatus(snap, 0, spec.sizeBytes), [{ lengthBytes: 8 * MiB, hole: false }, { lengthBytes: 8 * MiB, hole: true }]);

  // A checkpointed restart: the snapshot comes back from the checkpoint, and shares its chunks again.
  await store.close();
  store = await open(t.dir, [spec]);
  assertReads(store, snap, before, "snapshot after a clean restart");
  assertReads(store, spec.groupId, now, "volume after a clean restart");
  assert.equal(store.snapshotUsage(spec.groupId, 1), { allocatedBytes: 8 * MiB, exclusiveBytes: 2 * MiB });

  // Dropped through the log: gone, and again after a crash (replayed from the log, no checkpoint).
  await writesTo(store).snapshot(spec.groupId, drop(1));
  assert.equal(store.snapshotIds(spec.groupId), []);
  await store.closeWithoutCheckpoint();
  store = await open(t.dir, [spec]);
  assert.equal(store.snapshotIds(spec.groupId), []);
  assertReads(store, spec.groupId, now, "volume after the drop and a crash");
  await store.close();
  t.remove();
});

test("a crash before any checkpoint: the volume's log takes the snapshot again at the same entry", async () => {
  const t = tempDir("snap");
  const spec = { groupId: 4, sizeBytes: 8 * MiB };
  let store = await open(t.dir, [spec]);
  const w = writesTo(store);
  const prng = new Prng(2);
  const before = random(prng, spec.sizeBytes);
  await w.write(spec.groupId, 0, [before], before.length);
  await w.snapshot(spec.groupId, take(7));
  const after = random(prng, spec.sizeBytes);
  await w.write(spec.groupId, 0, [after], after.length);
  await store.closeWithoutCheckpoint();
  store = await open(t.dir, [spec]);
  assert.equal(store.snapshotIds(spec.groupId), [7]);
  assertReads(store, snapshotGroupId(spec.groupId, 7), before, "snapshot after a crash");
  assertReads(store, spec.groupId, after, "volume after a crash");
  await store.close();
  t.remove();
});

test("a snapshot copy (a replica that missed the entry): only differing blocks are written, a crash before it finishes leaves nothing, a finished one is kept", async () => {
  const t = tempDir("snap");
  const spec = { groupId: 5, sizeBytes: 8 * MiB };
  let store = await open(t.dir, [spec]);
  const w = writesTo(store);
  const prng = new Prng(3);
  // The volume here as it is now; the snapshot (elsewhere) differs in one MiB and has a hole where the volume has data.
  const volume = random(prng, spec.sizeBytes);
  await w.write(spec.groupId, 0, [volume], volume.length);
  const snapshot = Buffer.from(volume);
  random(prng, MiB).copy(snapshot, 2 * MiB);
  snapshot.fill(0, 6 * MiB, 7 * MiB);
  const copyInto = async (s: Store): Promise<number> => {
    const staging = s.beginSnapshotCopy(spec.groupId, 9, spec.sizeBytes);
    await s.writeStaged(staging, 2 * MiB, [snapshot.subarray(2 * MiB, 3 * MiB)], MiB);
    await s.trimStaged(staging, 6 * MiB, MiB);
    return staging;
  };
  await copyInto(store);
  await store.closeWithoutCheckpoint(); // a crash before finishSnapshotCopy
  store = await open(t.dir, [spec]);
  assert.equal(store.snapshotIds(spec.groupId), [], "an unfinished copy is dropped by the restart");
  assertReads(store, spec.groupId, volume, "the volume after the dropped copy");
  await copyInto(store);
  await store.finishSnapshotCopy(spec.groupId, 9, 41);
  assert.equal(store.snapshotIds(spec.groupId), [9]);
  assert.equal(store.snapshotUsage(spec.groupId, 9), { allocatedBytes: 7 * MiB, exclusiveBytes: MiB }, "only the differing MiB is the copy's own");
  await store.closeWithoutCheckpoint(); // finishSnapshotCopy resolved after its checkpoint: nothing else holds it
  store = await open(t.dir, [spec]);
  assert.equal(store.snapshotIds(spec.groupId), [9]);
  assert.is(store.snapshotIndex(spec.groupId, 9), 41);
  assertReads(store, snapshotGroupId(spec.groupId, 9), snapshot, "the copied snapshot after a crash");
  assertReads(store, spec.groupId, volume, "the volume after a crash");
  await store.close();
  t.remove();
});

test("a clone starts from a snapshot sharing its extents (nothing written but a checkpoint), its Raft log compacted at entry 1; a crash keeps it, and it changes apart from the snapshot", async () => {
  const t = tempDir("snap");
  const spec = { groupId: 5, sizeBytes: 8 * MiB };
  const clone = { groupId: 6, sizeBytes: 8 * MiB };
  let store = await open(t.dir, [spec]);
  let w = writesTo(store);
  const prng = new Prng(4);
  const taken = random(prng, spec.sizeBytes);
  taken.fill(0, 4 * MiB, 5 * MiB);
  await w.write(spec.groupId, 0, [taken], taken.length);
  await w.trim(spec.groupId, 4 * MiB, MiB);
  await w.snapshot(spec.groupId, take(9));
  const later = random(prng, MiB);
  await w.write(spec.groupId, 0, [later], MiB);
  const appended = store.stats()["logBytesAppended"]!;
  await store.cloneFromSnapshot(clone.groupId, spec.groupId, 9, { voters: [1, 2], learners: [] });
  assert.is(store.stats()["logBytesAppended"]! - appended, 0, "no data is written for a clone");
  assertReads(store, clone.groupId, taken, "the clone is the snapshot");
  assert.equal(store.blockStatus(clone.groupId, 4 * MiB, MiB), [{ lengthBytes: MiB, hole: true }], "a hole in the snapshot is one in the clone");
  const st = store.raftState(clone.groupId);
  assert.equal([st.snapshotIndex, st.lastIndex, st.appliedIndex, st.hardState.term], [1, 1, 1, 1]);
  assert.equal(store.raftSnapshotConf(clone.groupId), { voters: [1, 2], learners: [] });
  await store.closeWithoutCheckpoint(); // cloneFromSnapshot resolved after its checkpoint
  store = await open(t.dir, [spec, clone]);
  w = writesTo(store);
  assertReads(store, clone.groupId, taken, "the clone after a crash");
  assert.equal(store.raftSnapshotConf(clone.groupId), { voters: [1, 2], learners: [] });
  const own = random(prng, MiB);
  await w.write(clone.groupId, 2 * MiB, [own], MiB);
  await store.closeWithoutCheckpoint(); // the clone's own write is in its log (entry 2)
  store = await open(t.dir, [spec, clone]);
  const want = Buffer.from(taken);
  own.copy(want, 2 * MiB);
  assertReads(store, clone.groupId, want, "the clone's own write after a crash");
  assertReads(store, snapshotGroupId(spec.groupId, 9), taken, "the snapshot is not changed by the clone's write");
  const volume = Buffer.from(taken);
  later.copy(volume, 0);
  assertReads(store, spec.groupId, volume, "the volume is not changed by the clone's write");
  await store.close();
  t.remove();
});

test("GC moves a snapshot's data and never loses it, also across a crash right after", async () => {
  const t = tempDir("snap");
  const spec = { groupId: 5, sizeBytes: 48 * MiB };
  let store = await open(t.dir, [spec]);
  const prng = new Prng(3);
  const before = random(prng, spec.sizeBytes);
  for (let at = 0; at < spec.sizeBytes; at += MiB) await writesTo(store).write(spec.groupId, at, [before.subarray(at, at + MiB)], MiB);
  await writesTo(store).snapshot(spec.groupId, take(1));
  // Overwrite the volume until the segments holding the snapshot's data are mostly dead for the volume.
  const now = Buffer.alloc(spec.sizeBytes);
  for (let round = 0; round < 6; round++) {
    const ps: Promise<void>[] = [];
    for (let at = 0; at < spec.sizeBytes; at += MiB) {
      const d = random(prng, MiB);
      d.copy(now, at);
      ps.push(writesTo(store).write(spec.groupId, at, [d], MiB));
    }
    await Promise.all(ps);
  }
  await store.settle();
  const stats = store.stats();
  assert.ok(stats.gcSegments! >= 1, `GC freed segments: ${JSON.stringify(stats)}`);
  assertReads(store, snapshotGroupId(spec.groupId, 1), before, "snapshot after GC");
  assertReads(store, spec.groupId, now, "volume after GC");
  await store.closeWithoutCheckpoint();
  store = await open(t.dir, [spec]);
  assertReads(store, snapshotGroupId(spec.groupId, 1), before, "snapshot after GC and a crash");
  assertReads(store, spec.groupId, now, "volume after GC and a crash");

  // Dropping it frees its data: the live bytes fall by the snapshot's size.
  const live = store.stats().liveBytes!;
  await writesTo(store).snapshot(spec.groupId, drop(1));
  assert.is(live - store.stats().liveBytes!, spec.sizeBytes);
  await store.close();
  t.remove();
});

test("GC waits for a checkpoint that holds a new snapshot before it moves the snapshot's data", async () => {
  // The snapshot's data sits in a segment that is mostly dead and below the
  // last checkpoint, which does not know the snapshot: GC may collect that
  // segment only after a checkpoint that holds the snapshot, or a crash would
  // make the snapshot again from a map that points into the freed segment.
  const t = tempDir("snap");
  const spec = { groupId: 8, sizeBytes: 48 * MiB };
  let store = await open(t.dir, [spec]);
  const prng = new Prng(5);
  const image = Buffer.alloc(spec.sizeBytes);
  const round = async (length: number): Promise<void> => {
    const ps: Promise<void>[] = [];
    for (let at = 0; at < length; at += MiB) {
      const d = random(prng, MiB);
      d.copy(image, at);
      ps.push(writesTo(store).write(spec.groupId, at, [d], MiB));
    }
    await Promise.all(ps);
  };
  await round(spec.sizeBytes);
  await round(40 * MiB);
  await store.checkpoint();
  await writesTo(store).snapshot(spec.groupId, take(1));
  const before = Buffer.from(image);
  for (let r = 0; r < 3; r++) await round(spec.sizeBytes);
  store.maintain(); // what the next sealed segment would start
  await store.settle();
  assert.ok(store.stats().gcSegments! >= 1, `GC ran: ${JSON.stringify(store.stats())}`);
  assertReads(store, snapshotGroupId(spec.groupId, 1), before, "snapshot after GC");
  await store.closeWithoutCheckpoint();
  store = await open(t.dir, [spec]);
  assertReads(store, snapshotGroupId(spec.groupId, 1), before, "snapshot after GC and a crash");
  assertReads(store, spec.groupId, image, "volume after GC and a crash");
  await store.close();
  t.remove();
});

test("space: ten snapshots of a 256 MiB volume with 10% rewritten between them hold about the rewritten data, not ten copies", async () => {
  const t = tempDir("snap");
  const spec = { groupId: 9, sizeBytes: 256 * MiB };
  const store = await open(t.dir, [spec]);
  const w = writesTo(store);
  const prng = new Prng(6);
  const write = async (at: number, length: number): Promise<void> => {
    const ps: Promise<void>[] = [];
    for (let x = at; x < at + length; x += MiB) ps.push(w.write(spec.groupId, x, [random(prng, MiB)], MiB));
    await Promise.all(ps);
  };
  await write(0, spec.sizeBytes);
  const rewrite = 25 * MiB + 616 * 1024; // 10% of the volume, whole KiB
  const rewritten = Math.floor(rewrite / MiB) * MiB;
  for (let i = 1; i <= 10; i++) {
    await w.snapshot(spec.groupId, take(i));
    await write((i * 23 * MiB) % (spec.sizeBytes - rewritten), rewritten);
  }
  await store.settle();
  // On disk: the sealed and head segments (free files, kept for reuse, hold nothing).
  const segments = store.stats().segments!;
  const disk = segments * segmentBytes;
  const bound = spec.sizeBytes + 10 * rewritten + 2 * segmentBytes; // plus the head segment and one partly filled
  console.log(`${segments} segments (${disk / MiB} MiB) for a 256 MiB volume and 10 snapshots with ${rewritten / MiB} MiB rewritten between them (bound ${bound / MiB} MiB; ten copies would be ${(11 * spec.sizeBytes) / MiB} MiB)`);
  assert.ok(disk <= bound, `${disk} bytes of segments, over the volume plus what was rewritten (${bound})`);
  const exclusive = store.snapshotIds(spec.groupId).reduce((n, id) => n + store.snapshotUsage(spec.groupId, id).exclusiveBytes, 0);
  assert.ok(exclusive <= 10 * rewritten, `what only the snapshots hold (${exclusive}) is at most what was rewritten`);
  await store.close();
  t.remove();
});

test("a rollback rewrites only what changed since the snapshot, and trims what it did not hold", async () => {
  const t = tempDir("snap");
  const spec = { groupId: 6, sizeBytes: 16 * MiB };
  const store = await open(t.dir, [spec]);
  const w = writesTo(store);
  const prng = new Prng(4);
  const before = Buffer.alloc(spec.sizeBytes);
  random(prng, 8 * MiB).copy(before, 0);
  await w.write(spec.groupId, 0, [before.subarray(0, 8 * MiB)], 8 * MiB);
  await w.snapshot(spec.groupId, take(2));
  await w.write(spec.groupId, MiB, [random(prng, MiB)], MiB); // data over data
  await w.trim(spec.groupId, 4 * MiB, MiB); // a hole over data
  await w.write(spec.groupId, 10 * MiB, [random(prng, 2 * MiB)], 2 * MiB); // data over a hole
  const done = await w.rollback(spec.groupId, 2);
  assert.equal(done, { writtenBytes: 2 * MiB, trimmedBytes: 2 * MiB });
  assertReads(store, spec.groupId, before, "volume after the rollback");
  assert.equal(store.blockStatus(spec.groupId, 0, spec.sizeBytes), [{ lengthBytes: 8 * MiB, hole: false }, { lengthBytes: 8 * MiB, hole: true }]);
  assert.equal(await w.rollback(spec.groupId, 2), { writtenBytes: 0, trimmedBytes: 0 }, "nothing left to do");
  await store.close();
  t.remove();
});

test.run();
