// The simulator's command line:
//   node dist/test/sim/main.js --seed N [--seeds COUNT] [--nodes 3|5] [--ticks T] [--verbose]
// Runs seeds N, N+1, ... N+COUNT-1 (each with 3 and 5 voters unless --nodes
// says one), prints one line per failure with the command that replays it,
// and a closing summary. --verbose prints the event trace of each seed.

import { runSim, SimFailure } from "./sim.js";
import type { SimResult } from "./sim.js";
import { arg } from "./args.js";

function main(): void {
  const seed = Number(arg("--seed") ?? Math.floor(Date.now() % 1e9));
  const count = Number(arg("--seeds") ?? 1);
  const nodesArg = arg("--nodes");
  const faultTicks = Number(arg("--ticks") ?? 600);
  const verbose = process.argv.includes("--verbose");
  if (!Number.isSafeInteger(seed) || !Number.isSafeInteger(count) || count < 1) {
    console.error("usage: sim --seed N [--seeds COUNT] [--nodes 3|5] [--ticks T] [--verbose]");
    process.exitCode = 2;
    return;
  }
  const sizes = nodesArg === undefined ? [3, 5] : [Number(nodesArg)];
  const started = Date.now();
  let runs = 0;
  let failures = 0;
  const total: Omit<SimResult, "seed"> = { ticks: 0, commits: 0, elections: 0, reads: 0, crashes: 0, confChanges: 0, snapshots: 0, transfers: 0, messages: 0, snapshotTransfersOk: 0, snapshotTransfersFailed: 0,
    unsyncedLost: 0, tornPersists: 0, pauses: 0, registerOps: 0 };
  for (let s = seed; s < seed + count; s++) {
    for (const nodes of sizes) {
      runs++;
      try {
        const r = runSim({ seed: s, nodes, faultTicks, livenessTicks: 400, log: verbose ? (l) => console.log(l) : undefined });
        for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += r[k];
      } catch (err) {
        failures++;
        const what = err instanceof SimFailure ? err.message : `seed ${s} (nodes ${nodes}) crashed: ${(err as Error).stack ?? String(err)}`;
        console.log(`FAIL ${what}\n  replay: npm run sim -- --seed ${s} --nodes ${nodes} --ticks ${faultTicks} --verbose`);
      }
    }
  }
  const secs = (Date.now() - started) / 1000;
  console.log(`sim: ${runs} runs (seeds ${seed}..${seed + count - 1}, nodes ${sizes.join(",")}), ${failures} failed, ${secs.toFixed(1)}s; ` +
    `${total.commits} commits, ${total.elections} elections, ${total.reads} reads, ${total.crashes} crashes, ` +
    `${total.confChanges} conf changes, ${total.transfers} transfers, ${total.snapshots} snapshots ` +
    `(${total.snapshotTransfersOk} chunked transfers done, ${total.snapshotTransfersFailed} failed), ${total.messages} messages; ` +
    `${total.tornPersists} crashes mid-persist, ${total.unsyncedLost} unsynced hard states lost, ${total.pauses} pauses; ` +
    `${total.registerOps} register operations checked linearizable`);
  process.exitCode = failures === 0 ? 0 : 1;
}

main();
