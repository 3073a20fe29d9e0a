// The cluster catalog: the state machine of the meta Raft group. Every node
// applies the same committed commands in the same order and must reach the
// same state, so applyCommand is pure: no I/O, no clock, no randomness; time
// and ids arrive inside the commands. A command that is invalid or refused
// leaves the catalog unchanged and yields an error result; only the applied
// index moves (docs/formats/catalog-commands.md).
//
// applyCommand validates first and mutates last: each handler checks
// everything it needs, then makes all its changes, so no refusal can leave a
// half-applied command behind. A refusal is itself part of the state: the
// latest are remembered (`refusals`), the same on every node.

import { catalogAttachmentsMax, catalogNodesMax, catalogRefusalCharsMax, catalogRefusalsMax, catalogRevokedTokensMax, catalogSnapshotsMax, catalogVolumesMax, qosBurstSecDefault, sectorBytes, volumeAttachmentsMax, volumeBytesMax, volumeSnapshotsMax } from "../constants.js";
import {
  catalogSettings,
  commandKindOf,
  decodeEntry,
  validateCommand,
  type AddNode,
  type AddSnapshot,
  type AttachVia,
  type AttachVolume,
  type CatalogCommand,
  type CloneSource,
  type CommandKind,
  type CreateVolume,
  type DeleteVolume,
  type DetachVolume,
  type DrainNode,
  type NodeHealth,
  type NodeLabels,
  type RemoveNode,
  type RemoveSnapshot,
  type ResizeVolume,
  type RevokeToken,
  type SetReplicas,
  type SetSetting,
  type SetSnapshotSchedule,
  type SettingValue,
  type SetVolumeQos,
  type UpdateNode,
  type VolumeEncryption,
  type VolumeQos,
} from "./commands.js";
import { formatSize } from "../base/sizes.js";
import { listNames, place, roomBytes, type PlacementNode } from "./placement.js";
import { encryptedSizeProblem, volumeSizeSectorProblem } from "./rules.js";

export interface CatalogNode {
  id: number;
  name: string;
  address: string;
  nbdPort: number;
  apiPort: number;
  peerPort: number;
  capacityBytes: number;
  /** As the node last reported it (updateNode); capacityBytes until then. */
  freeBytes: number;
  usedBytes: number;
  labels: NodeLabels;
  health: NodeHealth;
  draining: boolean;
  addedAt: number;
  updatedAt: number;
}

export interface CatalogVolume {
  /** Also the volume's Raft group id; never reused. */
  id: number;
  name: string;
  sizeBytes: number;
  /** Desired replica count. */
  repl: number;
  /** Nodes holding its replicas (the members of its Raft group), in placement order. */
  nodes: number[];
  /** Replicas must sit in distinct zones. */
  zones: boolean;
  /** Several hosts may attach it read-write at once. */
  shared: boolean;
  /** Hosts that have it attached as a block device, in host order. */
  attachments: CatalogAttachment[];
  /** Who created it (an API token's name); "" for a volume from before owners, which only admins reach. */
  owner: string;
  /** Its QoS limits on each node its requests enter (zeroes: none). */
  qos: VolumeQos;
  createdAt: number;
  /** Its snapshots, in id order (pxd snapshot create). */
  snapshots: CatalogSnapshot[];
  /** The id the next snapshot takes at least: ids are never reused. */
  nextSnapshotId: number;
  /** A snapshot every this many ms, on the catalog's leader (0: no schedule); the newest `snapshotKeep` scheduled ones are kept. */
  snapshotEveryMs: number;
  snapshotKeep: number;
  /** Its cipher and wrapped data key; null for a plain volume (docs/architecture.md, "Encryption at rest"). */
  encryption: VolumeEncryption | null;
  /** The snapshot it was cloned from and the nodes that started it from there; null for a volume made empty. */
  source: CloneSource | null;
}

/** A snapshot of a volume (its group took it: an entry of the volume's own Raft log). */
export interface CatalogSnapshot {
  id: number;
  name: string;
  /** The volume's size when it was taken. */
  sizeBytes: number;
  createdAt: number;
}

/** What a volume created without limits has. */
export const noQos: Readonly<VolumeQos> = Object.freeze({ maxIops: 0, maxBandwidthBytes: 0, burstSec: qosBurstSecDefault });

/** One host's attachment of a volume (pxd volume attach). */
export interface CatalogAttachment {
  host: string;
  /** The block device on the host; "" while the attach is under way. */
  device: string;
  via: AttachVia;
  readOnly: boolean;
  /** The node serving the host's connection; "" when not known. */
  node: string;
  /** When the host attached (its wall clock, ms since the epoch): shown to people, never compared across nodes. */
  at: number;
}

export interface CatalogState {
  /** Raft index of the last command applied (refused ones included). */
  appliedIndex: number;
  /** The id the next volume gets; only grows. */
  nextVolumeId: number;
  nodes: Map<number, CatalogNode>;
  volumes: Map<string, CatalogVolume>;
  /** Settings that differ from their defaults (catalogSettings). */
  settings: Map<string, SettingValue>;
  /** The latest refused entries, oldest first, at most catalogRefusalsMax. */
  refusals: CatalogRefusal[];
  /** Revoked API tokens: id -> when the token expires (ms since the epoch), in id order, at most catalogRevokedTokensMax. */
  revokedTokens: Map<string, number>;
}

/** A committed entry the catalog refused: what pxd status shows, the same on every node. */
export interface CatalogRefusal {
  /** Raft index of the entry in the meta group's log. */
  index: number;
  /** The command kind it claimed, or "unknown" (not an object, an unknown kind, undecodable bytes). */
  kind: CommandKind | "unknown";
  code: RefusalCode;
  /** The sentence, at most catalogRefusalCharsMax characters. */
  error: string;
}

export function newCatalogState(): CatalogState {
  return { appliedIndex: 0, nextVolumeId: 1, nodes: new Map(), volumes: new Map(), settings: new Map(), refusals: [], revokedTokens: new Map() };
}

export type CatalogErrorCode =
  /** The command is malformed (bad field, unknown kind or setting). */
  | "invalid"
  /** The node or volume it names does not exist. */
  | "not_found"
  /** The node or volume it would create exists. */
  | "exists"
  /** The catalog's state forbids it now (replicas on a node, shrinking, a stale expect). */
  | "conflict"
  /** No replica set satisfies the request. */
  | "placement"
  /** A catalog limit (nodes, volumes) is reached. */
  | "limit"
  /** The index is not after the applied index: a replay, ignored. */
  | "stale";

/** The codes of an entry that applied as a refusal (a stale one did not apply at all). */
export const refusalCodes = ["invalid", "not_found", "exists", "conflict", "placement", "limit"] as const;
export type RefusalCode = (typeof refusalCodes)[number];

export type ApplyResult =
  /** `kind`: the command that applied (what changed may depend on it: a replica set's new node joins, not bootstraps). */
  | { ok: true; index: number; kind: CatalogCommand["kind"]; changed: boolean; node?: CatalogNode; volume?: CatalogVolume }
  | { ok: false; index: number; code: CatalogErrorCode; error: string };

export type Refused = { ok: false; code: RefusalCode; error: string };
type Outcome = { ok: true; changed: boolean; node?: CatalogNode; volume?: CatalogVolume } | Refused;

/**
 * Applies one committed command at Raft index `index`. Deterministic, never
 * throws for any command; `command` may be anything (it is validated).
 */
export function applyCommand(state: CatalogState, command: unknown, index: number): ApplyResult {
  if (!Number.isSafeInteger(index) || index <= state.appliedIndex) {
    return { ok: false, index, code: "stale", error: `entry ${index} is not after the applied index ${state.appliedIndex}; ignored` };
  }
  state.appliedIndex = index;
  const v = validateCommand(command);
  if (!v.ok) return refuse(state, index, commandKindOf(command), unalignedCreate(state, command) ?? fail("invalid", v.error));
  const outcome = dispatch(state, v.command);
  return outcome.ok ? { ...outcome, index, kind: v.command.kind } : refuse(state, index, v.command.kind, outcome);
}

/**
 * An entry of the meta group's log that is not a catalog command (a new
 * leader's empty entry, a configuration change of the group): it moves only
 * the applied index, so a snapshot taken after it says it is applied.
 */
export function skipEntry(state: CatalogState, index: number): void {
  if (Number.isSafeInteger(index) && index > state.appliedIndex) state.appliedIndex = index;
}

/** Decodes a log entry's data and applies it; a malformed entry is refused like an invalid command. */
export function applyEntry(state: CatalogState, data: Uint8Array, index: number): ApplyResult {
  if (!Number.isSafeInteger(index) || index <= state.appliedIndex) return applyCommand(state, undefined, index);
  const d = decodeEntry(data);
  if (!d.ok) {
    state.appliedIndex = index;
    return refuse(state, index, undefined, fail("invalid", d.error));
  }
  return applyCommand(state, d.value, index);
}

/** Remembers a refusal (the latest catalogRefusalsMax) and returns it as the entry's result. */
function refuse(state: CatalogState, index: number, kind: CommandKind | undefined, r: Refused): ApplyResult {
  state.refusals.push({ index, kind: kind ?? "unknown", code: r.code, error: r.error.slice(0, catalogRefusalCharsMax) });
  if (state.refusals.length > catalogRefusalsMax) state.refusals.shift();
  return { ok: false, index, code: r.code, error: r.error };
}

/**
 * A createVolume whose only fault is a size that is not whole sectors. Older
 * pxd committed such commands (and then crashed on every node holding a
 * replica); replayed from an existing log it is refused, but it still takes
 * the volume id it took then, when it would have been placed, so every later
 * volume keeps the id that names its Raft group and its data on disk.
 */
function unalignedCreate(state: CatalogState, command: unknown): Refused | undefined {
  if (commandKindOf(command) !== "createVolume") return undefined;
  const size = (command as { sizeBytes?: unknown }).sizeBytes;
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 1 || size > volumeBytesMax || size % sectorBytes === 0) return undefined;
  const aligned = validateCommand({ ...(command as object), sizeBytes: size - (size % sectorBytes) + sectorBytes });
  if (!aligned.ok || aligned.command.kind !== "createVolume") return undefined;
  const placed = placeVolume(state, { ...aligned.command, sizeBytes: size });
  if (!placed.ok) return placed;
  const id = state.nextVolumeId++;
  return fail("invalid", `createVolume: field "sizeBytes" ${volumeSizeSectorProblem(size)}; volume ${JSON.stringify(aligned.command.name)} was not created and id ${id} stays unused`);
}

function dispatch(state: CatalogState, c: CatalogCommand): Outcome {
  switch (c.kind) {
    case "addNode":
      return addNode(state, c);
    case "updateNode":
      return updateNode(state, c);
    case "removeNode":
      return removeNode(state, c);
    case "drainNode":
      return drainNode(state, c);
    case "createVolume":
      return createVolume(state, c);
    case "deleteVolume":
      return deleteVolume(state, c);
    case "attachVolume":
      return attachVolume(state, c);
    case "detachVolume":
      return detachVolume(state, c);
    case "resizeVolume":
      return resizeVolume(state, c);
    case "setReplicas":
      return setReplicas(state, c);
    case "setSetting":
      return setSetting(state, c);
    case "revokeToken":
      return revokeToken(state, c);
    case "addSnapshot":
      return addSnapshot(state, c);
    case "removeSnapshot":
      return removeSnapshot(state, c);
    case "setSnapshotSchedule":
      return setSnapshotSchedule(state, c);
    case "setVolumeQos":
      return setVolumeQos(state, c);
  }
}

const fail = (code: RefusalCode, error: string): Refused => ({ ok: false, code, error });

function nodeNotFound(id: number): Outcome {
  return fail("not_found", `node ${id} is not in the cluster; pxd node list shows the nodes`);
}

function volumeNotFound(name: string): Outcome {
  return fail("not_found", `volume ${JSON.stringify(name)} does not exist; pxd volume list shows the volumes`);
}

function addNode(state: CatalogState, c: AddNode): Outcome {
  const same = state.nodes.get(c.id);
  if (same !== undefined) {
    // A join retried after its reply was lost: the same identity is not an error.
    const retry = same.name === c.name && same.address === c.address && same.nbdPort === c.nbdPort && same.apiPort === c.apiPort && same.peerPort === c.peerPort;
    if (retry) return { ok: true, changed: false, node: copyNode(same) };
    return fail("exists", `node ${c.id} is already in the cluster as ${same.name} at ${same.address}:${same.peerPort}; remove it first or use another id`);
  }
  for (const n of state.nodes.values()) {
    if (n.name === c.name) return fail("exists", `node name ${JSON.stringify(c.name)} is taken by node ${n.id}; pick another name`);
    if (n.address === c.address && n.peerPort === c.peerPort) {
      return fail("exists", `node ${n.id} (${n.name}) already listens at ${c.address}:${c.peerPort}; give the new node its own address or peer port`);
    }
  }
  if (state.nodes.size >= catalogNodesMax) return fail("limit", `the cluster has ${state.nodes.size} nodes, the most it holds; remove a node first`);
  const node: CatalogNode = {
    id: c.id,
    name: c.name,
    address: c.address,
    nbdPort: c.nbdPort,
    apiPort: c.apiPort,
    peerPort: c.peerPort,
    capacityBytes: c.capacityBytes,
    freeBytes: c.capacityBytes,
    usedBytes: 0,
    labels: { ...c.labels },
    health: "up",
    draining: false,
    addedAt: c.at,
    updatedAt: c.at,
  };
  state.nodes = insertSorted(state.nodes, node.id, node);
  return { ok: true, changed: true, node: copyNode(node) };
}

function updateNode(state: CatalogState, c: UpdateNode): Outcome {
  const n = state.nodes.get(c.id);
  if (n === undefined) return nodeNotFound(c.id);
  if (c.freeBytes !== undefined) n.freeBytes = c.freeBytes;
  if (c.usedBytes !== undefined) n.usedBytes = c.usedBytes;
  if (c.capacityBytes !== undefined) n.capacityBytes = c.capacityBytes;
  if (c.health !== undefined) n.health = c.health;
  if (c.labels !== undefined) n.labels = { ...c.labels };
  n.updatedAt = c.at;
  return { ok: true, changed: true, node: copyNode(n) };
}

function removeNode(state: CatalogState, c: RemoveNode): Outcome {
  const n = state.nodes.get(c.id);
  if (n === undefined) return nodeNotFound(c.id);
  const holding = [...state.volumes.values()].filter((v) => v.nodes.includes(c.id));
  if (holding.length > 0 && c.force !== true) {
    const names = listNames(holding.map((v) => v.name));
    const what = holding.length === 1 ? "1 volume" : `${holding.length} volumes`;
    return fail("conflict", `node ${c.id} (${n.name}) still holds replicas of ${what} (${names}); drain it and wait for re-replication, or use --force`);
  }
  for (const v of holding) v.nodes = v.nodes.filter((id) => id !== c.id);
  state.nodes.delete(c.id);
  return { ok: true, changed: true, node: copyNode(n) };
}

function drainNode(state: CatalogState, c: DrainNode): Outcome {
  const n = state.nodes.get(c.id);
  if (n === undefined) return nodeNotFound(c.id);
  const draining = c.draining ?? true;
  const changed = n.draining !== draining;
  n.draining = draining;
  return { ok: true, changed, node: copyNode(n) };
}

/** What placement sees: each node with the bytes already promised to the volumes it holds. */
export function placementNodes(state: CatalogState): PlacementNode[] {
  const promised = promisedBytes(state);
  return [...state.nodes.values()].map((n) => {
    const p: PlacementNode = {
      id: n.id,
      name: n.name,
      up: n.health === "up",
      draining: n.draining,
      capacityBytes: n.capacityBytes,
      promisedBytes: promised.get(n.id) ?? 0,
    };
    if (n.labels["zone"] !== undefined) p.zone = n.labels["zone"];
    if (n.labels["rack"] !== undefined) p.rack = n.labels["rack"];
    return p;
  });
}

/**
 * The replica set for `volume` with `repl` replicas (ha-update): more replicas
 * are placed like a new volume's among the nodes it is not on; fewer drop
 * nodes that are down first, then draining ones, then the fullest. The
 * result goes into a setReplicas command with the current set as `expect`.
 */
export function replicaSetFor(state: CatalogState, volume: string, repl: number, leaving: readonly number[] = []): { nodes: number[] } | { error: string } {
  const v = state.volumes.get(volume);
  if (v === undefined) return { error: `volume ${JSON.stringify(volume)} does not exist; pxd volume list shows the volumes` };
  if (repl === v.nodes.length) return { nodes: [...v.nodes] };
  const all = placementNodes(state);
  if (repl > v.nodes.length) {
    // New replicas go to zones the volume is not in yet: required for a volume created with --zones, preferred otherwise.
    // `leaving`: replicas about to go (a dead node being replaced); their zones count as free.
    const usedZones = new Set(all.filter((n) => v.nodes.includes(n.id) && !leaving.includes(n.id)).map((n) => n.zone ?? ""));
    const others = all.filter((n) => !v.nodes.includes(n.id));
    const request = { volume, sizeBytes: v.sizeBytes, repl: repl - v.nodes.length, overcommitPercent: overcommitPercent(state) };
    const fresh = others.filter((n) => n.zone !== undefined && !usedZones.has(n.zone));
    let placed = place(fresh, { ...request, ...(v.zones ? { zones: true } : {}) });
    if ("error" in placed && !v.zones) placed = place(others, request);
    if ("error" in placed) return { error: `cannot add ${repl - v.nodes.length} replica(s) to volume ${JSON.stringify(volume)}${v.zones ? " in zones it is not in yet" : ""}: ${placed.error}` };
    return { nodes: [...v.nodes, ...placed.nodes] };
  }
  const byId = new Map(all.map((n) => [n.id, n]));
  const dropFirst = [...v.nodes].sort((a, b) => {
    const na = byId.get(a);
    const nb = byId.get(b);
    const rank = (n: PlacementNode | undefined): number => (n === undefined || !n.up ? 0 : n.draining ? 1 : 2);
    if (rank(na) !== rank(nb)) return rank(na) - rank(nb);
    const free = (n: PlacementNode | undefined): number => (n === undefined ? 0 : n.capacityBytes - n.promisedBytes);
    return free(na) - free(nb) || b - a;
  });
  const drop = new Set(dropFirst.slice(0, v.nodes.length - repl));
  return { nodes: v.nodes.filter((id) => !drop.has(id)) };
}

/** Per node id, the sum of the sizes of the volumes with a replica on it. */
export function promisedBytes(state: CatalogState): Map<number, number> {
  const out = new Map<number, number>();
  for (const v of state.volumes.values()) for (const id of v.nodes) out.set(id, (out.get(id) ?? 0) + v.sizeBytes);
  return out;
}

export function settingValue(state: CatalogState, key: keyof typeof catalogSettings & string): SettingValue {
  return state.settings.get(key) ?? catalogSettings[key]?.defaultValue ?? 0;
}

function overcommitPercent(state: CatalogState): number {
  const v = settingValue(state, "overcommitPercent");
  return typeof v === "number" ? v : 100;
}

/** Everything a create checks before it takes an id: the name is free, a limit is not reached, a replica set exists. */
function placeVolume(state: CatalogState, c: CreateVolume): { ok: true; nodes: number[] } | Refused {
  const existing = state.volumes.get(c.name);
  if (existing !== undefined) {
    return fail("exists", `volume ${JSON.stringify(c.name)} already exists (id ${existing.id}, ${formatSize(existing.sizeBytes)}); delete it first or pick another name`);
  }
  if (state.volumes.size >= catalogVolumesMax) return fail("limit", `the cluster has ${state.volumes.size} volumes, the most it holds; delete a volume first`);
  if (!Number.isSafeInteger(state.nextVolumeId + 1)) return fail("limit", "volume ids are exhausted");
  const request = { volume: c.name, sizeBytes: c.sizeBytes, repl: c.repl, overcommitPercent: overcommitPercent(state) };
  const placed = place(placementNodes(state), { ...request, ...(c.nodes ? { nodes: c.nodes } : {}), ...(c.zones ? { zones: true } : {}) });
  return "error" in placed ? fail("placement", placed.error) : { ok: true, nodes: placed.nodes };
}

/**
 * A clone's replica set: the seeds (nodes that hold the source snapshot and
 * start the clone from it) and, up to `repl`, nodes placed as for any volume.
 * The source and its snapshot must still be there, the seeds still among the
 * source's replicas (a replica dropped since may have dropped the snapshot
 * with it), and an encrypted source's clone encrypted (with its key, rewrapped:
 * the extents are shared as they are).
 */
function placeClone(state: CatalogState, c: CreateVolume, s: CloneSource): { ok: true; nodes: number[] } | Refused {
  const src = volumeWithId(state, s.volumeId);
  if (src === undefined) return fail("not_found", `the clone's source volume (id ${s.volumeId}) was deleted`);
  const snap = src.snapshots.find((x) => x.id === s.snapshotId);
  if (snap === undefined) return fail("not_found", `the clone's source snapshot (id ${s.snapshotId} of volume ${src.name}) was deleted`);
  const from = `${src.name}@${snap.name}`;
  if (c.sizeBytes !== snap.sizeBytes) return fail("invalid", `a clone of ${from} is its size, ${formatSize(snap.sizeBytes)} (${snap.sizeBytes} bytes), not ${c.sizeBytes} bytes; grow it after the clone with pxd volume update --size`);
  if ((src.encryption === null) !== (c.encryption === undefined)) return fail("invalid", `a clone of ${from} is ${src.encryption === null ? "plain" : "encrypted"}, as its source`);
  if (c.zones === true) return fail("invalid", `a clone starts on the nodes that hold ${from}; it cannot also ask for distinct zones`);
  const gone = s.seeds.filter((n) => !src.nodes.includes(n));
  if (gone.length > 0) return fail("conflict", `node(s) ${gone.join(", ")} no longer hold replicas of volume ${src.name}; try the clone again`);
  if (s.seeds.length > c.repl) return fail("invalid", `a clone of ${c.repl} replica(s) cannot start on ${s.seeds.length} nodes`);
  let nodes = c.nodes;
  if (nodes === undefined) {
    const others = placementNodes(state).filter((n) => !s.seeds.includes(n.id));
    const more = c.repl - s.seeds.length;
    const request = { volume: c.name, sizeBytes: c.sizeBytes, repl: more, overcommitPercent: overcommitPercent(state) };
    const placed = more === 0 ? { nodes: [] } : place(others, request);
    if ("error" in placed) return fail("placement", placed.error);
    nodes = [...s.seeds, ...placed.nodes];
  } else if (s.seeds.some((n) => !nodes!.includes(n))) {
    return fail("invalid", `the clone's seeds (nodes ${s.seeds.join(", ")}) must be among its nodes (${nodes.join(", ")})`);
  }
  return placeVolume(state, { ...c, nodes });
}

/** The volume whose Raft group is `id` (the catalog keys volumes by name). */
export function volumeWithId(state: CatalogState, id: number): CatalogVolume | undefined {
  for (const v of state.volumes.values()) if (v.id === id) return v;
  return undefined;
}

/** A clone's source as people name it, VOLUME@SNAPSHOT, while both are there; else what is left of it. */
export function cloneSourceName(state: CatalogState, s: CloneSource): string {
  const src = volumeWithId(state, s.volumeId);
  const snap = src?.snapshots.find((x) => x.id === s.snapshotId);
  if (snap !== undefined) return `${src!.name}@${snap.name}`;
  return src === undefined ? `a deleted volume's snapshot (volume id ${s.volumeId}, snapshot id ${s.snapshotId})` : `a deleted snapshot of ${src.name} (id ${s.snapshotId})`;
}

function copySource(s: CloneSource): CloneSource {
  return { ...s, seeds: [...s.seeds] };
}

function createVolume(state: CatalogState, c: CreateVolume): Outcome {
  const placed = c.source === undefined ? placeVolume(state, c) : placeClone(state, c, c.source);
  if (!placed.ok) return placed;
  const volume: CatalogVolume = { id: state.nextVolumeId, name: c.name, sizeBytes: c.sizeBytes, repl: c.repl, nodes: placed.nodes, zones: c.zones === true, shared: c.shared === true, attachments: [], owner: c.owner ?? "", qos: qosOf(noQos, c), createdAt: c.at, snapshots: [], nextSnapshotId: 1, snapshotEveryMs: 0, snapshotKeep: 0, encryption: c.encryption ?? null, source: c.source === undefined ? null : copySource(c.source) };
  state.nextVolumeId++;
  state.volumes.set(volume.name, volume);
  return { ok: true, changed: true, volume: copyVolume(volume) };
}

/** `base` with the fields the command names. */
function qosOf(base: VolumeQos, c: { maxIops?: number; maxBandwidthBytes?: number; burstSec?: number }): VolumeQos {
  return { maxIops: c.maxIops ?? base.maxIops, maxBandwidthBytes: c.maxBandwidthBytes ?? base.maxBandwidthBytes, burstSec: c.burstSec ?? base.burstSec };
}

function setVolumeQos(state: CatalogState, c: SetVolumeQos): Outcome {
  const v = state.volumes.get(c.name);
  if (v === undefined) return volumeNotFound(c.name);
  const qos = qosOf(v.qos, c);
  const changed = qos.maxIops !== v.qos.maxIops || qos.maxBandwidthBytes !== v.qos.maxBandwidthBytes || qos.burstSec !== v.qos.burstSec;
  v.qos = qos;
  return { ok: true, changed, volume: copyVolume(v) };
}

function deleteVolume(state: CatalogState, c: DeleteVolume): Outcome {
  const v = state.volumes.get(c.name);
  if (v === undefined) return volumeNotFound(c.name);
  const attached = attachedProblem(v);
  if (attached !== undefined && c.force !== true) return fail("conflict", attached);
  state.volumes.delete(c.name);
  return { ok: true, changed: true, volume: copyVolume(v) };
}

/** Why the volume may not be deleted without force: the hosts that have it attached; undefined when none does. */
export function attachedProblem(v: CatalogVolume): string | undefined {
  if (v.attachments.length === 0) return undefined;
  const hosts = listNames(v.attachments.map((a) => `${a.host}${a.device === "" ? "" : ` (${a.device})`}`));
  return `volume ${JSON.stringify(v.name)} is attached on ${hosts}; detach it there first (pxd volume detach ${v.name} on that host), or delete it with --force`;
}

function attachVolume(state: CatalogState, c: AttachVolume): Outcome {
  const v = state.volumes.get(c.name);
  if (v === undefined) return volumeNotFound(c.name);
  const name = JSON.stringify(c.name);
  const others = v.attachments.filter((a) => a.host !== c.host);
  if (!v.shared && !c.readOnly) {
    const writer = others.find((a) => !a.readOnly);
    if (writer !== undefined) {
      return fail("conflict", `volume ${name} is attached read-write on host ${writer.host}${writer.device === "" ? "" : ` as ${writer.device}`}; detach it there first, attach --read-only, or create volumes that several hosts write with --shared`);
    }
  }
  const same = v.attachments.find((a) => a.host === c.host);
  if (same === undefined) {
    if (v.attachments.length >= volumeAttachmentsMax) return fail("limit", `volume ${name} is attached on ${v.attachments.length} hosts, the most it may be; detach it somewhere first`);
    if (attachmentCount(state) >= catalogAttachmentsMax) return fail("limit", `the cluster has ${catalogAttachmentsMax} attachments, the most it holds; detach volumes first`);
  }
  const record: CatalogAttachment = { host: c.host, device: c.device ?? "", via: c.via, readOnly: c.readOnly, node: c.node ?? "", at: c.at };
  v.attachments = [...others, record].sort((x, y) => (x.host < y.host ? -1 : x.host > y.host ? 1 : 0));
  return { ok: true, changed: true, volume: copyVolume(v) };
}

function detachVolume(state: CatalogState, c: DetachVolume): Outcome {
  const v = state.volumes.get(c.name);
  if (v === undefined) return volumeNotFound(c.name);
  const kept = v.attachments.filter((a) => a.host !== c.host);
  const changed = kept.length !== v.attachments.length;
  v.attachments = kept;
  return { ok: true, changed, volume: copyVolume(v) };
}

function attachmentCount(state: CatalogState): number {
  let n = 0;
  for (const v of state.volumes.values()) n += v.attachments.length;
  return n;
}

function resizeVolume(state: CatalogState, c: ResizeVolume): Outcome {
  const refused = resizeRefusal(state, c.name, c.sizeBytes);
  if (refused !== undefined) return refused;
  const v = state.volumes.get(c.name)!;
  if (c.sizeBytes === v.sizeBytes) return { ok: true, changed: false, volume: copyVolume(v) };
  v.sizeBytes = c.sizeBytes;
  return { ok: true, changed: true, volume: copyVolume(v) };
}

/**
 * Why the catalog would refuse to grow the volume to `sizeBytes` now, or
 * undefined: the rule resizeVolume applies, for the API to check before it
 * grows the volume's group (docs/architecture.md, "Resize").
 */
export function resizeRefusal(state: CatalogState, volume: string, sizeBytes: number): Refused | undefined {
  const v = state.volumes.get(volume);
  if (v === undefined) return fail("not_found", `volume ${JSON.stringify(volume)} does not exist; pxd volume list shows the volumes`);
  const name = JSON.stringify(volume);
  if (sizeBytes < v.sizeBytes) {
    return fail("conflict", `volume ${name} is ${formatSize(v.sizeBytes)} (${v.sizeBytes} bytes) and shrinking a volume is not supported (asked for ${formatSize(sizeBytes)}); create a new volume and copy the data to shrink`);
  }
  const growth = sizeBytes - v.sizeBytes;
  if (growth === 0) return undefined;
  const unitProblem = v.encryption === null ? null : encryptedSizeProblem(sizeBytes);
  if (unitProblem !== null) return fail("invalid", `cannot grow volume ${name}: the new size ${unitProblem}`);
  const percent = overcommitPercent(state);
  for (const p of placementNodes(state)) {
    if (!v.nodes.includes(p.id)) continue;
    const room = roomBytes(p, percent);
    if (room < growth) {
      return fail("placement", `cannot grow volume ${name} to ${formatSize(sizeBytes)}: its replica on node ${p.id} (${p.name}) has ${formatSize(Math.max(0, room))} unpromised and needs ${formatSize(growth)} more; add capacity, move the replica or raise the setting overcommitPercent`);
    }
  }
  return undefined;
}

function snapshotCount(state: CatalogState): number {
  let n = 0;
  for (const v of state.volumes.values()) n += v.snapshots.length;
  return n;
}

function addSnapshot(state: CatalogState, c: AddSnapshot): Outcome {
  const v = state.volumes.get(c.name);
  if (v === undefined) return volumeNotFound(c.name);
  const same = v.snapshots.find((x) => x.name === c.snapshot);
  if (same !== undefined) {
    if (same.id === c.id) return { ok: true, changed: false, volume: copyVolume(v) };
    return fail("exists", `volume ${v.name} has a snapshot named ${JSON.stringify(c.snapshot)} already; pick another name or delete it first`);
  }
  if (c.id < v.nextSnapshotId) return fail("conflict", `snapshot id ${c.id} of volume ${v.name} was used before (the next is ${v.nextSnapshotId}); retry`);
  if (v.snapshots.length >= volumeSnapshotsMax) return fail("limit", `volume ${v.name} has ${v.snapshots.length} snapshots, the most it may; delete some first (pxd snapshot list ${v.name})`);
  if (snapshotCount(state) >= catalogSnapshotsMax) return fail("limit", `the cluster holds ${catalogSnapshotsMax} snapshots, the most the catalog keeps; delete some first`);
  v.snapshots = [...v.snapshots, { id: c.id, name: c.snapshot, sizeBytes: c.sizeBytes, createdAt: c.at }];
  v.nextSnapshotId = c.id + 1;
  return { ok: true, changed: true, volume: copyVolume(v) };
}

function removeSnapshot(state: CatalogState, c: RemoveSnapshot): Outcome {
  const v = state.volumes.get(c.name);
  if (v === undefined) return volumeNotFound(c.name);
  const kept = v.snapshots.filter((x) => x.name !== c.snapshot);
  const changed = kept.length !== v.snapshots.length;
  v.snapshots = kept;
  return { ok: true, changed, volume: copyVolume(v) };
}

function setSnapshotSchedule(state: CatalogState, c: SetSnapshotSchedule): Outcome {
  const v = state.volumes.get(c.name);
  if (v === undefined) return volumeNotFound(c.name);
  const changed = v.snapshotEveryMs !== c.everyMs || v.snapshotKeep !== c.keep;
  v.snapshotEveryMs = c.everyMs;
  v.snapshotKeep = c.keep;
  return { ok: true, changed, volume: copyVolume(v) };
}

function setReplicas(state: CatalogState, c: SetReplicas): Outcome {
  const v = state.volumes.get(c.name);
  if (v === undefined) return volumeNotFound(c.name);
  const name = JSON.stringify(c.name);
  if (c.expect !== undefined && !sameIds(c.expect, v.nodes)) {
    return fail("conflict", `volume ${name} has replicas on [${v.nodes.join(", ")}], not [${c.expect.join(", ")}] as expected; read the volume again and retry`);
  }
  for (const [i, id] of c.nodes.entries()) {
    if (c.nodes.indexOf(id) !== i) return fail("invalid", `volume ${name}: node ${id} is named twice in the replica set; name each node once`);
    if (!state.nodes.has(id)) return fail("not_found", `volume ${name}: node ${id} is not in the cluster; pxd node list shows the nodes`);
  }
  const changed = !sameIds(c.nodes, v.nodes) || (c.repl !== undefined && c.repl !== v.repl);
  v.nodes = [...c.nodes];
  if (c.repl !== undefined) v.repl = c.repl;
  return { ok: true, changed, volume: copyVolume(v) };
}

function setSetting(state: CatalogState, c: SetSetting): Outcome {
  const before = state.settings.get(c.key);
  if (c.value === null) state.settings.delete(c.key);
  else state.settings = insertSorted(state.settings, c.key, c.value);
  return { ok: true, changed: before !== c.value && !(before === undefined && c.value === null) };
}

/**
 * Remembers a revoked token until it expires. Revocations whose token expired
 * by the command's time are dropped first (time comes from the command, so
 * every node drops the same ones); the list stays within catalogRevokedTokensMax.
 */
function revokeToken(state: CatalogState, c: RevokeToken): Outcome {
  const kept = [...state.revokedTokens].filter(([, expiresAt]) => expiresAt > c.at);
  if (c.expiresAt <= c.at) {
    state.revokedTokens = new Map(kept);
    return { ok: true, changed: false };
  }
  const known = state.revokedTokens.get(c.id);
  if (known === undefined && kept.length >= catalogRevokedTokensMax) {
    return fail("limit", `${kept.length} revoked tokens that have not expired are remembered, the most the catalog holds; wait for some to expire (each is kept only until its token expires; revoke with the token itself, not its id, to keep it no longer than that)`);
  }
  kept.push([c.id, Math.max(known ?? 0, c.expiresAt)]);
  state.revokedTokens = new Map(kept.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0)));
  return { ok: true, changed: known === undefined };
}

function sameIds(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((id, i) => id === b[i]);
}

/** Keeps a map in key order, so iteration (and placement's input) never depends on insertion history. */
function insertSorted<K extends number | string, V>(map: Map<K, V>, key: K, value: V): Map<K, V> {
  if (map.has(key)) {
    map.set(key, value);
    return map;
  }
  const last = [...map.keys()].at(-1);
  if (last === undefined || last < key) {
    map.set(key, value);
    return map;
  }
  const entries = [...map.entries(), [key, value] as [K, V]].sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  return new Map(entries);
}

export function copyNode(n: CatalogNode): CatalogNode {
  return { ...n, labels: { ...n.labels } };
}

export function copyVolume(v: CatalogVolume): CatalogVolume {
  return { ...v, nodes: [...v.nodes], attachments: v.attachments.map((a) => ({ ...a })), qos: { ...v.qos }, snapshots: v.snapshots.map((x) => ({ ...x })), encryption: v.encryption === null ? null : { ...v.encryption }, source: v.source === null ? null : copySource(v.source) };
}
