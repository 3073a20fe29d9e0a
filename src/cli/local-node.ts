// pxd up / pxd down: start and stop a local cluster in the background, the
// newcomer's way in (npm start runs "pxd up"): three nodes on 127.0.0.11-13
// with the standard ports, a shared secret in DIR/cluster.secret, an admin
// token in DIR/admin.token that the CLI finds by itself, and a replicated volume.
//
// Layering exception (DESIGN.md section 7): this is the one CLI file that
// touches node:fs and node:child_process, because starting a detached
// process, its log and its pid file is the whole job. Everything it says to
// the daemon goes through ApiClient.

import { daemonNodeFlags } from "../os/node-flags.js";
import { privateDirMode, privateFileMode } from "../os/private-files.js";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Option, type Command } from "commander";
import { formatSize } from "../base/sizes.js";
import { apiTokenTtlMsMax, defaultApiPort, defaultNbdPort, defaultPeerPort } from "../constants.js";
import { adminTokenFile, caFileBytesMax, clusterSecretFile, localCaFile, localClusterKeyFile, readCredentialFile, readSmallFile, writeCredentialFile } from "../os/credentials.js";
import { clusterKeyEnv } from "../os/cluster-key.js";
import { tlsDirName } from "../os/cluster-ca.js";
import { offlineAccess } from "../daemon/access.js";
import { ApiClient, DaemonUnreachableError, defaultApiAddress } from "../api/client.js";
import { ApiError, type NodeStatus, type VolumeInfo } from "../api/types.js";
import { checkName, intArg, localClusterApiAddress, localClusterCaFile, localClusterTokenFile, replArg, sizeArg } from "./args.js";
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

function nodePaths(dataDir: string, index: number): NodePaths {
  const dir = join(dataDir, `node${index + 1}`);
  return { dir, log: join(dir, "daemon.log"), pid: join(dir, "daemon.pid") };
}

/** Every nodeN directory pxd up made under dataDir. */
function allNodePaths(dataDir: string): NodePaths[] {
  let names: string[] = [];
  try {
    names = readdirSync(dataDir).filter((n) => /^node\d+$/.test(n));
  } catch {
    return [];
  }
  return names.map((n) => Number(n.slice(4)) - 1).sort((a, b) => a - b).map((i) => nodePaths(dataDir, i));
}

interface UpOptions {
  dataDir: string;
  size: number;
  volume: string;
  nodes: number;
  repl: number | undefined;
  address: string;
  apiPort: number;
  nbdPort: number;
  peerPort: number;
}

export function registerLocalNode(program: Command): void {
  const port = intArg(1, 65535);
  program
    .command("up")
    .description("start a local pxd cluster in the background (3 nodes on 127.0.0.11-13 by default) and create a volume to try")
    .option("--data-dir <dir>", "where the nodes keep their data, logs and pid files", ".pxd")
    .addOption(new Option("-s, --size <size>", "size of the volume to create").argParser(sizeArg).default(1024 ** 3, "1G"))
    .option("--volume <name>", "name of the volume to create", "demo")
    .option("--nodes <n>", "how many nodes to start", intArg(1, 9), 3)
    .option("--repl <n>", "replicas of the volume (default: 3, or the node count if smaller)", replArg)
    .option("--address <ip>", "the first node's address; the others take the next ones", "127.0.0.11")
    .option("--api-port <port>", "control API port of every node", port, defaultApiPort)
    .option("--nbd-port <port>", "NBD port of every node", port, defaultNbdPort)
    .option("--peer-port <port>", "peer port of every node", port, defaultPeerPort)
    .action(async (o: UpOptions) => {
      await up({ ...o, volume: checkName(o.volume) });
    });

  program
    .command("down")
    .description("stop the nodes started by pxd up (SIGTERM, then SIGKILL after --timeout)")
    .option("--data-dir <dir>", "the --data-dir given to pxd up", ".pxd")
    .option("--timeout <seconds>", "wait this long after SIGTERM before SIGKILL", intArg(1, 3600), downTimeoutSecDefault)
    .action(async (options: { dataDir: string; timeout: number }) => {
      const nodes = allNodePaths(options.dataDir);
      if (nodes.length === 0) console.log(`pxd is not running from here (nothing in ${options.dataDir}); nothing to stop`);
      for (const paths of nodes) await down(paths, options.timeout * 1000);
    });
}

function nodeAddress(first: string, index: number): string {
  const parts = first.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255) || parts[3]! + index > 254) {
    throw new CliError(`--address ${first} is not an IPv4 address with room for the next ones; use e.g. 127.0.0.11`);
  }
  return [parts[0], parts[1], parts[2], parts[3]! + index].join(".");
}

async function up(o: UpOptions): Promise<void> {
  if (!isLoopback(o.address)) throw new CliError(`pxd up starts nodes only on this machine's loopback addresses (127.x.x.x), not ${o.address}; start remote nodes with "pxd daemon"`);
  mkdirSync(o.dataDir, { recursive: true, mode: privateDirMode });
  const secretFile = join(o.dataDir, clusterSecretFile);
  writeCredentialFile(secretFile, randomBytes(24).toString("hex"));
  const secret = readCredentialFile(secretFile, "the cluster secret") ?? "";
  const token = localAdminToken(o.dataDir, secret);
  // A cluster key for encrypted volumes, made once; PXD_CLUSTER_KEY in the environment, if set, is the key instead (the daemons inherit it).
  const keyFile = resolve(o.dataDir, localClusterKeyFile);
  if (!existsSync(keyFile)) writeCredentialFile(keyFile, randomBytes(32).toString("hex"));
  const keyArgs = process.env[clusterKeyEnv] ? [] : ["--cluster-key-file", keyFile];
  const first = `${nodeAddress(o.address, 0)}:${o.apiPort}`;
  // The first node makes the cluster's CA as it bootstraps; every node's HTTPS certificate chains to it.
  const ca = (): string | undefined => readSmallFile(join(nodePaths(o.dataDir, 0).dir, tlsDirName, localCaFile), "a CA certificate", caFileBytesMax);
  const firstClient = new ApiClient(`https://${first}`, { timeoutMs: 5000, token, ca });
  for (let i = 0; i < o.nodes; i++) {
    const host = nodeAddress(o.address, i);
    const client = i === 0 ? firstClient : new ApiClient(`https://${host}:${o.apiPort}`, { timeoutMs: 5000, token, ca });
    if ((await statusOrNull(client)) !== null) continue;
    const paths = nodePaths(o.dataDir, i);
    let pid = runningDaemonPid(paths.pid);
    let exited: (() => string | null) | null = null;
    if (pid === null) {
      const args = ["--data-dir", resolve(paths.dir), "--listen", host, "--api-port", String(o.apiPort), "--nbd-port", String(o.nbdPort), "--peer-port", String(o.peerPort), "--name", `node${i + 1}`, ...keyArgs];
      if (i > 0) args.push("--join", first);
      [pid, exited] = startDaemon(paths, args, secret);
    }
    await waitForDaemon(client, paths, pid, exited);
  }
  keepLocalCa(o.dataDir, ca());
  const status = await waitForCluster(firstClient, o.nodes);
  const volume = await ensureVolume(firstClient, o.volume, o.size, o.repl ?? Math.min(3, o.nodes));
  console.log(instructions(status, volume, o));
}

/**
 * The admin token pxd up keeps in DIR/admin.token (0600), signed with the
 * cluster secret it made; the CLI finds it there (localClusterTokenFile) when
 * run from the same directory. A token that no longer verifies (expired, or
 * of an older secret) is replaced.
 */
function localAdminToken(dataDir: string, secret: string): string {
  const file = join(dataDir, adminTokenFile);
  const access = offlineAccess(secret);
  const kept = readCredentialFile(file, "an API token");
  if (kept !== undefined && access.verify(kept).ok) return kept;
  rmSync(file, { force: true });
  const made = access.mint("admin", "admin", apiTokenTtlMsMax).token;
  writeCredentialFile(file, made);
  return made;
}

/** A copy of the cluster's CA certificate beside the token, where the CLI run from the same directory finds it (localClusterCaFile). */
function keepLocalCa(dataDir: string, pem: string | undefined): void {
  if (pem === undefined) throw new CliError(`the first node answers but made no CA in ${join(nodePaths(dataDir, 0).dir, tlsDirName)}; see its log`);
  writeFileSync(join(dataDir, localCaFile), pem, { mode: privateFileMode });
}

/** Waits until the first node sees every node up (bounded); returns its status. */
async function waitForCluster(client: ApiClient, nodes: number): Promise<NodeStatus> {
  const deadline = Date.now() + upStartTimeoutMs;
  for (;;) {
    const status = await client.status();
    if (status.nodes.length >= nodes && status.nodes.every((n) => n.health === "up")) return status;
    if (Date.now() > deadline) {
      throw new CliError(`only ${status.nodes.filter((n) => n.health === "up").length} of ${nodes} nodes are up after ${upStartTimeoutMs / 1000}s; see the logs in the node directories`);
    }
    await sleep(upPollMs);
  }
}

async function statusOrNull(client: ApiClient): Promise<NodeStatus | null> {
  try {
    return await client.status();
  } catch (err) {
    if (err instanceof DaemonUnreachableError) return null;
    throw err;
  }
}

/** Starts `pxd daemon ARGS` detached, output to the log, pid to the pid file; returns the pid and a probe for early exit. */
function startDaemon(paths: NodePaths, daemonArgs: string[], secret: string): [number, () => string | null] {
  // The daemon makes its data dir private at start; its log and pid file are created so from the first byte.
  mkdirSync(paths.dir, { recursive: true, mode: privateDirMode });
  // dist/src/cli/local-node.js -> dist/bin/pxd.js: the same build that is running now.
  const entry = fileURLToPath(new URL("../../bin/pxd.js", import.meta.url));
  const args = ["--enable-source-maps", ...daemonNodeFlags, entry, "daemon", ...daemonArgs];
  const logFd = openSync(paths.log, "a", privateFileMode);
  let child;
  try {
    writeFileSync(logFd, `--- ${new Date().toISOString()} pxd up: ${process.execPath} ${args.join(" ")}\n`);
    // The secret goes in the environment, not on the command line that ps shows.
    child = spawn(process.execPath, args, { detached: true, stdio: ["ignore", logFd, logFd], env: { ...process.env, PXD_CLUSTER_SECRET: secret } });
  } finally {
    closeSync(logFd);
  }
  if (child.pid === undefined) throw new CliError(`could not start ${process.execPath} ${entry} daemon; see ${paths.log}`);
  let exit: string | null = null;
  child.on("error", (err) => (exit = err.message));
  child.on("exit", (code, signal) => (exit = signal ? `killed by ${signal}` : `exit code ${code}`));
  child.unref();
  writeFileSync(paths.pid, `${child.pid}\n`, { mode: privateFileMode });
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

async function ensureVolume(client: ApiClient, name: string, sizeBytes: number, repl: number): Promise<VolumeInfo> {
  try {
    const existing = await client.inspectVolume(name);
    if (existing.sizeBytes !== sizeBytes) console.log(`volume "${name}" already exists with ${formatSize(existing.sizeBytes)}; leaving it as it is`);
    return existing;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) throw err;
  }
  return client.createVolume({ name, sizeBytes, repl });
}

function instructions(status: NodeStatus, volume: VolumeInfo, o: UpOptions): string {
  const uri = volume.nbdUri;
  const url = new URL(uri);
  const host = url.hostname;
  const port = url.port ? Number(url.port) : defaultNbdPort;
  const up = status.nodes.filter((n) => n.health === "up");
  const addresses = up
    .map((n) => n.address)
    .sort((a, b) => a.localeCompare(b, "en", { numeric: true }))
    .join(", ");
  const inRepo = process.env["npm_lifecycle_event"] === "start";
  const pxd = inRepo ? "./bin/pxd" : "pxd";
  const api = `${nodeAddress(o.address, 0)}:${o.apiPort}`;
  const hostHint = api === localClusterApiAddress || api === defaultApiAddress ? "" : ` --host ${api}`;
  const dirHint = o.dataDir === ".pxd" ? "" : ` --data-dir ${o.dataDir}`;
  const commands: [string, string][] = [
    [`nbdinfo ${uri}`, ""],
    [`sudo ${pxd}${hostHint} volume mount ${volume.name} /mnt/${volume.name}`, "# ext4 on it: the kernel's nbd, else nbdfuse + a loop device"],
    [`nbd-client ${host} ${port} /dev/nbd0 -N ${volume.name}`, "# with the kernel nbd module"],
  ];
  const width = Math.max(...commands.map(([c]) => c.length));
  return [
    `pxd is running: ${up.length} node${up.length === 1 ? "" : "s"} (${addresses}), data and logs in ${o.dataDir}/node*`,
    `volume "${volume.name}" (${formatSize(volume.sizeBytes)}, ${volume.repl} replica${volume.repl === 1 ? "" : "s"}) is exported at ${uri} (and on every node)`,
    ...commands.map(([c, note]) => `  ${note ? `${c.padEnd(width)}   ${note}` : c}`),
    `see it with: ${pxd}${hostHint} status, ${pxd}${hostHint} volume inspect ${volume.name}, or the web console at https://${api}/ (the cluster's own CA signed its certificate: trust ${join(o.dataDir, localCaFile)} in the browser or accept the warning; it asks for a token: ${pxd}${hostHint} auth token create --role read-only)`,
    o.dataDir === ".pxd"
      ? `the CLI finds the admin token in ${localClusterTokenFile} and the CA in ${localClusterCaFile} when run from this directory; elsewhere: export PXD_TOKEN_FILE=${resolve(o.dataDir, adminTokenFile)} PXD_CA_FILE=${resolve(o.dataDir, localCaFile)}`
      : `the admin token and the CA are in ${o.dataDir}: export PXD_TOKEN_FILE=${resolve(o.dataDir, adminTokenFile)} PXD_CA_FILE=${resolve(o.dataDir, localCaFile)}`,
    `stop it with: ${inRepo && o.dataDir === ".pxd" ? "npm run stop (or ./bin/pxd down)" : `${pxd} down${dirHint}`}`,
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
