// Block checksums in the store, over real files: a byte changed on disk after
// the data was written is found by every read that touches it (and by GC
// before it copies), never returned; a good copy repairs it durably; partial
// writes keep the checksums of the blocks they share true, and refuse to
// vouch for a block that was already damaged; a checkpoint from before block
// checksums is upgraded by reading the data once.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { crc32c, crc32cCombine, Crc32cShift } from "../../src/base/crc32c.js";
import { Prng } from "../../src/base/prng.js";
import { checksumBlockBytes } from "../../src/constants.js";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { blockCrcsOf, foldBlockCrcs } from "../../src/store/checksums.js";
import { ChecksumError } from "../../src/store/errors.js";
import { Store, type GroupSpec } from "../../src/store/store.js";
import { segmentName } from "../../src/store/segment-names.js";
import { flipInFile } from "../helpers/flip.js";
import { tempDir } from "../helpers/tmp.js";
import { replayed, writesTo } from "../helpers/store-writes.js";
import { decodeOp, encodeWrite } from "../../src/replication/volume-op.js";

const MiB = 1024 * 1024;
const group = { groupId: 3, sizeBytes: 16 * MiB };

function open(dir: string, specs: GroupSpec[] = [group], onDamage?: (e: ChecksumError) => void): Promise<Store> {
  return Store.open({ disk: new NodeDisk(dir), defer: deferImmediate, ...(onDamage ? { onDamage } : {}) }, specs).then((s) => replayed(s, specs.map((sp) => sp.groupId)));
}

/** A block whose bytes say which block it is, so it can be found in a segment file. */
function marked(tag: string, bytes = checksumBlockBytes): Buffer {
  const b = Buffer.alloc(bytes);
  const text = Buffer.from(`pxd-test-block ${tag} `);
  for (let at = 0; at + text.length <= bytes; at += text.length) text.copy(b, at);
  return b;
}

/** Another replica's copy of blocks that says nothing of its Raft state (only a checksum match takes it). */
function copyOf(data: Uint8Array): { data: Uint8Array; damaged: number[]; applied: number } {
  return { data, damaged: [], applied: 0 };
}

/**
 * Appends a volume write as Raft entry `index` and applies it, as a replica
 * does; `damage` changes a byte of the entry on the way; `between` runs after
 * the entry is durable and before it is applied.
 */
async function applyWriteEntry(store: Store, index: number, offset: number, data: Buffer, damage?: number, between?: () => void): Promise<void> {
  const entry = Buffer.from(encodeWrite(offset, [data], data.length));
  if (damage !== undefined) entry[damage] = entry[damage]! ^ 1;
  await store.appendRaftEntries(group.groupId, [{ index, term: 1, type: 0, data: [entry] }], { term: 1, vote: 1, commit: index });
  between?.();
  const op = decodeOp(entry)!;
  store.applyEntryWrite(group.groupId, index, op.offsetBytes, op.lengthBytes, entry.subarray(0, op.lengthBytes), op.crcs);
}

function expectDamage(f: () => unknown, blocks: number[], what: string): ChecksumError {
  try {
    f();
  } catch (e) {
    assert.instance(e, ChecksumError, what);
    const err = e as ChecksumError;
    assert.equal([...err.blocks], blocks, `${what}: the damaged blocks`);
    assert.match(err.message, /log segment \d+, byte \d+/, `${what}: names where`);
    return err;
  }
  assert.unreachable(`${what}: the read returned damaged data`);
  throw new Error("unreachable");
}

test("CRC32C of concatenated pieces folds from the pieces' checksums", () => {
  const prng = new Prng(11);
  const shift = new Crc32cShift(checksumBlockBytes);
  for (let i = 0; i < 50; i++) {
    const a = Buffer.alloc(prng.int(9000));
    const b = Buffer.alloc(prng.int(9000));
    prng.fill(a);
    prng.fill(b);
    const whole = crc32c(Buffer.concat([a, b]));
    assert.is(crc32cCombine(crc32c(a), crc32c(b), b.length), whole, `lengths ${a.length} + ${b.length}`);
    const block = Buffer.alloc(checksumBlockBytes);
    prng.fill(block);
    assert.is(shift.combine(crc32c(a), crc32c(block)), crc32c(Buffer.concat([a, block])));
  }
  // Blocks split over buffers at odd places, and a short last block.
  const data = Buffer.alloc(3 * checksumBlockBytes + 1024);
  prng.fill(data);
  const crcs = blockCrcsOf([data.subarray(0, 100), data.subarray(100, 5000), data.subarray(5000)], 0, 4, 1024);
  for (let k = 0; k < 4; k++) assert.is(crcs[k], crc32c(data.subarray(k * checksumBlockBytes, Math.min(data.length, (k + 1) * checksumBlockBytes))));
  assert.is(foldBlockCrcs(crcs, 0, 4, 1024), crc32c(data));
});

test("a byte changed on disk after a checkpoint is found by every read that touches it, and repaired from a good copy", async () => {
  const t = tempDir("cks");
  let store = await open(t.dir);
  const good = marked("seven");
  await writesTo(store).write(group.groupId, 6 * 4096, [marked("six")], 4096);
  await writesTo(store).write(group.groupId, 7 * 4096, [good], 4096);
  await writesTo(store).write(group.groupId, 8 * 4096, [marked("eight")], 4096);
  await store.close(); // a clean stop: the checkpoint covers the data, recovery will not read it again
  flipInFile(join(t.dir, segmentName(1)), good, 1000);
  const damage: ChecksumError[] = [];
  store = await open(t.dir, [group], (e) => damage.push(e));
  assert.ok(store.read(group.groupId, 6 * 4096, 4096).equals(marked("six")), "the block before is fine");
  assert.ok(store.read(group.groupId, 8 * 4096, 4096).equals(marked("eight")), "the block after is fine");
  expectDamage(() => store.read(group.groupId, 7 * 4096, 4096), [7], "an aligned read of it");
  expectDamage(() => store.read(group.groupId, 6 * 4096, 3 * 4096), [7], "a read across it");
  expectDamage(() => store.read(group.groupId, 7 * 4096 + 3000, 10), [7], "ten bytes of it, away from the damaged byte");
  assert.equal(store.checkBlocks(group.groupId, 0, 16), [7]);
  assert.is(store.verify(group.groupId, 0, 16)?.blocks[0], 7);
  // What another replica would be sent: the damaged block as zeroes, the others as they are.
  const forRepair = store.readForRepair(group.groupId, 6, 3);
  assert.equal(forRepair.damaged, [7]);
  assert.ok(forRepair.data.subarray(4096, 8192).every((x) => x === 0) && forRepair.data.subarray(0, 4096).equals(marked("six")));
  // A copy that does not match the checksum is not taken; the right one is.
  assert.equal(await store.repairBlocks(group.groupId, 7, 1, copyOf(marked("not seven"))), []);
  assert.equal(await store.repairBlocks(group.groupId, 7, 1, copyOf(good)), [7]);
  assert.ok(store.read(group.groupId, 7 * 4096, 4096).equals(good));
  // The repair is durable: a crash right after it replays the Relocate.
  await store.closeWithoutCheckpoint();
  store = await open(t.dir);
  assert.ok(store.read(group.groupId, 6 * 4096, 3 * 4096).equals(Buffer.concat([marked("six"), good, marked("eight")])));
  await store.close();
  t.remove();
});

test("partial writes keep the checksums of the blocks they share; a partial write over a damaged block does not vouch for it", async () => {
  const t = tempDir("cks");
  let store = await open(t.dir);
  const prng = new Prng(7);
  const model = Buffer.alloc(group.sizeBytes);
  const write = async (offset: number, length: number): Promise<void> => {
    const data = Buffer.alloc(length);
    prng.fill(data);
    data.copy(model, offset);
    await writesTo(store).write(group.groupId, offset, [data], length);
  };
  // Sector-aligned pieces of blocks, unaligned bytes, trims and zeroes at odd places.
  for (let i = 0; i < 300; i++) {
    const offset = prng.int(256) * 512 + (i % 3 === 0 ? prng.int(512) : 0);
    const length = 1 + prng.int(3 * 4096);
    if (i % 17 === 0) {
      await writesTo(store).trim(group.groupId, offset, length);
      const from = Math.ceil(offset / 512) * 512;
      const to = Math.floor((offset + length) / 512) * 512;
      if (to > from) model.fill(0, from, to);
    } else if (i % 13 === 0) {
      await writesTo(store).writeZeroes(group.groupId, offset, length, false);
      model.fill(0, offset, offset + length);
    } else await write(offset, length);
  }
  const check = (what: string): void => assert.ok(store.read(group.groupId, 0, MiB).equals(model.subarray(0, MiB)), what);
  check("live");
  await store.closeWithoutCheckpoint();
  store = await open(t.dir);
  check("after replaying the log");
  await store.close();
  store = await open(t.dir);
  check("after a checkpoint");
  // Damage block 20, then write a sector of it: the rest of the block is not vouched for any more.
  await write(20 * 4096, 4096);
  await store.close();
  flipInFile(join(t.dir, segmentName(1)), model.subarray(20 * 4096 + 512, 20 * 4096 + 1024), 100);
  store = await open(t.dir);
  await write(20 * 4096, 512);
  assert.is(store.stats().blocksPoisoned, 1);
  expectDamage(() => store.read(group.groupId, 20 * 4096, 512), [20], "the sector just written, in a block that was damaged");
  // Rewritten whole, the block is good again.
  await write(20 * 4096, 4096);
  check("after the block was rewritten whole");
  await store.close();
  t.remove();
});

test("a volume whose size is not a whole number of blocks: the last, short block is checked too", async () => {
  const t = tempDir("cks");
  const odd = { groupId: 5, sizeBytes: 3 * 4096 + 1536 };
  let store = await open(t.dir, [odd]);
  const tail = marked("tail", 1536);
  await writesTo(store).write(odd.groupId, 3 * 4096, [tail], 1536);
  await writesTo(store).write(odd.groupId, 0, [Buffer.alloc(odd.sizeBytes, 0x5a)], odd.sizeBytes);
  await writesTo(store).write(odd.groupId, 3 * 4096 + 512, [tail.subarray(0, 512)], 512);
  const want = Buffer.alloc(odd.sizeBytes, 0x5a);
  tail.copy(want, 3 * 4096 + 512, 0, 512);
  assert.ok(store.read(odd.groupId, 0, odd.sizeBytes).equals(want));
  await store.close();
  store = await open(t.dir, [odd]);
  assert.ok(store.read(odd.groupId, 3 * 4096, 1536).equals(want.subarray(3 * 4096)));
  assert.equal(store.checkBlocks(odd.groupId, 0, 4), []);
  await store.close();
  t.remove();
});

test("GC reports a damaged block and moves it as it is: it still fails its checksum, GC goes on, and a repair mends it", async () => {
  const t = tempDir("cks");
  const big = { groupId: 9, sizeBytes: 256 * MiB };
  let store = await open(t.dir, [big]);
  const junk = Buffer.alloc(MiB, 1);
  const overwrite = async (times: number): Promise<void> => {
    for (let i = 0; i < times; i++) await writesTo(store).write(big.groupId, MiB, [junk], MiB);
    store.maintain();
    await store.settle();
  };
  const survivor = marked("survivor");
  await writesTo(store).write(big.groupId, 0, [survivor], 4096);
  await overwrite(70); // the survivor's segment is sealed, and all else in it is dead
  await store.close();
  const where = segmentHolding(t.dir, survivor);
  flipInFile(join(t.dir, where), survivor, 2000);
  const damage: ChecksumError[] = [];
  store = await open(t.dir, [big], (e) => damage.push(e));
  // More overwrites: GC wants the survivor's segment (it is almost all dead) and finds the damage.
  await overwrite(140);
  assert.ok(damage.length >= 1 && damage.every((e) => e.blocks.length === 1 && e.blocks[0] === 0), "GC reported the damaged block");
  assert.not.ok(existsSync(join(t.dir, where)), "GC moved it and freed the segment (damage it cannot repair does not stall it)");
  expectDamage(() => store.read(big.groupId, 0, 4096), [0], "the moved block still fails its checksum");
  assert.equal(await store.repairBlocks(big.groupId, 0, 1, copyOf(survivor)), [0]);
  assert.ok(store.read(big.groupId, 0, 4096).equals(survivor));
  await store.close();
  store = await open(t.dir, [big]);
  assert.ok(store.read(big.groupId, 0, 4096).equals(survivor));
  await store.close();
  t.remove();
});

test("a block a partial write poisoned is mended from a replica at the same applied index, and only from one", async () => {
  const t = tempDir("cks-poison");
  let store = await open(t.dir);
  const first = marked("seven");
  await applyWriteEntry(store, 1, 7 * 4096, first, 100); // block 7 arrives damaged
  const patch = marked("patch", 512);
  await applyWriteEntry(store, 2, 7 * 4096 + 512, patch); // a partial write over it: its checksum cannot vouch for the block
  assert.is(store.stats().blocksPoisoned, 1);
  const right = Buffer.from(first);
  patch.copy(right, 512);
  expectDamage(() => store.read(group.groupId, 7 * 4096, 4096), [7], "the poisoned block");
  // No copy can match an inverted checksum, so the copy's Raft state decides.
  assert.equal(await store.repairBlocks(group.groupId, 7, 1, { data: first, damaged: [], applied: 1 }), [], "a copy from before the partial write");
  assert.equal(await store.repairBlocks(group.groupId, 7, 1, { data: right, damaged: [], applied: 3 }), [], "a copy from a replica ahead");
  assert.equal(await store.repairBlocks(group.groupId, 7, 1, { data: Buffer.alloc(4096), damaged: [7], applied: 2 }), [], "a copy its replica did not vouch for");
  assert.equal(await store.repairBlocks(group.groupId, 7, 1, { data: right, damaged: [], applied: 2 }), [7], "a vouched copy at the same index");
  assert.ok(store.read(group.groupId, 7 * 4096, 4096).equals(right));
  await store.close();
  store = await open(t.dir);
  assert.ok(store.read(group.groupId, 7 * 4096, 4096).equals(right), "the mended checksum is kept");
  await store.close();
  t.remove();
});

test("a partial write whose bytes rot in the log before it is applied: the block's checksum covers the bytes written, not the rot", async () => {
  const t = tempDir("cks-rot-before-apply");
  const store = await open(t.dir);
  const first = marked("five");
  await applyWriteEntry(store, 1, 5 * 4096, first);
  const patch = marked("patch-five", 512);
  await applyWriteEntry(store, 2, 5 * 4096 + 1024, patch, undefined, () => flipInFile(join(t.dir, segmentName(1)), patch, 100));
  expectDamage(() => store.read(group.groupId, 5 * 4096, 4096), [5], "the block whose new sector rotted");
  assert.is(store.stats().blocksPoisoned, 0, "the old content was good: nothing to poison");
  await store.close();
  t.remove();
});

test("a partial write replayed over a block whose old sectors GC freed after the checkpoint: replay checks what it can, and the block reads right", async () => {
  // GC frees a segment without waiting for a new checkpoint, so the
  // checkpoint's map may point into a freed segment for sectors the log after
  // it changed: here a 512-byte write into block 0, then GC moving the rest of
  // the block out of segment 1 and freeing it.
  const t = tempDir("cks");
  const big = { groupId: 9, sizeBytes: 256 * MiB };
  let store = await open(t.dir, [big]);
  const fill = async (fromMiB: number, toMiB: number, byte: number): Promise<void> => {
    for (let m = fromMiB; m < toMiB; m++) await writesTo(store).write(big.groupId, m * MiB, [Buffer.alloc(MiB, byte)], MiB);
  };
  const first = marked("first block");
  const second = marked("second block");
  await writesTo(store).write(big.groupId, 0, [first], 4096);
  await fill(1, 70, 1);
  await writesTo(store).write(big.groupId, 4096, [second], 4096);
  await fill(70, 130, 1); // segments 1 and 2 full of live data, sealed; GC wants neither
  await store.settle();
  assert.ok(existsSync(join(t.dir, segmentName(3))) && existsSync(join(t.dir, segmentName(1))));
  await store.checkpoint();
  const piece = Buffer.alloc(512, 0xab);
  await writesTo(store).write(big.groupId, 0, [piece], 512);
  // Segments 1 and 2 now hold one block each: GC moves them and frees both, without a new checkpoint.
  await writesTo(store).trim(big.groupId, MiB, 129 * MiB);
  store.maintain();
  await store.settle();
  assert.not.ok(existsSync(join(t.dir, segmentName(1))), "GC moved the rest of block 0 and freed its segment, after the checkpoint");
  assert.is(store.stats().checkpoints, 1, "no checkpoint since the one before the 512-byte write");
  const want = Buffer.concat([piece, first.subarray(512)]);
  assert.ok(store.read(big.groupId, 0, 4096).equals(want));
  await store.closeWithoutCheckpoint();
  store = await open(t.dir, [big]);
  assert.ok(store.read(big.groupId, 0, 4096).equals(want), "replayed from the older checkpoint, block 0 reads right");
  assert.ok(store.read(big.groupId, 4096, 4096).equals(second));
  assert.equal(store.checkBlocks(big.groupId, 0, 2), []);
  await store.close();
  t.remove();
});

/** The segment file that holds `needle`. */
function segmentHolding(dir: string, needle: Buffer): string {
  const name = readdirSync(dir).find((n) => n.startsWith("seg-") && readFileSync(join(dir, n)).includes(needle));
  assert.ok(name !== undefined, "the data is in a segment");
  return name!;
}

test("a checkpoint written before block checksums (version 3) is read, and the checksums are computed from the data", async () => {
  const t = tempDir("cks");
  let store = await open(t.dir);
  const prng = new Prng(3);
  const data = Buffer.alloc(64 * 4096);
  prng.fill(data);
  await writesTo(store).write(group.groupId, 0, [data], data.length);
  await writesTo(store).write(group.groupId, 100 * 4096 + 512, [data.subarray(0, 1024)], 1024);
  await store.close();
  downgradeCheckpoint(join(t.dir, "checkpoint"));
  store = await open(t.dir);
  assert.ok(store.read(group.groupId, 0, data.length).equals(data));
  assert.equal(store.checkBlocks(group.groupId, 0, group.sizeBytes / 4096), []);
  await store.close();
  // Written as version 4 now; a byte changed after that is found.
  flipInFile(join(t.dir, segmentName(1)), data.subarray(5 * 4096, 6 * 4096), 7);
  store = await open(t.dir);
  expectDamage(() => store.read(group.groupId, 0, data.length), [5], "after the upgrade");
  await store.close();
  t.remove();
});

/**
 * Rewrites a version 4 checkpoint as version 3 (docs/formats/checkpoint.md):
 * the same file without each chunk's block checksums and each Raft section's
 * recoverUntil, the trailing CRC32C recomputed. Written here from the format document, not with the store's code.
 */
function downgradeCheckpoint(file: string): void {
  const b = readFileSync(file);
  assert.is(b.readUInt32LE(4), 4, "the store writes version 4");
  const parts: Buffer[] = [Buffer.from(b.subarray(0, 40))];
  parts[0]!.writeUInt32LE(3, 4);
  const groups = b.readUInt32LE(32);
  let at = 40;
  for (let g = 0; g < groups; g++) {
    parts.push(b.subarray(at, at + 48));
    const chunks = b.readUInt32LE(at + 32);
    at += 48;
    for (let c = 0; c < chunks; c++) {
      parts.push(b.subarray(at, at + 8 + 32768));
      at += 8 + 32768 + 2048;
    }
    const entries = b.readUInt32LE(at + 40);
    let end = at + 48 + entries * 24;
    end += b.readUInt32LE(end) === 0xffffffff ? 4 : 8 + 8 * (b.readUInt32LE(end) + b.readUInt32LE(end + 4));
    parts.push(b.subarray(at, end));
    at = end + 8; // recoverUntil, new in version 4
  }
  assert.is(at, b.length - 4, "walked the whole checkpoint");
  const body = Buffer.concat(parts);
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32c(body), 0);
  writeFileSync(file, Buffer.concat([body, crc]));
}

test.run();
