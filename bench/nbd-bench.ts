// pxd against nbdkit's file plugin, both over NBD with fio's nbd engine, in
// one run on one machine, reported as ratios (DESIGN.md §8): a single-node pxd
// with a repl-1 volume, and a 3-node pxd cluster on loopback (startCluster(3))
// with a repl-3 volume, reached through its Raft leader and once through a
// follower (which forwards to the leader). Targets are alternated round by
// round so that noise from the machine falls on all of them. Then the disk's
// durable ceiling (fio alone: 1 MiB overwrites with an fdatasync every 4) and
// two pxd-only checks: daemon memory after 1 GiB of random 4k writes, and
// store disk use after rewriting 256 MiB ten times.
//
//   npm run bench -- [--runtime 8] [--rounds 3] [--only REGEX] [--skip-extra]
//                    [--cluster | --skip-cluster] [--json FILE]
//
// Progress goes to stderr, the tables (markdown) to stdout. See docs/bench.md.

import { closeSync, fsyncSync, mkdtempSync, openSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startCluster, type Cluster } from "../test/helpers/cluster.js";
import type { DaemonProcess } from "../test/helpers/daemon.js";
import { fioVersion, runFio, runFioDurableFile, type FioResult, type FioSpec } from "./lib/fio.js";
import { Nbdkit, nbdkitVersion } from "./lib/nbdkit.js";
import { cpuSeconds, log, machineJiffies, mainThreadSchedNs, median, onCleanup, pinToCpus, positiveOption, procStatusKiB, runBench } from "./lib/proc.js";
import { freeSegmentsMax } from "../src/constants.js";
import { dirUsage, startBenchDaemon, storeSnapshot, waitForStoreSettle, type DirUsage, type Settled } from "./lib/pxd.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const volumeBytes = GiB;

interface Options {
  runtimeSec: number;
  rounds: number;
  only: RegExp | undefined;
  skipExtra: boolean;
  /** all: every job, the repl-3 cluster on its jobs; only: just the cluster's jobs (and no extra checks); skip: no cluster. */
  cluster: "all" | "only" | "skip";
  /** The cluster's peers without TLS (--peer-plain on every node). */
  peerPlain: boolean;
  jsonFile: string | undefined;
  /** taskset CPU list the bench and everything it starts are confined to; all CPUs when absent. */
  cpus: string | undefined;
}

/** How a job compares repl 3 with repl 1 (the issue's targets). */
interface ClusterCompare {
  /** value: IOPS or MiB/s ratio repl3/repl1 must be at least `bound`; latency: mean clat ratio at most `bound`. */
  kind: "value" | "latency";
  bound: number | undefined;
}

interface BenchJob {
  name: string;
  spec: Pick<FioSpec, "rw" | "bs" | "iodepth">;
  /** IOPS for small blocks, bandwidth for 1 MiB blocks. */
  metric: "iops" | "bw";
  /** Minimum pxd/nbdkit ratio from the issue; none for latency-bound jobs. */
  target: number | undefined;
  showLatency: boolean;
  /** Also run against the repl-3 cluster, compared with repl 1 like this. */
  cluster?: ClusterCompare;
}

// In this order. The sequential read runs while the volume is as the 1 MiB
// prefill wrote it (what a sequential read of sequentially written data
// measures); the same read runs again after the random writes, when pxd's
// log-structured layout has scattered the volume into 4 KiB pieces (one pread
// each) and nbdkit's file is unchanged in layout: reported, no target.
const jobs: BenchJob[] = [
  { name: "4k-randread-qd32", spec: { rw: "randread", bs: "4k", iodepth: 32 }, metric: "iops", target: 0.8, showLatency: false, cluster: { kind: "value", bound: undefined } },
  { name: "4k-randread-qd1", spec: { rw: "randread", bs: "4k", iodepth: 1 }, metric: "iops", target: undefined, showLatency: true },
  { name: "1m-seqread-qd8", spec: { rw: "read", bs: "1M", iodepth: 8 }, metric: "bw", target: 0.8, showLatency: false },
  { name: "4k-randwrite-qd32", spec: { rw: "randwrite", bs: "4k", iodepth: 32 }, metric: "iops", target: 0.5, showLatency: false, cluster: { kind: "value", bound: 0.5 } },
  { name: "4k-randwrite-qd1", spec: { rw: "randwrite", bs: "4k", iodepth: 1 }, metric: "iops", target: undefined, showLatency: true, cluster: { kind: "latency", bound: 3 } },
  { name: "1m-seqread-qd8-scattered", spec: { rw: "read", bs: "1M", iodepth: 8 }, metric: "bw", target: undefined, showLatency: false },
  { name: "1m-seqwrite-qd8", spec: { rw: "write", bs: "1M", iodepth: 8 }, metric: "bw", target: 0.5, showLatency: false, cluster: { kind: "value", bound: undefined } },
];

/** pxd: one daemon, repl-1 volume; repl3: the cluster's repl-3 volume through its leader; repl3-follower: through a follower. */
type TargetName = "pxd" | "nbdkit" | "repl3" | "repl3-follower";

interface Run extends FioResult {
  /** Server CPU (user + system, all threads) during the fio run, percent of one core. */
  serverCpuPct: number;
  /**
   * The servers' main threads (each pxd daemon's event loop) during the run,
   * percent of wall time summed over the servers: on a CPU, and runnable but
   * waiting for one (the scheduler's run queue).
   */
  mainRunPct: number;
  mainWaitPct: number;
  /** The whole machine during the run: percent of all its cores busy (not idle, not in iowait). */
  machineBusyPct: number;
  /** pxd only: group commits (one fdatasync each) during the run, and records they carried. */
  commits?: number;
  recordsCommitted?: number;
  /** pxd only: bytes the store appended to its log during the run (client writes + GC moves + headers). */
  logBytes?: number;
  /** Cluster only: the node fio was pointed at (and the leader then). */
  node?: string;
}

interface Median {
  value: number;
  clatMeanUs: number;
  clatP99Us: number;
  serverCpuPct: number;
  mainRunPct: number;
  mainWaitPct: number;
  machineBusyPct: number;
}

interface JobResult {
  name: string;
  metric: "iops" | "bw";
  target: number | undefined;
  runs: Partial<Record<TargetName, Run[]>>;
  median: Partial<Record<TargetName, Median>>;
  ratio: number;
  met: boolean | undefined;
  /** Present when the job ran against the repl-3 cluster. */
  repl3?: {
    compare: ClusterCompare;
    /** IOPS or MiB/s, repl 3 (leader) / repl 1. */
    ratio: number;
    /** Mean completion latency, repl 3 (leader) / repl 1. */
    latencyRatio: number;
    met: boolean | undefined;
    /** IOPS or MiB/s through a follower / through the leader (one run each way is not paired: leader is the median). */
    followerRatio: number | undefined;
  };
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      runtime: { type: "string", default: "8" },
      rounds: { type: "string", default: "3" },
      only: { type: "string" },
      "skip-extra": { type: "boolean", default: false },
      cluster: { type: "boolean", default: false },
      "skip-cluster": { type: "boolean", default: false },
      "peer-plain": { type: "boolean", default: false },
      json: { type: "string" },
      cpus: { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write("usage: npm run bench -- [--runtime SEC] [--rounds N] [--only REGEX] [--skip-extra] [--cluster | --skip-cluster] [--peer-plain] [--cpus LIST] [--json FILE]\n");
    process.exit(0);
  }
  if (values.cluster && values["skip-cluster"]) throw new Error("--cluster runs only the cluster's jobs, --skip-cluster none of them: pick one");
  const cluster = values.cluster ? "only" : values["skip-cluster"] ? "skip" : "all";
  return {
    runtimeSec: positiveOption("runtime", values.runtime),
    rounds: positiveOption("rounds", values.rounds),
    only: values.only === undefined ? undefined : new RegExp(values.only, "i"),
    skipExtra: values["skip-extra"] || cluster === "only",
    cluster,
    peerPlain: values["peer-plain"],
    jsonFile: values.json,
    cpus: values.cpus,
  };
}

// ---- small pure helpers ----


function metricOf(job: BenchJob | JobResult, r: { iops: number; bytesPerSec: number }): number {
  return job.metric === "iops" ? r.iops : r.bytesPerSec / MiB;
}

function fmtNum(n: number, digits = 0): string {
  return n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function fmtMetric(metric: "iops" | "bw", v: number): string {
  return metric === "iops" ? `${fmtNum(v)} IOPS` : `${fmtNum(v)} MiB/s`;
}

function fmtBytes(n: number): string {
  return n >= GiB ? `${fmtNum(n / GiB, 2)} GiB` : `${fmtNum(n / MiB, 1)} MiB`;
}

function table(header: string[], rows: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n") + "\n";
}

// ---- pxd against nbdkit ----

interface Target {
  name: TargetName;
  uri: string;
  /** The server's processes (a cluster's three daemons): their CPU is summed. */
  pids: number[];
  /** Untimed, before each run: the cluster targets find the volume's current leader (or a follower). */
  prepare?(): Promise<void>;
  /** Untimed, after each run: lets background work end so it does not bill the next run. */
  quiesce(): Promise<void>;
  /** pxd only: the store's commit counters (for the cluster, the leader's). */
  commitCounters?: () => Promise<{ commits: number; recordsCommitted: number; logBytes: number }>;
  /** Cluster only: which node fio talks to, for the log and the tables. */
  node?: () => string;
}

/** What the servers (all threads, and their main threads alone) and the whole machine have used so far. */
interface UsageSample {
  cpuSec: number;
  mainRunNs: number;
  mainWaitNs: number;
  machine: { total: number; idle: number };
}

function sampleUsage(pids: number[]): UsageSample {
  const u: UsageSample = { cpuSec: 0, mainRunNs: 0, mainWaitNs: 0, machine: machineJiffies() };
  for (const pid of pids) {
    const main = mainThreadSchedNs(pid);
    u.cpuSec += cpuSeconds(pid);
    u.mainRunNs += main.runNs;
    u.mainWaitNs += main.waitNs;
  }
  return u;
}

/** The usage between two samples taken `wallMs` apart, as the percentages a Run reports. */
function usageBetween(a: UsageSample, b: UsageSample, wallMs: number): Pick<Run, "serverCpuPct" | "mainRunPct" | "mainWaitPct" | "machineBusyPct"> {
  const wallNs = wallMs * 1e6;
  return {
    serverCpuPct: ((b.cpuSec - a.cpuSec) / (wallMs / 1000)) * 100,
    mainRunPct: ((b.mainRunNs - a.mainRunNs) / wallNs) * 100,
    mainWaitPct: ((b.mainWaitNs - a.mainWaitNs) / wallNs) * 100,
    machineBusyPct: (1 - (b.machine.idle - a.machine.idle) / (b.machine.total - a.machine.total)) * 100,
  };
}

async function timedRun(job: BenchJob, target: Target, runtimeSec: number): Promise<Run> {
  await target.prepare?.();
  const spec: FioSpec = { name: job.name, ...job.spec, size: "1G", runtimeSec };
  const c0 = await target.commitCounters?.();
  const u0 = sampleUsage(target.pids);
  const t0 = Date.now();
  const r = await runFio(spec, target.uri, (runtimeSec + 120) * 1000);
  const usage = usageBetween(u0, sampleUsage(target.pids), Date.now() - t0);
  const c1 = await target.commitCounters?.();
  await target.quiesce();
  const node = target.node === undefined ? {} : { node: target.node() };
  if (c0 === undefined || c1 === undefined) return { ...r, ...usage, ...node };
  const counted = { commits: c1.commits - c0.commits, recordsCommitted: c1.recordsCommitted - c0.recordsCommitted, logBytes: c1.logBytes - c0.logBytes };
  return { ...r, ...usage, ...counted, ...node };
}

/**
 * Runs `job` opts.rounds times on each of `rotating` (the order rotates each
 * round: A B C, B C A, ...), then once on each of `once` (the follower).
 */
async function runJob(job: BenchJob, rotating: Target[], once: Target[], opts: Options): Promise<JobResult> {
  const runs: Partial<Record<TargetName, Run[]>> = {};
  const record = (t: Target, r: Run, label: string): void => {
    (runs[t.name] ??= []).push(r);
    const lat = job.showLatency || t.name.startsWith("repl3") ? `, clat mean ${fmtNum(r.clatMeanUs)} µs p99 ${fmtNum(r.clatP99Us)} µs` : "";
    const commits = r.commits === undefined ? "" : `, ${commitsText(r, opts.runtimeSec)}`;
    const at = r.node === undefined ? "" : ` on ${r.node}`;
    const loops = t.name === "nbdkit" ? "" : `, event loop${t.pids.length > 1 ? "s" : ""} ${fmtNum(r.mainRunPct)}% running ${fmtNum(r.mainWaitPct)}% waiting for a CPU`;
    log(`${job.name} ${label} ${t.name}${at}: ${fmtMetric(job.metric, metricOf(job, r))}${lat}, server CPU ${fmtNum(r.serverCpuPct)}%${loops}, machine ${fmtNum(r.machineBusyPct)}% busy${commits}`);
  };
  for (let round = 0; round < opts.rounds; round++) {
    // Rotated each round, so that no target always goes first.
    const order = rotating.map((_, i) => rotating[(i + round) % rotating.length]!);
    for (const t of order) record(t, await timedRun(job, t, opts.runtimeSec), `round ${round + 1}/${opts.rounds}`);
  }
  for (const t of once) record(t, await timedRun(job, t, opts.runtimeSec), "once");
  const med = (rs: Run[]): Median => {
    const of = (k: Exclude<keyof Median, "value">): number => median(rs.map((r) => r[k]));
    return {
      value: median(rs.map((r) => metricOf(job, r))),
      clatMeanUs: of("clatMeanUs"),
      clatP99Us: of("clatP99Us"),
      serverCpuPct: of("serverCpuPct"),
      mainRunPct: of("mainRunPct"),
      mainWaitPct: of("mainWaitPct"),
      machineBusyPct: of("machineBusyPct"),
    };
  };
  const median_: Partial<Record<TargetName, Median>> = {};
  for (const [name, rs] of Object.entries(runs) as [TargetName, Run[]][]) median_[name] = med(rs);
  const pxd = median_.pxd!;
  const ratio = pxd.value / median_.nbdkit!.value;
  const result: JobResult = { name: job.name, metric: job.metric, target: job.target, runs, median: median_, ratio, met: job.target === undefined ? undefined : ratio >= job.target };
  const r3 = median_.repl3;
  if (job.cluster !== undefined && r3 !== undefined) {
    const c = job.cluster;
    const ratio3 = r3.value / pxd.value;
    const latencyRatio = r3.clatMeanUs / pxd.clatMeanUs;
    const met = c.bound === undefined ? undefined : c.kind === "value" ? ratio3 >= c.bound : latencyRatio <= c.bound;
    const f = median_["repl3-follower"];
    result.repl3 = { compare: c, ratio: ratio3, latencyRatio, met, followerRatio: f === undefined ? undefined : f.value / r3.value };
  }
  return result;
}

async function prefill(t: Target): Promise<void> {
  await t.prepare?.();
  const r = await runFio({ name: "prefill", rw: "write", bs: "1M", iodepth: 8, size: "1G" }, t.uri, 15 * 60 * 1000);
  if (r.ioBytes !== volumeBytes) throw new Error(`prefill of ${t.name} wrote ${r.ioBytes} bytes, not ${volumeBytes}`);
  await t.quiesce();
  log(`prefilled ${t.name}${t.node ? ` through ${t.node()}` : ""}: 1 GiB at ${fmtNum(r.bytesPerSec / MiB)} MiB/s`);
}

/** The repl-3 volume on a 3-node cluster: through its leader, and through a follower. */
async function clusterTargets(c: Cluster, name: string): Promise<{ leader: Target; follower: Target }> {
  await c.nodes[0]!.api.createVolume({ name, sizeBytes: volumeBytes, repl: 3 });
  const pids = c.nodes.map((n) => n.pid!);
  const label = (i: number): string => `node${i + 1}`;
  let leader = await c.leaderOf(name);
  log(`repl-3 volume ${name}: leader ${label(leader)}; nodes ${c.nodes.map((n, i) => `${label(i)} ${n.host}`).join(", ")}`);
  const findLeader = async (): Promise<number> => {
    const now = await c.leaderOf(name);
    if (now !== leader) log(`repl-3 volume ${name}: the leader moved from ${label(leader)} to ${label(now)}`);
    leader = now;
    return now;
  };
  const counters = async (): Promise<{ commits: number; recordsCommitted: number; logBytes: number }> => {
    const s = await storeSnapshot(c.nodes[leader]!);
    return { commits: s.commits, recordsCommitted: s.recordsCommitted, logBytes: s.logBytesAppended };
  };
  const quiesce = async (): Promise<void> => {
    const settled = await Promise.all(c.nodes.map((n) => waitForStoreSettle(n, 1000, 20000)));
    if (settled.some((s) => !s.settled)) log("a cluster node's store is still busy after 20 s; going on");
  };
  const lt: Target = {
    name: "repl3", uri: "", pids, quiesce, commitCounters: counters, node: () => label(leader),
    async prepare() {
      lt.uri = c.nodes[await findLeader()]!.uri(name);
    },
  };
  let followerAt = -1;
  const ft: Target = {
    name: "repl3-follower", uri: "", pids, quiesce, commitCounters: counters, node: () => `${label(followerAt)} -> ${label(leader)}`,
    async prepare() {
      followerAt = ((await findLeader()) + 1) % c.nodes.length;
      ft.uri = c.nodes[followerAt]!.uri(name);
    },
  };
  return { leader: lt, follower: ft };
}

async function compare(selected: BenchJob[], opts: Options): Promise<{ results: JobResult[]; clusterHosts: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), "pxd-bench-"));
  const releaseDir = onCleanup("nbdkit temp dir", () => rmSync(dir, { recursive: true, force: true }));
  log("starting pxd daemon and nbdkit");
  const daemon = await startBenchDaemon();
  const releaseDaemon = onCleanup("pxd daemon", () => daemon.dispose());
  try {
    if (statSync(daemon.dataDir).dev !== statSync(dir).dev) log(`WARNING: ${daemon.dataDir} and ${dir} are on different filesystems`);
    await daemon.api.createVolume({ name: "bench", sizeBytes: volumeBytes, repl: 1 });
    const file = join(dir, "nbdkit.img");
    writeFileSync(file, "");
    truncateSync(file, volumeBytes);
    const kit = await Nbdkit.start(file);
    const releaseKit = onCleanup("nbdkit", () => kit.stop());
    try {
      const pxd: Target = {
        name: "pxd", uri: daemon.uri("bench"), pids: [daemon.child!.pid!],
        quiesce: () => settleQuietly(daemon),
        commitCounters: async () => {
          const s = await storeSnapshot(daemon);
          return { commits: s.commits, recordsCommitted: s.recordsCommitted, logBytes: s.logBytesAppended };
        },
      };
      const nbdkit: Target = { name: "nbdkit", uri: kit.uri(), pids: [kit.pid], quiesce: async () => fsyncFile(file) };
      log(`pxd ${pxd.uri} (data dir ${daemon.dataDir}), nbdkit ${nbdkit.uri} (file ${file})`);
      await prefill(pxd);
      await prefill(nbdkit);
      const withCluster = opts.cluster !== "skip" && selected.some((j) => j.cluster !== undefined);
      if (!withCluster) {
        const results: JobResult[] = [];
        for (const job of selected) results.push(await runJob(job, [pxd, nbdkit], [], opts));
        return { results, clusterHosts: [] };
      }
      log("starting a 3-node pxd cluster on loopback (127.0.0.11-13, or the next free 127.0.0.x1-x3)");
      // Peers speak verified TLS by default, as `pxd daemon` does; --peer-plain measures the cluster without it.
      const c = await startCluster(3, opts.peerPlain ? ["--peer-plain"] : []);
      log(`cluster up on ${c.nodes.map((n) => n.host).join(", ")}`);
      const releaseCluster = onCleanup("pxd cluster", () => c.dispose());
      try {
        if (statSync(c.dir).dev !== statSync(dir).dev) log(`WARNING: ${c.dir} and ${dir} are on different filesystems`);
        const { leader, follower } = await clusterTargets(c, "bench3");
        await prefill(leader);
        const results: JobResult[] = [];
        for (const job of selected) {
          const onCluster = job.cluster !== undefined;
          results.push(await runJob(job, onCluster ? [pxd, leader, nbdkit] : [pxd, nbdkit], onCluster ? [follower] : [], opts));
        }
        return { results, clusterHosts: c.nodes.map((n) => n.host) };
      } finally {
        await releaseCluster();
      }
    } finally {
      await releaseKit();
    }
  } finally {
    await releaseDaemon();
    await releaseDir();
  }
}

async function settleQuietly(daemon: DaemonProcess): Promise<void> {
  const s = await waitForStoreSettle(daemon, 1000, 20000);
  if (!s.settled) log(`pxd store still busy after ${s.waitedMs} ms; going on`);
}

/** nbdkit's writes sit dirty in the page cache; write them back outside the timed window. */
function fsyncFile(file: string): void {
  const fd = openSync(file, "r+");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Group commits per second of fio runtime and records per commit: how well writes batch per fdatasync. */
function commitsText(r: Run, runtimeSec: number): string {
  if (r.commits === undefined || r.recordsCommitted === undefined || r.commits === 0) return "no commits";
  const perCommit = `${fmtNum(r.commits / runtimeSec)} commits/s × ${fmtNum(r.recordsCommitted / r.commits, 1)} records`;
  // Reads write nothing, so their log bytes are GC alone.
  const amplification = r.logBytes !== undefined && r.ioBytes > 0 ? `, log ${fmtNum(r.logBytes / MiB)} MiB` : "";
  return perCommit + amplification;
}

const dash = "—";

function cellOf(r: JobResult, t: TargetName): string {
  const m = r.median[t];
  if (m === undefined) return dash;
  const showLatency = jobs.find((j) => j.name === r.name)?.showLatency === true;
  const lat = r.metric === "iops" && showLatency ? `, ${fmtNum(m.clatMeanUs)} µs mean` : "";
  return fmtMetric(r.metric, m.value) + lat;
}

const metText = (met: boolean | undefined): string => (met === undefined ? dash : met ? "yes" : "**no**");

/** The main table: repl 1 against nbdkit, and (when the cluster ran) repl 3 against repl 1, with the targets. */
function comparisonTable(results: JobResult[]): string {
  const clustered = results.some((r) => r.repl3 !== undefined);
  const rows = results.map((r) => {
    const base = [r.name, cellOf(r, "pxd"), ...(clustered ? [cellOf(r, "repl3")] : []), cellOf(r, "nbdkit"), fmtNum(r.ratio, 2), r.target === undefined ? dash : `≥ ${fmtNum(r.target, 1)}`, metText(r.met)];
    if (!clustered) return base;
    const x = r.repl3;
    if (x === undefined) return [...base, dash, dash, dash];
    const ratio = x.compare.kind === "latency" ? `${fmtNum(x.ratio, 2)}; latency ${fmtNum(x.latencyRatio, 2)}×` : fmtNum(x.ratio, 2);
    const bound = x.compare.bound === undefined ? dash : x.compare.kind === "latency" ? `latency ≤ ${fmtNum(x.compare.bound)}×` : `≥ ${fmtNum(x.compare.bound, 1)}`;
    return [...base, ratio, bound, metText(x.met)];
  });
  const header = clustered
    ? ["job", "pxd repl 1", "pxd repl 3", "nbdkit", "repl1/nbdkit", "target", "met?", "repl3/repl1", "target", "met?"]
    : ["job", "pxd", "nbdkit", "pxd/nbdkit", "target", "met?"];
  return table(header, rows);
}

function roundsOf(r: JobResult, t: TargetName): string {
  return (r.runs[t] ?? []).map((x) => fmtNum(metricOf(r, x))).join(" / ");
}

function latOf(r: JobResult, t: TargetName): string {
  const m = r.median[t];
  return m === undefined ? dash : `${fmtNum(m.clatMeanUs)} / ${fmtNum(m.clatP99Us)}`;
}

function cpuText(r: JobResult, t: TargetName): string {
  const m = r.median[t];
  return m === undefined ? dash : `${fmtNum(m.serverCpuPct)}%`;
}

/** Main threads running / waiting for a CPU (percent of wall time, medians), and the machine's busy share. */
function schedText(r: JobResult, t: TargetName): string {
  const m = r.median[t];
  return m === undefined ? dash : `${fmtNum(m.mainRunPct)}% / ${fmtNum(m.mainWaitPct)}%; ${fmtNum(m.machineBusyPct)}%`;
}

function detailTable(results: JobResult[], runtimeSec: number): string {
  const rows = results.map((r) => [
    r.name, roundsOf(r, "pxd"), roundsOf(r, "nbdkit"), latOf(r, "pxd"), latOf(r, "nbdkit"), cpuText(r, "pxd"), cpuText(r, "nbdkit"), schedText(r, "pxd"),
    (r.runs.pxd ?? []).map((x) => commitsText(x, runtimeSec)).join(" / "),
  ]);
  return table(["job", "pxd rounds", "nbdkit rounds", "pxd clat µs mean / p99", "nbdkit clat µs mean / p99", "pxd CPU", "nbdkit CPU", "pxd event loop running / waiting for a CPU; machine busy", "pxd group commits (per round)"], rows);
}

/** Repl 3 in detail: through the leader (rounds) and once through a follower, which forwards every request to the leader. */
function clusterTable(results: JobResult[], runtimeSec: number): string {
  const rows = results.filter((r) => r.repl3 !== undefined).map((r) => {
    const f = r.runs["repl3-follower"]?.[0];
    return [
      r.name, roundsOf(r, "repl3"), latOf(r, "repl3"), cpuText(r, "repl3"), schedText(r, "repl3"),
      (r.runs.repl3 ?? []).map((x) => commitsText(x, runtimeSec)).join(" / "),
      f === undefined ? dash : fmtMetric(r.metric, metricOf(r, f)), f === undefined ? dash : `${fmtNum(f.clatMeanUs)} / ${fmtNum(f.clatP99Us)}`,
      r.repl3?.followerRatio === undefined ? dash : fmtNum(r.repl3.followerRatio, 2),
      [...new Set([...(r.runs.repl3 ?? []), ...(f ? [f] : [])].map((x) => x.node ?? "?"))].join("; "),
    ];
  });
  return table(
    ["job", "leader rounds", "leader clat µs mean / p99", "cluster CPU (3 daemons)", "3 event loops running / waiting for a CPU; machine busy", "leader's group commits (per round)", "via follower (1 run)", "follower clat µs mean / p99", "follower/leader", "fio on (follower -> leader)"],
    rows,
  );
}

// ---- pxd alone: memory and disk ----

interface MemoryResult {
  rssBeforeKiB: number;
  rssAfterKiB: number;
  rssAfterSettleKiB: number;
  hwmKiB: number;
  writeIops: number;
  writtenBytes: number;
  allocatedBytes: number;
}

async function withFreshDaemon<T>(what: string, fn: (d: DaemonProcess) => Promise<T>): Promise<T> {
  log(`starting a fresh pxd daemon for the ${what} check`);
  const daemon = await startBenchDaemon();
  const release = onCleanup(`pxd daemon (${what})`, () => daemon.dispose());
  try {
    return await fn(daemon);
  } finally {
    await release();
  }
}

function memoryCheck(): Promise<MemoryResult> {
  return withFreshDaemon("memory", async (daemon) => {
    const pid = daemon.child!.pid!;
    await daemon.api.createVolume({ name: "mem", sizeBytes: volumeBytes, repl: 1 });
    await waitForStoreSettle(daemon, 1000, 10000);
    const rssBeforeKiB = procStatusKiB(pid, "VmRSS");
    log(`memory: RSS ${fmtNum(rssBeforeKiB / 1024, 1)} MiB before; writing every 4k block of 1 GiB once, in random order`);
    const spec: FioSpec = { name: "mem-randwrite", rw: "randwrite", bs: "4k", iodepth: 32, size: "1G" };
    const r = await runFio(spec, daemon.uri("mem"), 30 * 60 * 1000);
    const rssAfterKiB = procStatusKiB(pid, "VmRSS");
    await waitForStoreSettle(daemon, 2000, 30000);
    const rssAfterSettleKiB = procStatusKiB(pid, "VmRSS");
    const hwmKiB = procStatusKiB(pid, "VmHWM");
    const allocatedBytes = (await daemon.api.inspectVolume("mem")).allocatedBytes;
    log(`memory: ${fmtNum(r.iops)} IOPS; RSS ${fmtNum(rssAfterKiB / 1024, 1)} MiB after, ${fmtNum(rssAfterSettleKiB / 1024, 1)} MiB settled, peak ${fmtNum(hwmKiB / 1024, 1)} MiB`);
    return { rssBeforeKiB, rssAfterKiB, rssAfterSettleKiB, hwmKiB, writeIops: r.iops, writtenBytes: r.ioBytes, allocatedBytes };
  });
}

interface DiskResult {
  volumeBytes: number;
  writtenBytes: number;
  settle: Settled;
  usage: DirUsage;
}

function diskCheck(): Promise<DiskResult> {
  return withFreshDaemon("disk space", async (daemon) => {
    const size = 256 * MiB;
    await daemon.api.createVolume({ name: "disk", sizeBytes: size, repl: 1 });
    log("disk: rewriting 256 MiB ten times");
    const spec: FioSpec = { name: "disk-rewrite", rw: "write", bs: "1M", iodepth: 8, size: "256M", loops: 10 };
    const r = await runFio(spec, daemon.uri("disk"), 30 * 60 * 1000);
    log(`disk: wrote ${fmtBytes(r.ioBytes)} at ${fmtNum(r.bytesPerSec / MiB)} MiB/s; waiting for GC to settle`);
    const settle = await waitForStoreSettle(daemon, 2000, 30000);
    const usage = await dirUsage(join(daemon.dataDir, "store"));
    log(`disk: store ${fmtBytes(usage.sizeBytes)} in ${usage.files} files (${settle.settled ? "settled" : "NOT settled"} after ${settle.waitedMs} ms)`);
    return { volumeBytes: size, writtenBytes: r.ioBytes, settle, usage };
  });
}

/** fdatasync every this many 1 MiB writes: about what a pxd group commit of the 1m-seqwrite-qd8 job holds (2.5 records). */
const ceilingSyncEvery = 4;

/** The disk's durable 1 MiB write rate without pxd: what a durable server could reach at best here. */
async function ceilingCheck(runtimeSec: number): Promise<FioResult> {
  const dir = mkdtempSync(join(tmpdir(), "pxd-ceiling-"));
  const remove = onCleanup("ceiling file", () => rmSync(dir, { recursive: true, force: true }));
  try {
    log(`ceiling: fio overwriting a 1 GiB file with 1 MiB writes, fdatasync every ${ceilingSyncEvery}`);
    const r = await runFioDurableFile(dir, ceilingSyncEvery, runtimeSec);
    log(`ceiling: ${fmtNum(r.bytesPerSec / MiB)} MiB/s`);
    return r;
  } finally {
    await remove();
  }
}

function ceilingText(c: FioResult, results: JobResult[]): string {
  // The job's metric is bandwidth: its medians are MiB/s.
  const seq = results.find((r) => r.name === "1m-seqwrite-qd8");
  const rate = (t: TargetName): number | undefined => {
    const v = seq?.median[t]?.value;
    return v === undefined ? undefined : v * MiB;
  };
  const pxd = rate("pxd");
  const nbdkit = rate("nbdkit");
  const parts = [`fio alone, 1 MiB overwrites of a pre-written 1 GiB file on the same filesystem (psync, one job), fdatasync every ${ceilingSyncEvery} writes, ${fmtNum(c.runtimeMs / 1000)} s: **${fmtNum(c.bytesPerSec / MiB)} MiB/s**`];
  if (nbdkit !== undefined) parts.push(`${fmtNum(c.bytesPerSec / nbdkit, 2)} of nbdkit's 1m-seqwrite-qd8 (which syncs nothing)`);
  if (pxd !== undefined) parts.push(`pxd repl 1 reached ${fmtNum(pxd / c.bytesPerSec, 2)} of it`);
  return parts.join("; ") + ".\n";
}

function memoryTable(m: MemoryResult): string {
  const mib = (kib: number): string => `${fmtNum(kib / 1024, 1)} MiB`;
  return table(["pxd daemon (fresh, one 1 GiB volume)", "value"], [
    ["VmRSS before the writes", mib(m.rssBeforeKiB)],
    [`VmRSS right after ${fmtBytes(m.writtenBytes)} of random 4k writes (${fmtNum(m.writtenBytes / 4096)} blocks, QD32, ${fmtNum(m.writeIops)} IOPS)`, mib(m.rssAfterKiB)],
    ["VmRSS once the store settled", mib(m.rssAfterSettleKiB)],
    ["VmHWM (peak RSS)", mib(m.hwmKiB)],
    ["volume allocatedBytes after the writes", fmtBytes(m.allocatedBytes)],
  ]);
}

function diskTable(d: DiskResult): string {
  const s = d.settle.store;
  return table(["pxd store (fresh daemon, one 256 MiB volume rewritten 10 times)", "value"], [
    ["written by fio", fmtBytes(d.writtenBytes)],
    ["store dir, sum of file sizes", `${fmtBytes(d.usage.sizeBytes)} (${fmtNum(d.usage.sizeBytes)} bytes, ${d.usage.files} files)`],
    ["store dir, `du -sb`", `${fmtBytes(d.usage.duApparentBytes)} (${fmtNum(d.usage.duApparentBytes)} bytes)`],
    ["store dir, allocated blocks", fmtBytes(d.usage.allocatedBytes)],
    ["store status", `segments ${s.segments}, freeSegments ${s.freeSegments}, diskBytes ${fmtBytes(s.diskBytes)}, liveBytes ${fmtBytes(s.liveBytes)}, gcSegments ${s.gcSegments}`],
    ["GC settled", d.settle.settled ? `yes, after ${fmtNum(d.settle.waitedMs / 1000, 1)} s` : `no, still moving after ${fmtNum(d.settle.waitedMs / 1000, 1)} s`],
  ]);
}

// ---- main ----

async function main(): Promise<void> {
  const opts = parseOptions();
  // Before anything is started: the daemons, nbdkit and fio inherit it.
  if (opts.cpus !== undefined) pinToCpus(opts.cpus);
  const selected = jobs.filter((j) => (opts.only === undefined || opts.only.test(j.name)) && (opts.cluster !== "only" || j.cluster !== undefined));
  if (opts.only !== undefined && selected.length === 0) {
    throw new Error(`--only ${opts.only.source} matches no job; jobs are ${jobs.map((j) => j.name).join(", ")}`);
  }
  const env = {
    date: new Date().toISOString(),
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? "unknown",
    kernel: release(),
    memBytes: totalmem(),
    node: process.version,
    nbdkit: await nbdkitVersion(),
    fio: await fioVersion(),
    command: `npm run bench -- ${process.argv.slice(2).join(" ")}`.trim(),
    /** 1, 5 and 15 minute load averages (as `uptime` prints them), at the start and at the end of the comparison. */
    loadStart: loadavg(),
    loadEnd: [] as number[],
  };
  const pinned = opts.cpus === undefined ? "" : `, everything pinned to CPU ${opts.cpus} (taskset)`;
  log(`${env.nbdkit}, ${env.fio}, node ${env.node}, ${env.cpus} cores (${env.cpuModel})${pinned}`);
  const out: Record<string, unknown> = { env, options: { ...opts, only: opts.only?.source } };

  const { results, clusterHosts } = await compare(selected, opts);
  const clustered = results.some((r) => r.repl3 !== undefined);
  env.loadEnd = loadavg();
  const load = (l: number[]): string => l.map((x) => fmtNum(x, 2)).join(", ");
  out["jobs"] = results;
  out["clusterHosts"] = clusterHosts;
  process.stdout.write(
    `## pxd ${clustered ? "repl 1 and repl 3 " : ""}vs nbdkit over NBD (fio nbd engine, median of ${opts.rounds} round${opts.rounds === 1 ? "" : "s"} of ${opts.runtimeSec} s)\n\n` +
      `${env.date}, ${env.cpus} cores (${env.cpuModel})${pinned}, Linux ${env.kernel}, node ${env.node}, ${env.nbdkit}, ${env.fio}; ` +
      `load average ${load(env.loadStart)} at the start, ${load(env.loadEnd)} at the end of this table\n\n` +
      comparisonTable(results) +
      "\npxd makes every acknowledged write durable (one fdatasync per group commit); nbdkit's file plugin\n" +
      "acknowledges writes once they are in the page cache (fio sends no flush). All hold the same 1 GiB of data (prefilled).\n" +
      (clustered
        ? `pxd repl 1 is one daemon; pxd repl 3 is a 3-node cluster on ${clusterHosts.join(", ")} (same machine, same disk), fio on the\n` +
          "volume's Raft leader: a write is acknowledged once fsynced on 2 of 3 nodes. repl3/repl1 is IOPS or MiB/s; for\n" +
          "4k-randwrite-qd1 the target is on mean latency (repl 3 / repl 1).\n"
        : "") +
      "\nPer round, latency (median of rounds), server CPU (percent of one core, median of rounds), how much of the run\n" +
      "pxd's event loop spent on a CPU and how much runnable but waiting for one (the scheduler's run queue; percent of\n" +
      `wall time), how busy the whole machine was (percent of its ${env.cpus} cores), and pxd's group commits\n` +
      "(one fdatasync each; records per commit is how many writes share one sync):\n\n" +
      detailTable(results, opts.runtimeSec) + "\n" +
      (clustered
        ? "### pxd repl 3 (3-node cluster on loopback): through the leader, and once through a follower\n\n" +
          "A follower forwards every request to the leader over the peer transport; follower/leader compares that one run\n" +
          "with the leader's median. CPU is the three daemons together, percent of one core; the event loops' running and\n" +
          "waiting times are summed over the three daemons, percent of wall time.\n\n" +
          clusterTable(results, opts.runtimeSec) + "\n"
        : ""),
  );

  if (!opts.skipExtra) {
    // A failure here (no fio, no room for 1 GiB in the temp dir) is reported; the other checks still run.
    const ceiling = await ceilingCheck(opts.runtimeSec).catch((e: Error) => e);
    out["ceiling"] = ceiling instanceof Error ? { error: ceiling.message } : { syncEvery: ceilingSyncEvery, ...ceiling };
    process.stdout.write(`## The disk's durable write ceiling\n\n${ceiling instanceof Error ? `not measured: ${ceiling.message}\n` : ceilingText(ceiling, results)}\n`);
    const memory = await memoryCheck();
    out["memory"] = memory;
    process.stdout.write(`## Memory\n\n${memoryTable(memory)}\n`);
    const disk = await diskCheck();
    out["disk"] = disk;
    process.stdout.write(
      `## Disk space\n\n${diskTable(disk)}\n` +
        `Segments are 64 MiB files; up to ${freeSegmentsMax} freed segments are kept for reuse.\n\n`,
    );
  }
  if (opts.jsonFile !== undefined) {
    writeFileSync(opts.jsonFile, JSON.stringify(out, null, 2) + "\n");
    log(`wrote ${opts.jsonFile}`);
  }
}

runBench(main);
