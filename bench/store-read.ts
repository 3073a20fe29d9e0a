// The store's own cost of a 4 KiB read, in process: no NBD, no event loop
// turn per request. A 256 MiB volume is written with 1 MiB writes, scattered
// with 20,000 random 4 KiB writes, then read at 200,000 random 4 KiB offsets
// per round; prints ns per read for each round. The difference between two
// checkouts is what the read path itself costs (block map lookup, checksum
// check, copy).
//
//   node dist/bench/store-read.js [--rounds 3]

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { deferImmediate, NodeDisk } from "../src/os/node-disk.js";
import { Store } from "../src/store/store.js";
import { Prng } from "../src/base/prng.js";
import { replayed, writesTo } from "../test/helpers/store-writes.js";

const MiB = 1 << 20;
const blockBytes = 4096;
const volumeBytes = 256 * MiB;
const readsPerRound = 200_000;
const scatterWrites = 20_000;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { rounds: { type: "string", default: "3" } } });
  const rounds = Number(values.rounds);
  const dir = mkdtempSync(join(tmpdir(), "pxd-store-read-"));
  const store = await Store.open({ disk: new NodeDisk(dir), defer: deferImmediate }, [{ groupId: 1, sizeBytes: volumeBytes }]);
  try {
    const prng = new Prng(1);
    const blocks = volumeBytes / blockBytes;
    const big = Buffer.alloc(MiB);
    for (let i = 0; i < big.length; i++) big[i] = (i * 13) & 0xff;
    for (let m = 0; m < volumeBytes / MiB; m++) await writesTo(store).write(1, m * MiB, [big], MiB);
    const small = Buffer.alloc(blockBytes, 7);
    const writes: Promise<unknown>[] = [];
    for (let i = 0; i < scatterWrites; i++) writes.push(writesTo(store).write(1, prng.int(blocks) * blockBytes, [small], blockBytes));
    await Promise.all(writes);
    const out = Buffer.allocUnsafe(blockBytes);
    const offsets = new Float64Array(readsPerRound);
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < readsPerRound; i++) offsets[i] = prng.int(blocks) * blockBytes;
      const t = process.hrtime.bigint();
      for (let i = 0; i < readsPerRound; i++) store.read(1, offsets[i]!, blockBytes, out);
      const ns = Number(process.hrtime.bigint() - t) / readsPerRound;
      console.log(`round ${r + 1}: ${ns.toFixed(0)} ns per 4 KiB read`);
    }
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
