// A long sweep of the cluster simulator over several processes:
//   npm run sim:sweep -- [--seeds N] [--from S] [--workers K] [--chunk C] [cluster-main options...]
// Splits seeds S .. S+N-1 (default 1 .. 10,000) into ranges of C seeds
// (default: about four ranges a worker, at most 50 seeds each) and runs each range as one cluster-main.js process, K at a
// time (default: one per core). Prints a progress line per finished range,
// then every failed seed with its FAIL line and replay command, and a last
// line with the runs, failures, summed counters and wall time. Options it
// does not know (--no-flips, --log-retain B, --nodes 5) go to every
// cluster-main.js. Exit code 1 when a seed failed.

import { spawn } from "node:child_process";
import { availableParallelism } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const script = join(dirname(fileURLToPath(import.meta.url)), "cluster-main.js");

interface Range {
  from: number;
  count: number;
}

interface Outcome {
  range: Range;
  /** Each failure: its FAIL line and the replay line after it. */
  failures: string[];
  /** Counters from cluster-main's summary line ("writes 123, acked 100, ..."). */
  counters: Map<string, number>;
  /** The process ended without a summary (a crash of the simulator itself): its exit code and output tail. */
  broken?: string;
}

function options(argv: string[]): { seeds: number; from: number; workers: number; chunk: number; rest: string[] } {
  const o = { seeds: 10_000, from: 1, workers: availableParallelism(), chunk: 0, rest: [] as string[] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const keys: Record<string, "seeds" | "from" | "workers" | "chunk" | undefined> = { "--seeds": "seeds", "--from": "from", "--workers": "workers", "--chunk": "chunk" };
    const key = keys[a];
    if (key === undefined) {
      o.rest.push(a);
      continue;
    }
    const v = Number(argv[++i]);
    if (!Number.isSafeInteger(v) || v < (key === "from" ? 0 : 1)) throw new Error(`${a} needs a positive integer, not ${argv[i]}`);
    o[key] = v;
  }
  // Enough ranges that the workers finish together: about four each, at most 50 seeds a range.
  if (o.chunk === 0) o.chunk = Math.max(1, Math.min(50, Math.ceil(o.seeds / (o.workers * 4))));
  return o;
}

function runRange(range: Range, rest: string[]): Promise<Outcome> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, "--seed", String(range.from), "--seeds", String(range.count), ...rest], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.on("close", (code) => {
      const lines = out.split("\n");
      const failures: string[] = [];
      lines.forEach((l, i) => {
        if (l.startsWith("FAIL ")) failures.push(`${l}\n${lines.slice(i + 1).find((x) => x.startsWith("  replay:")) ?? ""}`);
      });
      const summary = lines.find((l) => l.startsWith("cluster sim: "));
      const counters = new Map<string, number>();
      for (const m of (summary ?? "").split("; ").slice(1).join("; ").matchAll(/(\w+) (\d+)/g)) counters.set(m[1]!, Number(m[2]));
      resolve({ range, failures, counters, ...(summary === undefined ? { broken: `exit code ${code}: ${out.slice(-1500)}` } : {}) });
    });
  });
}

async function main(): Promise<void> {
  let o: ReturnType<typeof options>;
  try {
    o = options(process.argv.slice(2));
  } catch (e) {
    console.error(`sim:sweep: ${(e as Error).message}\nusage: npm run sim:sweep -- [--seeds N] [--from S] [--workers K] [--chunk C] [cluster-main options]`);
    process.exitCode = 2;
    return;
  }
  const ranges: Range[] = [];
  for (let s = o.from; s < o.from + o.seeds; s += o.chunk) ranges.push({ from: s, count: Math.min(o.chunk, o.from + o.seeds - s) });
  const started = Date.now();
  const secs = (): string => ((Date.now() - started) / 1000).toFixed(0);
  console.log(`sim:sweep: cluster sim seeds ${o.from}..${o.from + o.seeds - 1} in ${ranges.length} ranges of up to ${o.chunk}, ${o.workers} workers${o.rest.length > 0 ? `, options ${o.rest.join(" ")}` : ""}`);
  const outcomes: Outcome[] = [];
  let done = 0;
  let failed = 0;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < ranges.length) {
      const r = await runRange(ranges[next++]!, o.rest);
      outcomes.push(r);
      done += r.range.count;
      failed += r.failures.length + (r.broken !== undefined ? 1 : 0);
      const eta = ((Date.now() - started) / done) * (o.seeds - done) / 1000;
      console.log(`... ${done}/${o.seeds} seeds, ${failed} failed, ${secs()} s, about ${eta.toFixed(0)} s left (seeds ${r.range.from}..${r.range.from + r.range.count - 1}: ${r.failures.length} failed${r.broken !== undefined ? ", the simulator broke" : ""})`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.workers, ranges.length) }, worker));
  outcomes.sort((a, b) => a.range.from - b.range.from);
  const totals = new Map<string, number>();
  for (const r of outcomes) for (const [k, v] of r.counters) totals.set(k, (totals.get(k) ?? 0) + v);
  const failures = outcomes.flatMap((r) => r.failures);
  const broken = outcomes.filter((r) => r.broken !== undefined);
  if (failures.length > 0) console.log(`\nfailed seeds:\n${failures.join("\n")}`);
  for (const r of broken) console.log(`\nseeds ${r.range.from}..${r.range.from + r.range.count - 1} gave no summary (${r.broken})`);
  console.log(`\nsim:sweep: ${o.seeds} runs (seeds ${o.from}..${o.from + o.seeds - 1}), ${failures.length} failed, ${broken.length} ranges without a summary, ${secs()} s wall, ${o.workers} workers; ` +
    [...totals].map(([k, v]) => `${k} ${v}`).join(", "));
  process.exitCode = failures.length > 0 || broken.length > 0 ? 1 : 0;
}

await main();
