// The request path's share of metrics, alone: what VolumeStats.begin() and
// done() (two performance.now() calls, a few additions, a histogram bucket)
// cost per request, in a tight loop on one core, against the same loop
// without them. docs/bench.md, "The cost of metrics".
//
//   node dist/bench/volume-stats-cost.js [--requests 20000000]

import { parseArgs } from "node:util";
import { opWrite, VolumeStats } from "../src/daemon/volume-stats.js";
import { positiveOption } from "./lib/proc.js";

function loop(n: number, counted: VolumeStats | undefined): number {
  let sink = 0;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    if (counted === undefined) {
      sink += i & 7;
      continue;
    }
    const start = counted.begin(performance.now());
    sink += i & 7;
    counted.done(opWrite, 4096, start, performance.now(), false);
  }
  const ms = performance.now() - t0;
  if (sink < 0) throw new Error("unreachable");
  return (ms * 1e6) / n;
}

const { values } = parseArgs({ options: { requests: { type: "string", default: "20000000" } } });
const n = positiveOption("--requests", values.requests!);
const stats = new VolumeStats("bench");
loop(n / 10, stats); // warm up: optimized code for both loops
loop(n / 10, undefined);
const bare = loop(n, undefined);
const counted = loop(n, stats);
process.stdout.write(`${n} requests: ${(counted - bare).toFixed(1)} ns each for the counting (${counted.toFixed(1)} ns counted, ${bare.toFixed(1)} ns bare)\n`);
