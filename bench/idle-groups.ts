// What idle Raft groups cost: a 3-node pxd cluster on loopback
// (startCluster(3)) with many small repl-3 volumes and no I/O. Every group's
// leader heartbeats its followers every tick (100 ms), so this is the floor
// a node pays per volume. Measures, per daemon over a window: CPU time
// (utime + stime from /proc/PID/stat) and peer message frames and bytes sent
// (pxd_peer_sent_frames_total / pxd_peer_sent_bytes_total in /metrics).
//
//   node dist/bench/idle-groups.js [--volumes 200] [--seconds 30] [--settle 10]
//
// Progress goes to stderr, the table (markdown) to stdout. See docs/bench.md.

import { execFileSync } from "node:child_process";
import { cpus, loadavg } from "node:os";
import { parseArgs } from "node:util";
import { startCluster, waitUntil, type Cluster } from "../test/helpers/cluster.js";
import type { DaemonProcess } from "../test/helpers/daemon.js";
import { cpuSeconds, log, onCleanup, positiveOption, runBench, sleep } from "./lib/proc.js";

const volumeBytes = 1024 * 1024;
const createsInFlight = 8;

interface Options {
  volumes: number;
  seconds: number;
  settleSec: number;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      volumes: { type: "string", default: "200" },
      seconds: { type: "string", default: "30" },
      settle: { type: "string", default: "10" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write("usage: node dist/bench/idle-groups.js [--volumes N] [--seconds SEC] [--settle SEC]\n");
    process.exit(0);
  }
  return { volumes: positiveOption("volumes", values.volumes), seconds: positiveOption("seconds", values.seconds), settleSec: positiveOption("settle", values.settle) };
}

/** Sums a per-peer counter of /metrics (`name{peer="N"} value` lines). */
function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}\\{[^}]*\\} (\\d+)$`, "gm"))) sum += Number(m[1]);
  return sum;
}

interface Sample {
  cpuSec: number;
  framesSent: number;
  bytesSent: number;
}

async function sample(d: DaemonProcess): Promise<Sample> {
  const text = await d.api.metrics();
  return { cpuSec: cpuSeconds(d.child!.pid!), framesSent: metricSum(text, "pxd_peer_sent_frames_total"), bytesSent: metricSum(text, "pxd_peer_sent_bytes_total") };
}

async function createVolumes(c: Cluster, names: string[]): Promise<void> {
  const api = c.nodes[0]!.api;
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < names.length; i = next++) await api.createVolume({ name: names[i]!, sizeBytes: volumeBytes, repl: 3 });
  };
  await Promise.all(Array.from({ length: createsInFlight }, worker));
}

/** Leaders per node index, once every volume has one (as node 0 reports it). */
async function leadersPerNode(c: Cluster, names: string[]): Promise<number[]> {
  return waitUntil("a leader for every volume", async () => {
    const counts = c.nodes.map(() => 0);
    for (const name of names) {
      const info = await c.nodes[0]!.api.inspectVolume(name);
      const l = info.replicas.find((r) => r.leader);
      const at = l ? Number(/^node(\d+)$/.exec(l.node)?.[1] ?? "0") - 1 : -1;
      if (at < 0) return undefined;
      counts[at] = (counts[at] ?? 0) + 1;
    }
    return counts;
  }, 120_000);
}

function fmt(n: number, digits = 0): string {
  return n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

async function main(): Promise<void> {
  const opts = parseOptions();
  let commit = "unknown";
  try {
    commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
  } catch {
    // not a git checkout: the table says "unknown"
  }
  log(`starting a 3-node pxd cluster on loopback (commit ${commit})`);
  const c = await startCluster(3);
  onCleanup("pxd cluster", () => c.dispose());
  log(`cluster up on ${c.nodes.map((n) => n.host).join(", ")}; creating ${opts.volumes} repl-3 volumes of 1 MiB`);
  const names = Array.from({ length: opts.volumes }, (_, i) => `idle-${String(i).padStart(4, "0")}`);
  const t0 = Date.now();
  await createVolumes(c, names);
  const leaders = await leadersPerNode(c, names);
  log(`created in ${((Date.now() - t0) / 1000).toFixed(1)} s; leaders per node ${leaders.join(" / ")}; idle for ${opts.settleSec} s before measuring`);
  await sleep(opts.settleSec * 1000);

  const load0 = loadavg();
  const before = await Promise.all(c.nodes.map(sample));
  const w0 = Date.now();
  await sleep(opts.seconds * 1000);
  const after = await Promise.all(c.nodes.map(sample));
  const windowSec = (Date.now() - w0) / 1000;
  const load1 = loadavg();

  const rows = c.nodes.map((n, i) => {
    const a = after[i]!;
    const b = before[i]!;
    return { name: `node${i + 1} (${n.host})`, leaders: leaders[i] ?? 0, cpuSec: a.cpuSec - b.cpuSec, frames: a.framesSent - b.framesSent, bytes: a.bytesSent - b.bytesSent };
  });
  const total = rows.reduce((t, r) => ({ ...t, leaders: t.leaders + r.leaders, cpuSec: t.cpuSec + r.cpuSec, frames: t.frames + r.frames, bytes: t.bytes + r.bytes }), { name: "all three", leaders: 0, cpuSec: 0, frames: 0, bytes: 0 });
  const line = (cells: string[]): string => `| ${cells.join(" | ")} |\n`;
  process.stdout.write(
    `### ${opts.volumes} idle repl-3 volumes, ${fmt(windowSec, 1)} s window (commit ${commit})\n\n` +
      `${new Date().toISOString()}, ${cpus().length} cores (${cpus()[0]?.model ?? "?"}), node ${process.version}; ` +
      `load average ${load0.map((x) => x.toFixed(2)).join(", ")} before, ${load1.map((x) => x.toFixed(2)).join(", ")} after\n\n` +
      line(["daemon", "volume leaders", "CPU s", "CPU % of a core", "frames sent/s", "bytes sent/s"]) +
      line(["---", "---", "---", "---", "---", "---"]) +
      [...rows, total]
        .map((r) => line([r.name, fmt(r.leaders), fmt(r.cpuSec, 2), `${fmt((100 * r.cpuSec) / windowSec, 1)}%`, fmt(r.frames / windowSec), fmt(r.bytes / windowSec)]))
        .join("") +
      "\n",
  );
}

runBench(main);
