// Volume operations as Raft entry data (src/replication/volume-op.ts): a write
// carries the checksums of the 4 KiB blocks it covers whole, computed by the
// leader; a replica stores them as they came, so bytes that changed on the way
// (or on its disk) fail the read instead of being vouched for afresh.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { crc32c } from "../../src/base/crc32c.js";
import { Prng } from "../../src/base/prng.js";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { decodeOp, decodeSnapshotOp, encodeResize, encodeSnapshotOp, encodeTrim, encodeWrite, opPayloadCrc, resizeBytesOf, VolumeOpKind } from "../../src/replication/volume-op.js";
import { ChecksumError } from "../../src/store/errors.js";
import { Store } from "../../src/store/store.js";
import { tempDir } from "../helpers/tmp.js";

function random(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  new Prng(seed).fill(b);
  return b;
}

/** The whole entry's checksum as the record would carry it without hashing the data, or undefined. */
function entryPayloadCrc(e: Uint8Array): number | undefined {
  const op = decodeOp(e);
  return op === undefined ? undefined : opPayloadCrc(op, e);
}

test("a write of whole blocks carries each block's checksum, and its whole checksum folds from them", () => {
  const data = random(3 * 4096);
  const e = encodeWrite(8192, [data.subarray(0, 100), data.subarray(100)], data.length);
  const op = decodeOp(e);
  assert.is(op?.kind, VolumeOpKind.Write);
  assert.equal([op?.offsetBytes, op?.lengthBytes], [8192, 3 * 4096]);
  assert.equal([...(op?.crcs ?? [])], [0, 1, 2].map((k) => crc32c(data.subarray(k * 4096, (k + 1) * 4096))));
  assert.is(entryPayloadCrc(e), crc32c(e), "the record's checksum without a pass over the data");
});

test("a write not made of whole blocks carries the checksums of the blocks it covers whole, and its record is hashed", () => {
  const data = random(8192, 2);
  const e = encodeWrite(512, [data], data.length); // covers block 1 whole, blocks 0 and 2 in part
  assert.equal([...(decodeOp(e)?.crcs ?? [])], [crc32c(data.subarray(4096 - 512, 8192 - 512))]);
  assert.is(entryPayloadCrc(e), undefined);
  const small = encodeWrite(512, [data.subarray(0, 512)], 512);
  assert.equal([...(decodeOp(small)?.crcs ?? [])], []);
  assert.is(entryPayloadCrc(small), undefined);
});

test("a resize is a trailer alone carrying the new size; one not in whole sectors or past the volume limit is not a volume op", () => {
  const e = encodeResize(20 * 1024 ** 3);
  assert.is(e.length, 16);
  const op = decodeOp(e)!;
  assert.is(op.kind, VolumeOpKind.Resize);
  assert.is(resizeBytesOf(op), 20 * 1024 ** 3);
  assert.is(entryPayloadCrc(e), undefined);
  const bad = (size: number): Buffer => {
    const b = Buffer.from(e);
    b.writeUInt32LE(size % 0x100000000, 8);
    b.writeUInt32LE(Math.floor(size / 0x100000000), 12);
    return b;
  };
  for (const size of [0, 1000, 2 ** 50]) assert.is(decodeOp(bad(size)), undefined, `size ${size}`);
  assert.is(decodeOp(Buffer.concat([Buffer.alloc(8), e])), undefined, "a resize carries no data");
  assert.throws(() => encodeResize(513));
});

test("trims, version 1 writes, and data that is not a volume op", () => {
  assert.equal(decodeOp(encodeTrim(4096, 8192)), { kind: VolumeOpKind.Trim, offsetBytes: 4096, lengthBytes: 8192, crcs: undefined });
  // A version 1 write, as an older leader proposed it: data, then u8 op, u8 version, u16 0, u32 length, u64 offset.
  const v1 = Buffer.alloc(4096 + 16, 7);
  v1.writeUInt8(1, 4096);
  v1.writeUInt8(1, 4097);
  v1.writeUInt16LE(0, 4098);
  v1.writeUInt32LE(4096, 4100);
  v1.writeUInt32LE(4096, 4104);
  v1.writeUInt32LE(0, 4108);
  assert.equal(decodeOp(v1), { kind: VolumeOpKind.Write, offsetBytes: 4096, lengthBytes: 4096, crcs: undefined });
  assert.is(entryPayloadCrc(v1), undefined);
  // A version 2 trailer whose checksum count does not fit the write is not a volume op.
  const bad = Buffer.from(encodeWrite(0, [random(4096)], 4096));
  bad.writeUInt16LE(2, bad.length - 14);
  assert.is(decodeOp(bad), undefined);
  assert.is(decodeOp(new Uint8Array(10)), undefined);
});

test("snapshot operations are trailers alone, which only decodeSnapshotOp reads", () => {
  const create = encodeSnapshotOp({ kind: VolumeOpKind.SnapshotCreate, snapshotId: 7 });
  assert.equal(decodeSnapshotOp(create), { kind: VolumeOpKind.SnapshotCreate, snapshotId: 7 });
  assert.equal(decodeSnapshotOp(encodeSnapshotOp({ kind: VolumeOpKind.SnapshotDelete, snapshotId: 2 ** 20 - 1 })), { kind: VolumeOpKind.SnapshotDelete, snapshotId: 2 ** 20 - 1 });
  assert.is(decodeOp(create), undefined, "no range: the write path never sees it");
  assert.is(decodeSnapshotOp(encodeTrim(4096, 8192)), undefined);
  assert.is(decodeSnapshotOp(encodeWrite(0, [random(4096)], 4096)), undefined);
  const zeroId = Buffer.from(create);
  zeroId.writeUInt32LE(0, 8);
  assert.is(decodeSnapshotOp(zeroId), undefined);
  const withLength = Buffer.from(create);
  withLength.writeUInt32LE(512, 4);
  assert.is(decodeSnapshotOp(withLength), undefined);
});

test("a replica stores the checksums the leader computed: bytes that changed on the way fail the read", async () => {
  const t = tempDir("vop");
  const group = { groupId: 4, sizeBytes: 16 * 1024 * 1024 };
  const store = await Store.open({ disk: new NodeDisk(t.dir), defer: deferImmediate }, [group]);
  const data = random(8192, 3);
  const entry = Buffer.from(encodeWrite(0, [data], data.length));
  entry[5000] = entry[5000]! ^ 1; // the second block changed between the leader and this replica
  await store.appendRaftEntries(group.groupId, [{ index: 1, term: 1, type: 0, data: [entry] }], { term: 1, vote: 1, commit: 1 });
  const op = decodeOp(entry)!;
  store.applyEntryWrite(group.groupId, 1, op.offsetBytes, op.lengthBytes, entry.subarray(0, op.lengthBytes), op.crcs);
  assert.ok(store.read(group.groupId, 0, 4096).equals(data.subarray(0, 4096)));
  assert.throws(() => store.read(group.groupId, 4096, 4096), (e: Error) => e instanceof ChecksumError);
  await store.close();
  t.remove();
});

test.run();
