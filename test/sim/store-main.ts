// The store simulator's command line (test/sim/store-sim.ts):
//   node dist/test/sim/store-main.js --seed N [--seeds COUNT] [--profile small|gc|raft] [--verbose] [--first-failure]
// Runs seeds N .. N+COUNT-1 in each profile (or the one named), prints one
// line per failure with the command that replays it, and a closing summary.

import { runStoreSim, StoreSimFailure, type StoreSimProfile, type StoreSimResult } from "./store-sim.js";
import { arg } from "./args.js";

async function main(): Promise<void> {
  const seed = Number(arg("--seed") ?? 1);
  const count = Number(arg("--seeds") ?? 1);
  const profileArg = arg("--profile");
  const verbose = process.argv.includes("--verbose");
  const firstFailure = process.argv.includes("--first-failure");
  if (!Number.isSafeInteger(seed) || !Number.isSafeInteger(count) || count < 1 || (profileArg !== undefined && profileArg !== "small" && profileArg !== "gc" && profileArg !== "raft")) {
    console.error("usage: store-main --seed N [--seeds COUNT] [--profile small|gc|raft] [--verbose]");
    process.exitCode = 2;
    return;
  }
  const profiles: StoreSimProfile[] = profileArg === undefined ? ["small", "gc", "raft"] : [profileArg as StoreSimProfile];
  const started = Date.now();
  let runs = 0;
  let failures = 0;
  const total: Omit<StoreSimResult, "seed" | "profile" | "refusedAfterFlip"> & { refusedAfterFlip: number } = {
    writes: 0, acked: 0, reads: 0, sectorsChecked: 0, crashes: 0, flips: 0, checksumErrors: 0, diskErrors: 0, checkpoints: 0, gcSegments: 0, gcBytesMoved: 0, refusedAfterFlip: 0,
  };
  for (let s = seed; s < seed + count && !(firstFailure && failures > 0); s++) {
    for (const profile of profiles) {
      runs++;
      try {
        const r = await runStoreSim({ seed: s, profile, log: verbose ? (l) => console.log(l) : undefined });
        for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += k === "refusedAfterFlip" ? (r.refusedAfterFlip ? 1 : 0) : (r[k] as number);
      } catch (err) {
        failures++;
        const what = err instanceof StoreSimFailure ? err.message : `seed ${s} (${profile}) crashed: ${(err as Error).stack ?? String(err)}`;
        console.log(`FAIL ${what}\n  replay: node dist/test/sim/store-main.js --seed ${s} --profile ${profile} --verbose`);
      }
    }
  }
  const secs = (Date.now() - started) / 1000;
  console.log(`store sim: ${runs} runs (seeds ${seed}..${seed + count - 1}, ${profiles.join(",")}), ${failures} failed, ${secs.toFixed(1)}s; ` +
    Object.entries(total).map(([k, v]) => `${k} ${v}`).join(", "));
  process.exitCode = failures === 0 ? 0 : 1;
}

await main();
