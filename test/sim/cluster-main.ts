// The cluster simulator's command line (test/sim/cluster-sim.ts):
//   node dist/test/sim/cluster-main.js --seed N [--seeds COUNT] [--nodes 3|5] [--no-flips] [--log-retain BYTES] [--verbose [--trace-write V]] [--first-failure]
// --log-retain sets every seed's Raft log retention (default: drawn per seed).
// Runs seeds N .. N+COUNT-1, prints one line per failure with the command
// that replays it, and a closing summary.

import { ClusterSimFailure, runClusterSim, type ClusterSimResult } from "./cluster-sim.js";
import { arg } from "./args.js";

async function main(): Promise<void> {
  const seed = Number(arg("--seed") ?? 1);
  const count = Number(arg("--seeds") ?? 1);
  const nodes = Number(arg("--nodes") ?? 3);
  const verbose = process.argv.includes("--verbose");
  const firstFailure = process.argv.includes("--first-failure");
  const retainArg = arg("--log-retain");
  const retain = retainArg === undefined ? undefined : Number(retainArg);
  if (!Number.isSafeInteger(seed) || !Number.isSafeInteger(count) || count < 1 || (nodes !== 3 && nodes !== 5) || (retain !== undefined && !(Number.isSafeInteger(retain) && retain >= 0))) {
    console.error("usage: cluster-main --seed N [--seeds COUNT] [--nodes 3|5] [--no-flips] [--log-retain BYTES] [--verbose] [--first-failure]");
    process.exitCode = 2;
    return;
  }
  const started = Date.now();
  let failures = 0;
  const total: Omit<ClusterSimResult, "seed"> = { writes: 0, acked: 0, reads: 0, readsChecked: 0, crashes: 0, partitions: 0, flips: 0, messages: 0, dropped: 0, retired: 0, failStops: 0, snapshots: 0, snapshotDeltas: 0, diskFullWindows: 0, writesFailedEnospc: 0, writesFailedOther: 0, simMs: 0 };
  for (let s = seed; s < seed + count && !(firstFailure && failures > 0); s++) {
    if (count >= 1000 && s > seed && (s - seed) % 500 === 0) console.log(`... ${s - seed} seeds run, ${failures} failed, ${((Date.now() - started) / 1000).toFixed(0)}s`);
    try {
      const trace = arg("--trace-write");
      const r = await runClusterSim({
        seed: s,
        nodes,
        log: verbose ? (l) => console.log(l) : undefined,
        ...(trace !== undefined ? { traceWrite: Number(trace) } : {}),
        ...(retain !== undefined ? { logRetainBytes: retain } : {}),
        flips: !process.argv.includes("--no-flips"),
      });
      for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += r[k];
    } catch (err) {
      failures++;
      const what = err instanceof ClusterSimFailure ? err.message : `seed ${s} crashed: ${(err as Error).stack ?? String(err)}`;
      console.log(`FAIL ${what}\n  replay: node dist/test/sim/cluster-main.js --seed ${s} --nodes ${nodes}${retain !== undefined ? ` --log-retain ${retain}` : ""}${process.argv.includes("--no-flips") ? " --no-flips" : ""} --verbose`);
    }
  }
  const secs = (Date.now() - started) / 1000;
  console.log(`cluster sim: ${count} runs (seeds ${seed}..${seed + count - 1}, ${nodes} nodes), ${failures} failed, ${secs.toFixed(1)}s; ` +
    Object.entries(total).map(([k, v]) => `${k} ${v}`).join(", "));
  process.exitCode = failures === 0 ? 0 : 1;
}

await main();
