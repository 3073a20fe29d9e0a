// pxd docker-plugin: Docker's volume plugin protocol (VolumeDriver) over a
// Unix socket, so `docker run -v db:/data --volume-driver pxd` gets a pxd
// volume that any host can mount (docs/docker.md).
//
// dockerd POSTs a JSON body to /Plugin.Activate and /VolumeDriver.*; every
// answer is a JSON object whose "Err" is empty on success, or a sentence a
// user can act on (with HTTP status 500, as dockerd's own plugin helpers
// answer). Mounts are counted per caller ID: the first attaches the volume
// on this host (pxd volume mount: a filesystem is made only where blkid finds
// none) under the plugin's mount dir, the last unmounts and detaches it. The
// counts and each volume's filesystem choice live in a state file, so a
// plugin restarted between two mounts knows the first.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import type { ApiClient } from "../api/client.js";
import { ApiError, type SnapshotInfo, type VolumeInfo } from "../api/types.js";
import { parseSnapshotRef, volumeNameProblem } from "../api/validate.js";
import { parseSize } from "../base/sizes.js";
import { volumeReplicasMax } from "../constants.js";
import { filesystems, mountVolume, unmountVolume, type Filesystem } from "./attach.js";
import { clientFor } from "./args.js";
import { mountedAt } from "../os/attachments.js";
import { claimSocketPath } from "../os/unix-socket.js";

/** The socket dockerd looks for a plugin named pxd at. */
export const dockerPluginSocketDefault = "/run/docker/plugins/pxd.sock";
/** Where the plugin keeps its state file and mounts volumes. */
export const dockerPluginStateDirDefault = "/var/lib/pxd/docker";
/** The size of a volume created without a size option. */
const defaultSizeBytes = 1024 ** 3;
/** The largest request body the plugin reads (dockerd's are a few hundred bytes). */
const requestBytesMax = 64 * 1024;
/** Callers (container mounts) counted on one volume at once. */
const mountIdsMax = 1024;
/** Characters of a caller ID (dockerd sends 64 hex digits). */
const mountIdCharsMax = 256;

const createOptions = ["size", "repl", "zones", "nodes", "fs", "snapshot"] as const;
const mimeType = "application/vnd.docker.plugins.v1+json";

interface VolumeState {
  /** Caller IDs that have it mounted. */
  ids: string[];
  /** The filesystem to make when it has none (the Create option fs). */
  fs?: Filesystem;
}

interface PluginState {
  volumes: Record<string, VolumeState>;
}

/** A request dockerd sent that the plugin refuses: its sentence goes back in Err. */
class Refusal extends Error {}

export class DockerPlugin {
  private state: PluginState;
  /** One request at a time: a mount and an unmount of one volume never interleave. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly api: ApiClient,
    private readonly stateDir: string,
  ) {
    mkdirSync(this.mountDir, { recursive: true, mode: 0o700 });
    this.state = this.load();
  }

  private get mountDir(): string {
    return join(this.stateDir, "mounts");
  }

  private get statePath(): string {
    return join(this.stateDir, "state.json");
  }

  private load(): PluginState {
    if (!existsSync(this.statePath)) return { volumes: {} };
    const parsed = JSON.parse(readFileSync(this.statePath, "utf8")) as PluginState;
    // Only the fields VolumeState names are kept (a state file may hold others, e.g. "filling", which nothing reads now).
    const volumes = Object.entries(parsed.volumes ?? {}).map(([name, v]): [string, VolumeState] => [name, { ids: v.ids ?? [], ...(v.fs !== undefined ? { fs: v.fs } : {}) }]);
    return { volumes: Object.fromEntries(volumes) };
  }

  private save(): void {
    const tmp = `${this.statePath}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.state, null, 2) + "\n", { mode: 0o600 });
    renameSync(tmp, this.statePath);
  }

  private mountpoint(name: string): string {
    return join(this.mountDir, name);
  }

  /** Runs one request's work after the ones before it. */
  serve(method: string, body: Record<string, unknown>): Promise<Record<string, unknown>> {
    const run = this.queue.then(() => this.dispatch(method, body));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async dispatch(method: string, body: Record<string, unknown>): Promise<Record<string, unknown>> {
    switch (method) {
      case "/Plugin.Activate":
        return { Implements: ["VolumeDriver"] };
      case "/VolumeDriver.Capabilities":
        return { Capabilities: { Scope: "global" } };
      case "/VolumeDriver.Create":
        await this.create(volumeName(body), body["Opts"]);
        return { Err: "" };
      case "/VolumeDriver.Remove":
        await this.remove(volumeName(body));
        return { Err: "" };
      case "/VolumeDriver.Mount":
        return { Mountpoint: await this.mount(volumeName(body), callerId(body)), Err: "" };
      case "/VolumeDriver.Unmount":
        await this.unmount(volumeName(body), callerId(body));
        return { Err: "" };
      case "/VolumeDriver.Path":
        return { Mountpoint: this.mountedPath(volumeName(body)), Err: "" };
      case "/VolumeDriver.Get": {
        const v = await this.inspect(volumeName(body));
        return { Volume: { Name: v.name, Mountpoint: this.mountedPath(v.name), Status: status(v) }, Err: "" };
      }
      case "/VolumeDriver.List": {
        const list = await this.api.listVolumes();
        return { Volumes: list.map((v) => ({ Name: v.name, Mountpoint: this.mountedPath(v.name) })), Err: "" };
      }
      default:
        throw new NotFound(method);
    }
  }

  private mountedPath(name: string): string {
    return (this.state.volumes[name]?.ids.length ?? 0) > 0 ? this.mountpoint(name) : "";
  }

  private async inspect(name: string): Promise<VolumeInfo> {
    try {
      return await this.api.inspectVolume(name);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) throw new Refusal(`volume ${name} does not exist; create it with "docker volume create -d pxd ${name}"`);
      throw e;
    }
  }

  private async create(name: string, rawOpts: unknown): Promise<void> {
    const opts = createOpts(rawOpts);
    const source = opts.snapshot === undefined ? undefined : await this.snapshotOption(opts.snapshot);
    const sizeBytes = opts.size === undefined ? (source?.sizeBytes ?? defaultSizeBytes) : sizeOption(opts.size);
    if (source !== undefined && sizeBytes < source.sizeBytes) throw new Refusal(`option size ${opts.size} is smaller than snapshot ${opts.snapshot} (${source.sizeBytes} bytes); leave out size, or give at least that`);
    const repl = opts.repl === undefined ? undefined : replOption(opts.repl);
    const fs = opts.fs === undefined ? undefined : fsOption(opts.fs);
    const zones = opts.zones === undefined ? undefined : boolOption("zones", opts.zones);
    if (source !== undefined && zones === true) throw new Refusal(`option zones cannot be used with option snapshot: a volume from a snapshot starts on the nodes that hold the snapshot, whatever their zones; leave out zones`);
    const existing = await this.api.inspectVolume(name).catch((e: unknown) => {
      if (e instanceof ApiError && e.status === 404) return undefined;
      throw e;
    });
    if (existing !== undefined) {
      // dockerd creates a named volume again on every `docker run -v NAME:...`: the same volume is not an error.
      const sourceRef = source === undefined ? undefined : `${source.volume}@${source.name}`;
      const grow = sourceRef !== undefined && existing.clonedFrom === sourceRef && existing.sizeBytes < sizeBytes; // a Create that ended before its resize
      if (opts.size !== undefined && existing.sizeBytes !== sizeBytes && !grow) throw new Refusal(`volume ${name} exists with ${existing.sizeBytes} bytes, not ${sizeBytes}; use another name, or leave out size`);
      if (sourceRef !== undefined && existing.clonedFrom !== sourceRef) throw new Refusal(`volume ${name} exists and is not a clone of snapshot ${sourceRef}; use another name, or leave out snapshot`);
      if (grow) await this.api.updateVolume(name, { sizeBytes });
    } else if (source !== undefined) {
      // A clone is made inside the cluster at the snapshot's size (docs/architecture.md, "Clones"), then grown when size says more.
      await this.api.createVolume({ name, sizeBytes: source.sizeBytes, clone: { volume: source.volume, snapshot: source.name }, ...(repl !== undefined ? { repl } : {}), ...(opts.nodes !== undefined ? { nodes: nodeList(opts.nodes) } : {}) });
      if (sizeBytes > source.sizeBytes) await this.api.updateVolume(name, { sizeBytes });
    } else {
      await this.api.createVolume({ name, sizeBytes, ...(repl !== undefined ? { repl } : {}), ...(opts.nodes !== undefined ? { nodes: nodeList(opts.nodes) } : {}), ...(zones !== undefined ? { zones } : {}) });
    }
    if (fs !== undefined) {
      this.state.volumes[name] = { ...this.state.volumes[name], ids: this.state.volumes[name]?.ids ?? [], fs };
      this.save();
    }
  }

  /** The snapshot a Create option names (VOLUME@SNAPSHOT), which must exist. */
  private async snapshotOption(ref: string): Promise<SnapshotInfo> {
    const r = parseSnapshotRef(ref);
    if ("problem" in r) throw new Refusal(`option snapshot: ${r.problem}`);
    return this.api.inspectSnapshot(r.volume, r.snapshot).catch((e: unknown) => {
      if (e instanceof ApiError && e.status === 404) throw new Refusal(`snapshot ${ref} does not exist; pxd snapshot list shows the snapshots`);
      throw e;
    });
  }

  private async remove(name: string): Promise<void> {
    const mounted = this.state.volumes[name]?.ids.length ?? 0;
    if (mounted > 0) throw new Refusal(`volume ${name} is mounted for ${mounted} container(s) here; stop them first`);
    await this.api.deleteVolume(name);
    delete this.state.volumes[name];
    this.save();
  }

  private async mount(name: string, id: string): Promise<string> {
    const v = this.state.volumes[name] ?? { ids: [] };
    const path = this.mountpoint(name);
    if (!mountedAt(path)) {
      v.ids = []; // callers counted before a reboot (or a lost mount) hold nothing now
      await this.inspect(name);
      await mountVolume(this.api, name, path, { fs: v.fs ?? "ext4" });
    }
    if (!v.ids.includes(id)) {
      if (v.ids.length >= mountIdsMax) throw new Refusal(`volume ${name} is mounted for ${mountIdsMax} containers, the most the plugin counts`);
      v.ids.push(id);
    }
    this.state.volumes[name] = v;
    this.save();
    return path;
  }

  private async unmount(name: string, id: string): Promise<void> {
    const v = this.state.volumes[name];
    if (v === undefined || !v.ids.includes(id)) return; // dockerd retries an unmount it does not know finished
    const rest = v.ids.filter((x) => x !== id);
    // The last caller's ID is dropped only once the volume is unmounted, so a failed unmount can be retried.
    if (rest.length === 0 && mountedAt(this.mountpoint(name))) await unmountVolume(this.api, this.mountpoint(name));
    v.ids = rest;
    this.save();
  }
}

class NotFound extends Error {}

function volumeName(body: Record<string, unknown>): string {
  const name = body["Name"];
  if (typeof name !== "string") throw new Refusal(`the request has no volume Name`);
  const problem = volumeNameProblem(name);
  if (problem !== null) throw new Refusal(problem);
  return name;
}

function callerId(body: Record<string, unknown>): string {
  const id = body["ID"];
  if (typeof id !== "string" || id.length === 0 || id.length > mountIdCharsMax) throw new Refusal(`the request has no caller ID of 1-${mountIdCharsMax} characters`);
  return id;
}

function createOpts(raw: unknown): Partial<Record<(typeof createOptions)[number], string>> {
  if (raw === undefined || raw === null) return {};
  if (typeof raw !== "object" || Array.isArray(raw)) throw new Refusal("Opts must be an object of strings");
  const out: Partial<Record<(typeof createOptions)[number], string>> = {};
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
    const known = createOptions.find((o) => o === k);
    if (known === undefined) throw new Refusal(`unknown option ${JSON.stringify(k.slice(0, 40))}; the options are ${createOptions.join(", ")} (e.g. -o size=10G -o repl=3)`);
    if (typeof v !== "string" || v.length > 1024) throw new Refusal(`option ${k} must be a string`);
    out[known] = v;
  }
  return out;
}

/** The option nodes: a comma-separated list of node names. */
function nodeList(text: string): string[] {
  return text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

function sizeOption(text: string): number {
  let bytes: number;
  try {
    bytes = parseSize(text);
  } catch (e) {
    throw new Refusal(`option size: ${(e as Error).message}`);
  }
  if (bytes <= 0 || bytes % 512 !== 0) throw new Refusal(`option size must be above zero and whole 512-byte sectors, e.g. 10G, not ${JSON.stringify(text)}`);
  return bytes;
}

function replOption(text: string): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(n >= 1 && n <= volumeReplicasMax)) throw new Refusal(`option repl must be a whole number from 1 to ${volumeReplicasMax}, not ${JSON.stringify(text)}`);
  return n;
}

function fsOption(text: string): Filesystem {
  const f = filesystems.find((x) => x === text);
  if (f === undefined) throw new Refusal(`option fs must be one of ${filesystems.join(", ")}, not ${JSON.stringify(text)}`);
  return f;
}

function boolOption(key: string, text: string): boolean {
  if (text === "true" || text === "1" || text === "") return true;
  if (text === "false" || text === "0") return false;
  throw new Refusal(`option ${key} must be true or false, not ${JSON.stringify(text)}`);
}

function status(v: VolumeInfo): Record<string, unknown> {
  return {
    size: v.sizeBytes,
    repl: v.repl,
    state: v.state,
    replicas: v.replicas.map((r) => `${r.node} ${r.state}${r.leader ? " (leader)" : ""}`),
    attachments: v.attachments.map((a) => `${a.host} ${a.device}`),
  };
}

function readBody(request: IncomingMessage): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    request.on("data", (c: Buffer) => {
      size += c.length;
      if (size > requestBytesMax) {
        reject(new Refusal(`the request body is over ${requestBytesMax} bytes`));
        request.destroy();
        return;
      }
      chunks.push(c);
    });
    request.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8").trim();
      if (text === "" || text === "null") return resolve({});
      try {
        const parsed = JSON.parse(text) as unknown;
        if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return reject(new Refusal("the request body must be a JSON object"));
        resolve(parsed as Record<string, unknown>);
      } catch {
        reject(new Refusal("the request body is not JSON"));
      }
    });
    request.on("error", reject);
  });
}

function answer(response: ServerResponse, status: number, body: Record<string, unknown>): void {
  const text = JSON.stringify(body);
  response.writeHead(status, { "Content-Type": mimeType, "Content-Length": Buffer.byteLength(text) });
  response.end(text);
}

/** Serves the plugin on a Unix socket (claimSocketPath: a stale one is replaced, a live one or a file is an error). */
export async function serveDockerPlugin(plugin: DockerPlugin, socketPath: string, log: (line: string) => void): Promise<Server> {
  await claimSocketPath(socketPath, "--socket");
  mkdirSync(join(socketPath, ".."), { recursive: true });
  const server = createServer((request, response) => {
    const method = (request.url ?? "").split("?")[0]!;
    if (request.method !== "POST") return answer(response, 405, { Err: `use POST for ${method.slice(0, 80)}` });
    readBody(request)
      .then((body) => plugin.serve(method, body))
      .then(
        (result) => answer(response, 200, result),
        (e: unknown) => {
          if (e instanceof NotFound) return answer(response, 404, { Err: `${method.slice(0, 80)} is not a VolumeDriver call` });
          const message = e instanceof Error ? e.message : String(e);
          if (!(e instanceof Refusal) && !(e instanceof ApiError)) log(`${method}: ${message}`);
          answer(response, 500, { Err: message });
        },
      );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => resolve());
  });
  return server;
}

export function registerDockerPlugin(program: Command): void {
  program
    .command("docker-plugin")
    .description("serve Docker's volume plugin protocol: docker volume create -d pxd, docker run -v NAME:/path --volume-driver pxd (root)")
    .option("--socket <path>", "the plugin's Unix socket", dockerPluginSocketDefault)
    .option("--state-dir <dir>", "where the plugin keeps its mount counts and mounts volumes", dockerPluginStateDirDefault)
    .action(async (o: { socket: string; stateDir: string }, command: Command) => {
      const plugin = new DockerPlugin(clientFor(command), o.stateDir);
      const server = await serveDockerPlugin(plugin, o.socket, (l) => console.error(l));
      console.log(`pxd docker plugin serving ${o.socket} (volumes mount under ${join(o.stateDir, "mounts")})`);
      await new Promise<void>((resolve) => {
        const stop = (): void => {
          server.close(() => resolve());
          server.closeAllConnections();
        };
        process.once("SIGTERM", stop);
        process.once("SIGINT", stop);
      });
      rmSync(o.socket, { force: true });
    });
}
