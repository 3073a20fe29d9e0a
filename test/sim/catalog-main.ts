// The control-plane simulator's command line (test/sim/catalog-sim.ts):
//   node dist/test/sim/catalog-main.js --seed N [--seeds COUNT] [--verbose] [--first-failure]
// Runs seeds N .. N+COUNT-1, prints one line per failure with the command
// that replays it, and a closing summary.

import { CatalogSimFailure, runCatalogSim, type CatalogSimResult } from "./catalog-sim.js";
import { arg } from "./args.js";

const seed = Number(arg("--seed") ?? 1);
const count = Number(arg("--seeds") ?? 1);
const verbose = process.argv.includes("--verbose");
const firstFailure = process.argv.includes("--first-failure");
if (!Number.isSafeInteger(seed) || !Number.isSafeInteger(count) || count < 1) {
  console.error("usage: catalog-main --seed N [--seeds COUNT] [--verbose] [--first-failure]");
  process.exit(2);
}
const started = Date.now();
let failures = 0;
const total: Omit<CatalogSimResult, "seed"> = { writes: 0, acked: 0, crashes: 0, partitions: 0, moves: 0, messages: 0, dropped: 0, simMs: 0 };
for (let s = seed; s < seed + count && !(firstFailure && failures > 0); s++) {
  try {
    const r = await runCatalogSim({ seed: s, ...(verbose ? { log: (l: string) => console.log(l) } : {}) });
    for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += r[k];
  } catch (err) {
    failures++;
    const what = err instanceof CatalogSimFailure ? err.message : `seed ${s} crashed: ${(err as Error).stack ?? String(err)}`;
    console.log(`FAIL ${what}\n  replay: node dist/test/sim/catalog-main.js --seed ${s} --verbose`);
  }
}
console.log(`catalog sim: ${count} runs (seeds ${seed}..${seed + count - 1}), ${failures} failed, ${((Date.now() - started) / 1000).toFixed(1)}s; ` + Object.entries(total).map(([k, v]) => `${k} ${v}`).join(", "));
process.exitCode = failures === 0 ? 0 : 1;
