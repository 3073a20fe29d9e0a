// The log-structured store over real files: round trips, holes, unaligned
// writes, recovery of torn tails, refusal of mid-log corruption, checkpoint +
// replay, and garbage collection that keeps every live byte.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { openSync, readSync, writeSync, closeSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { Prng } from "../../src/base/prng.js";
import { commitsInFlightMax, freeSegmentsMax, recordHeaderBytes, segmentBytes } from "../../src/constants.js";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { ChecksumError, CorruptionError } from "../../src/store/errors.js";
import { Store } from "../../src/store/store.js";
import { segmentName } from "../../src/store/segment-names.js";
import { tempDir } from "../helpers/tmp.js";
import { replayed, writesTo } from "../helpers/store-writes.js";
import { payloadBytesOf } from "../../src/store/record.js";
import { encodeWrite } from "../../src/replication/volume-op.js";

const MiB = 1024 * 1024;
const group = { groupId: 7, sizeBytes: 64 * MiB };

function open(dir: string, specs = [group]): Promise<Store> {
  return Store.open({ disk: new NodeDisk(dir), defer: deferImmediate }, specs).then((s) => replayed(s, specs.map((sp) => sp.groupId)));
}

/** A model of the volume: what every byte must read back as. */
class Model {
  readonly bytes: Buffer;
  constructor(size: number) {
    this.bytes = Buffer.alloc(size);
  }
  write(offset: number, data: Buffer): void {
    data.copy(this.bytes, offset);
  }
  zero(offset: number, length: number): void {
    this.bytes.fill(0, offset, offset + length);
  }
}

function assertMatches(store: Store, model: Model, groupId = group.groupId): void {
  const chunk = 4 * MiB;
  for (let at = 0; at < model.bytes.length; at += chunk) {
    const got = store.read(groupId, at, chunk);
    if (!got.equals(model.bytes.subarray(at, at + chunk))) {
      let i = 0;
      while (got[i] === model.bytes[at + i]) i++;
      assert.unreachable(`byte ${at + i} differs: got ${got[i]}, want ${model.bytes[at + i]}`);
    }
  }
}

function random(prng: Prng, n: number): Buffer {
  const b = Buffer.alloc(n);
  prng.fill(b);
  return b;
}

test("writes read back, holes read as zeroes, unaligned writes merge", async () => {
  const t = tempDir("store");
  const store = await open(t.dir);
  const model = new Model(group.sizeBytes);
  const prng = new Prng(1);
  const writes: Promise<void>[] = [];
  for (let i = 0; i < 200; i++) {
    const offset = prng.int(group.sizeBytes / 4096) * 4096;
    const data = random(prng, 4096 * (1 + prng.int(8)));
    if (offset + data.length > group.sizeBytes) continue;
    model.write(offset, data);
    writes.push(writesTo(store).write(group.groupId, offset, [data.subarray(0, 100), data.subarray(100)], data.length));
  }
  await Promise.all(writes);
  // Unaligned writes, including two halves of one sector issued concurrently.
  const a = random(prng, 300);
  const b = random(prng, 212);
  model.write(1000, a);
  model.write(1300, b);
  await Promise.all([writesTo(store).write(group.groupId, 1000, [a], 300), writesTo(store).write(group.groupId, 1300, [b], 212)]);
  const c = random(prng, 5000);
  model.write(12345, c);
  await writesTo(store).write(group.groupId, 12345, [c], c.length);
  assertMatches(store, model);
  assert.ok(store.read(group.groupId, group.sizeBytes - 4096, 4096).equals(model.bytes.subarray(group.sizeBytes - 4096)));
  assert.throws(() => store.read(group.groupId, group.sizeBytes - 10, 11), /outside the volume/);
  await store.close();
  t.remove();
});

test("trim and write-zeroes make holes that block status reports", async () => {
  const t = tempDir("store");
  const store = await open(t.dir);
  const data = Buffer.alloc(MiB, 0xab);
  await writesTo(store).write(group.groupId, 0, [data], MiB);
  assert.equal(store.blockStatus(group.groupId, 0, 2 * MiB), [
    { lengthBytes: MiB, hole: false },
    { lengthBytes: MiB, hole: true },
  ]);
  await writesTo(store).trim(group.groupId, 4096, 8192);
  await writesTo(store).writeZeroes(group.groupId, 65536 + 100, 8192, false); // unaligned edges are written as zeroes
  const back = store.read(group.groupId, 0, MiB);
  const want = Buffer.from(data);
  want.fill(0, 4096, 4096 + 8192);
  want.fill(0, 65536 + 100, 65536 + 100 + 8192);
  assert.ok(back.equals(want));
  const status = store.blockStatus(group.groupId, 0, MiB);
  assert.equal(status.slice(0, 3), [
    { lengthBytes: 4096, hole: false },
    { lengthBytes: 8192, hole: true },
    { lengthBytes: 65536 + 512 - 4096 - 8192, hole: false },
  ]);
  await writesTo(store).writeZeroes(group.groupId, 0, 4096, true); // NO_HOLE keeps it allocated
  assert.is(store.blockStatus(group.groupId, 0, 4096)[0]!.hole, false);
  assert.ok(store.read(group.groupId, 0, 4096).equals(Buffer.alloc(4096)));
  await store.close();
  t.remove();
});

test("checkpoint + replay of the log tail equals the state before", async () => {
  const t = tempDir("store");
  const prng = new Prng(2);
  const model = new Model(group.sizeBytes);
  let store = await open(t.dir);
  const doWrites = async (n: number): Promise<void> => {
    const ps: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      const offset = prng.int(group.sizeBytes / 512 - 64) * 512;
      const data = random(prng, 512 * (1 + prng.int(64)));
      model.write(offset, data);
      ps.push(writesTo(store).write(group.groupId, offset, [data], data.length));
      if (i % 10 === 9) {
        const z = prng.int(group.sizeBytes / 4096 - 4) * 4096;
        model.zero(z, 8192);
        ps.push(writesTo(store).trim(group.groupId, z, 8192));
      }
      if (i % 50 === 49) await Promise.all(ps.splice(0)); // keep overlapping writes ordered
    }
    await Promise.all(ps);
  };
  await doWrites(300);
  await store.checkpoint();
  await doWrites(300);
  const before = store.stats();
  await store.closeWithoutCheckpoint();
  store = await open(t.dir);
  assert.ok(store.stats().recordsReplayed! > 300, "the tail after the checkpoint was replayed");
  assert.ok(before.recordsCommitted! > 600);
  assertMatches(store, model);
  // And once more through a clean close (final checkpoint, nothing to replay).
  await store.close();
  store = await open(t.dir);
  assert.is(store.stats().recordsReplayed, 0);
  assertMatches(store, model);
  await store.close();
  t.remove();
});

/** Position just past the last valid record of the head segment: found by parsing record lengths. */
function recordPositions(file: string): number[] {
  const fd = openSync(file, "r");
  const header = Buffer.alloc(recordHeaderBytes);
  const positions: number[] = [];
  let at = 0;
  for (;;) {
    readSync(fd, header, 0, recordHeaderBytes, at);
    if (header.readUInt32LE(0) !== 0x52445850) break;
    positions.push(at);
    at += recordHeaderBytes + payloadBytesOf(header[4]!, header.readUInt32LE(56));
  }
  closeSync(fd);
  return positions;
}

function flipByte(file: string, position: number): void {
  const fd = openSync(file, "r+");
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, position);
  b[0] = b[0]! ^ 0x40;
  writeSync(fd, b, 0, 1, position);
  closeSync(fd);
}

test("recovery truncates a torn tail and keeps every earlier commit", async () => {
  const t = tempDir("store");
  const model = new Model(group.sizeBytes);
  let store = await open(t.dir);
  for (let i = 0; i < 20; i++) {
    const data = Buffer.alloc(4096, i + 1);
    model.write(i * 4096, data);
    await writesTo(store).write(group.groupId, i * 4096, [data], 4096); // one commit each
  }
  const last = Buffer.alloc(4096, 0xee);
  await writesTo(store).write(group.groupId, 0, [last], 4096);
  await store.closeWithoutCheckpoint();
  // Tear the last commit: its payload only half reached the disk.
  const seg = join(t.dir, segmentName(1));
  const positions = recordPositions(seg);
  assert.is(positions.length, 21);
  flipByte(seg, positions[20]! + recordHeaderBytes + 3000);
  store = await open(t.dir);
  assert.is(store.stats().tornBytesZeroed, recordHeaderBytes + encodeWrite(0, [last], 4096).length);
  assertMatches(store, model); // block 0 holds its first write again; the torn one was never acknowledged
  const again = Buffer.alloc(4096, 0x77);
  model.write(8192, again);
  await writesTo(store).write(group.groupId, 8192, [again], 4096);
  await store.closeWithoutCheckpoint();
  store = await open(t.dir);
  assertMatches(store, model);
  await store.close();
  t.remove();
});

test("a tail torn inside a commit of several records drops the whole commit, and the log goes on where it began", async () => {
  const t = tempDir("store");
  const model = new Model(group.sizeBytes);
  let store = await open(t.dir);
  const first = Buffer.alloc(4096, 1);
  model.write(0, first);
  await writesTo(store).write(group.groupId, 0, [first], 4096);
  // Three writes in one turn share one commit: records 1-3 of the segment.
  await Promise.all([0x21, 0x22, 0x23].map((b, i) => writesTo(store).write(group.groupId, (i + 1) * 4096, [Buffer.alloc(4096, b)], 4096)));
  await store.closeWithoutCheckpoint();
  // The crash tore the commit after its first record: that record is whole, the other two are not.
  const seg = join(t.dir, segmentName(1));
  const positions = recordPositions(seg);
  assert.is(positions.length, 4);
  flipByte(seg, positions[2]! + recordHeaderBytes + 100);
  flipByte(seg, positions[3]! + recordHeaderBytes + 100);
  store = await open(t.dir);
  assertMatches(store, model); // none of the torn commit: not even its whole first record
  // The next commits start where the torn one did; a later crash must find them in sequence.
  for (let i = 0; i < commitsInFlightMax + 2; i++) {
    const data = Buffer.alloc(4096, 0x40 + i);
    model.write((8 + i) * 4096, data);
    await writesTo(store).write(group.groupId, (8 + i) * 4096, [data], 4096);
  }
  await store.closeWithoutCheckpoint();
  store = await open(t.dir);
  assertMatches(store, model);
  await store.close();
  t.remove();
});

/** Ten writes of one block each, one commit each, then a crash: the segment and where each record starts. */
async function tenCommitsThenCrash(dir: string): Promise<{ seg: string; positions: number[] }> {
  const store = await open(dir);
  for (let i = 0; i < 10; i++) await writesTo(store).write(group.groupId, i * 4096, [Buffer.alloc(4096, i + 1)], 4096);
  await store.closeWithoutCheckpoint();
  const seg = join(dir, segmentName(1));
  return { seg, positions: recordPositions(seg) };
}

test("a flipped byte in a snapshot's staged data in the middle of the log: the store opens without installing the copy, and the group owes its vote until it gets one", async () => {
  // Local writes are a snapshot's staged data, installed as the group's state in one record.
  const t = tempDir("store");
  let store = await open(t.dir);
  const staging = store.beginStaging(group.groupId);
  for (let i = 0; i < 10; i++) await store.writeStaged(staging, i * 4096, [Buffer.alloc(4096, i + 1)], 4096);
  await store.installSnapshot(group.groupId, 1, 1, { voters: [1], learners: [] });
  await store.closeWithoutCheckpoint();
  const seg = join(t.dir, segmentName(1));
  const positions = recordPositions(seg).slice(1); // after the staging group's initial trim
  flipByte(seg, positions[4]! + recordHeaderBytes + 10); // payload of commit 5 of 10: acknowledged, commits after it
  store = await open(t.dir);
  assert.ok(store.stats().damagedRecords! >= 1);
  const st = store.raftState(group.groupId);
  assert.equal([st.snapshotIndex, st.lastIndex, st.recoverUntil], [0, 0, 1], "not installed; the leader resends the copy");
  assert.ok(store.read(group.groupId, 0, 10 * 4096).equals(Buffer.alloc(10 * 4096)), "the group as it was before the copy");
  await store.close();
  t.remove();
});

test("a flipped byte in a record header in the middle of the log is refused: nothing says whose data it was", async () => {
  const t = tempDir("store");
  const { seg, positions } = await tenCommitsThenCrash(t.dir);
  flipByte(seg, positions[4]! + 30); // the group id field of commit 5 of 10
  try {
    await open(t.dir);
    assert.unreachable("open must refuse a log with a damaged acknowledged record header");
  } catch (e) {
    assert.instance(e, CorruptionError);
    assert.match((e as Error).message, /segment 1 at byte \d+: a record whose header is damaged/);
  }
  flipByte(seg, positions[4]! + 30); // repaired: it opens again with all data
  const store = await open(t.dir);
  for (let i = 0; i < 10; i++) assert.ok(store.read(group.groupId, i * 4096, 4096).equals(Buffer.alloc(4096, i + 1)));
  await store.close();
  t.remove();
});

test("a damaged record inside the last commit window reads as a torn tail: earlier commits stay", async () => {
  // The log writes commit s only once commit s - commitsInFlightMax is durable,
  // so damage in one of the last commitsInFlightMax commits cannot be told from
  // a crash mid-commit; everything before it must survive.
  const t = tempDir("store");
  let store = await open(t.dir);
  for (let i = 0; i < 10; i++) await writesTo(store).write(group.groupId, i * 4096, [Buffer.alloc(4096, i + 1)], 4096);
  await store.closeWithoutCheckpoint();
  const seg = join(t.dir, segmentName(1));
  const positions = recordPositions(seg);
  const damaged = 10 - commitsInFlightMax + 1; // 1-based commit number, within the window of the last commit
  flipByte(seg, positions[damaged - 1]! + recordHeaderBytes + 10);
  store = await open(t.dir);
  for (let i = 0; i < damaged - 1; i++) assert.ok(store.read(group.groupId, i * 4096, 4096).equals(Buffer.alloc(4096, i + 1)), `commit ${i + 1}`);
  assert.ok(store.read(group.groupId, (damaged - 1) * 4096, 4096).equals(Buffer.alloc(4096)), "the damaged commit is gone");
  await store.close();
  t.remove();
});

test("GC copies no live data while the segments hold under 1.5x of it, and frees wholly dead segments", async () => {
  const t = tempDir("store");
  const spec = { groupId: 11, sizeBytes: 512 * MiB };
  let store = await open(t.dir, [spec]);
  const model = new Model(spec.sizeBytes);
  const prng = new Prng(5);
  const writeRange = async (from: number, to: number): Promise<void> => {
    const ps: Promise<void>[] = [];
    for (let at = from; at < to; at += MiB) {
      const data = random(prng, MiB);
      model.write(at, data);
      ps.push(writesTo(store).write(spec.groupId, at, [data], MiB));
    }
    await Promise.all(ps);
  };
  // Eight segments of live data, then 36 of every 64 MiB of the first four
  // overwritten: those four are 44% live (GC candidates by the live ratio),
  // but the segments hold about 1.25x the live data: nothing is worth copying.
  const overwrite = async (): Promise<void> => {
    for (let s = 0; s < 4; s++) await writeRange(s * 64 * MiB, s * 64 * MiB + 36 * MiB);
  };
  await writeRange(0, spec.sizeBytes);
  await overwrite();
  await store.settle();
  let stats = store.stats();
  assert.is(stats.gcBytesMoved, 0, `no live data copied: ${JSON.stringify(stats)}`);
  // The same ranges again: the segments holding the first overwrite die
  // wholly and are freed, still without copying anything.
  await overwrite();
  await store.settle();
  stats = store.stats();
  assert.is(stats.gcBytesMoved, 0, `still no live data copied: ${JSON.stringify(stats)}`);
  assert.ok(stats.gcSegments! >= 1, `dead segments freed: ${JSON.stringify(stats)}`);
  assert.ok(stats.diskBytes! <= 1.5 * spec.sizeBytes + (2 + freeSegmentsMax) * segmentBytes, `disk bounded: ${JSON.stringify(stats)}`);
  assertMatches(store, model, spec.groupId);
  await store.closeWithoutCheckpoint();
  store = await open(t.dir, [spec]);
  assertMatches(store, model, spec.groupId);
  await store.close();
  t.remove();
});

test("GC reclaims overwritten segments and keeps every live byte", async () => {
  const t = tempDir("store");
  const spec = { groupId: 9, sizeBytes: 48 * MiB };
  const keep = { groupId: 10, sizeBytes: 8 * MiB };
  let store = await open(t.dir, [spec, keep]);
  const model = new Model(spec.sizeBytes);
  const kept = random(new Prng(3), keep.sizeBytes);
  await writesTo(store).write(keep.groupId, 0, [kept], kept.length); // cold data sharing segments with hot data
  const prng = new Prng(4);
  for (let round = 0; round < 8; round++) {
    const ps: Promise<void>[] = [];
    for (let at = 0; at < spec.sizeBytes; at += MiB) {
      const data = random(prng, MiB);
      model.write(at, data);
      ps.push(writesTo(store).write(spec.groupId, at, [data], MiB));
    }
    await Promise.all(ps);
  }
  await store.settle();
  const stats = store.stats();
  const written = 8 * spec.sizeBytes + keep.sizeBytes;
  assert.ok(stats.logBytesAppended! >= written, "everything went through the log");
  assert.ok(stats.gcSegments! >= 3, `GC freed segments (${stats.gcSegments})`);
  const onDisk = readdirSync(t.dir).reduce((n, f) => n + statSync(join(t.dir, f)).size, 0);
  const why = `disk holds ${onDisk} bytes after writing ${written}: ${JSON.stringify(stats)}`;
  assert.ok(stats.segments! <= 3, why); // 56 MiB live fits one segment, plus the head and one being collected
  assert.ok(onDisk <= (stats.segments! + freeSegmentsMax) * segmentBytes + 2 * MiB, why);
  assertMatches(store, model, spec.groupId);
  assert.ok(store.read(keep.groupId, 0, keep.sizeBytes).equals(kept), "cold data survived relocation");
  await store.closeWithoutCheckpoint();
  store = await open(t.dir, [spec, keep]);
  assertMatches(store, model, spec.groupId);
  assert.ok(store.read(keep.groupId, 0, keep.sizeBytes).equals(kept), "relocations replay after a crash");
  await store.close();
  t.remove();
});

test.run();
