// The volume replica turns a client's request into volume ops, once for
// every volume (src/replication/volume-replica.ts): whole sectors split into
// proposals that fit a record, partial sectors merged by read-modify-write,
// zeroing as a trim with merged edges. A fake port records what it proposes.

import { test } from "uvu";
import * as assert from "uvu/assert";
import type { Store } from "../../src/store/store.js";
import { decodeOp, encodeTrim, encodeWrite, VolumeOpKind } from "../../src/replication/volume-op.js";
import { proposalBytesMax, VolumeReplica, type ReplicaPort } from "../../src/replication/volume-replica.js";
import { VolumeCipher } from "../../src/replication/volume-cipher.js";

const MiB = 1024 * 1024;
const sizeBytes = 64 * MiB;

function fakePort(content = 0xaa): { port: ReplicaPort; ops: { kind: VolumeOpKind; offsetBytes: number; lengthBytes: number; data: Uint8Array }[]; reads: [number, number][] } {
  const ops: { kind: VolumeOpKind; offsetBytes: number; lengthBytes: number; data: Uint8Array }[] = [];
  const reads: [number, number][] = [];
  const port: ReplicaPort = {
    propose: (command) => {
      const op = decodeOp(command)!;
      ops.push({ kind: op.kind, offsetBytes: op.offsetBytes, lengthBytes: op.lengthBytes, data: command.subarray(0, op.lengthBytes) });
      return Promise.resolve();
    },
    readBarrier: () => undefined,
    read: (offsetBytes, lengthBytes) => {
      reads.push([offsetBytes, lengthBytes]);
      return Buffer.alloc(lengthBytes, content);
    },
    cipher: () => undefined,
  };
  return { port, ops, reads };
}

const replica = (): VolumeReplica => new VolumeReplica({ sizeOf: () => sizeBytes } as unknown as Store, 1);

test("a resize is proposed only to grow; a write past the end waits for a ReadIndex round, then goes on if a resize was applied meanwhile, else is refused", async () => {
  let size = sizeBytes;
  const r = new VolumeReplica({ sizeOf: () => size } as unknown as Store, 1);
  const { port, ops } = fakePort();
  let barriers = 0;
  port.readBarrier = () => {
    barriers++;
    return Promise.resolve();
  };
  await r.resize(port, sizeBytes);
  await r.resize(port, sizeBytes / 2);
  assert.is(ops.length, 0, "as large or larger already: nothing proposed (the caller refuses shrinking)");
  assert.is(barriers, 2, "after a ReadIndex round: a resize committed elsewhere is applied here first");
  await r.resize(port, 2 * sizeBytes);
  assert.equal(ops.map((o) => [o.kind, o.offsetBytes]), [[VolumeOpKind.Resize, 2 * sizeBytes]]);
  await r.resize(port, 1000).then(
    () => assert.unreachable("a size not in whole sectors"),
    (e: Error) => assert.match(e.message, /positive multiple of 512 bytes/),
  );
  ops.length = 0;
  barriers = 0;
  await r.write(port, sizeBytes, [Buffer.alloc(4096)], 4096).then(
    () => assert.unreachable("past the end"),
    (e: Error) => assert.match(e.message, /outside the volume/),
  );
  assert.is(barriers, 1);
  port.readBarrier = () => {
    size = 2 * sizeBytes; // the resize committed by the leader before: applied here once the round is done
    return Promise.resolve();
  };
  await r.write(port, sizeBytes, [Buffer.alloc(4096)], 4096);
  assert.equal(ops.map((o) => [o.kind, o.offsetBytes]), [[VolumeOpKind.Write, sizeBytes]]);
});

test("a large aligned write is split into proposals that each fit one record, in order, with no read", async () => {
  const { port, ops, reads } = fakePort();
  const data = Buffer.alloc(9 * MiB, 0x11);
  await replica().write(port, MiB, [data.subarray(0, 100 * 512), data.subarray(100 * 512)], data.length);
  assert.ok(ops.length === Math.ceil(data.length / proposalBytesMax));
  let at = MiB;
  for (const op of ops) {
    assert.is(op.kind, VolumeOpKind.Write);
    assert.is(op.offsetBytes, at);
    assert.ok(op.lengthBytes <= proposalBytesMax && op.lengthBytes % 512 === 0);
    at += op.lengthBytes;
  }
  assert.is(at, MiB + data.length);
  assert.equal(reads, []);
});

test("a write of partial sectors reads the sectors around it and proposes them merged", async () => {
  const { port, ops, reads } = fakePort(0xaa);
  await replica().write(port, 1000, [Buffer.alloc(300, 0x22)], 300);
  assert.equal(reads, [[512, 1024]]);
  assert.is(ops.length, 1);
  const expected = Buffer.alloc(1024, 0xaa).fill(0x22, 1000 - 512, 1300 - 512);
  assert.ok(Buffer.from(ops[0]!.data).equals(expected));
  assert.equal([ops[0]!.offsetBytes, ops[0]!.lengthBytes], [512, 1024]);
});

test("zeroing is a trim of the whole sectors and zeroes merged into the partial ones; with NO_HOLE zeroes are written", async () => {
  const a = fakePort(0xaa);
  await replica().writeZeroes(a.port, 100, 8192, false);
  const trims = a.ops.filter((o) => o.kind === VolumeOpKind.Trim);
  assert.equal(trims.map((o) => [o.offsetBytes, o.lengthBytes]), [[512, 7680]]);
  const edges = a.ops.filter((o) => o.kind === VolumeOpKind.Write).map((o) => [o.offsetBytes, o.lengthBytes, o.data.indexOf(0)]);
  assert.equal(edges, [[0, 512, 100], [8192, 512, 0]]);
  const b = fakePort();
  await replica().writeZeroes(b.port, 0, 3 * MiB, true);
  assert.ok(b.ops.every((o) => o.kind === VolumeOpKind.Write && o.data.every((x) => x === 0)));
  assert.is(b.ops.reduce((n, o) => n + o.lengthBytes, 0), 3 * MiB);
});

test("a trim inside one sector proposes nothing; a range past the end is refused", async () => {
  const { port, ops } = fakePort();
  await replica().trim(port, 10, 400);
  assert.equal(ops, []);
  try {
    await replica().write(port, sizeBytes - 512, [Buffer.alloc(1024)], 1024);
    assert.unreachable("past the end");
  } catch (e) {
    assert.match((e as Error).message, /outside the volume/);
  }
});

test("the change map: tracked from a base, marked from a command read back, dropped", () => {
  const r = replica();
  const snaps = r.snapshots;
  assert.is(snaps.kind, "streamed");
  if (snaps.kind !== "streamed") return;
  assert.is(snaps.sizeBytes(), sizeBytes);
  const changes = snaps.trackChanges(7, 2);
  assert.is(snaps.changes, changes);
  const w = encodeWrite(8192, [Buffer.alloc(4096)], 4096);
  snaps.markCommand(changes, w);
  snaps.markCommand(changes, encodeTrim(MiB, 2 * 4096));
  assert.is(changes.changedBlocks, 3);
  snaps.dropChanges();
  assert.is(snaps.changes, undefined);
});


test("an encrypted volume: data is proposed encrypted; a write inside a 4 KiB unit merges with the decrypted unit; trims and zeroing keep whole units", async () => {
  // A stand-in cipher: XOR with the unit's index + 1, enough to see what was encrypted where.
  const units = {
    encrypt: (unit: number, d: Uint8Array) => Buffer.from(d.map((b) => b ^ ((unit + 1) & 0xff))),
    decrypt: (unit: number, d: Uint8Array) => Buffer.from(d.map((b) => b ^ ((unit + 1) & 0xff))),
  };
  const cipher = new VolumeCipher(units);
  const { port, ops, reads } = fakePort(0x07); // the store holds 0x07 everywhere (ciphertext)
  port.cipher = () => cipher;
  const r = replica();
  await r.write(port, 8192, [Buffer.alloc(4096, 0x41)], 4096);
  assert.equal(ops.map((o) => [o.offsetBytes, o.lengthBytes]), [[8192, 4096]]);
  assert.ok(ops[0]!.data.every((b) => b === (0x41 ^ 3)), "unit 2's plaintext proposed encrypted");
  assert.equal(reads, [], "a whole unit needs no read");
  ops.length = 0;
  await r.write(port, 4096 + 512, [Buffer.alloc(512, 0x5a)], 512);
  assert.equal(reads, [[4096, 4096]], "the unit around a sector is read");
  assert.equal(ops.map((o) => [o.offsetBytes, o.lengthBytes]), [[4096, 4096]]);
  const plain = Buffer.from(ops[0]!.data.map((b) => b ^ 2));
  assert.ok(plain.subarray(0, 512).every((b) => b === (0x07 ^ 2)) && plain.subarray(512, 1024).every((b) => b === 0x5a) && plain.subarray(1024).every((b) => b === (0x07 ^ 2)), "merged with the decrypted unit, then encrypted");
  ops.length = 0;
  await r.trim(port, 512, 3 * 4096);
  assert.equal(ops.map((o) => [o.kind, o.offsetBytes, o.lengthBytes]), [[VolumeOpKind.Trim, 4096, 2 * 4096]], "only the whole units inside");
  ops.length = 0;
  reads.length = 0;
  await r.writeZeroes(port, 4096 - 512, 4096 + 1024, false);
  assert.equal(ops.map((o) => [o.kind, o.offsetBytes, o.lengthBytes]).sort((a, b) => a[1]! - b[1]!), [[VolumeOpKind.Write, 0, 4096], [VolumeOpKind.Trim, 4096, 4096], [VolumeOpKind.Write, 8192, 4096]]);
});

test.run();
