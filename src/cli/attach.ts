// pxd volume attach|detach|mount|unmount and pxd attachments: a volume as a
// block device on this host.
//
// Two ways in, chosen per attach (--via, or automatically):
// - kernel: the attach agent (native/pxd-attach) hands TCP connections to the
//   kernel's nbd driver and stays running to move the device to another node
//   when its node dies (docs/attach.md);
// - fuse: where the kernel has no nbd module, nbdfuse serves the export as a
//   file and a loop device makes it a block device. No failover: the device
//   uses one node until it is detached.
//
// The catalog records every attachment (host, device, via, serving node), so
// a second host's read-write attach is refused and an attached volume is not
// deleted by accident. This host's own record of what it started (the agent's
// or nbdfuse's pid, the loop device, the mount point) is a file per volume in
// the run dir, so detach and unmount find it again from another shell.

import { spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import { InvalidArgumentError, type Command } from "commander";
import type { ApiClient } from "../api/client.js";
import type { VolumeInfo } from "../api/types.js";
import { hostNamePattern } from "../api/validate.js";
import { adoptDevice, allRecords, attachAgentPath, attachRunDir, attachStartMs, logPath, lastLogLine, deviceUsers, mountedAt, nbdConnected, nbdIndex, processAlive, readRecord, removeRecord, startAgent, writeRecord, type AttachRecord, type AttachVia } from "../os/attachments.js";
import { hostPort } from "../api/client.js";
import { connectNbd, NbdRefusedError } from "../os/nbd-client-socket.js";
import { runCommand, type CommandResult } from "../os/command.js";
import { checkName, clientFor, intArg } from "./args.js";
import { CliError, UsageError } from "./errors.js";
import { attachmentTable, json } from "./format.js";

/** How long detach waits for the agent or nbdfuse to exit after it is told to. */
const detachWaitMs = 15_000;
/** NBD connections per kernel device: at most what the agent allows. */
const connectionsMax = 16;

export interface AttachOptions {
  device?: string;
  connections?: number;
  readOnly?: boolean;
  timeout?: number;
  via?: AttachVia | "auto";
}

/** This host's name in the catalog: PXD_HOST_NAME, else the system's host name up to its first dot. */
export function hostName(): string {
  const name = process.env["PXD_HOST_NAME"] || (hostname().split(".")[0] ?? "");
  if (!hostNamePattern.test(name)) throw new UsageError(`this host's name ${JSON.stringify(name)} is not one the catalog takes; set PXD_HOST_NAME to letters, digits, ".", "_", "-" (at most 63)`);
  return name;
}

// ---- small process helpers ----

const run = (cmd: string, args: string[]): Promise<CommandResult> => runCommand(cmd, args);

async function runOk(cmd: string, args: string[], what: string): Promise<string> {
  const r = await run(cmd, args);
  if (r.code === 127) throw new CliError(`${what}: ${cmd} is not installed`);
  if (r.code !== 0) throw new CliError(`${what}: ${cmd} ${args.join(" ")} failed: ${(r.stderr || r.stdout).trim().split("\n").at(-1) ?? `exit ${r.code}`}`);
  return r.stdout;
}

async function until(check: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

async function which(cmd: string): Promise<boolean> {
  return (await run("sh", ["-c", `command -v ${cmd}`])).code === 0;
}

// ---- choosing the way in ----

async function kernelProblem(): Promise<string | undefined> {
  if (!existsSync(attachAgentPath())) return `the attach agent is not built (${attachAgentPath()}): run "make -C native" (needs build-essential)`;
  if (existsSync("/sys/module/nbd")) return undefined;
  const r = await run("modprobe", ["nbd"]);
  if (r.code === 0 && existsSync("/sys/module/nbd")) return undefined;
  return "the kernel has no nbd module (modprobe nbd failed)";
}

async function fuseProblem(): Promise<string | undefined> {
  for (const [cmd, pkg] of [["nbdfuse", "libnbd-bin"], ["losetup", "mount"], ["fusermount3", "fuse3"]] as const) {
    if (!(await which(cmd))) return `${cmd} is not installed (apt-get install ${pkg})`;
  }
  if (!existsSync("/dev/fuse")) return "/dev/fuse is missing (modprobe fuse)";
  return undefined;
}

async function chooseVia(wanted: AttachVia | "auto"): Promise<AttachVia> {
  if (wanted === "kernel") {
    const why = await kernelProblem();
    if (why !== undefined) throw new CliError(`cannot attach via the kernel: ${why}; or attach with --via fuse`);
    return "kernel";
  }
  const fuseWhy = await fuseProblem();
  if (wanted === "fuse") {
    if (fuseWhy !== undefined) throw new CliError(`cannot attach via fuse: ${fuseWhy}`);
    return "fuse";
  }
  const kernelWhy = await kernelProblem();
  if (kernelWhy === undefined) return "kernel";
  if (fuseWhy !== undefined) throw new CliError(`cannot attach: ${kernelWhy}, and ${fuseWhy}`);
  console.error(`attaching via fuse (nbdfuse and a loop device; no failover to another node): ${kernelWhy}`);
  return "fuse";
}

// ---- attach and detach ----

function deviceIndex(device: string): number {
  const n = nbdIndex(device);
  if (n === undefined) throw new UsageError(`--device takes /dev/nbdN, not ${JSON.stringify(device)}`);
  return n;
}

/**
 * The agent's options: how to reach the volume, and how long a request may
 * wait for a live node. The agent asks the API for the volume's servers in
 * plain HTTP only: with an HTTPS API (the default) it keeps the list it is
 * given (docs/attach.md).
 */
function agentOptions(volume: VolumeInfo, servers: string[], api: ApiClient, clusterId: string, o: AttachOptions): string[] {
  return [
    "--export", volume.name,
    ...servers.flatMap((s) => ["--server", s]),
    ...(api.speaksTls() ? [] : ["--nodes-url", `${hostPort(api.address.host, api.address.port)}/v1/volumes/${volume.name}/servers`]),
    "--connections", String(o.connections ?? 1),
    "--timeout", String(o.timeout ?? 60),
    "--backend", `pxd:${clusterId}:${volume.id}`,
    ...(o.readOnly ? ["--read-only"] : []),
  ];
}

/** nbdfuse serving the export as DIR/disk, then a loop device on it. */
async function startFuse(volume: VolumeInfo, server: string, o: AttachOptions): Promise<{ device: string; pid: number; fuseDir: string }> {
  const fuseDir = join(attachRunDir(), `${volume.name}.fuse`);
  mkdirSync(fuseDir, { recursive: true, mode: 0o700 });
  const pidFile = join(attachRunDir(), `${volume.name}.nbdfuse.pid`);
  rmSync(pidFile, { force: true });
  const log = openSync(logPath(volume.name), "a", 0o600);
  const child = spawn("nbdfuse", [...(o.readOnly ? ["-r"] : []), "-P", pidFile, join(fuseDir, "disk"), `nbd://${server}/${volume.name}`], { detached: true, stdio: ["ignore", log, log] });
  closeSync(log);
  child.unref();
  const up = await until(() => child.exitCode !== null || (existsSync(pidFile) && existsSync(join(fuseDir, "disk"))), attachStartMs);
  if (!up || child.exitCode !== null) {
    if (child.exitCode === null) child.kill("SIGTERM");
    await run("fusermount3", ["-u", "-z", fuseDir]);
    rmSync(fuseDir, { recursive: true, force: true });
    throw new CliError(`nbdfuse did not serve ${volume.name} from ${server}: ${lastLogLine(volume.name) || "no reason given"}`);
  }
  try {
    const device = (await runOk("losetup", ["-f", "--show", ...(o.readOnly ? ["-r"] : []), join(fuseDir, "disk")], "making a loop device")).trim();
    return { device, pid: child.pid!, fuseDir };
  } catch (e) {
    await stopFuse({ fuseDir, pid: child.pid! });
    throw e;
  }
}

async function stopFuse(r: { fuseDir: string; pid: number; device?: string }): Promise<void> {
  if (r.device !== undefined && r.device !== "") await run("losetup", ["-d", r.device]);
  await run("fusermount3", ["-u", r.fuseDir]);
  if (!(await until(() => !processAlive(r.pid), detachWaitMs))) process.kill(r.pid, "SIGKILL");
  await run("fusermount3", ["-u", "-z", r.fuseDir]); // only if the first did not
  rmSync(r.fuseDir, { recursive: true, force: true });
}

async function stopAgent(r: { pid: number; device: string }): Promise<void> {
  if (processAlive(r.pid)) {
    process.kill(r.pid, "SIGTERM");
    if (!(await until(() => !processAlive(r.pid), detachWaitMs))) throw new CliError(`the attach agent (pid ${r.pid}) did not stop within ${detachWaitMs / 1000}s; is ${r.device} still in use?`);
    return;
  }
  // The agent is gone: disconnect the device directly.
  if (!nbdConnected(r.device)) return;
  const d = await run(attachAgentPath(), ["disconnect", String(deviceIndex(r.device))]);
  if (d.code !== 0) throw new CliError(`${r.device} is still connected and its agent is gone; disconnecting it failed: ${(d.stderr || d.stdout).trim() || `exit ${d.code}`}`);
}

async function nodeNameOf(api: ApiClient, server: string): Promise<string | undefined> {
  return (await api.listNodes()).find((n) => hostPort(n.address, n.nbdPort) === server)?.name;
}

/** Attaches `name` on this host and returns its record; an attachment already here is returned as it is. */
export async function attachVolume(api: ApiClient, name: string, o: AttachOptions): Promise<{ record: AttachRecord; fresh: boolean }> {
  if (process.getuid?.() !== 0) throw new CliError("attaching a volume makes a block device, which needs root: run it with sudo");
  const existing = readRecord(name);
  if (existing !== undefined) {
    if (processAlive(existing.pid)) return { record: existing, fresh: false };
    if (existing.via === "kernel" && existing.agentOptions !== undefined && nbdConnected(existing.device)) {
      // The kernel still has the device; only its agent is gone: a new one adopts it.
      const record = await adoptDevice(existing).catch((e: Error) => {
        throw new CliError(`volume ${name}: ${existing.device} lost its attach agent and a new one did not start: ${e.message}`);
      });
      console.error(`volume ${name}: ${existing.device} had lost its attach agent (pid ${existing.pid}); a new one (pid ${record.pid}) took it over`);
      return { record, fresh: false };
    }
    throw new CliError(`volume ${name} has a stale attachment here (${existing.device}, its ${existing.via === "kernel" ? "agent" : "nbdfuse"} pid ${existing.pid} is gone): run "pxd volume detach ${name}" first`);
  }
  const unlock = lockAttach(name);
  try {
    return await attachFresh(api, name, o);
  } finally {
    unlock();
  }
}

/**
 * One attach of a volume at a time on this host: two at once would make two
 * devices and two agents for one record. A lock file holds the attaching
 * process's pid; one whose process is gone is taken over.
 */
function lockAttach(name: string): () => void {
  mkdirSync(attachRunDir(), { recursive: true, mode: 0o700 });
  const path = join(attachRunDir(), `${name}.lock`);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(path, `${process.pid}\n`, { flag: "wx", mode: 0o600 });
      return () => rmSync(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      const holder = Number(readFileSync(path, "utf8").trim());
      if (Number.isSafeInteger(holder) && holder > 1 && processAlive(holder)) throw new CliError(`another attach of volume ${name} is under way on this host (pid ${holder}); wait for it, then run "pxd volume attach ${name}" again`);
      rmSync(path, { force: true });
    }
  }
  throw new CliError(`could not take ${path}; remove it if no attach of ${name} is running`);
}

async function attachFresh(api: ApiClient, name: string, o: AttachOptions): Promise<{ record: AttachRecord; fresh: boolean }> {
  const meanwhile = readRecord(name); // attached by the lock's last holder while this one waited
  if (meanwhile !== undefined && processAlive(meanwhile.pid)) return { record: meanwhile, fresh: false };
  if (meanwhile !== undefined) throw new CliError(`volume ${name} has a stale attachment here (${meanwhile.device}): run "pxd volume detach ${name}" first`);
  const host = hostName();
  const volume = await api.inspectVolume(name);
  const via = await chooseVia(o.via ?? "auto");
  if (via === "fuse" && (o.device !== undefined || (o.connections ?? 1) > 1)) {
    throw new UsageError(`--device and --connections apply to the kernel's nbd devices; attached via fuse the device is the next free /dev/loopN over one connection`);
  }
  const servers = await api.volumeServers(name);
  if (servers.length === 0) throw new CliError(`no node is up to serve volume ${name}; see "pxd node list"`);
  await refuseNbdTlsRequired(name, servers[0]!);
  const status = await api.status();
  // Reserve first: the catalog refuses a second read-write host before anything is made here.
  await api.attachVolume(name, { host, via, readOnly: o.readOnly === true });
  let made: { device: string; server: string; pid: number; fuseDir?: string; agentOptions?: string[] } | undefined;
  try {
    if (via === "kernel") {
      const options = agentOptions(volume, servers, api, status.clusterId, o);
      const agent = await startAgent(name, ["connect", ...(o.device !== undefined ? ["--device", String(deviceIndex(o.device))] : []), ...options]).catch((e: Error) => {
        throw new CliError(e.message);
      });
      made = { ...agent, agentOptions: options };
    } else {
      made = { ...(await startFuse(volume, servers[0]!, o)), server: servers[0]! };
    }
    const node = await nodeNameOf(api, made.server);
    const record: AttachRecord = {
      volume: name,
      host,
      via,
      device: made.device,
      pid: made.pid,
      readOnly: o.readOnly === true,
      server: made.server,
      ...(made.agentOptions !== undefined ? { agentOptions: made.agentOptions } : {}),
      ...(made.fuseDir !== undefined ? { fuseDir: made.fuseDir } : {}),
      api: api.address.display,
    };
    writeRecord(record);
    await api.attachVolume(name, { host, via, readOnly: o.readOnly === true, device: made.device, ...(node !== undefined ? { node } : {}) });
    return { record, fresh: true };
  } catch (e) {
    if (made !== undefined) {
      if (via === "kernel") await stopAgent(made).catch(() => undefined);
      else await stopFuse({ fuseDir: made.fuseDir!, pid: made.pid, device: made.device }).catch(() => undefined);
    }
    removeRecord(name);
    await api.detachVolume(name, host).catch(() => undefined);
    throw e;
  }
}

/**
 * The kernel's NBD driver and nbdfuse here speak no TLS: a node that requires
 * it (--nbd-tls require) would refuse the device's every connection, so the
 * attach stops before anything is made. One handshake, closed at once.
 */
async function refuseNbdTlsRequired(name: string, server: string): Promise<void> {
  try {
    (await connectNbd(server, { exportName: name })).client.close();
  } catch (e) {
    if (e instanceof NbdRefusedError && e.tlsRequired) {
      throw new CliError(`cannot attach ${name}: the node at ${server} requires TLS on NBD (--nbd-tls require), and the kernel's NBD driver and nbdfuse speak none; run the nodes with --nbd-tls on (TLS offered, not required) to attach, or reach the volume with a TLS client (qemu, nbdcopy, pxd backup)`);
    }
    // Anything else (a node that just died) is for the agent's own failover to meet.
  }
}

/** The local record a NAME or a DEVICE names. */
function findRecord(ref: string): AttachRecord | undefined {
  return ref.startsWith("/dev/") ? allRecords().find((r) => r.device === ref) : readRecord(ref);
}


export async function detachVolume(api: ApiClient, ref: string): Promise<string> {
  if (process.getuid?.() !== 0) throw new CliError("detaching a volume removes a block device, which needs root: run it with sudo");
  const r = findRecord(ref);
  if (r === undefined) {
    if (ref.startsWith("/dev/")) throw new CliError(`${ref} is not a pxd attachment on this host; "pxd attachments" lists them`);
    // Nothing here: clear the catalog's record of this host, if any (a host that lost its run dir).
    checkName(ref);
    const mine = (await api.inspectVolume(ref)).attachments.find((a) => a.host === hostName());
    if (mine === undefined) throw new CliError(`volume ${ref} is not attached on this host (${hostName()}); "pxd attachments" lists where it is`);
    await api.detachVolume(ref, mine.host);
    return `volume ${ref}: nothing was attached here any more; the catalog's record of ${mine.host} is removed`;
  }
  if (r.mount !== undefined && (mountedAt(r.mount))) throw new CliError(`${r.device} is mounted at ${r.mount}: run "pxd volume unmount ${r.mount}" (or umount it) first`);
  const users = deviceUsers(r.device);
  if (users.length > 0) throw new CliError(`${r.device} is in use (${users.join(", ")}): unmount it or stop what holds it first; detaching now would lose what is not yet written`);
  writeRecord({ ...r, detaching: true }); // the daemon's supervisor leaves it alone from here
  if (r.via === "kernel") await stopAgent(r);
  else await stopFuse({ fuseDir: r.fuseDir ?? join(attachRunDir(), `${r.volume}.fuse`), pid: r.pid, device: r.device });
  removeRecord(r.volume);
  rmSync(join(attachRunDir(), `${r.volume}.nbdfuse.pid`), { force: true });
  await api.detachVolume(r.volume, r.host);
  return `volume ${r.volume} detached (${r.device} is gone)`;
}

// ---- mount and unmount ----

export const filesystems = ["ext4", "xfs"] as const;
export type Filesystem = (typeof filesystems)[number];
export type MountOptions = AttachOptions & { fs: Filesystem; mkfsOptions?: string };

function fsArg(text: string): Filesystem {
  const f = filesystems.find((x) => x === text);
  if (f === undefined) throw new InvalidArgumentError(`"${text}" is not one of ${filesystems.join(", ")}`);
  return f;
}

/**
 * The filesystem on the device, or undefined when blkid finds none (its exit
 * code 2). blkid also says 2 for a device it cannot open, so the device must
 * be a block device that reads, and blkid must have said nothing on stderr:
 * anything else is an error, never "no filesystem" (mkfs would follow).
 */
export async function filesystemOn(device: string): Promise<string | undefined> {
  let isBlock = false;
  try {
    isBlock = statSync(device).isBlockDevice();
  } catch {
    // missing: refused below
  }
  if (!isBlock) throw new CliError(`${device} is not a block device here; nothing was made on it`);
  const r = await run("blkid", ["-p", "-o", "value", "-s", "TYPE", device]);
  if (r.code === 2 && r.stderr.trim() === "") return undefined;
  if (r.code === 2) throw new CliError(`blkid could not read ${device}: ${r.stderr.trim()}; nothing was made on it`);
  if (r.code !== 0) throw new CliError(`blkid ${device} failed (exit ${r.code}): ${r.stderr.trim()}`);
  return r.stdout.trim() || "unknown";
}

export async function mountVolume(api: ApiClient, name: string, path: string, o: MountOptions): Promise<string> {
  const target = resolve(path);
  if (mountedAt(target)) throw new CliError(`${target} is already a mount point; pick an empty directory`);
  const { record, fresh } = await attachVolume(api, name, o);
  try {
    if (record.mount !== undefined && (mountedAt(record.mount))) throw new CliError(`volume ${name} is already mounted here at ${record.mount}`);
    let fs = await filesystemOn(record.device);
    let made = "";
    if (fs === undefined) {
      if (o.readOnly) throw new CliError(`volume ${name} has no filesystem and is attached read-only, so none can be made`);
      await runOk(`mkfs.${o.fs}`, ["-q", ...(o.mkfsOptions?.split(/\s+/).filter((x) => x !== "") ?? []), record.device], `making ${o.fs} on ${record.device}`);
      fs = o.fs;
      made = `, made ${o.fs}`;
    }
    mkdirSync(target, { recursive: true });
    await runOk("mount", [...(o.readOnly ? ["-o", "ro"] : []), record.device, target], `mounting ${record.device}`);
    writeRecord({ ...record, mount: target });
    return `volume ${name} mounted at ${target} (${record.device}, ${fs}${made})`;
  } catch (e) {
    if (fresh) await detachVolume(api, name).catch(() => undefined);
    throw e;
  }
}

export async function unmountVolume(api: ApiClient, path: string): Promise<string> {
  const target = resolve(path);
  const r = allRecords().find((x) => x.mount === target);
  if (r === undefined) throw new CliError(`${target} is not where pxd mounted a volume on this host; "pxd attachments" lists them`);
  if (mountedAt(target)) await runOk("umount", [target], `unmounting ${target}`);
  writeRecord({ ...r, mount: undefined } as AttachRecord);
  await detachVolume(api, r.volume);
  return `volume ${r.volume} unmounted from ${target} and detached`;
}

// ---- commander wiring ----

function viaArg(text: string): AttachVia | "auto" {
  if (text === "kernel" || text === "fuse" || text === "auto") return text;
  throw new InvalidArgumentError(`"${text}" is not kernel, fuse or auto`);
}

function attachOptions(c: Command): Command {
  return c
    .option("--device <dev>", "the kernel device to use, e.g. /dev/nbd3 (default: the first free one)")
    .option("--connections <k>", `NBD connections the kernel spreads requests over (1-${connectionsMax})`, intArg(1, connectionsMax))
    .option("--read-only", "attach read-only (other hosts may attach read-only too)")
    .option("--timeout <s>", "seconds a request waits for a live node before it fails with EIO (failover must finish within it)", intArg(1, 86_400))
    .option("--via <how>", "kernel (nbd module and the attach agent), fuse (nbdfuse and a loop device), or auto", viaArg, "auto");
}

export function registerAttach(volume: Command, program: Command): void {
  attachOptions(volume.command("attach").description("attach a volume to this host as a block device and print it (root); the agent moves it to another node when its node dies").argument("<name>", "volume name")).action(
    async (name: string, o: AttachOptions, command: Command) => {
      const { record, fresh } = await attachVolume(clientFor(command), checkName(name), o);
      console.log(fresh ? record.device : `${record.device} (already attached here)`);
    },
  );
  volume
    .command("detach")
    .description("detach a volume from this host (root): the device goes away and the catalog forgets the attachment")
    .argument("<name|device>", "volume name or its device, e.g. /dev/nbd0")
    .action(async (ref: string, _o: unknown, command: Command) => console.log(await detachVolume(clientFor(command), ref)));
  attachOptions(
    volume
      .command("mount")
      .description("attach a volume, make a filesystem if it has none (never over data), and mount it (root)")
      .argument("<name>", "volume name")
      .argument("<path>", "where to mount it (made if missing)")
      .option("--fs <type>", `the filesystem to make when the volume has none: ${filesystems.join(", ")}`, fsArg, "ext4")
      .option("--mkfs-options <opts>", "more options for mkfs, e.g. \"-E nodiscard\""),
  ).action(async (name: string, path: string, o: MountOptions, command: Command) => console.log(await mountVolume(clientFor(command), checkName(name), path, o)));
  volume
    .command("unmount")
    .alias("umount")
    .description("unmount a volume pxd mounted, then detach it (root)")
    .argument("<path>", "its mount point")
    .action(async (path: string, _o: unknown, command: Command) => console.log(await unmountVolume(clientFor(command), path)));
  program
    .command("attachments")
    .description("where each volume is attached: host, device, the node serving it, since when")
    .option("--json", "print the API's JSON")
    .action(async (o: { json?: boolean }, command: Command) => {
      const list = await clientFor(command).listAttachments();
      console.log(o.json ? json({ attachments: list }) : attachmentTable(list));
    });
}
