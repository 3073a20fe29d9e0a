// Large reads checked on the daemon's checksum thread (src/os/crc-verifier.ts,
// Store.readOffThread), over real files and a real worker thread: the data
// comes back as read, a byte changed on disk is found in the block that holds
// it, a write that lands while the check runs changes neither the bytes nor
// what they are compared with, and reads that do not qualify are checked
// inline as before.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { join } from "node:path";
import { BufferPool } from "../../src/base/buffer-pool.js";
import { Prng } from "../../src/base/prng.js";
import { verifyOffThreadBytesMin } from "../../src/constants.js";
import { CrcWorker } from "../../src/os/crc-verifier.js";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { ChecksumError } from "../../src/store/errors.js";
import { segmentName } from "../../src/store/segment-names.js";
import { Store } from "../../src/store/store.js";
import { replayed, writesTo } from "../helpers/store-writes.js";
import { flipInFile } from "../helpers/flip.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;
const group = { groupId: 5, sizeBytes: 16 * MiB };

function shared(bytes: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(bytes), 0, bytes);
}

test("the read pool hands out shared buffers from verifyOffThreadBytesMin up, and takes them back", () => {
  const pool = new BufferPool(4096, 32 * MiB, 64 * MiB, verifyOffThreadBytesMin);
  const small = pool.take(64 * 1024);
  const large = pool.take(MiB);
  assert.instance(small.buffer, ArrayBuffer);
  assert.instance(large.buffer, SharedArrayBuffer);
  pool.give(large);
  assert.is(pool.take(MiB).buffer, large.buffer, "the shared buffer is reused");
});

test("a large read is checked on the checksum thread: good data comes back, a changed byte fails its block, a write during the check changes nothing", async () => {
  const t = tempDir("crcw");
  const failures: Error[] = [];
  const crcs = new CrcWorker((e) => failures.push(e));
  const open = (): Promise<Store> => Store.open({ disk: new NodeDisk(t.dir), defer: deferImmediate, verifier: crcs }, [group]).then((s) => replayed(s, [group.groupId]));
  let store = await open();
  try {
    const data = Buffer.alloc(2 * MiB);
    new Prng(7).fill(data);
    // Two writes, so the first MiB is two runs of blocks in the log, and a hole at 3 MiB.
    await writesTo(store).write(group.groupId, 0, [data.subarray(0, MiB / 2)], MiB / 2);
    await writesTo(store).write(group.groupId, MiB / 2, [data.subarray(MiB / 2)], MiB + MiB / 2);

    const out = shared(MiB);
    const r = store.readOffThread(group.groupId, 0, MiB, out);
    assert.instance(r, Promise, "a 1 MiB read into a shared buffer is checked off the event loop");
    assert.is(await r, out, "it resolves to the buffer it was given");
    assert.ok(out.equals(data.subarray(0, MiB)));

    // A read that does not qualify is read() as it is: synchronous.
    assert.not.instance(store.readOffThread(group.groupId, 0, MiB, Buffer.alloc(MiB)), Promise, "not a shared buffer");
    assert.not.instance(store.readOffThread(group.groupId, 0, verifyOffThreadBytesMin / 2, shared(verifyOffThreadBytesMin / 2)), Promise, "too small");
    assert.not.instance(store.readOffThread(group.groupId, 512, MiB, shared(MiB)), Promise, "not on a block boundary");
    // Holes only: nothing to check.
    const hole = shared(MiB);
    assert.ok((store.readOffThread(group.groupId, 3 * MiB, MiB, hole) as Buffer).every((x) => x === 0));

    // A write that lands while the check runs: the read keeps what was there when it was read.
    const before = shared(MiB);
    const pending = store.readOffThread(group.groupId, MiB, MiB, before);
    const newer = Buffer.alloc(MiB, 0x5c);
    await writesTo(store).write(group.groupId, MiB, [newer], MiB);
    assert.ok((await pending).equals(data.subarray(MiB, 2 * MiB)), "the bytes as read, checked against their own checksums");
    assert.ok(store.read(group.groupId, MiB, MiB).equals(newer));

    // A byte changed on disk after a clean stop is found in the block that holds it, and only there.
    await store.close();
    const victim = data.subarray(300 * 1024, 304 * 1024); // block 75, in the first write
    flipInFile(join(t.dir, segmentName(1)), victim, 1234);
    store = await open();
    const err = await (store.readOffThread(group.groupId, 0, MiB, shared(MiB)) as Promise<Buffer>).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.instance(err, ChecksumError);
    assert.equal((err as ChecksumError).blocks, [75]);
    // The inline check finds the same block.
    try {
      store.read(group.groupId, 0, MiB);
      assert.unreachable("the damaged block was returned");
    } catch (e) {
      assert.instance(e, ChecksumError);
      assert.equal((e as ChecksumError).blocks, [75]);
    }
    assert.equal(failures, [], "the checksum thread never failed");
  } finally {
    await store.close();
    await crcs.close();
    t.remove();
  }
});

test.run();
