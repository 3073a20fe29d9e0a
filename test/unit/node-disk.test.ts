// The store's Disk over node:fs: small writes go out synchronously on the
// event loop, large ones through the threadpool; both must land every byte
// where asked, in every shape of buffer list, and report errors as rejections.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { NodeDisk, syncWriteBytesMax } from "../../src/os/node-disk.js";

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** `whole` cut into pieces of `piece` bytes (views, as the log hands them over). */
function pieces(whole: Buffer, piece: number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < whole.length; at += piece) out.push(whole.subarray(at, Math.min(whole.length, at + piece)));
  return out;
}

function withDisk(fn: (disk: NodeDisk) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), "pxd-node-disk-"));
    try {
      await fn(new NodeDisk(dir));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

function readBack(disk: NodeDisk, name: string, position: number, length: number): Buffer {
  const f = disk.open(name, false);
  try {
    const b = Buffer.alloc(length);
    assert.is(f.readSync(b, 0, length, position), length);
    return b;
  } finally {
    f.close();
  }
}

test(
  "a write of exactly the synchronous limit, in more pieces than one pwritev takes (IOV_MAX), lands whole",
  withDisk(async (disk) => {
    const f = disk.open("seg", true);
    const data = pattern(syncWriteBytesMax, 1);
    const list = pieces(data, 64); // 4096 buffers
    assert.ok(list.length > 1024);
    await f.write(list, 4096);
    await f.datasync();
    f.close();
    assert.ok(readBack(disk, "seg", 4096, data.length).equals(data));
  }),
);

test(
  "a write one byte over the limit goes through the threadpool and lands whole beside a synchronous one",
  withDisk(async (disk) => {
    const f = disk.open("seg", true);
    const big = pattern(syncWriteBytesMax + 1, 2);
    const small = pattern(4096 + 64, 3);
    // Both queued before either is awaited, at disjoint offsets, as the log's pipeline may do.
    const a = f.write(pieces(big, 65536), 0);
    const b = f.write([small.subarray(0, 64), small.subarray(64)], big.length);
    await Promise.all([a, b]);
    await f.datasync();
    f.close();
    assert.ok(readBack(disk, "seg", 0, big.length).equals(big));
    assert.ok(readBack(disk, "seg", big.length, small.length).equals(small));
  }),
);

test(
  "a failed write rejects its promise on both paths, it never throws",
  withDisk(async (disk) => {
    const f = disk.open("seg", true);
    f.close(); // its descriptor is gone: every write fails with EBADF
    for (const length of [512, syncWriteBytesMax + 512]) {
      let p: Promise<void> | undefined;
      assert.not.throws(() => {
        p = f.write([pattern(length, 4)], 0);
      });
      let error: unknown;
      await p!.catch((e: unknown) => {
        error = e;
      });
      assert.instance(error, Error, `a ${length}-byte write rejects`);
    }
  }),
);

test.run();
