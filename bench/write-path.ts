// The replicated write path alone, in one process: a one-voter volume group
// (driver, Raft core, volume replica, store on real files) taking 4 KiB
// random writes at a fixed queue depth, without NBD or sockets. Reports CPU
// time and heap bytes allocated per write, and with --sites the places that
// allocate the most (V8's sampling heap profiler, collected objects
// included): where a write's garbage comes from. The CPU figure of the
// round the sampler runs in is inflated by it.
//
//   node dist/bench/write-path.js [--writes N] [--qd N] [--rounds N] [--sites]

import { Session } from "node:inspector/promises";
import { NodeDisk, deferImmediate } from "../src/os/node-disk.js";
import { MultiRaft } from "../src/replication/driver.js";
import { VolumeReplica, type ReplicaPort } from "../src/replication/volume-replica.js";
import { Store } from "../src/store/store.js";
import { tempDir } from "../test/helpers/tmp.js";

function flag(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}

const writes = flag("--writes", 40_000);
const qd = flag("--qd", 32);
const rounds = flag("--rounds", 5);
const sites = process.argv.includes("--sites");
const volume = { groupId: 3, sizeBytes: 1 << 30 };
const blocks = volume.sizeBytes / 4096;

interface HeapNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: HeapNode[];
}

async function main(): Promise<void> {
  const t = tempDir("write-path");
  const store = await Store.open({ disk: new NodeDisk(t.dir), defer: deferImmediate, log: () => {} }, [volume]);
  const driver = new MultiRaft({ nodeId: 1, store, send: () => true, defer: deferImmediate, random: { int: () => 0 }, log: () => {} });
  const replica = new VolumeReplica(store, volume.groupId);
  driver.addGroup(volume.groupId, [1], replica);
  const tick = setInterval(() => driver.tick(), 10);
  while (!driver.readsHere(volume.groupId)) await new Promise((r) => setTimeout(r, 10));
  const port: ReplicaPort = { propose: (c) => driver.propose(volume.groupId, c), readBarrier: () => undefined, read: (o, l) => store.read(volume.groupId, o, l), cipher: () => undefined };
  const data = Buffer.alloc(4096, 0x5a);
  let seed = 12345;
  const next = (): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % blocks;
  };
  const run = async (n: number): Promise<void> => {
    let issued = 0;
    const worker = async (): Promise<void> => {
      while (issued < n) {
        issued++;
        await replica.write(port, next() * 4096, [data], 4096);
      }
    };
    await Promise.all(Array.from({ length: qd }, worker));
  };
  await run(writes / 4); // warm up: JIT, the block map's first pages
  const session = new Session();
  session.connect();
  for (let r = 0; r < rounds; r++) {
    const last = r === rounds - 1;
    if (last && sites) {
      await session.post("HeapProfiler.startSampling", { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
    }
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    await run(writes);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const cpu = process.cpuUsage(cpu0);
    console.log(
      `round ${r + 1}: ${writes} writes at QD${qd}: ${Math.round(writes / (ms / 1000))} writes/s, ` +
        `${((cpu.user + cpu.system) / writes).toFixed(1)} µs CPU per write${last && sites ? " (with the heap sampler on)" : ""}`,
    );
    if (last && sites) {
      const { profile } = (await session.post("HeapProfiler.stopSampling")) as { profile: { head: HeapNode } };
      const bySite = new Map<string, number>();
      let total = 0;
      const walk = (n: HeapNode, stack: string[]): void => {
        const here = `${n.callFrame.functionName || "(anon)"} ${n.callFrame.url.split("/").slice(-2).join("/")}:${n.callFrame.lineNumber + 1}`;
        if (n.selfSize > 0) {
          // Attribute to the innermost frame of pxd's own code, with its caller.
          const own = [...stack, here].filter((s) => s.includes("dist/") || /\b(src|raft|store|replication|base)\//.test(s));
          const key = own.slice(-2).join(" <- ") || here;
          bySite.set(key, (bySite.get(key) ?? 0) + n.selfSize);
          total += n.selfSize;
        }
        for (const c of n.children) walk(c, [...stack, here]);
      };
      walk(profile.head, []);
      console.log(`allocation sites (sampled, ${Math.round(total / writes)} B per write in all):`);
      for (const [k, v] of [...bySite].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`  ${String(Math.round(v / writes)).padStart(6)} B/write  ${k}`);
    }
  }
  session.disconnect();
  clearInterval(tick);
  driver.close();
  await store.close();
  t.remove();
}

await main();
