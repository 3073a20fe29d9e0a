// pxd up / pxd down: start and stop a local daemon in the background, the
// newcomer's way in (npm start runs "pxd up"). Single node for now; a later
// version starts three nodes on 127.0.0.11-13.
//
// Layering exception (DESIGN.md section 7): this is the one CLI file that
// touches node:fs and node:child_process, because starting a detached
// process, its log and its pid file is the whole job. Everything it says to
// the daemon goes through ApiClient.

import { spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Option, type Command } from "commander";
import { formatSize } from "../base/sizes.js";
import { defaultNbdPort } from "../constants.js";
import { ApiClient, DaemonUnreachableError, defaultApiAddress, parseApiAddress } from "../api/client.js";
import { ApiError, type NodeStatus, type VolumeInfo } from "../api/types.js";
import { apiAddress, checkName, intArg, sizeArg } from "./args.js";
import { CliError } from "./errors.js";

/** How long pxd up waits for a freshly started daemon to answer /v1/status. */
const upStartTimeoutMs = 30_000;
const upPollMs = 200;
/** Default wait between SIGTERM and SIGKILL in pxd down. */
const downTimeoutSecDefault = 15;
const downPollMs = 100;
/** Lines of the daemon log shown when it fails to start. */
const logTailLines = 12;

interface NodePaths {
  dir: string;
  log: string;
  pid: string;
}

function nodePaths(dataDir: string): NodePaths {
  const dir = join(dataDir, "node1");
  return { dir, log: join(dir, "daemon.log"), pid: join(dir, "daemon.pid") };
}

export function registerLocalNode(program: Command): void {
  program
    .command("up")
    .description("start a local pxd node in the background if none answers, and create a volume to try")
    .option("--data-dir <dir>", "where the node keeps its data, log and pid file", ".pxd")
    .addOption(new Option("-s, --size <size>", "size of the volume to create").argParser(sizeArg).default(1024 ** 3, "1G"))
    .option("--volume <name>", "name of the volume to create", "demo")
    .option("--nbd-port <port>", "NBD port of the node it starts", intArg(1, 65535), defaultNbdPort)
    .action(async (options: { dataDir: string; size: number; volume: string; nbdPort: number }, command: Command) => {
      await up(apiAddress(command), options.dataDir, checkName(options.volume), options.size, options.nbdPort);
    });

  program
    .command("down")
    .description("stop the daemon started by pxd up (SIGTERM, then SIGKILL after --timeout)")
    .option("--data-dir <dir>", "the --data-dir given to pxd up", ".pxd")
    .option("--timeout <seconds>", "wait this long after SIGTERM before SIGKILL", intArg(1, 3600), downTimeoutSecDefault)
    .action(async (options: { dataDir: string; timeout: number }) => {
      await down(nodePaths(options.dataDir), options.timeout * 1000);
    });
}

async function up(address: string, dataDir: string, volumeName: string, sizeBytes: number, nbdPort: number): Promise<void> {
  const paths = nodePaths(dataDir);
  const client = new ApiClient(address, { timeoutMs: 2000 });
  let status = await statusOrNull(client);
  if (status === null) {
    const host = parseApiAddress(address).host;
    if (!isLoopback(host)) {
      throw new CliError(`no pxd daemon answers at ${address}, and pxd up starts daemons only on this machine; start one there with "pxd daemon" or use a 127.x.x.x --host`);
    }
    let pid = runningDaemonPid(paths.pid);
    let exited: (() => string | null) | null = null;
    if (pid === null) [pid, exited] = startDaemon(paths, host === "localhost" ? "127.0.0.1" : host, parseApiAddress(address).port, nbdPort);
    status = await waitForDaemon(client, paths, pid, exited);
  }
  const volume = await ensureVolume(client, volumeName, sizeBytes);
  console.log(instructions(status, volume, paths, dataDir, address));
}

async function statusOrNull(client: ApiClient): Promise<NodeStatus | null> {
  try {
    return await client.status();
  } catch (err) {
    if (err instanceof DaemonUnreachableError) return null;
    throw err;
  }
}

/** Starts `pxd daemon` detached, output to the log, pid to the pid file; returns the pid and a probe for early exit. */
function startDaemon(paths: NodePaths, listen: string, apiPort: number, nbdPort: number): [number, () => string | null] {
  mkdirSync(paths.dir, { recursive: true });
  // dist/src/cli/local-node.js -> dist/bin/pxd.js: the same build that is running now.
  const entry = fileURLToPath(new URL("../../bin/pxd.js", import.meta.url));
  const args = ["--enable-source-maps", entry, "daemon", "--data-dir", resolve(paths.dir), "--listen", listen, "--api-port", String(apiPort), "--nbd-port", String(nbdPort)];
  const logFd = openSync(paths.log, "a");
  let child;
  try {
    writeFileSync(logFd, `--- ${new Date().toISOString()} pxd up: ${process.execPath} ${args.join(" ")}\n`);
    child = spawn(process.execPath, args, { detached: true, stdio: ["ignore", logFd, logFd] });
  } finally {
    closeSync(logFd);
  }
  if (child.pid === undefined) throw new CliError(`could not start ${process.execPath} ${entry} daemon; see ${paths.log}`);
  let exit: string | null = null;
  child.on("error", (err) => (exit = err.message));
  child.on("exit", (code, signal) => (exit = signal ? `killed by ${signal}` : `exit code ${code}`));
  child.unref();
  writeFileSync(paths.pid, `${child.pid}\n`);
  return [child.pid, () => exit];
}

async function waitForDaemon(client: ApiClient, paths: NodePaths, pid: number, exited: (() => string | null) | null): Promise<NodeStatus> {
  const deadline = Date.now() + upStartTimeoutMs;
  for (;;) {
    const status = await statusOrNull(client);
    if (status !== null) return status;
    const exit = exited?.() ?? (isAlive(pid) ? null : "it is gone");
    if (exit !== null) {
      rmSync(paths.pid, { force: true });
      throw new CliError(`the pxd daemon (pid ${pid}) stopped while starting (${exit}); see ${paths.log}${logTail(paths.log)}`);
    }
    if (Date.now() > deadline) {
      throw new CliError(
        `the pxd daemon (pid ${pid}) did not answer on ${client.address.display} within ${upStartTimeoutMs / 1000}s; see ${paths.log}, and stop it with "pxd down"${logTail(paths.log)}`,
      );
    }
    await sleep(upPollMs);
  }
}

async function ensureVolume(client: ApiClient, name: string, sizeBytes: number): Promise<VolumeInfo> {
  try {
    const existing = await client.inspectVolume(name);
    if (existing.sizeBytes !== sizeBytes) console.log(`volume "${name}" already exists with ${formatSize(existing.sizeBytes)}; leaving it as it is`);
    return existing;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) throw err;
  }
  return client.createVolume({ name, sizeBytes, repl: 1 });
}

function instructions(status: NodeStatus, volume: VolumeInfo, paths: NodePaths, dataDir: string, address: string): string {
  const uri = volume.nbdUri;
  let host = status.listen;
  let port = status.nbdPort || defaultNbdPort;
  try {
    const parsed = new URL(uri);
    host = parsed.hostname.replace(/^\[|\]$/g, "") || host;
    port = parsed.port ? Number(parsed.port) : port;
  } catch {
    // keep the status' address
  }
  const ours = existsSync(paths.pid);
  const where = ours ? `data in ${paths.dir}, log ${paths.log}` : `data in ${status.dataDir} (not started by pxd up)`;
  // From a checkout pxd is not on PATH: name the way that works there too.
  const inRepo = process.env["npm_lifecycle_event"] === "start";
  const down = `pxd down${dataDir === ".pxd" ? "" : ` --data-dir ${dataDir}`}`;
  const stop = ours ? `stop it with: ${inRepo && dataDir === ".pxd" ? "npm run stop (or ./bin/pxd down)" : down}` : "it was not started by pxd up; stop it where it was started";
  const commands: [string, string][] = [
    [`nbdinfo ${uri}`, ""],
    [`nbdfuse /tmp/${volume.name}-mnt/disk ${uri} &`, "# then losetup / mkfs.ext4 / mount"],
    [`nbd-client ${host} ${port} /dev/nbd0 -N ${volume.name}`, "# with the kernel nbd module"],
  ];
  const width = Math.max(...commands.map(([c]) => c.length));
  return [
    `pxd is running: 1 node, ${where}`,
    `volume "${volume.name}" (${formatSize(volume.sizeBytes)}) is exported at ${uri}`,
    ...commands.map(([c, note]) => `  ${note ? `${c.padEnd(width)}   ${note}` : c}`),
    ...(address === defaultApiAddress ? [] : [`other pxd commands need --host ${address} (or PXD_HOST=${address})`]),
    stop,
  ].join("\n");
}

async function down(paths: NodePaths, timeoutMs: number): Promise<void> {
  const pid = readPid(paths.pid);
  if (pid === null) {
    console.log(`pxd is not running from here (no ${paths.pid}); nothing to stop`);
    return;
  }
  if (!isAlive(pid) || !looksLikeDaemon(pid)) {
    rmSync(paths.pid, { force: true });
    console.log(`pxd was not running (pid ${pid} from ${paths.pid} is gone); removed the stale pid file`);
    return;
  }
  signal(pid, "SIGTERM");
  if (!(await waitForExit(pid, timeoutMs))) {
    console.log(`the pxd daemon (pid ${pid}) did not exit within ${timeoutMs / 1000}s of SIGTERM; sent SIGKILL`);
    signal(pid, "SIGKILL");
    if (!(await waitForExit(pid, 5000))) throw new CliError(`the pxd daemon (pid ${pid}) survived SIGKILL; check it with "ps -p ${pid}"`);
  }
  rmSync(paths.pid, { force: true });
  console.log(`pxd stopped (pid ${pid})`);
}

function readPid(path: string): number | null {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw new CliError(`cannot read ${path} (${(err as Error).message})`);
  }
  const pid = Number(text.trim());
  if (!Number.isSafeInteger(pid) || pid <= 1) throw new CliError(`${path} does not hold a process id; remove it if no daemon is running`);
  return pid;
}

/** The pid from the pid file when that process is alive and is a pxd daemon; removes a stale file. */
function runningDaemonPid(path: string): number | null {
  const pid = readPid(path);
  if (pid === null) return null;
  if (isAlive(pid) && looksLikeDaemon(pid)) return pid;
  rmSync(path, { force: true });
  return null;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
  // A zombie still answers kill(0) but has exited.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return true;
  }
}

/** Guards against a recycled pid: on Linux, the process' command line must name the daemon command. */
function looksLikeDaemon(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").includes("daemon");
  } catch {
    return !existsSync("/proc/self"); // no /proc: cannot tell, trust the pid file
  }
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ESRCH") return;
    throw new CliError(`cannot send ${name} to the pxd daemon (pid ${pid}): ${code}; is it run by another user?`);
  }
}

async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isAlive(pid)) {
    if (Date.now() > deadline) return false;
    await sleep(downPollMs);
  }
  return true;
}

function logTail(path: string): string {
  try {
    const lines = readFileSync(path, "utf8").trimEnd().split("\n").slice(-logTailLines);
    return `\nlast lines of ${path}:\n${lines.map((l) => `  ${l}`).join("\n")}`;
  } catch {
    return "";
  }
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
