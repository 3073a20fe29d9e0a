// This host's attachments, as files: what `pxd volume attach` started for
// each volume (docs/attach.md), and the attach agent it starts. Shared by the
// CLI, which attaches and detaches, and the daemon, which starts again an
// agent that died while its device is still connected (`superviseAgents`).
//
// The run dir (/run/pxd/attach, or PXD_RUN_DIR) holds NAME.json, the record,
// and NAME.log, the agent's or nbdfuse's log. The kernel keeps a device
// connected after its agent dies, with no one to move it to another node; a
// new agent takes it over with `pxd-attach adopt N`.

import { spawn } from "node:child_process";
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** Where this host keeps its attachment records (PXD_RUN_DIR overrides it). */
export const attachRunDir = (): string => process.env["PXD_RUN_DIR"] ?? "/run/pxd/attach";
/** The attach agent `npm run build` makes (`make -C native`); PXD_ATTACH_AGENT overrides it. */
export const attachAgentPath = (): string => process.env["PXD_ATTACH_AGENT"] ?? join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "native", "pxd-attach");
/** How long an attach waits for the agent (or nbdfuse) to come up. */
export const attachStartMs = 30_000;

export type AttachVia = "kernel" | "fuse";

/** What this host started for one attached volume. */
export interface AttachRecord {
  volume: string;
  host: string;
  via: AttachVia;
  device: string;
  /** The agent's pid (kernel) or nbdfuse's (fuse). */
  pid: number;
  readOnly: boolean;
  /** The node serving the connection as HOST:PORT, when it attached. */
  server: string;
  /** kernel only: the agent's options after its subcommand, so a new agent can adopt the device. */
  agentOptions?: string[];
  /** fuse only: the directory nbdfuse serves the disk file in. */
  fuseDir?: string;
  /** Set by pxd volume mount. */
  mount?: string;
  /** The API address the attach used, so detach updates the same cluster. */
  api: string;
  /** Set by detach before it stops the agent: the supervisor leaves the device alone. */
  detaching?: boolean;
}

export const recordPath = (volume: string): string => join(attachRunDir(), `${volume}.json`);
export const logPath = (volume: string): string => join(attachRunDir(), `${volume}.log`);

/**
 * The record of `volume`, or undefined when there is none or it is not one
 * this code wrote: a record's pid is signalled and its fuseDir removed, as
 * root, so each field is checked first.
 */
export function readRecord(volume: string): AttachRecord | undefined {
  let r: AttachRecord;
  try {
    r = JSON.parse(readFileSync(recordPath(volume), "utf8")) as AttachRecord;
  } catch {
    return undefined;
  }
  const ok =
    typeof r === "object" && r !== null &&
    r.volume === volume &&
    Number.isSafeInteger(r.pid) && r.pid > 1 &&
    (r.via === "kernel" || r.via === "fuse") &&
    typeof r.device === "string" && /^\/dev\/(nbd|loop)\d{1,4}$/.test(r.device) &&
    (r.fuseDir === undefined || r.fuseDir === join(attachRunDir(), `${volume}.fuse`)) &&
    (r.agentOptions === undefined || (Array.isArray(r.agentOptions) && r.agentOptions.every((a) => typeof a === "string")));
  return ok ? r : undefined;
}

export function writeRecord(r: AttachRecord): void {
  mkdirSync(attachRunDir(), { recursive: true, mode: 0o700 });
  const tmp = `${recordPath(r.volume)}.tmp`;
  writeFileSync(tmp, JSON.stringify(r, null, 2) + "\n", { mode: 0o600 });
  renameSync(tmp, recordPath(r.volume));
}

/** Removes the record and the log: nothing of a detached volume stays in the run dir. */
export function removeRecord(volume: string): void {
  rmSync(recordPath(volume), { force: true });
  rmSync(logPath(volume), { force: true });
}

export function allRecords(): AttachRecord[] {
  if (!existsSync(attachRunDir())) return [];
  return readdirSync(attachRunDir())
    .filter((f) => f.endsWith(".json"))
    .map((f) => readRecord(f.slice(0, -5)))
    .filter((r): r is AttachRecord => r !== undefined);
}

/**
 * Tells this host's attach agent of the volume to check the export's size
 * now (SIGHUP; it also checks every 10 s): a kernel device grows in place.
 * Returns the device, or undefined when no live agent here has the volume.
 */
export function askAgentToResize(volume: string): string | undefined {
  const r = readRecord(volume);
  if (r === undefined || r.via !== "kernel" || !processAlive(r.pid)) return undefined;
  process.kill(r.pid, "SIGHUP");
  return r.device;
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The kernel device's number: /dev/nbd7 is 7. */
export function nbdIndex(device: string): number | undefined {
  const m = /^(?:\/dev\/)?nbd(\d{1,4})$/.exec(device);
  return m === null ? undefined : Number(m[1]);
}

/** Whether the kernel has the nbd device connected (its sysfs `pid` file exists only then). */
export function nbdConnected(device: string): boolean {
  const n = nbdIndex(device);
  return n !== undefined && existsSync(`/sys/block/nbd${n}/pid`);
}

interface MountEntry {
  mountpoint: string;
  source: string;
}

/** The mounts of this process's namespace (/proc/self/mountinfo, with its octal escapes undone). */
function mounts(): MountEntry[] {
  let text = "";
  try {
    text = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return [];
  }
  const unescape = (f: string): string => f.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => {
      const fields = l.split(" ");
      const sep = fields.indexOf("-");
      return { mountpoint: unescape(fields[4] ?? ""), source: unescape(fields[sep + 2] ?? "") };
    });
}

/** Whether something is mounted at `path`. */
export function mountedAt(path: string): boolean {
  return mounts().some((m) => m.mountpoint === path);
}

/** Where `device` is mounted (bind mounts of its filesystem included). */
export function mountsOf(device: string): string[] {
  return mounts().filter((m) => m.source === device).map((m) => m.mountpoint);
}

/** What keeps `device` busy: where it is mounted, and the devices stacked on it (/sys/block/X/holders). */
export function deviceUsers(device: string): string[] {
  const users = mountsOf(device).map((m) => `mounted at ${m}`);
  try {
    for (const h of readdirSync(`/sys/block/${device.replace(/^\/dev\//, "")}/holders`)) users.push(`held by ${h}`);
  } catch {
    // no such device in sysfs: nothing holds it
  }
  return users;
}

/** The last line of the agent's or nbdfuse's log, without its time stamp. */
export function lastLogLine(volume: string): string {
  try {
    return readFileSync(logPath(volume), "utf8").trim().split("\n").at(-1)?.replace(/^[\d:.]+ pxd-attach: /, "").replace(/^pxd-attach: /, "") ?? "";
  } catch {
    return "";
  }
}

/**
 * Starts the agent (`connect` with options, or `adopt N` with them), detached
 * from this process, its log appended to NAME.log, and waits for its first
 * line, "/dev/nbdN HOST:PORT". Rejects with the log's last line when it stops
 * first, or after attachStartMs; the agent is then killed.
 */
export async function startAgent(volume: string, args: string[]): Promise<{ device: string; server: string; pid: number }> {
  // An adopting agent that has not announced yet must not disconnect the
  // device it was to take over (SIGTERM would): it is killed outright.
  const killWith = args[0] === "adopt" ? "SIGKILL" : "SIGTERM";
  mkdirSync(attachRunDir(), { recursive: true, mode: 0o700 });
  const log = openSync(logPath(volume), "a", 0o600);
  const child = spawn(attachAgentPath(), args, { detached: true, stdio: ["ignore", "pipe", log] });
  closeSync(log);
  const stdout = child.stdout!;
  let text = "";
  let timer: NodeJS.Timeout | undefined;
  const first = new Promise<string>((resolve, reject) => {
    stdout.setEncoding("utf8");
    stdout.on("data", (d: string) => {
      text += d;
      if (text.includes("\n")) resolve(text.split("\n")[0]!);
    });
    child.once("exit", (code) => reject(new Error(`the attach agent stopped (exit ${code}): ${lastLogLine(volume)}`)));
    child.once("error", (e) => reject(new Error(`cannot start the attach agent ${attachAgentPath()}: ${e.message}`)));
    timer = setTimeout(() => reject(new Error(`the attach agent did not connect within ${attachStartMs / 1000}s; its log: ${logPath(volume)}`)), attachStartMs);
  });
  try {
    const line = await first;
    const [device, server] = line.split(" ");
    if (device === undefined || server === undefined || nbdIndex(device) === undefined) throw new Error(`the attach agent said ${JSON.stringify(line)}, not a device`);
    stdout.destroy();
    child.unref();
    return { device, server, pid: child.pid! };
  } catch (e) {
    if (child.exitCode === null) child.kill(killWith);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** A new agent for a kernel device whose agent died; the record then names it. */
export async function adoptDevice(r: AttachRecord): Promise<AttachRecord> {
  if (r.agentOptions === undefined) throw new Error(`the record of ${r.volume} has no agent options`);
  const agent = await startAgent(r.volume, ["adopt", String(nbdIndex(r.device)), ...r.agentOptions]);
  const adopted = { ...r, pid: agent.pid };
  writeRecord(adopted);
  return adopted;
}

/** Bytes read from the end of an agent's log to find the server it uses now. */
const logTailBytes = 4096;

/** The server an agent's log says it uses now: its last "connected to" or "reconnected to" line. */
export function agentServer(volume: string): string | undefined {
  let tail = "";
  try {
    const fd = openSync(logPath(volume), "r");
    try {
      const size = fstatSync(fd).size;
      const buf = Buffer.alloc(Math.min(size, logTailBytes));
      readSync(fd, buf, 0, buf.length, size - buf.length);
      tail = buf.toString("utf8");
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
  let server: string | undefined;
  for (const m of tail.matchAll(/pxd-attach: nbd\d+: (?:re)?connected to (\S+?)(?:,| \(|$)/gm)) server = m[1];
  return server;
}

/** The cluster id in an agent's backend identifier (pxd:CLUSTER:VOLUMEID). */
export function agentCluster(r: AttachRecord): string | undefined {
  const at = r.agentOptions?.indexOf("--backend") ?? -1;
  return at < 0 ? undefined : /^pxd:([^:]+):\d+$/.exec(r.agentOptions![at + 1] ?? "")?.[1];
}

export interface SupervisorTurn {
  /** One sentence per agent started again, for the log. */
  said: string[];
  /** Attachments whose agent moved to another server since the record was written (the record now says so). */
  moved: AttachRecord[];
}

/**
 * The daemon's turn at supervising this host's agents. A kernel attachment
 * whose agent is gone while the kernel still has its device connected gets a
 * new agent that adopts the device; one whose agent moved to another server
 * (a failover) has its record updated and is returned, so the daemon can
 * tell the catalog. One daemon per host does it: the one that holds the
 * supervisor lock (a host running several daemons, as `pxd up` does, would
 * otherwise start several agents for one device).
 */
export async function superviseAgents(): Promise<SupervisorTurn> {
  const turn: SupervisorTurn = { said: [], moved: [] };
  if (!existsSync(attachRunDir()) || !(await holdSupervisorLock())) return turn;
  for (const r of allRecords()) {
    if (r.via !== "kernel" || r.detaching === true) continue;
    if (processAlive(r.pid)) {
      const server = agentServer(r.volume);
      if (server !== undefined && server !== r.server) {
        const moved = { ...r, server };
        writeRecord(moved);
        turn.moved.push(moved);
      }
      continue;
    }
    if (r.agentOptions === undefined || !nbdConnected(r.device)) continue;
    try {
      const adopted = await adoptDevice(r);
      turn.said.push(`volume ${r.volume}: its attach agent (pid ${r.pid}) is gone; a new one (pid ${adopted.pid}) adopted ${r.device}`);
    } catch (e) {
      turn.said.push(`volume ${r.volume}: its attach agent (pid ${r.pid}) is gone and a new one did not start: ${(e as Error).message}`);
    }
  }
  return turn;
}

/**
 * The supervisor's lock: a Unix socket in the abstract namespace, named after
 * the run dir. Only one process can bind a name, and the kernel frees it when
 * that process ends, so there is no stale lock to break (and no race in
 * breaking one).
 */
let supervisorLock: Server | undefined;

function holdSupervisorLock(): Promise<boolean> {
  if (supervisorLock !== undefined) return Promise.resolve(true);
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen({ path: `\0pxd-attach-supervisor:${attachRunDir()}` }, () => {
      server.unref();
      supervisorLock = server;
      resolve(true);
    });
  });
}

/** At a daemon's close: lets another daemon on this host supervise the agents. */
export function releaseSupervisorLock(): void {
  supervisorLock?.close();
  supervisorLock = undefined;
}
