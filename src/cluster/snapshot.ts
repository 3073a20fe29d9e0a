// Snapshots of the catalog: what the meta group's log is compacted behind,
// saved on every node and sent to a member too far behind as the data of a
// Raft snapshot (docs/formats/catalog-snapshot.md).
//
//   u8 version | u32 BE CRC32C of the body | body (msgpack)
//
// The body lists nodes by id, volumes by id, settings by key and the latest
// refusals by index, each object
// with a fixed key order, so equal states encode to equal bytes: the
// determinism tests compare snapshots of two replicas byte for byte. Decoding
// trusts nothing: every field is checked with the same bounds as the commands
// that made it, then the cross-record invariants (checkCatalogInvariants).

import { Packr } from "msgpackr";
import { crc32c } from "../base/crc32c.js";
import { assert } from "../base/assert.js";
import { catalogNodesMax, catalogRefusalCharsMax, catalogRefusalsMax, catalogRevokedTokensMax, catalogSnapshotBytesMax, catalogSnapshotsMax, catalogVolumesMax, snapshotIdMax, volumeAttachmentsMax, volumeReplicasMax, volumeSnapshotsMax } from "../constants.js";
import { catalogSettings, commandKinds, describe, validateCommand, type SettingValue } from "./commands.js";
import { noQos, refusalCodes, type CatalogAttachment, type CatalogNode, type CatalogRefusal, type CatalogSnapshot, type CatalogState, type CatalogVolume } from "./catalog.js";

/** The first byte of every catalog snapshot; a decoder refuses any other. */
export const catalogSnapshotVersion = 1;
const headerBytes = 5;

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

export class CatalogSnapshotError extends Error {
  override name = "CatalogSnapshotError";
}

export function encodeCatalogSnapshot(state: CatalogState): Uint8Array {
  const body = packr.pack({
    appliedIndex: state.appliedIndex,
    nextVolumeId: state.nextVolumeId,
    nodes: [...state.nodes.values()].sort((a, b) => a.id - b.id).map(nodeRecord),
    volumes: [...state.volumes.values()].sort((a, b) => a.id - b.id).map(volumeRecord),
    settings: [...state.settings.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)),
    refusals: state.refusals.map(refusalRecord),
    revokedTokens: [...state.revokedTokens.entries()],
  });
  const out = new Uint8Array(headerBytes + body.length);
  out[0] = catalogSnapshotVersion;
  new DataView(out.buffer, out.byteOffset, out.byteLength).setUint32(1, crc32c(body) >>> 0);
  out.set(body, headerBytes);
  // The limits make the largest catalog fit (checkClusterConstants): a bigger one is a bug, never a state to ship.
  assert(out.length <= catalogSnapshotBytesMax, () => `a catalog snapshot of ${out.length} bytes is over the ${catalogSnapshotBytesMax}-byte bound`);
  return out;
}

/** The state a snapshot holds; throws CatalogSnapshotError, saying what is wrong, for anything else. */
export function decodeCatalogSnapshot(bytes: Uint8Array): CatalogState {
  if (bytes.length < headerBytes) throw new CatalogSnapshotError(`catalog snapshot of ${bytes.length} bytes is shorter than its ${headerBytes}-byte header`);
  if (bytes.length > catalogSnapshotBytesMax) throw new CatalogSnapshotError(`catalog snapshot of ${bytes.length} bytes is over the ${catalogSnapshotBytesMax}-byte limit`);
  if (bytes[0] !== catalogSnapshotVersion) throw new CatalogSnapshotError(`catalog snapshot version ${bytes[0]} is not ${catalogSnapshotVersion}`);
  const body = bytes.subarray(headerBytes);
  const crc = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(1);
  if ((crc32c(body) >>> 0) !== crc) throw new CatalogSnapshotError("catalog snapshot checksum mismatch: the snapshot is damaged");
  let raw: unknown;
  try {
    raw = packr.unpack(body);
  } catch (e) {
    throw new CatalogSnapshotError(`catalog snapshot body is not valid msgpack (${e instanceof Error ? e.message.slice(0, 80) : "undecodable"})`);
  }
  const state = stateOf(raw);
  const problem = checkCatalogInvariants(state);
  if (problem !== null) throw new CatalogSnapshotError(`catalog snapshot is inconsistent: ${problem}`);
  return state;
}

/** What must hold between the records of any catalog; null when it does. */
export function checkCatalogInvariants(state: CatalogState): string | null {
  if (state.nodes.size > catalogNodesMax) return `${state.nodes.size} nodes, over the limit ${catalogNodesMax}`;
  if (state.volumes.size > catalogVolumesMax) return `${state.volumes.size} volumes, over the limit ${catalogVolumesMax}`;
  const names = new Set<string>();
  const endpoints = new Set<string>();
  for (const [id, n] of state.nodes) {
    if (id !== n.id) return `node ${n.id} is filed under ${id}`;
    if (names.has(n.name)) return `node name ${JSON.stringify(n.name)} is used twice`;
    names.add(n.name);
    const endpoint = `${n.address}:${n.peerPort}`;
    if (endpoints.has(endpoint)) return `two nodes listen at ${endpoint}`;
    endpoints.add(endpoint);
  }
  const ids = new Set<number>();
  for (const [name, v] of state.volumes) {
    if (name !== v.name) return `volume ${JSON.stringify(v.name)} is filed under ${JSON.stringify(name)}`;
    if (ids.has(v.id)) return `volume id ${v.id} is used twice`;
    ids.add(v.id);
    if (v.id >= state.nextVolumeId) return `volume ${JSON.stringify(v.name)} has id ${v.id}, not below the next id ${state.nextVolumeId}`;
    if (v.nodes.length > volumeReplicasMax) return `volume ${JSON.stringify(v.name)} has ${v.nodes.length} replicas`;
    if (new Set(v.nodes).size !== v.nodes.length) return `volume ${JSON.stringify(v.name)} names a node twice`;
    const unknown = v.nodes.find((id) => !state.nodes.has(id));
    if (unknown !== undefined) return `volume ${JSON.stringify(v.name)} has a replica on node ${unknown}, which is not in the catalog`;
  }
  for (const [key, value] of state.settings) {
    const check = validateCommand({ kind: "setSetting", key, value });
    if (!check.ok) return check.error;
  }
  if (state.refusals.length > catalogRefusalsMax) return `${state.refusals.length} refusals remembered, over the limit ${catalogRefusalsMax}`;
  let last = 0;
  for (const r of state.refusals) {
    if (r.index <= last || r.index > state.appliedIndex) return `refusal of entry ${r.index} is out of order or after the applied index ${state.appliedIndex}`;
    last = r.index;
  }
  return null;
}

function refusalRecord(r: CatalogRefusal): CatalogRefusal {
  return { index: r.index, kind: r.kind, code: r.code, error: r.error };
}

function nodeRecord(n: CatalogNode): CatalogNode {
  const labels: Record<string, string> = {};
  for (const k of Object.keys(n.labels).sort()) labels[k] = n.labels[k] ?? "";
  return {
    id: n.id,
    name: n.name,
    address: n.address,
    nbdPort: n.nbdPort,
    apiPort: n.apiPort,
    peerPort: n.peerPort,
    capacityBytes: n.capacityBytes,
    freeBytes: n.freeBytes,
    usedBytes: n.usedBytes,
    labels,
    health: n.health,
    draining: n.draining,
    addedAt: n.addedAt,
    updatedAt: n.updatedAt,
  };
}

function volumeRecord(v: CatalogVolume): CatalogVolume {
  return {
    id: v.id,
    name: v.name,
    sizeBytes: v.sizeBytes,
    repl: v.repl,
    nodes: [...v.nodes],
    zones: v.zones,
    shared: v.shared,
    attachments: v.attachments.map((a) => ({ host: a.host, device: a.device, via: a.via, readOnly: a.readOnly, node: a.node, at: a.at })),
    owner: v.owner,
    qos: { maxIops: v.qos.maxIops, maxBandwidthBytes: v.qos.maxBandwidthBytes, burstSec: v.qos.burstSec },
    createdAt: v.createdAt,
    snapshots: v.snapshots.map((x) => ({ id: x.id, name: x.name, sizeBytes: x.sizeBytes, createdAt: x.createdAt })),
    nextSnapshotId: v.nextSnapshotId,
    snapshotEveryMs: v.snapshotEveryMs,
    snapshotKeep: v.snapshotKeep,
    encryption: v.encryption === null ? null : { cipher: v.encryption.cipher, wrappedKey: v.encryption.wrappedKey },
    source: v.source === null ? null : { volumeId: v.source.volumeId, snapshotId: v.source.snapshotId, seeds: [...v.source.seeds] },
  };
}

type Obj = Record<string, unknown>;

function obj(v: unknown, what: string): Obj {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new CatalogSnapshotError(`${what} must be an object, not ${describe(v)}`);
  return v as Obj;
}

function list(v: unknown, what: string, max: number): unknown[] {
  if (!Array.isArray(v) || v.length > max) throw new CatalogSnapshotError(`${what} must be a list of at most ${max}, not ${describe(v)}`);
  return v;
}

function exactKeys(o: Obj, keys: readonly string[], what: string): void {
  const got = Object.keys(o);
  if (got.length !== keys.length || !keys.every((k) => Object.prototype.hasOwnProperty.call(o, k))) {
    throw new CatalogSnapshotError(`${what} has fields ${got.slice(0, 20).join(", ")}; expected ${keys.join(", ")}`);
  }
}

function count(v: unknown, min: number, what: string): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) throw new CatalogSnapshotError(`${what} must be an integer >= ${min}, not ${describe(v)}`);
  return v;
}

/** Checks a node's fields with the bounds of the commands that set them. */
function nodeOf(raw: unknown, i: number): CatalogNode {
  const what = `node record ${i}`;
  const o = obj(raw, what);
  exactKeys(o, Object.keys(nodeRecord(exampleNode)), what);
  const add = validateCommand({ kind: "addNode", id: o["id"], name: o["name"], address: o["address"], nbdPort: o["nbdPort"], apiPort: o["apiPort"], peerPort: o["peerPort"], capacityBytes: o["capacityBytes"], labels: o["labels"], at: o["addedAt"] });
  if (!add.ok || add.command.kind !== "addNode") throw new CatalogSnapshotError(`${what}: ${add.ok ? "not a node" : add.error}`);
  const upd = validateCommand({ kind: "updateNode", id: o["id"], at: o["updatedAt"], freeBytes: o["freeBytes"], usedBytes: o["usedBytes"], health: o["health"] });
  if (!upd.ok || upd.command.kind !== "updateNode") throw new CatalogSnapshotError(`${what}: ${upd.ok ? "not a node" : upd.error}`);
  if (typeof o["draining"] !== "boolean") throw new CatalogSnapshotError(`${what}: draining must be true or false, not ${describe(o["draining"])}`);
  const a = add.command;
  const u = upd.command;
  if (u.freeBytes === undefined || u.usedBytes === undefined || u.health === undefined) {
    throw new CatalogSnapshotError(`${what}: freeBytes, usedBytes and health must be present`);
  }
  return nodeRecord({
    ...a,
    freeBytes: u.freeBytes,
    usedBytes: u.usedBytes,
    health: u.health,
    draining: o["draining"],
    addedAt: a.at,
    updatedAt: u.at,
  });
}

function volumeOf(raw: unknown, i: number): CatalogVolume {
  const what = `volume record ${i}`;
  const o = obj(raw, what);
  // A snapshot written before attachments existed has neither field: no volume was shared or attached then.
  const older = !Object.prototype.hasOwnProperty.call(o, "shared") && !Object.prototype.hasOwnProperty.call(o, "attachments");
  if (older) Object.assign(o, { shared: false, attachments: [] });
  // Nor one written before volume owners: such a volume has none, and only admins reach it.
  if (!Object.prototype.hasOwnProperty.call(o, "owner")) o["owner"] = "";
  // Nor one written before volume snapshots: it had none.
  if (!Object.prototype.hasOwnProperty.call(o, "snapshots") && !Object.prototype.hasOwnProperty.call(o, "nextSnapshotId")) Object.assign(o, { snapshots: [], nextSnapshotId: 1, snapshotEveryMs: 0, snapshotKeep: 0 });
  // Nor one written before QoS limits: such a volume has none.
  if (!Object.prototype.hasOwnProperty.call(o, "qos")) o["qos"] = { ...noQos };
  // Nor one written before encryption at rest: such a volume is plain.
  if (!Object.prototype.hasOwnProperty.call(o, "encryption")) o["encryption"] = null;
  // Nor one written before clones shared their snapshot's extents: every volume was made empty.
  if (!Object.prototype.hasOwnProperty.call(o, "source")) o["source"] = null;
  exactKeys(o, Object.keys(volumeRecord(exampleVolume)), what);
  const owner = o["owner"] === "" ? {} : { owner: o["owner"] };
  const qos = obj(o["qos"], `${what}: qos`);
  exactKeys(qos, Object.keys(noQos), `${what}: qos`);
  const c = validateCommand({ kind: "createVolume", name: o["name"], sizeBytes: o["sizeBytes"], repl: o["repl"], ...owner, maxIops: qos["maxIops"], maxBandwidthBytes: qos["maxBandwidthBytes"], burstSec: qos["burstSec"], ...(o["encryption"] === null ? {} : { encryption: o["encryption"] }), ...(o["source"] === null ? {} : { source: o["source"] }), at: o["createdAt"] });
  if (!c.ok || c.command.kind !== "createVolume") throw new CatalogSnapshotError(`${what}: ${c.ok ? "not a volume" : c.error}`);
  const id = count(o["id"], 1, `${what}: id`);
  const nodes = list(o["nodes"], `${what}: nodes`, volumeReplicasMax).map((n, j) => count(n, 1, `${what}: nodes[${j}]`));
  if (typeof o["zones"] !== "boolean") throw new CatalogSnapshotError(`${what}: zones must be true or false, not ${describe(o["zones"])}`);
  if (typeof o["shared"] !== "boolean") throw new CatalogSnapshotError(`${what}: shared must be true or false, not ${describe(o["shared"])}`);
  const volumeName = c.command.name;
  const attachments = list(o["attachments"], `${what}: attachments`, volumeAttachmentsMax).map((raw, j) => attachmentOf(raw, volumeName, `${what}: attachments[${j}]`));
  const snapshots = list(o["snapshots"], `${what}: snapshots`, volumeSnapshotsMax).map((raw, j) => snapshotOf(raw, volumeName, `${what}: snapshots[${j}]`));
  const nextSnapshotId = count(o["nextSnapshotId"], 1, `${what}: nextSnapshotId`);
  for (const [j, x] of snapshots.entries()) {
    if (j > 0 && x.id <= snapshots[j - 1]!.id) throw new CatalogSnapshotError(`${what}: snapshots are not in increasing id order at ${x.id}`);
    if (x.id >= nextSnapshotId) throw new CatalogSnapshotError(`${what}: snapshot id ${x.id} is not below nextSnapshotId ${nextSnapshotId}`);
    if (snapshots.findIndex((y) => y.name === x.name) !== j) throw new CatalogSnapshotError(`${what}: snapshot name ${JSON.stringify(x.name)} appears twice`);
  }
  if (nextSnapshotId > snapshotIdMax + 1) throw new CatalogSnapshotError(`${what}: nextSnapshotId ${nextSnapshotId} is over ${snapshotIdMax + 1}`);
  const schedule = validateCommand({ kind: "setSnapshotSchedule", name: volumeName, everyMs: o["snapshotEveryMs"], keep: o["snapshotKeep"] });
  if (!schedule.ok || schedule.command.kind !== "setSnapshotSchedule") throw new CatalogSnapshotError(`${what}: ${schedule.ok ? "not a schedule" : schedule.error}`);
  return { id, name: c.command.name, sizeBytes: c.command.sizeBytes, repl: c.command.repl, nodes, zones: o["zones"], shared: o["shared"], attachments, owner: c.command.owner ?? "", qos: { maxIops: c.command.maxIops ?? 0, maxBandwidthBytes: c.command.maxBandwidthBytes ?? 0, burstSec: c.command.burstSec ?? noQos.burstSec }, createdAt: c.command.at, snapshots, nextSnapshotId, snapshotEveryMs: schedule.command.everyMs, snapshotKeep: schedule.command.keep, encryption: c.command.encryption ?? null, source: c.command.source ?? null };
}

/** Checks a snapshot record with the bounds of the addSnapshot command that made it. */
function snapshotOf(raw: unknown, volume: string, what: string): CatalogSnapshot {
  const o = obj(raw, what);
  exactKeys(o, ["id", "name", "sizeBytes", "createdAt"], what);
  const c = validateCommand({ kind: "addSnapshot", name: volume, snapshot: o["name"], id: o["id"], sizeBytes: o["sizeBytes"], at: o["createdAt"] });
  if (!c.ok || c.command.kind !== "addSnapshot") throw new CatalogSnapshotError(`${what}: ${c.ok ? "not a snapshot" : c.error}`);
  return { id: c.command.id, name: c.command.snapshot, sizeBytes: c.command.sizeBytes, createdAt: c.command.at };
}

/** Checks an attachment's fields with the bounds of the attachVolume command that made it. */
function attachmentOf(raw: unknown, volume: string, what: string): CatalogAttachment {
  const o = obj(raw, what);
  exactKeys(o, ["host", "device", "via", "readOnly", "node", "at"], what);
  const c = validateCommand({
    kind: "attachVolume",
    name: volume,
    host: o["host"],
    ...(o["device"] === "" ? {} : { device: o["device"] }),
    via: o["via"],
    readOnly: o["readOnly"],
    ...(o["node"] === "" ? {} : { node: o["node"] }),
    at: o["at"],
  });
  if (!c.ok || c.command.kind !== "attachVolume") throw new CatalogSnapshotError(`${what}: ${c.ok ? "not an attachment" : c.error}`);
  const a = c.command;
  return { host: a.host, device: a.device ?? "", via: a.via, readOnly: a.readOnly, node: a.node ?? "", at: a.at };
}

function refusalOf(raw: unknown, i: number): CatalogRefusal {
  const what = `refusal record ${i}`;
  const o = obj(raw, what);
  exactKeys(o, Object.keys(refusalRecord(exampleRefusal)), what);
  const kind = ["unknown", ...commandKinds].find((k) => k === o["kind"]);
  const code = refusalCodes.find((c) => c === o["code"]);
  const error = o["error"];
  if (kind === undefined || code === undefined) throw new CatalogSnapshotError(`${what}: unknown kind ${describe(o["kind"])} or code ${describe(o["code"])}`);
  if (typeof error !== "string" || error.length > catalogRefusalCharsMax) throw new CatalogSnapshotError(`${what}: error must be a string of at most ${catalogRefusalCharsMax} characters`);
  return { index: count(o["index"], 1, `${what}: index`), kind: kind as CatalogRefusal["kind"], code, error };
}

function stateOf(raw: unknown): CatalogState {
  const o = obj(raw, "catalog snapshot body");
  // A snapshot written before token revocations has no revokedTokens: none were revoked then.
  if (!Object.prototype.hasOwnProperty.call(o, "revokedTokens")) o["revokedTokens"] = [];
  exactKeys(o, ["appliedIndex", "nextVolumeId", "nodes", "volumes", "settings", "refusals", "revokedTokens"], "catalog snapshot body");
  const state: CatalogState = {
    appliedIndex: count(o["appliedIndex"], 0, "appliedIndex"),
    nextVolumeId: count(o["nextVolumeId"], 1, "nextVolumeId"),
    nodes: new Map(),
    volumes: new Map(),
    settings: new Map(),
    refusals: list(o["refusals"], "refusals", catalogRefusalsMax).map(refusalOf),
    revokedTokens: new Map(),
  };
  let lastToken = "";
  for (const [i, raw] of list(o["revokedTokens"], "revokedTokens", catalogRevokedTokensMax).entries()) {
    const pair = list(raw, `revokedTokens[${i}]`, 2);
    const r = validateCommand({ kind: "revokeToken", id: pair[0], expiresAt: pair[1], at: 0 });
    if (pair.length !== 2 || !r.ok || r.command.kind !== "revokeToken" || r.command.id <= lastToken) {
      throw new CatalogSnapshotError(`revokedTokens[${i}] must be an [id, expiresAt] pair in id order${r.ok ? "" : ` (${r.error})`}`);
    }
    lastToken = r.command.id;
    state.revokedTokens.set(r.command.id, r.command.expiresAt);
  }
  let lastId = 0;
  for (const [i, raw] of list(o["nodes"], "nodes", catalogNodesMax).entries()) {
    const n = nodeOf(raw, i);
    if (n.id <= lastId) throw new CatalogSnapshotError(`node records are not in increasing id order at ${n.id}`);
    lastId = n.id;
    state.nodes.set(n.id, n);
  }
  lastId = 0;
  let snapshotsSeen = 0;
  for (const [i, raw] of list(o["volumes"], "volumes", catalogVolumesMax).entries()) {
    const v = volumeOf(raw, i);
    if (v.id <= lastId) throw new CatalogSnapshotError(`volume records are not in increasing id order at ${v.id}`);
    if (state.volumes.has(v.name)) throw new CatalogSnapshotError(`volume name ${JSON.stringify(v.name)} appears twice`);
    lastId = v.id;
    state.volumes.set(v.name, v);
    snapshotsSeen += v.snapshots.length;
    if (snapshotsSeen > catalogSnapshotsMax) throw new CatalogSnapshotError(`the volumes hold more than ${catalogSnapshotsMax} snapshots`);
  }
  let lastKey = "";
  for (const [i, raw] of list(o["settings"], "settings", Object.keys(catalogSettings).length).entries()) {
    const pair = list(raw, `settings[${i}]`, 2);
    const [key, value] = pair;
    if (pair.length !== 2 || typeof key !== "string" || key <= lastKey || value === null || value === undefined) throw new CatalogSnapshotError(`settings[${i}] must be a [key, value] pair in key order`);
    lastKey = key;
    state.settings.set(key, value as SettingValue);
  }
  return state;
}

const exampleNode: CatalogNode = {
  id: 1, name: "", address: "", nbdPort: 0, apiPort: 0, peerPort: 0, capacityBytes: 0, freeBytes: 0, usedBytes: 0,
  labels: {}, health: "up", draining: false, addedAt: 0, updatedAt: 0,
};
const exampleVolume: CatalogVolume = { id: 1, name: "", sizeBytes: 0, repl: 1, nodes: [], zones: false, shared: false, attachments: [], owner: "", qos: { ...noQos }, createdAt: 0, snapshots: [], nextSnapshotId: 1, snapshotEveryMs: 0, snapshotKeep: 0, encryption: null, source: null };
const exampleRefusal: CatalogRefusal = { index: 1, kind: "unknown", code: "invalid", error: "" };
