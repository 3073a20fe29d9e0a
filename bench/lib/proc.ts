// Child processes for the benchmark: every child is tracked so that a failure
// or Ctrl-C kills it, and cleanups run in reverse order exactly once.

import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect } from "node:net";

const children = new Set<ChildProcess>();
const cleanups: { name: string; fn: () => Promise<void> | void }[] = [];
let cleaning: Promise<void> | undefined;

export function log(line: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`);
}

/**
 * Registers a cleanup; cleanupAll() runs them last-registered first. The
 * returned function runs this one now (once) and unregisters it.
 */
export function onCleanup(name: string, fn: () => Promise<void> | void): () => Promise<void> {
  const entry = { name, fn };
  cleanups.push(entry);
  return async () => {
    const i = cleanups.indexOf(entry);
    if (i < 0) return;
    cleanups.splice(i, 1);
    await fn();
  };
}

/** Kills every tracked child and runs every cleanup once; errors are logged, not thrown. */
export function cleanupAll(): Promise<void> {
  cleaning ??= (async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    for (let c = cleanups.pop(); c !== undefined; c = cleanups.pop()) {
      try {
        await c.fn();
      } catch (e) {
        log(`cleanup of ${c.name} failed: ${(e as Error).message}`);
      }
    }
  })();
  return cleaning;
}

let signalled = false;

/** True once SIGINT, SIGTERM or SIGHUP arrived: failures after it are the cleanup's doing. */
export function interrupted(): boolean {
  return signalled;
}

/**
 * Runs a bench's main: cleans up once it ends or fails (then exit code 1),
 * and on SIGINT/SIGTERM/SIGHUP.
 */
export function runBench(main: () => Promise<void>): void {
  installSignalHandlers();
  main()
    .then(() => cleanupAll())
    .catch(async (e: unknown) => {
      if (interrupted()) return; // the signal handler cleans up and exits
      log(`failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
      await cleanupAll();
      process.exitCode = 1;
    });
}

/** A command-line option that must be a whole number of at least 1. */
export function positiveOption(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} wants a whole number of at least 1, not "${v}"`);
  return n;
}

/** SIGINT/SIGTERM: clean up and exit; a second signal exits at once. */
export function installSignalHandlers(): void {
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(sig, () => {
      if (signalled) process.exit(130);
      signalled = true;
      log(`${sig}: cleaning up (send it again to exit at once)`);
      void cleanupAll().finally(() => process.exit(130));
    });
  }
}

/** Spawns a tracked child with stdout and stderr piped. */
export function spawnTracked(cmd: string, args: string[]): ChildProcess {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

export interface Captured {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a tracked child to its end, SIGKILLed after timeoutMs. */
export function capture(cmd: string, args: string[], timeoutMs: number): Promise<Captured> {
  return new Promise((resolve, reject) => {
    const child = spawnTracked(cmd, args);
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export async function captureOk(cmd: string, args: string[], timeoutMs: number): Promise<string> {
  const r = await capture(cmd, args, timeoutMs);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** Resolves once something accepts TCP connections on host:port. */
export async function waitForPort(host: string, port: number, timeoutMs: number, alive: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port });
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    if (!alive()) throw new Error(`the process that should listen on ${host}:${port} exited`);
    if (Date.now() > deadline) throw new Error(`nothing listens on ${host}:${port} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A field of /proc/<pid>/status in KiB (VmRSS, VmHWM). */
export function procStatusKiB(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m?.[1]) throw new Error(`/proc/${pid}/status has no ${field}`);
  return Number(m[1]);
}

const clockTicksPerSec = 100; // USER_HZ, 100 on every Linux architecture node runs on

/** User + system CPU seconds a process (all threads) has used so far. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the ")" that closes comm: state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / clockTicksPerSec;
}

/**
 * The scheduler's accounting of a process's main thread (for Node, the event
 * loop; /proc/PID/task/PID/schedstat): nanoseconds on a CPU, and nanoseconds
 * runnable but waiting for one.
 */
export function mainThreadSchedNs(pid: number): { runNs: number; waitNs: number } {
  const [run, wait] = readFileSync(`/proc/${pid}/task/${pid}/schedstat`, "utf8").trim().split(" ");
  return { runNs: Number(run), waitNs: Number(wait) };
}

/** Jiffies of the whole machine so far (/proc/stat): all of them, and those no CPU was busy (idle and iowait). */
export function machineJiffies(): { total: number; idle: number } {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  return { total: cpu.reduce((a, b) => a + b, 0), idle: cpu[3]! + cpu[4]! };
}

/**
 * Confines this process's threads to `cpuList` (taskset's syntax: "0", "0,1",
 * "0-3"). Processes started afterwards inherit it, so a bench pinned before it
 * starts anything runs its daemons, nbdkit and fio on those CPUs only.
 */
export function pinToCpus(cpuList: string): void {
  if (!/^\d+([-,]\d+)*$/.test(cpuList)) throw new Error(`--cpus ${cpuList}: give CPU numbers as taskset takes them, e.g. 0 or 0,1 or 0-3`);
  try {
    execFileSync("taskset", ["--all-tasks", "--pid", "--cpu-list", cpuList, String(process.pid)], { stdio: ["ignore", "ignore", "pipe"] });
  } catch (e) {
    const stderr = (e as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`cannot pin the bench to CPUs ${cpuList} with taskset (util-linux): ${stderr || (e as Error).message}`);
  }
}

/** The median of some measurements (the mean of the middle two for an even count). */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
