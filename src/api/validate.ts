// Validation of what crosses the API boundary: volume names and request
// bodies. Pure functions, shared by the server (which answers 400 with the
// message) and the CLI (which checks before it dials).

import { attachDevicePattern, encryptedSizeProblem, tokenIdPattern, volumeSizeSectorProblem } from "../cluster/rules.js";
import { apiTokenIdChars, apiTokenTtlMsMax, catalogNameCharsMax, catalogTimeMsMax, qosBandwidthBytesMax, qosBandwidthBytesMin, qosBurstSecMax, qosIopsMax, snapshotEveryMsMax, snapshotEveryMsMin, volumeBytesMax, volumeReplicasMax, volumeSnapshotsMax } from "../constants.js";
import { ApiError, roles, type AuditQuery, type CreateTokenRequest, type RevokeTokenRequest, type AttachRequest, type CreateVolumeRequest, type DebugProposeRequest, type DrainNodeRequest, type JoinRequest, type ScrubRequest, type SetSettingRequest, type UpdateVolumeRequest, type CreateSnapshotRequest, type RollbackRequest, type SnapshotScheduleRequest } from "./types.js";
import { volumeNameCharsMax } from "./limits.js";

/** A volume name is also an NBD export name and a file name in the data dir. */
export const volumeNamePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** Returns a message saying what is wrong with the name, or null when it is valid. */
export function volumeNameProblem(name: string): string | null {
  if (volumeNamePattern.test(name)) return null;
  const shown = JSON.stringify(name.length > 80 ? name.slice(0, 80) + "…" : name);
  const why = name.length > volumeNameCharsMax ? `is longer than ${volumeNameCharsMax} characters` : "is not a valid volume name";
  return `volume name ${shown} ${why}; names are 1-${volumeNameCharsMax} characters of letters, digits, ".", "_" and "-", starting with a letter or digit (^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$)`;
}

export function checkVolumeName(name: string): void {
  const problem = volumeNameProblem(name);
  if (problem !== null) throw new ApiError(400, "invalid_name", problem);
}

/**
 * Whether a JSON text nests arrays and objects deeper than depthMax, in one
 * pass over its bytes (brackets inside strings do not count; a backslash
 * escapes the next byte). Run before JSON.parse: V8 takes about 0.2 s to
 * parse 1 MiB of nested brackets, on the event loop every NBD client shares.
 * Malformed text is left for JSON.parse to refuse.
 */
export function jsonNestsDeeper(body: Uint8Array, depthMax: number): boolean {
  let depth = 0;
  let inString = false;
  let escaped = false;
  for (const c of body) {
    if (inString) {
      if (escaped) escaped = false;
      else if (c === 0x5c) escaped = true; // a backslash
      else if (c === 0x22) inString = false; // a quote
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > depthMax) return true; // [ or {
    } else if (c === 0x5d || c === 0x7d) depth--; // ] or }
  }
  return false;
}

const qosFields = ["maxIops", "maxBandwidthBytesPerSec", "burstSec"] as const;
const createFields = ["name", "sizeBytes", "repl", "nodes", "zones", "shared", "owner", "encrypted", "clone", ...qosFields];

/** Checks a parsed JSON body field by field; throws ApiError(400) naming the first wrong field. */
export function parseCreateVolumeRequest(body: unknown): CreateVolumeRequest {
  const record = objectWithFields(body, createFields, ` like {"name":"demo","sizeBytes":1073741824,"repl":1}`);
  const { name, sizeBytes, repl, nodes, zones, shared, owner, encrypted, clone } = record;
  if (typeof name !== "string") throw invalid(`field "name" must be a string, not ${describe(name)}`);
  checkVolumeName(name);
  const out: CreateVolumeRequest = { name, sizeBytes: sizeField(sizeBytes) };
  if (repl !== undefined) out.repl = replField(repl);
  if (nodes !== undefined) {
    const ok = Array.isArray(nodes) && nodes.length >= 1 && nodes.length <= volumeReplicasMax && nodes.every((n) => typeof n === "string" && n.length >= 1 && n.length <= catalogNameCharsMax);
    if (!ok) throw invalid(`field "nodes" must be a list of 1 to ${volumeReplicasMax} node names or ids (strings of at most ${catalogNameCharsMax} characters), not ${describe(nodes)}`);
    out.nodes = [...(nodes as string[])];
  }
  if (zones !== undefined) {
    if (typeof zones !== "boolean") throw invalid(`field "zones" must be true or false, not ${describe(zones)}`);
    out.zones = zones;
  }
  if (shared !== undefined) {
    if (typeof shared !== "boolean") throw invalid(`field "shared" must be true or false, not ${describe(shared)}`);
    out.shared = shared;
  }
  if (encrypted !== undefined) {
    if (typeof encrypted !== "boolean") throw invalid(`field "encrypted" must be true or false, not ${describe(encrypted)}`);
    const problem = encrypted ? encryptedSizeProblem(out.sizeBytes) : null;
    if (problem !== null) throw invalid(`field "sizeBytes" ${problem}`);
    out.encrypted = encrypted;
  }
  if (owner !== undefined) {
    if (typeof owner !== "string" || !volumeNamePattern.test(owner)) throw invalid(`field "owner" must be a token name (1-63 letters, digits, ".", "_" or "-"), not ${describe(owner)}`);
    out.owner = owner;
  }
  if (clone !== undefined) {
    const c = clone as Record<string, unknown>;
    const ok = typeof clone === "object" && clone !== null && Object.keys(clone).length === 2 && typeof c["volume"] === "string" && typeof c["snapshot"] === "string";
    if (!ok) throw invalid(`field "clone" must be an object like {"volume":"db","snapshot":"s1"}, not ${describe(clone)}`);
    const from = { volume: c["volume"] as string, snapshot: c["snapshot"] as string };
    checkVolumeName(from.volume);
    checkVolumeName(from.snapshot);
    if (out.encrypted !== undefined) throw invalid(`a clone is encrypted exactly when its source is; leave out field "encrypted"`);
    out.clone = from;
  }
  return { ...out, ...qosFieldsOf(record) };
}

/** The QoS fields of a create or update body, each checked; absent ones stay absent. */
function qosFieldsOf(record: Record<string, unknown>): Pick<CreateVolumeRequest, (typeof qosFields)[number]> {
  const out: Pick<CreateVolumeRequest, (typeof qosFields)[number]> = {};
  const { maxIops, maxBandwidthBytesPerSec, burstSec } = record;
  const whole = (v: unknown, min: number, max: number): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= min && v <= max;
  if (maxIops !== undefined) {
    if (!whole(maxIops, 0, qosIopsMax)) throw invalid(`field "maxIops" must be a whole number of requests a second from 0 (no limit) to ${qosIopsMax}, not ${describe(maxIops)}`);
    out.maxIops = maxIops;
  }
  if (maxBandwidthBytesPerSec !== undefined) {
    const ok = whole(maxBandwidthBytesPerSec, 0, qosBandwidthBytesMax) && (maxBandwidthBytesPerSec === 0 || maxBandwidthBytesPerSec >= qosBandwidthBytesMin);
    if (!ok) throw invalid(`field "maxBandwidthBytesPerSec" must be 0 (no limit) or a whole number of bytes a second from ${qosBandwidthBytesMin} to ${qosBandwidthBytesMax}, not ${describe(maxBandwidthBytesPerSec)}`);
    out.maxBandwidthBytesPerSec = maxBandwidthBytesPerSec;
  }
  if (burstSec !== undefined) {
    if (!whole(burstSec, 1, qosBurstSecMax)) throw invalid(`field "burstSec" must be a whole number of seconds from 1 to ${qosBurstSecMax}, not ${describe(burstSec)}`);
    out.burstSec = burstSec;
  }
  return out;
}

/** A host name as the catalog keeps it: the volume name rule. */
export const hostNamePattern = volumeNamePattern;

/** POST /v1/volumes/NAME/attachments. */
export function parseAttachRequest(body: unknown): AttachRequest {
  const { host, device, via, readOnly, node } = objectWithFields(body, ["host", "device", "via", "readOnly", "node"], ` like {"host":"web1","via":"kernel","readOnly":false}`);
  if (typeof host !== "string" || !hostNamePattern.test(host)) throw invalid(`field "host" must be a host name (1-63 letters, digits, ".", "_", "-"), not ${describe(host)}`);
  if (via !== "kernel" && via !== "fuse") throw invalid(`field "via" must be "kernel" or "fuse", not ${describe(via)}`);
  if (typeof readOnly !== "boolean") throw invalid(`field "readOnly" must be true or false, not ${describe(readOnly)}`);
  const out: AttachRequest = { host, via, readOnly };
  if (device !== undefined) {
    if (typeof device !== "string" || !attachDevicePattern.test(device)) throw invalid(`field "device" must be a device path like /dev/nbd0, not ${describe(device)}`);
    out.device = device;
  }
  if (node !== undefined) {
    if (typeof node !== "string" || !volumeNamePattern.test(node)) throw invalid(`field "node" must be a node name, not ${describe(node)}`);
    out.node = node;
  }
  return out;
}

const updateFields = ["repl", "sizeBytes", ...qosFields];

/** PATCH /v1/volumes/NAME: any of repl, sizeBytes and the QoS fields; at least one. */
export function parseUpdateVolumeRequest(body: unknown): UpdateVolumeRequest {
  const record = objectWithFields(body, updateFields, ` like {"repl":3}, {"sizeBytes":21474836480} or {"maxIops":500}`);
  const out: UpdateVolumeRequest = { ...qosFieldsOf(record) };
  if (record["repl"] !== undefined) out.repl = replField(record["repl"]);
  if (record["sizeBytes"] !== undefined) out.sizeBytes = sizeField(record["sizeBytes"]);
  if (Object.keys(out).length === 0) throw invalid(`the body names nothing to change; give at least one of the fields ${updateFields.join(", ")}`);
  return out;
}

/** A volume size: what create takes, and what update grows a volume to. */
function sizeField(sizeBytes: unknown): number {
  if (typeof sizeBytes !== "number" || !Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
    throw invalid(`field "sizeBytes" must be a positive integer number of bytes, not ${describe(sizeBytes)}`);
  }
  if (sizeBytes > volumeBytesMax) throw invalid(`field "sizeBytes" is ${sizeBytes}, larger than the volume limit ${volumeBytesMax} (64 TiB)`);
  const sectors = volumeSizeSectorProblem(sizeBytes);
  if (sectors !== null) throw invalid(`field "sizeBytes" ${sectors}`);
  return sizeBytes;
}

export function parseCreateSnapshotRequest(body: unknown): CreateSnapshotRequest {
  const { name } = objectWithFields(body, ["name"], ` like {"name":"before-upgrade"}`);
  return { name: snapshotNameField("name", name) };
}

export function parseSnapshotScheduleRequest(body: unknown): SnapshotScheduleRequest {
  const { everySec, keep } = objectWithFields(body, ["everySec", "keep"], ` like {"everySec":3600,"keep":24}`);
  const minSec = snapshotEveryMsMin / 1000;
  const maxSec = snapshotEveryMsMax / 1000;
  if (typeof everySec !== "number" || !Number.isSafeInteger(everySec) || (everySec !== 0 && (everySec < minSec || everySec > maxSec))) {
    throw invalid(`field "everySec" must be 0 (no schedule) or whole seconds from ${minSec} to ${maxSec}, not ${describe(everySec)}`);
  }
  if (typeof keep !== "number" || !Number.isSafeInteger(keep) || keep < (everySec === 0 ? 0 : 1) || keep > volumeSnapshotsMax) {
    throw invalid(`field "keep" must be a count from 1 to ${volumeSnapshotsMax} (the most snapshots a volume has), not ${describe(keep)}`);
  }
  return { everySec, keep };
}

export function parseRollbackRequest(body: unknown): RollbackRequest {
  const { snapshot } = objectWithFields(body, ["snapshot"], ` like {"snapshot":"before-upgrade"}`);
  return { snapshot: snapshotNameField("snapshot", snapshot) };
}

/** A snapshot's name follows the volume name rule (it is the part after "@" of its NBD export name). */
export function snapshotNameProblem(name: string): string | null {
  const problem = volumeNameProblem(name);
  return problem === null ? null : problem.replace(/^volume name/, "snapshot name");
}

/**
 * A snapshot's reference, VOLUME@SNAPSHOT (its NBD export name, and its CSI
 * snapshot id): both names, or why it is not one.
 */
export function parseSnapshotRef(ref: string): { volume: string; snapshot: string } | { problem: string } {
  const at = ref.indexOf("@");
  if (at < 0) return { problem: `${JSON.stringify(ref.slice(0, 140))} names no snapshot; write VOLUME@SNAPSHOT (pxd snapshot list shows them)` };
  const volume = ref.slice(0, at);
  const snapshot = ref.slice(at + 1);
  const problem = volumeNameProblem(volume) ?? snapshotNameProblem(snapshot);
  return problem === null ? { volume, snapshot } : { problem };
}

function snapshotNameField(field: string, v: unknown): string {
  if (typeof v !== "string") throw invalid(`field "${field}" must be a snapshot name (a string), not ${describe(v)}`);
  const problem = snapshotNameProblem(v);
  if (problem !== null) throw invalid(problem);
  return v;
}

function replField(repl: unknown): number {
  if (typeof repl !== "number" || !Number.isSafeInteger(repl) || repl < 1 || repl > volumeReplicasMax) {
    throw invalid(`field "repl" must be a replica count from 1 to ${volumeReplicasMax} (the most a volume has), not ${describe(repl)}`);
  }
  return repl;
}

/** A JSON object body with none but the given fields; throws ApiError(400) naming the first other one. */
function objectWithFields(body: unknown, fields: readonly string[], example = ""): Record<string, unknown> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw invalid(`the body must be a JSON object${example}, not ${describe(body)}`);
  const record = body as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (fields.includes(key)) continue;
    throw invalid(`unknown field "${key}"; ${fields.length === 1 ? `the only field is ${fields[0]}` : `the fields are ${fields.join(", ")}`}`);
  }
  return record;
}

function invalid(message: string): ApiError {
  return new ApiError(400, "invalid", message);
}

function describe(value: unknown): string {
  if (value === undefined) return "missing";
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "string") return `the string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + "…" : value)}`;
  if (typeof value === "number") return `${value}`;
  return `a ${typeof value}`;
}

const joinFields = ["id", "name", "address", "nbdPort", "apiPort", "peerPort", "capacityBytes", "labels", "proof"];

/** A join request's shape; the catalog checks names, bounds and uniqueness when it applies addNode. */
export function parseJoinRequest(body: unknown): JoinRequest {
  const r = objectWithFields(body, joinFields);
  const int = (k: string, max: number): number => {
    const v = r[k];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v > max) throw invalid(`field "${k}" must be an integer from 0 to ${max}, not ${describe(v)}`);
    return v;
  };
  const str = (k: string, max: number): string => {
    const v = r[k];
    if (typeof v !== "string" || v.length === 0 || v.length > max) throw invalid(`field "${k}" must be a string of 1-${max} characters, not ${describe(v)}`);
    return v;
  };
  const labels = r["labels"];
  if (typeof labels !== "object" || labels === null || Array.isArray(labels) || Object.keys(labels).length > 16) {
    throw invalid(`field "labels" must be an object of at most 16 string labels, not ${describe(labels)}`);
  }
  for (const [k, v] of Object.entries(labels)) {
    if (typeof v !== "string" || k.length > 63 || v.length > 63) throw invalid(`label "${k.slice(0, 63)}" must be a string of at most 63 characters`);
  }
  return {
    id: int("id", 2 ** 31),
    name: str("name", 63),
    address: str("address", 253),
    nbdPort: int("nbdPort", 65535),
    apiPort: int("apiPort", 65535),
    peerPort: int("peerPort", 65535),
    capacityBytes: int("capacityBytes", 2 ** 52),
    labels: labels as Record<string, string>,
    proof: str("proof", 128),
  };
}

/** Slowest and fastest scrub rates a request may ask for (1 MiB/s to 16 GiB/s). */
const scrubBandwidthMin = 1024 * 1024;
const scrubBandwidthMax = 16 * 1024 ** 3;

/** POST /v1/scrub: {"volume"?: NAME, "bandwidthBytesPerSec"?: N, "local"?: true}. */
export function parseScrubRequest(body: unknown): ScrubRequest {
  const { volume, bandwidthBytesPerSec, local } = objectWithFields(body, ["volume", "bandwidthBytesPerSec", "local"], ` like {"volume":"db"} or {}`);
  const out: ScrubRequest = {};
  if (volume !== undefined) {
    if (typeof volume !== "string") throw invalid(`field "volume" must be a volume name, not ${describe(volume)}`);
    checkVolumeName(volume);
    out.volume = volume;
  }
  if (bandwidthBytesPerSec !== undefined) {
    const ok = typeof bandwidthBytesPerSec === "number" && Number.isSafeInteger(bandwidthBytesPerSec) && bandwidthBytesPerSec >= scrubBandwidthMin && bandwidthBytesPerSec <= scrubBandwidthMax;
    if (!ok) throw invalid(`field "bandwidthBytesPerSec" must be a whole number of bytes a second from ${scrubBandwidthMin} (1 MiB) to ${scrubBandwidthMax} (16 GiB), not ${describe(bandwidthBytesPerSec)}`);
    out.bandwidthBytesPerSec = bandwidthBytesPerSec;
  }
  if (local !== undefined) {
    if (typeof local !== "boolean") throw invalid(`field "local" must be true or false, not ${describe(local)}`);
    out.local = local;
  }
  return out;
}

/** The fault-injection hook's body: exactly one of `command` (any JSON) and `hex` (the entry's bytes, not empty). */
export function parseDebugProposeRequest(body: unknown): DebugProposeRequest {
  const r = objectWithFields(body, ["command", "hex"], ` like {"command":{"kind":"deleteVolume","name":"x"}} or {"hex":"01c1"}`);
  const { command, hex } = r;
  if ((command === undefined) === (hex === undefined)) throw invalid(`send exactly one of the fields "command" and "hex"`);
  if (hex === undefined) return { command };
  if (typeof hex !== "string" || hex.length === 0 || hex.length % 2 !== 0 || !/^[0-9a-fA-F]+$/.test(hex)) {
    throw invalid(`field "hex" must be the entry's bytes as an even number of hex digits (not none: an empty entry is the leader's no-op), not ${describe(hex)}`);
  }
  return { hex };
}

/** A setting key or a node reference (name or id) in a path: what the catalog names can be, checked before it is looked up. */
export function checkPathName(what: "setting" | "node", name: string): void {
  if (!volumeNamePattern.test(name)) throw new ApiError(400, "invalid_name", `${what} ${JSON.stringify(name.slice(0, 80))} is not a ${what} name${what === "node" ? " or id" : ""}; ${what === "node" ? "pxd node list shows the nodes" : "pxd settings list shows the settings"}`);
}

/** PUT /v1/settings/KEY: {"value": V}, V a number, string, boolean or null (the default); the catalog checks it against the setting. */
export function parseSetSettingRequest(body: unknown): SetSettingRequest {
  const { value } = objectWithFields(body, ["value"], ` like {"value":150}`);
  if (value === null || typeof value === "boolean" || typeof value === "number" || (typeof value === "string" && value.length <= catalogNameCharsMax)) return { value };
  throw invalid(`field "value" must be a number, a string of at most ${catalogNameCharsMax} characters, true, false or null (the default), not ${describe(value)}`);
}

/** POST /v1/nodes/NODE/drain: {} or {"draining": true|false}. */
export function parseDrainNodeRequest(body: unknown): DrainNodeRequest {
  const { draining } = objectWithFields(body, ["draining"], ` like {"draining":false}`);
  if (draining === undefined) return {};
  if (typeof draining !== "boolean") throw invalid(`field "draining" must be true or false, not ${describe(draining)}`);
  return { draining };
}

/** The `force` query parameter of DELETE /v1/volumes/NAME: absent, empty, true or 1 (yes), false or 0 (no). */
export function parseForceQuery(query: string): boolean {
  return parseFlagQuery(query, "force");
}

/** A true/false query parameter (`?force`, `?local=true`); absent: false. */
export function parseFlagQuery(query: string, name: string): boolean {
  const values = new URLSearchParams(query).getAll(name);
  if (values.length === 0) return false;
  const v = values.length === 1 ? values[0]! : undefined;
  if (v === "" || v === "true" || v === "1") return true;
  if (v === "false" || v === "0") return false;
  throw invalid(`query parameter "${name}" must be true or false (once), not ${values.map((x) => JSON.stringify(x.slice(0, 40))).join(", ")}`);
}

/** `?since=SEQ` of GET /v1/events: a whole number, 0 when absent. */
export function parseSinceQuery(query: string): number {
  const values = new URLSearchParams(query).getAll("since");
  if (values.length === 0) return 0;
  const v = values.length === 1 ? values[0]! : "";
  if (!/^\d{1,15}$/.test(v)) throw invalid(`query parameter "since" must be one event number (a whole number, as "seq" in an earlier answer), not ${JSON.stringify(v.slice(0, 40))}`);
  return Number(v);
}

/** POST /v1/auth/tokens: {"role": R, "name"?: WHO, "ttlSec"?: N}. */
export function parseCreateTokenRequest(body: unknown): CreateTokenRequest {
  const { role, name, ttlSec } = objectWithFields(body, ["role", "name", "ttlSec"], ` like {"role":"user","name":"alice","ttlSec":86400}`);
  const r = roles.find((x) => x === role);
  if (r === undefined) throw invalid(`field "role" must be one of ${roles.join(", ")}, not ${describe(role)}`);
  const out: CreateTokenRequest = { role: r };
  if (name !== undefined) {
    if (typeof name !== "string" || !volumeNamePattern.test(name)) throw invalid(`field "name" must be 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit, not ${describe(name)}`);
    out.name = name;
  }
  if (ttlSec !== undefined) {
    const ttlSecMax = apiTokenTtlMsMax / 1000;
    if (typeof ttlSec !== "number" || !Number.isSafeInteger(ttlSec) || ttlSec < 1 || ttlSec > ttlSecMax) throw invalid(`field "ttlSec" must be a whole number of seconds from 1 to ${ttlSecMax}, not ${describe(ttlSec)}`);
    out.ttlSec = ttlSec;
  }
  return out;
}

/** POST /v1/auth/revocations: {"id": ID, "expiresAt"?: MS}. */
export function parseRevokeTokenRequest(body: unknown): RevokeTokenRequest {
  const { id, expiresAt } = objectWithFields(body, ["id", "expiresAt"], ` like {"id":"0123456789abcdef"}`);
  if (typeof id !== "string" || !tokenIdPattern.test(id)) throw invalid(`field "id" must be a token id (${apiTokenIdChars} lower-case hex digits, as pxd auth token create printed it), not ${describe(id)}`);
  const out: RevokeTokenRequest = { id };
  if (expiresAt !== undefined) {
    if (typeof expiresAt !== "number" || !Number.isSafeInteger(expiresAt) || expiresAt < 0 || expiresAt > catalogTimeMsMax) throw invalid(`field "expiresAt" must be a time in ms since the epoch, not ${describe(expiresAt)}`);
    out.expiresAt = expiresAt;
  }
  return out;
}

/** GET /v1/audit?since=MS&local=true. */
export function parseAuditQuery(query: string): AuditQuery {
  const q = new URLSearchParams(query);
  const since = q.get("since") ?? "0";
  if (!/^\d{1,16}$/.test(since)) throw invalid(`query parameter "since" must be a time in ms since the epoch, not ${JSON.stringify(since.slice(0, 40))}`);
  const local = q.get("local");
  if (local !== null && local !== "true" && local !== "false") throw invalid(`query parameter "local" must be true or false, not ${JSON.stringify(local.slice(0, 40))}`);
  return { sinceMs: Number(since), local: local === "true" };
}
