// pxd csi: a Container Storage Interface driver (proto/csi/csi.proto, spec
// v1.9.0) over gRPC on a Unix socket. The controller service makes and
// deletes volumes through the control API; the node service attaches them on
// this host (src/cli/attach.ts) and bind-mounts them where the CO asks.
// docs/csi.md says what is implemented and what is not.
//
// Every request is checked before it is acted on (validate, then dispatch):
// a malformed one gets the status code the spec names for it, and nothing
// that arrives is unbounded (message size, names, parameters, paths).

import { rmSync } from "node:fs";
import { claimSocketPath } from "../os/unix-socket.js";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { InvalidArgumentError, type Command } from "commander";
import type { ApiClient } from "../api/client.js";
import { DaemonUnreachableError } from "../api/client.js";
import { ApiError, type SnapshotInfo, type VolumeInfo } from "../api/types.js";
import { parseSnapshotRef, snapshotNameProblem, volumeNameProblem } from "../api/validate.js";
import { volumeBytesMax, volumeReplicasMax } from "../constants.js";
import { encryptedUnitBytes } from "../cluster/rules.js";
import { clientFor } from "./args.js";
import { hostName, filesystems, type Filesystem } from "./attach.js";
import { CliError, UsageError } from "./errors.js";
import { nodeService } from "./csi-node.js";
import { cliVersion } from "./main.js";

export const csiDriverName = "pxd.csi.io";
export const topologyNodeKey = "topology.pxd.io/node";
export const topologyZoneKey = "topology.pxd.io/zone";

/** The largest request the server reads: CSI requests are small; secrets and contexts are bounded below too. */
export const csiMessageBytesMax = 64 * 1024;
/** Entries in a parameters, context or secrets map. */
const csiMapEntriesMax = 32;
const csiMapTextCharsMax = 1024;
/** A path the CO names (staging, target); a Unix socket's own path is shorter still. */
export const csiPathCharsMax = 4096;
const socketPathCharsMax = 107;
const capabilitiesMax = 16;
const sectorBytes = 512;
const defaultVolumeBytes = 1024 * 1024 * 1024;
/** What NodeGetInfo advertises: each volume here is an nbdfuse or attach-agent process and a device. */
export const volumesPerNodeMax = 64;

export const knownParameters = ["repl", "zones", "fs"] as const;

const protoPath = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "proto", "csi", "csi.proto");

/** A failure with the gRPC status code the spec names for it. */
export class CsiError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }
}

export const invalid = (message: string): CsiError => new CsiError(grpc.status.INVALID_ARGUMENT, message);

// ---- request checks shared by both services ----

export type Req = Record<string, unknown>;

export function requireString(req: Req, field: string, max = csiMapTextCharsMax): string {
  const v = req[field];
  if (typeof v !== "string" || v === "") throw invalid(`${field} is missing; the request needs it`);
  if (v.length > max) throw invalid(`${field} is longer than ${max} characters`);
  return v;
}

export function requirePath(req: Req, field: string): string {
  const p = requireString(req, field, csiPathCharsMax);
  if (!p.startsWith("/") || p.includes("\0") || p.split("/").includes("..")) throw invalid(`${field} ${JSON.stringify(p.slice(0, 200))} is not an absolute path without ".."`);
  return p;
}

/** A volume id is a pxd volume name. */
export function requireVolumeId(req: Req): string {
  const id = requireString(req, "volume_id");
  if (volumeNameProblem(id) !== null) throw new CsiError(grpc.status.NOT_FOUND, `volume ${JSON.stringify(id.slice(0, 80))} does not exist: pxd volume ids are pxd volume names`);
  return id;
}

export function checkedMap(req: Req, field: string): Record<string, string> {
  const m = (req[field] ?? {}) as Record<string, string>;
  const keys = Object.keys(m);
  if (keys.length > csiMapEntriesMax) throw invalid(`${field} has ${keys.length} entries; at most ${csiMapEntriesMax} are taken`);
  for (const k of keys) if (k.length > csiMapTextCharsMax || String(m[k]).length > csiMapTextCharsMax) throw invalid(`${field} entry ${JSON.stringify(k.slice(0, 80))} is longer than ${csiMapTextCharsMax} characters`);
  return m;
}

const singleNodeModes = new Set(["SINGLE_NODE_WRITER", "SINGLE_NODE_READER_ONLY", "SINGLE_NODE_SINGLE_WRITER", "SINGLE_NODE_MULTI_WRITER"]);
const readOnlyModes = new Set(["SINGLE_NODE_READER_ONLY", "MULTI_NODE_READER_ONLY"]);

export interface Capability {
  block: boolean;
  fs: Filesystem | undefined;
  readOnly: boolean;
}

/** One VolumeCapability, or why pxd cannot give it (null). Throws on a malformed one. */
export function readCapability(c: unknown): { cap: Capability; unsupported: string | null } {
  const cap = (c ?? {}) as { access_type?: string; mount?: { fs_type?: string; mount_flags?: string[] }; access_mode?: { mode?: string } | null };
  if (cap.access_type !== "block" && cap.access_type !== "mount") throw invalid("a volume capability has no access_type; give block or mount");
  const mode = cap.access_mode?.mode;
  if (cap.access_mode == null || mode === undefined || mode === "UNKNOWN") throw invalid("a volume capability has no access_mode; give e.g. SINGLE_NODE_WRITER");
  const fsType = cap.access_type === "mount" ? (cap.mount?.fs_type ?? "") : "";
  if (fsType.length > 64) throw invalid("mount.fs_type is longer than 64 characters");
  if ((cap.mount?.mount_flags?.length ?? 0) > csiMapEntriesMax) throw invalid(`mount.mount_flags has more than ${csiMapEntriesMax} entries`);
  const fs = filesystems.find((f) => f === fsType);
  const result: Capability = { block: cap.access_type === "block", fs, readOnly: readOnlyModes.has(mode) };
  if (fsType !== "" && fs === undefined) return { cap: result, unsupported: `fs_type ${JSON.stringify(fsType)} is not one pxd makes; use ${filesystems.join(" or ")}` };
  if (!singleNodeModes.has(mode) && mode !== "MULTI_NODE_READER_ONLY") return { cap: result, unsupported: `access mode ${mode} is not supported: a pxd volume is written from one host at a time` };
  return { cap: result, unsupported: null };
}

export function readCapabilities(req: Req): { caps: Capability[]; unsupported: string | null } {
  const list = req["volume_capabilities"];
  if (!Array.isArray(list) || list.length === 0) throw invalid("volume_capabilities is missing; give at least one");
  if (list.length > capabilitiesMax) throw invalid(`volume_capabilities has ${list.length} entries; at most ${capabilitiesMax} are taken`);
  const read = list.map(readCapability);
  return { caps: read.map((r) => r.cap), unsupported: read.find((r) => r.unsupported !== null)?.unsupported ?? null };
}

/** An error from the control API or the attach code, as the gRPC status that says the same. */
export function toCsiError(err: unknown): CsiError {
  if (err instanceof CsiError) return err;
  if (err instanceof ApiError) {
    const code =
      err.status === 404 ? grpc.status.NOT_FOUND
      : err.status === 400 || err.status === 413 ? grpc.status.INVALID_ARGUMENT
      : err.code === "placement" ? grpc.status.RESOURCE_EXHAUSTED
      : err.status === 409 ? grpc.status.FAILED_PRECONDITION
      : err.status === 503 || err.status === 502 ? grpc.status.UNAVAILABLE
      : grpc.status.INTERNAL;
    return new CsiError(code, err.message);
  }
  if (err instanceof DaemonUnreachableError) return new CsiError(grpc.status.UNAVAILABLE, err.message);
  if (err instanceof CliError || err instanceof UsageError) return new CsiError(grpc.status.FAILED_PRECONDITION, err.message);
  return new CsiError(grpc.status.INTERNAL, err instanceof Error ? err.message : String(err));
}

type Handler = (req: Req) => Promise<object>;

/** A grpc-js unary handler: never throws, answers every failure with its status code. */
function unary(h: Handler): grpc.handleUnaryCall<Req, object> {
  return (call, callback) => {
    h(call.request ?? {}).then(
      (res) => callback(null, res),
      (err: unknown) => {
        const e = toCsiError(err);
        callback({ code: e.code, details: e.message });
      },
    );
  };
}

function unimplemented(why: string): Handler {
  return () => Promise.reject(new CsiError(grpc.status.UNIMPLEMENTED, why));
}

// ---- identity ----

function identityService(mode: CsiMode): Record<string, Handler> {
  return {
    GetPluginInfo: async () => ({ name: csiDriverName, vendor_version: cliVersion }),
    GetPluginCapabilities: async () => ({
      capabilities: [
        ...(mode === "node" ? [] : [{ service: { type: "CONTROLLER_SERVICE" } }]),
        { service: { type: "VOLUME_ACCESSIBILITY_CONSTRAINTS" } },
        // OFFLINE: a device attached before a resize keeps its size until it is staged again (docs/csi.md).
        { volume_expansion: { type: "OFFLINE" } },
      ],
    }),
    Probe: async () => ({ ready: { value: true } }),
  };
}

// ---- controller ----

function roundUpToSector(bytes: number): number {
  return Math.ceil(bytes / sectorBytes) * sectorBytes;
}

/** The size to create from a CapacityRange: required rounded up to whole sectors, else 1 GiB (or the limit, when lower). */
export function sizeFor(range: unknown): { bytes: number; limit: number; required: number } {
  const r = (range ?? {}) as { required_bytes?: number | string; limit_bytes?: number | string };
  const required = Number(r.required_bytes ?? 0);
  const limit = Number(r.limit_bytes ?? 0);
  if (!Number.isSafeInteger(required) || !Number.isSafeInteger(limit) || required < 0 || limit < 0) throw invalid("capacity_range bytes must be whole numbers of at least zero");
  if (limit > 0 && required > limit) throw invalid(`capacity_range required_bytes ${required} is above limit_bytes ${limit}`);
  let bytes = required > 0 ? roundUpToSector(required) : defaultVolumeBytes;
  if (limit > 0 && bytes > limit) bytes = required > 0 ? bytes : Math.floor(limit / sectorBytes) * sectorBytes;
  if (bytes === 0 || (limit > 0 && bytes > limit)) throw new CsiError(grpc.status.OUT_OF_RANGE, `no whole number of 512-byte sectors fits capacity_range ${required}..${limit}`);
  if (bytes > volumeBytesMax) throw new CsiError(grpc.status.OUT_OF_RANGE, `${bytes} bytes is larger than the volume limit of ${volumeBytesMax} bytes`);
  return { bytes, limit, required };
}

interface CreateParameters {
  repl?: number;
  zones?: boolean;
  fs?: Filesystem;
}

export function readParameters(params: Record<string, string>): CreateParameters {
  const out: CreateParameters = {};
  for (const [k, v] of Object.entries(params)) {
    if (k === "repl") {
      const n = /^\d{1,3}$/.test(v) ? Number(v) : NaN;
      if (!(n >= 1 && n <= volumeReplicasMax)) throw invalid(`parameter repl "${v}" is not a whole number from 1 to ${volumeReplicasMax}`);
      out.repl = n;
    } else if (k === "zones") {
      if (v !== "true" && v !== "false") throw invalid(`parameter zones "${v}" is not true or false`);
      out.zones = v === "true";
    } else if (k === "fs") {
      const f = filesystems.find((x) => x === v);
      if (f === undefined) throw invalid(`parameter fs "${v}" is not one of ${filesystems.join(", ")}`);
      out.fs = f;
    } else {
      throw invalid(`parameter ${JSON.stringify(k.slice(0, 80))} is not one pxd knows; the known ones are ${knownParameters.join(", ")}`);
    }
  }
  return out;
}

function topologyOf(v: VolumeInfo): object[] {
  return v.replicas.map((r) => ({ segments: { [topologyNodeKey]: r.node } }));
}

function csiVolume(v: VolumeInfo, context: Record<string, string> = {}): object {
  return { volume_id: v.name, capacity_bytes: v.sizeBytes, volume_context: context, accessible_topology: topologyOf(v) };
}

async function findVolume(api: ApiClient, name: string): Promise<VolumeInfo | undefined> {
  try {
    return await api.inspectVolume(name);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return undefined;
    throw e;
  }
}

function existingFits(v: VolumeInfo, size: { bytes: number; limit: number; required: number }, p: CreateParameters): string | null {
  if (v.sizeBytes < size.required || (size.limit > 0 && v.sizeBytes > size.limit)) return `volume ${v.name} exists with ${v.sizeBytes} bytes, outside the capacity_range asked for; pick another name or the same size`;
  if (p.repl !== undefined && v.repl !== p.repl) return `volume ${v.name} exists with ${v.repl} replicas, not ${p.repl}; pick another name`;
  return null;
}

/**
 * ControllerExpandVolume: grows the volume to required_bytes (rounded up to
 * whole sectors). A volume already inside the capacity range is left as it is
 * (a repeated call); one larger than limit_bytes cannot be shrunk: OUT_OF_RANGE.
 * A filesystem on it is grown by NodeExpandVolume once the device shows the
 * new size.
 */
async function expandVolume(api: ApiClient, req: Req): Promise<object> {
  const id = requireVolumeId(req);
  checkedMap(req, "secrets");
  if (req["capacity_range"] == null) throw invalid("capacity_range is missing; give required_bytes, the size to grow to");
  const cap = req["volume_capability"] == null ? undefined : readCapability(req["volume_capability"]).cap;
  const size = sizeFor(req["capacity_range"]);
  const v = await findVolume(api, id);
  if (v === undefined) throw new CsiError(grpc.status.NOT_FOUND, `volume ${id} does not exist`);
  const nodeExpansion = cap === undefined || !cap.block;
  if (size.limit > 0 && v.sizeBytes > size.limit) {
    throw new CsiError(grpc.status.OUT_OF_RANGE, `volume ${id} is ${v.sizeBytes} bytes, above limit_bytes ${size.limit}; shrinking a volume is not supported`);
  }
  if (v.sizeBytes >= size.required) return { capacity_bytes: v.sizeBytes, node_expansion_required: nodeExpansion };
  try {
    const grown = await api.updateVolume(id, { sizeBytes: size.bytes });
    return { capacity_bytes: grown.sizeBytes, node_expansion_required: nodeExpansion };
  } catch (e) {
    // Grown meanwhile past what this call asks (another resize raced it): shrinking is what the daemon refused.
    if (e instanceof ApiError && e.code === "conflict") throw new CsiError(grpc.status.OUT_OF_RANGE, e.message);
    throw e;
  }
}

/** A CSI snapshot id: VOLUME@SNAPSHOT, the snapshot's NBD export name. */
function snapshotIdOf(s: SnapshotInfo): string {
  return `${s.volume}@${s.name}`;
}

/** The volume and snapshot names of a snapshot id, or undefined for an id this driver never gives out. */
function parseSnapshotId(id: string): { volume: string; snapshot: string } | undefined {
  const r = parseSnapshotRef(id);
  return "problem" in r ? undefined : r;
}

function csiSnapshot(s: SnapshotInfo): object {
  const ms = Date.parse(s.createdAt);
  return { size_bytes: s.sizeBytes, snapshot_id: snapshotIdOf(s), source_volume_id: s.volume, creation_time: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 }, ready_to_use: true };
}

/** ListVolumes and ListSnapshots pages: a starting token is the index of the first entry, as this driver gave it out. */
function page<T>(req: Req, all: T[]): { items: T[]; next: string } {
  const max = Number(req["max_entries"] ?? 0);
  if (!Number.isSafeInteger(max) || max < 0) throw invalid("max_entries must be zero (no limit) or more");
  const token = String(req["starting_token"] ?? "");
  const start = token === "" ? 0 : /^\d{1,9}$/.test(token) ? Number(token) : NaN;
  if (!(start >= 0 && start <= all.length)) throw new CsiError(grpc.status.ABORTED, `starting_token ${JSON.stringify(token.slice(0, 40))} is not one this driver gave out; list again from the start`);
  const end = max === 0 ? all.length : Math.min(all.length, start + max);
  return { items: all.slice(start, end), next: end < all.length ? String(end) : "" };
}

/**
 * CreateVolume with a snapshot as its content source: a clone of the
 * snapshot made inside the cluster (docs/architecture.md, "Clones"; no byte
 * goes through this process), usable as soon as it is made, then grown when
 * required_bytes asks for more than the snapshot's size. A volume of the
 * name that exists answers when it is a clone of this snapshot that fits the
 * request; one smaller than asked (a call that ended before its resize) is
 * grown first.
 */
async function fromSnapshot(api: ApiClient, name: string, snapshotId: string, size: { bytes: number; limit: number; required: number }, params: CreateParameters, context: Record<string, string>): Promise<object> {
  const ref = parseSnapshotId(snapshotId);
  const snap = ref === undefined ? undefined : await api.inspectSnapshot(ref.volume, ref.snapshot).catch((e: unknown) => (e instanceof ApiError && e.status === 404 ? undefined : Promise.reject(e)));
  if (ref === undefined || snap === undefined) throw new CsiError(grpc.status.NOT_FOUND, `snapshot ${JSON.stringify(snapshotId.slice(0, 140))} does not exist`);
  if (size.limit > 0 && size.limit < snap.sizeBytes) throw new CsiError(grpc.status.OUT_OF_RANGE, `snapshot ${snapshotId} is ${snap.sizeBytes} bytes, more than limit_bytes ${size.limit}`);
  if (params.zones === true) throw invalid(`parameter zones "true" cannot be used with a snapshot source: a volume from a snapshot starts on the nodes that hold the snapshot, whatever their zones; use a StorageClass without zones`);
  // No required_bytes: the snapshot's size, not the 1 GiB default of an empty volume.
  const bytes = size.required > 0 ? Math.max(size.bytes, snap.sizeBytes) : snap.sizeBytes;
  let v = (await findVolume(api, name)) ?? (await newClone(api, name, snap, params));
  if (v.clonedFrom !== snapshotId) throw new CsiError(grpc.status.ALREADY_EXISTS, `volume ${name} exists and is not a clone of snapshot ${snapshotId}${v.clonedFrom !== undefined ? ` but of ${v.clonedFrom}` : ""}; pick another name`);
  if (v.sizeBytes < bytes) v = await growClone(api, v, bytes, size.limit);
  const misfit = existingFits(v, { ...size, required: bytes }, params);
  if (misfit !== null) throw new CsiError(grpc.status.ALREADY_EXISTS, misfit);
  return { volume: { ...csiVolume(v, context), content_source: { snapshot: { snapshot_id: snapshotId } } } };
}

/** A clone of the snapshot at its size (the API makes clones no other size); a race with another call for the name answers with that call's volume. */
async function newClone(api: ApiClient, name: string, snap: SnapshotInfo, params: CreateParameters): Promise<VolumeInfo> {
  try {
    return await api.createVolume({ name, sizeBytes: snap.sizeBytes, clone: { volume: snap.volume, snapshot: snap.name }, ...(params.repl !== undefined ? { repl: params.repl } : {}) });
  } catch (e) {
    const now = e instanceof ApiError && e.status === 409 ? await findVolume(api, name) : undefined;
    if (now === undefined) throw e;
    return now;
  }
}

/** Grows a clone to at least `bytes`: whole 4 KiB units when it is encrypted (as its source is), if limit_bytes leaves room for them. */
async function growClone(api: ApiClient, v: VolumeInfo, bytes: number, limit: number): Promise<VolumeInfo> {
  const units = v.encrypted ? Math.ceil(bytes / encryptedUnitBytes) * encryptedUnitBytes : bytes;
  try {
    return await api.updateVolume(v.name, { sizeBytes: limit > 0 && units > limit ? bytes : units });
  } catch (e) {
    // Grown meanwhile past this size by another call: shrinking is what the daemon refused.
    const now = e instanceof ApiError && e.code === "conflict" ? await findVolume(api, v.name) : undefined;
    if (now === undefined) throw e;
    return now;
  }
}

function controllerService(api: ApiClient): Record<string, Handler> {
  const noPublish = "pxd.csi.io needs no ControllerPublish (attachRequired: false): the node plugin attaches in NodeStageVolume";
  return {
    CreateVolume: async (req) => {
      const name = requireString(req, "name");
      const problem = volumeNameProblem(name);
      if (problem !== null) throw invalid(problem);
      const { unsupported } = readCapabilities(req);
      if (unsupported !== null) throw invalid(unsupported);
      const params = readParameters(checkedMap(req, "parameters"));
      checkedMap(req, "secrets");
      checkedMap(req, "mutable_parameters");
      const size = sizeFor(req["capacity_range"]);
      const context: Record<string, string> = params.fs !== undefined ? { fs: params.fs } : {};
      const source = req["volume_content_source"] as { snapshot?: { snapshot_id?: unknown }; volume?: unknown } | null | undefined;
      if (source != null) {
        if (source.snapshot == null) throw invalid("volume_content_source: only a snapshot is taken (take a snapshot of the volume to copy, then make a volume from it)");
        return fromSnapshot(api, name, String(source.snapshot.snapshot_id ?? ""), size, params, context);
      }
      const existing = await findVolume(api, name);
      if (existing !== undefined) {
        const misfit = existingFits(existing, size, params);
        if (misfit !== null) throw new CsiError(grpc.status.ALREADY_EXISTS, misfit);
        return { volume: csiVolume(existing, context) };
      }
      try {
        const made = await api.createVolume({ name, sizeBytes: size.bytes, ...(params.repl !== undefined ? { repl: params.repl } : {}), ...(params.zones !== undefined ? { zones: params.zones } : {}) });
        return { volume: csiVolume(made, context) };
      } catch (e) {
        // Two CreateVolume calls for one name raced: the loser answers as a repeat would.
        const now = e instanceof ApiError && e.status === 409 ? await findVolume(api, name) : undefined;
        if (now === undefined) throw e;
        const misfit = existingFits(now, size, params);
        if (misfit !== null) throw new CsiError(grpc.status.ALREADY_EXISTS, misfit);
        return { volume: csiVolume(now, context) };
      }
    },
    DeleteVolume: async (req) => {
      const id = requireString(req, "volume_id");
      checkedMap(req, "secrets");
      if (volumeNameProblem(id) !== null) return {};
      const v = await findVolume(api, id);
      if (v === undefined) return {};
      if (v.attachments.length > 0) throw new CsiError(grpc.status.FAILED_PRECONDITION, `volume ${id} is attached on ${v.attachments.map((a) => a.host).join(", ")}; unstage it there first`);
      try {
        await api.deleteVolume(id);
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) return {};
        throw e;
      }
      return {};
    },
    ValidateVolumeCapabilities: async (req) => {
      const id = requireString(req, "volume_id");
      const { unsupported } = readCapabilities(req);
      const params = checkedMap(req, "parameters");
      const context = checkedMap(req, "volume_context");
      checkedMap(req, "secrets");
      if (volumeNameProblem(id) !== null || (await findVolume(api, id)) === undefined) throw new CsiError(grpc.status.NOT_FOUND, `volume ${JSON.stringify(id.slice(0, 80))} does not exist`);
      let paramProblem: string | null = null;
      try {
        readParameters(params);
      } catch (e) {
        paramProblem = (e as Error).message;
      }
      const message = unsupported ?? paramProblem;
      if (message !== null) return { message };
      return { confirmed: { volume_context: context, volume_capabilities: req["volume_capabilities"], parameters: params } };
    },
    ListVolumes: async (req) => {
      const { items, next } = page(req, (await api.listVolumes()).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)));
      return { entries: items.map((v) => ({ volume: csiVolume(v), status: { published_node_ids: [] } })), next_token: next };
    },
    GetCapacity: async (req) => {
      if (Array.isArray(req["volume_capabilities"]) && req["volume_capabilities"].length > 0 && readCapabilities(req).unsupported !== null) return { available_capacity: 0 };
      checkedMap(req, "parameters");
      const status = await api.status();
      return { available_capacity: status.pool.freeBytes, maximum_volume_size: { value: Math.min(volumeBytesMax, status.pool.freeBytes) } };
    },
    ControllerGetCapabilities: async () => ({
      capabilities: ["CREATE_DELETE_VOLUME", "LIST_VOLUMES", "GET_CAPACITY", "EXPAND_VOLUME", "CREATE_DELETE_SNAPSHOT", "LIST_SNAPSHOTS"].map((type) => ({ rpc: { type } })),
    }),
    ControllerPublishVolume: unimplemented(noPublish),
    ControllerUnpublishVolume: unimplemented(noPublish),
    CreateSnapshot: async (req) => {
      const volume = requireString(req, "source_volume_id");
      const name = requireString(req, "name");
      checkedMap(req, "secrets");
      checkedMap(req, "parameters");
      if (volumeNameProblem(volume) !== null || (await findVolume(api, volume)) === undefined) throw new CsiError(grpc.status.NOT_FOUND, `volume ${JSON.stringify(volume.slice(0, 80))} does not exist`);
      const problem = snapshotNameProblem(name);
      if (problem !== null) throw invalid(problem);
      // Idempotent by name: the same name on the same volume is that snapshot; on another volume it is taken.
      const same = (await api.listSnapshots()).find((x) => x.name === name);
      if (same !== undefined) {
        if (same.volume !== volume) throw new CsiError(grpc.status.ALREADY_EXISTS, `snapshot name ${name} is taken by a snapshot of volume ${same.volume}`);
        return { snapshot: csiSnapshot(same) };
      }
      try {
        return { snapshot: csiSnapshot(await api.createSnapshot(volume, { name })) };
      } catch (e) {
        if (e instanceof ApiError && e.status === 409 && e.code === "limit") throw new CsiError(grpc.status.RESOURCE_EXHAUSTED, e.message);
        throw e;
      }
    },
    DeleteSnapshot: async (req) => {
      const id = requireString(req, "snapshot_id");
      checkedMap(req, "secrets");
      const ref = parseSnapshotId(id);
      if (ref === undefined) return {};
      try {
        await api.deleteSnapshot(ref.volume, ref.snapshot);
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) return {};
        throw e;
      }
      return {};
    },
    ListSnapshots: async (req) => {
      const byId = String(req["snapshot_id"] ?? "");
      const bySource = String(req["source_volume_id"] ?? "");
      checkedMap(req, "secrets");
      let all = (await api.listSnapshots()).sort((a, b) => (snapshotIdOf(a) < snapshotIdOf(b) ? -1 : snapshotIdOf(a) > snapshotIdOf(b) ? 1 : 0));
      if (byId !== "") all = all.filter((x) => snapshotIdOf(x) === byId);
      if (bySource !== "") all = all.filter((x) => x.volume === bySource);
      const { items, next } = page(req, all);
      return { entries: items.map((x) => ({ snapshot: csiSnapshot(x) })), next_token: next };
    },
    ControllerExpandVolume: (req) => expandVolume(api, req),
    ControllerGetVolume: unimplemented("ControllerGetVolume is not offered (no VOLUME_CONDITION capability); use ListVolumes"),
    ControllerModifyVolume: unimplemented("pxd has no mutable volume parameters"),
  };
}

// ---- the server and the command ----

export type CsiMode = "controller" | "node" | "both";

export interface CsiOptions {
  endpoint: string;
  mode: CsiMode;
  nodeId: string;
  zone?: string;
}

/** The socket path of a unix:///PATH endpoint. */
export function endpointPath(endpoint: string): string {
  const m = /^unix:\/\/(\/.+)$/.exec(endpoint);
  if (m === null) throw new InvalidArgumentError(`"${endpoint}" is not unix:///PATH; the driver listens on a Unix socket, e.g. unix:///csi/csi.sock`);
  if (m[1]!.length > socketPathCharsMax) throw new InvalidArgumentError(`the socket path is longer than ${socketPathCharsMax} characters, more than a Unix socket takes`);
  return m[1]!;
}

function bind(handlers: Record<string, Handler>): grpc.UntypedServiceImplementation {
  return Object.fromEntries(Object.entries(handlers).map(([k, h]) => [k, unary(h)]));
}

/** Starts the server; resolves with a function that stops it and removes the socket. */
export async function startCsi(api: ApiClient, o: CsiOptions): Promise<() => Promise<void>> {
  const path = endpointPath(o.endpoint);
  const def = protoLoader.loadSync(protoPath, { keepCase: true, enums: String, longs: Number, defaults: true, oneofs: true });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { csi: { v1: Record<string, { service: grpc.ServiceDefinition }> } };
  const server = new grpc.Server({ "grpc.max_receive_message_length": csiMessageBytesMax, "grpc.max_concurrent_streams": 16 });
  server.addService(pkg.csi.v1["Identity"]!.service, bind(identityService(o.mode)));
  if (o.mode !== "node") server.addService(pkg.csi.v1["Controller"]!.service, bind(controllerService(api)));
  if (o.mode !== "controller") server.addService(pkg.csi.v1["Node"]!.service, bind(nodeService(api, o)));
  await claimSocketPath(path, "--endpoint").catch((e: Error) => {
    throw new CliError(e.message);
  });
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${path}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(new CliError(`cannot listen on ${path}: ${err.message}`)) : resolve())));
  return () =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(() => server.forceShutdown(), 5000);
      server.tryShutdown(() => {
        clearTimeout(timer);
        rmSync(path, { force: true });
        resolve();
      });
    });
}

function endpointArg(text: string): string {
  endpointPath(text);
  return text;
}

function modeArg(text: string): CsiMode {
  if (text === "controller" || text === "node" || text === "both") return text;
  throw new InvalidArgumentError(`"${text}" is not controller, node or both`);
}

function labelArg(text: string): string {
  if (!/^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/.test(text)) throw new InvalidArgumentError(`"${text}" is not a topology label value: 1-63 letters, digits, ".", "_", "-", starting and ending with a letter or digit`);
  return text;
}

export function registerCsi(program: Command): void {
  program
    .command("csi")
    .description("serve the Kubernetes CSI driver (pxd.csi.io) on a Unix socket until SIGTERM; see docs/csi.md")
    .requiredOption("--endpoint <unix:///path>", "the socket to listen on, e.g. unix:///csi/csi.sock", endpointArg)
    .option("--mode <mode>", "controller, node or both", modeArg, "both")
    .option("--node-id <name>", "this node's id and topology.pxd.io/node value (default: the host name, as pxd attach records it)", labelArg)
    .option("--zone <zone>", "this node's topology.pxd.io/zone value", labelArg)
    .action(async (opts: { endpoint: string; mode: CsiMode; nodeId?: string; zone?: string }, command: Command) => {
      const api = clientFor(command);
      const o: CsiOptions = { endpoint: opts.endpoint, mode: opts.mode, nodeId: opts.nodeId ?? hostName(), ...(opts.zone !== undefined ? { zone: opts.zone } : {}) };
      const stop = await startCsi(api, o);
      console.error(`pxd csi: ${csiDriverName} ${o.mode} serving on ${o.endpoint} (node ${o.nodeId}, control API ${api.address.display})`);
      await new Promise<void>((resolve) => {
        const quit = (): void => {
          process.off("SIGTERM", quit);
          process.off("SIGINT", quit);
          void stop().then(resolve);
        };
        process.on("SIGTERM", quit);
        process.on("SIGINT", quit);
      });
    });
}
