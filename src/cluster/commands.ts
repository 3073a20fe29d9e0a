// Catalog commands: the entries of the meta group's Raft log
// (docs/formats/catalog-commands.md). A command is a plain object; on the log
// it is one version byte followed by its msgpack body. Everything read from
// the log is untrusted until validateCommand has checked every field: type,
// range, length and pattern, and refused unknown fields and kinds. The result
// is a normalized copy with a fixed key order and sorted labels, so the bytes
// encodeCommand writes depend only on the command's meaning.

import { Packr } from "msgpackr";
import {
  apiTokenIdChars,
  catalogCommandBytesMax,
  catalogNameCharsMax,
  catalogTimeMsMax,
  nodeAddressCharsMax,
  nodeBytesMax,
  nodeLabelCharsMax,
  nodeLabelsMax,
  snapshotEveryMsMax,
  snapshotEveryMsMin,
  snapshotIdMax,
  volumeSnapshotsMax,
  qosBandwidthBytesMax,
  qosBandwidthBytesMin,
  qosBurstSecMax,
  qosIopsMax,
  volumeBytesMax,
  volumeReplicasMax,
} from "../constants.js";
import { attachDevicePattern, encryptedSizeProblem, tokenIdPattern, volumeCiphers, volumeSizeSectorProblem, wrappedVolumeKeyChars } from "./rules.js";

/** The first byte of every encoded command; a decoder refuses any other. */
export const catalogCommandVersion = 1;

export const nodeHealths = ["up", "down"] as const;
export type NodeHealth = (typeof nodeHealths)[number];

/** Labels of a node: zone and rack are what placement reads; others are kept for people. */
export type NodeLabels = Record<string, string>;

export type SettingValue = number | string | boolean;

export interface AddNode {
  kind: "addNode";
  id: number;
  name: string;
  address: string;
  nbdPort: number;
  apiPort: number;
  peerPort: number;
  capacityBytes: number;
  labels: NodeLabels;
  /** Milliseconds since the epoch, from the proposer's clock. */
  at: number;
}

export interface UpdateNode {
  kind: "updateNode";
  id: number;
  at: number;
  freeBytes?: number;
  usedBytes?: number;
  capacityBytes?: number;
  health?: NodeHealth;
  labels?: NodeLabels;
}

export interface RemoveNode {
  kind: "removeNode";
  id: number;
  /** Remove even while the node holds replicas; they are dropped from their replica sets. */
  force?: boolean;
}

export interface DrainNode {
  kind: "drainNode";
  id: number;
  /** false undoes a drain; absent means true. */
  draining?: boolean;
}

export interface CreateVolume {
  kind: "createVolume";
  name: string;
  sizeBytes: number;
  repl: number;
  /** Explicit replica set (node ids); its length must equal repl. */
  nodes?: number[];
  /** Replicas must sit in distinct zones (otherwise distinct zones are only preferred). */
  zones?: boolean;
  /** Hosts may attach it read-write at the same time (a cluster filesystem's job to coordinate them). */
  shared?: boolean;
  /** The name of the API token's holder that created it (docs/security.md); a `user` token reaches only its own volumes. */
  owner?: string;
  /** QoS limits (VolumeQos); absent: none, and a burst of qosBurstSecDefault. */
  maxIops?: number;
  maxBandwidthBytes?: number;
  burstSec?: number;
  /** Absent: a plain volume. Its size is then whole 4 KiB units. */
  encryption?: VolumeEncryption;
  /** A clone of a snapshot (pxd volume clone): its replicas on `source.seeds` start as the snapshot, sharing its extents. */
  source?: CloneSource;
  at: number;
}

/**
 * Where a clone starts: snapshot `snapshotId` of volume `volumeId` (ids, not
 * names: a catalog of clones must still fit its snapshot bound). Each seed is
 * a node holding a replica of the source volume and the snapshot; the clone's
 * group starts on the seeds from the snapshot's block map (copy-on-write:
 * nothing is copied), with the seeds as its voters. Its other replicas join
 * as learners and are filled by a copy from the group's leader.
 */
export interface CloneSource {
  volumeId: number;
  snapshotId: number;
  seeds: number[];
}

/**
 * An encrypted volume's cipher and its data key, wrapped by the cluster key
 * (AES-256-GCM, the cluster id and volume name as additional data): the key
 * is never in the catalog in clear (docs/architecture.md, "Encryption at rest").
 */
export interface VolumeEncryption {
  cipher: (typeof volumeCiphers)[number];
  /** Lower-case hex, wrappedVolumeKeyChars long. */
  wrappedKey: string;
}

/**
 * A volume's QoS limits, enforced on each node where its NBD requests enter
 * (src/daemon/qos.ts): requests a second and bytes a second, reads and writes
 * together (0: no limit), and the seconds of them an idle volume may save up
 * and spend at once.
 */
export interface VolumeQos {
  maxIops: number;
  maxBandwidthBytes: number;
  burstSec: number;
}

/** Sets a volume's QoS limits: an absent field keeps its value, 0 removes a limit. */
export interface SetVolumeQos {
  kind: "setVolumeQos";
  name: string;
  maxIops?: number;
  maxBandwidthBytes?: number;
  burstSec?: number;
}

export interface DeleteVolume {
  kind: "deleteVolume";
  name: string;
  /** Delete even while hosts have it attached; their attachments go with it. */
  force?: boolean;
}

export const attachVias = ["kernel", "fuse"] as const;
export type AttachVia = (typeof attachVias)[number];

/** A host attaches a volume as a block device (pxd volume attach); one attachment per host and volume. */
export interface AttachVolume {
  kind: "attachVolume";
  name: string;
  /** The attaching host's name. */
  host: string;
  /** The block device, e.g. /dev/nbd0; absent while the attach is under way. */
  device?: string;
  via: AttachVia;
  readOnly: boolean;
  /** The name of the node serving the host's connection. */
  node?: string;
  at: number;
}

export interface DetachVolume {
  kind: "detachVolume";
  name: string;
  host: string;
}

export interface ResizeVolume {
  kind: "resizeVolume";
  name: string;
  sizeBytes: number;
}

export interface SetReplicas {
  kind: "setReplicas";
  name: string;
  nodes: number[];
  /** New desired replica count (ha-update); absent keeps it. */
  repl?: number;
  /** Applies only if the replica set is still exactly this (compare-and-set for re-replication). */
  expect?: number[];
}

export interface SetSetting {
  kind: "setSetting";
  key: string;
  /** null returns the setting to its default. */
  value: SettingValue | null;
}

/** An API token no node may accept any more (pxd auth token revoke), remembered until it expires. */
export interface RevokeToken {
  kind: "revokeToken";
  /** The token's id (apiTokenIdChars hex digits). */
  id: string;
  /** When the token expires (ms since the epoch): the revocation is dropped after it. */
  expiresAt: number;
  at: number;
}

/**
 * A snapshot of a volume, recorded once the volume's group has taken it (an
 * entry of the volume's own log, docs/architecture.md "Snapshots"). Its id is
 * the volume's next unused one or higher.
 */
export interface AddSnapshot {
  kind: "addSnapshot";
  /** The volume's name. */
  name: string;
  snapshot: string;
  id: number;
  /** The volume's size when it was taken. */
  sizeBytes: number;
  at: number;
}

/** Takes a snapshot of the volume every `everyMs` and keeps the newest `keep` of those it took (named auto-...); everyMs 0: none. */
export interface SetSnapshotSchedule {
  kind: "setSnapshotSchedule";
  name: string;
  everyMs: number;
  keep: number;
}

export interface RemoveSnapshot {
  kind: "removeSnapshot";
  name: string;
  snapshot: string;
}

export type CatalogCommand =
  | AddNode
  | UpdateNode
  | RemoveNode
  | DrainNode
  | CreateVolume
  | DeleteVolume
  | AttachVolume
  | DetachVolume
  | ResizeVolume
  | SetReplicas
  | SetSetting
  | RevokeToken
  | AddSnapshot
  | RemoveSnapshot
  | SetSnapshotSchedule
  | SetVolumeQos;

export type CommandKind = CatalogCommand["kind"];

/** Volume and node names: also NBD export names and file names (the control API's rule). */
export const catalogNamePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
/** A host name, IPv4 or IPv6 literal (brackets and a zone suffix allowed). */
const addressPattern = /^[A-Za-z0-9.:%[\]-]+$/;
const labelKeyPattern = /^[a-z0-9][a-z0-9._/-]*$/;
const labelValuePattern = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

interface SettingSpec {
  doc: string;
  defaultValue: SettingValue;
  check(value: unknown): string | null;
}

const intSetting = (min: number, max: number) => (v: unknown): string | null =>
  typeof v === "number" && Number.isSafeInteger(v) && v >= min && v <= max ? null : `must be an integer in [${min}, ${max}], not ${describe(v)}`;

/** Every setting the catalog knows; setSetting refuses other keys. */
export const catalogSettings: Readonly<Record<string, SettingSpec>> = Object.freeze({
  overcommitPercent: {
    doc: "bytes a node may have promised to volumes, as a percentage of its capacity (100 = no thin overcommit)",
    defaultValue: 100,
    check: intSetting(100, 10_000),
  },
  defaultRepl: {
    doc: "replica count of a volume created without --repl",
    defaultValue: 1,
    check: intSetting(1, volumeReplicasMax),
  },
  resyncBandwidthBytesPerSec: {
    doc: "bytes a second the volume copies each node sends take together, e.g. 67108864 for 64 MiB (0: no limit; -1: each node's pxd daemon --resync-bandwidth)",
    defaultValue: -1,
    check: intSetting(-1, qosBandwidthBytesMax),
  },
  clusterName: {
    doc: "a name for people (pxd status prints it)",
    defaultValue: "pxd",
    check: (v) =>
      typeof v === "string" && catalogNamePattern.test(v) ? null : `must be 1-${catalogNameCharsMax} letters, digits, ".", "_" or "-", not ${describe(v)}`,
  },
});

// ---- validation ----

/** Thrown inside the validators only; validateCommand turns it into an error result. */
class Invalid extends Error {}

type Obj = Record<string, unknown>;

const hasOwn = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);

function get(o: Obj, key: string): unknown {
  return hasOwn(o, key) ? o[key] : undefined;
}

function isPlainObject(v: unknown): v is Obj {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/** A short, safe description of any value for an error message (never throws, never long). */
export function describe(v: unknown): string {
  if (v === undefined) return "missing";
  if (v === null) return "null";
  if (typeof v === "string") return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + "…" : v)}`;
  if (typeof v === "number") return String(v);
  if (typeof v === "bigint") return `the 64-bit integer ${String(v).slice(0, 24)}`;
  if (typeof v === "boolean") return String(v);
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (v instanceof Uint8Array) return `${v.length} bytes of binary`;
  if (isPlainObject(v)) return "an object";
  if (typeof v === "object") return `a value of type ${Object.prototype.toString.call(v).slice(8, -1)}`;
  return `a ${typeof v}`;
}

/** A string as a quoted literal, anything else as describe() says it. */
function shown(v: unknown): string {
  return typeof v === "string" ? JSON.stringify(v.length > 40 ? v.slice(0, 40) + "…" : v) : describe(v);
}

function int(o: Obj, kind: string, key: string, min: number, max: number, unit = ""): number {
  const v = get(o, key);
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new Invalid(`${kind}: field "${key}" must be an integer${unit} in [${min}, ${max}], not ${describe(v)}`);
  }
  return v;
}

function optInt(o: Obj, kind: string, key: string, min: number, max: number, unit = ""): number | undefined {
  return get(o, key) === undefined ? undefined : int(o, kind, key, min, max, unit);
}

function bool(o: Obj, kind: string, key: string): boolean | undefined {
  const v = get(o, key);
  if (v === undefined) return undefined;
  if (typeof v !== "boolean") throw new Invalid(`${kind}: field "${key}" must be true or false, not ${describe(v)}`);
  return v;
}

function str(o: Obj, kind: string, key: string, pattern: RegExp, charsMax: number, rule: string): string {
  const v = get(o, key);
  if (typeof v !== "string" || v.length === 0 || v.length > charsMax || !pattern.test(v)) {
    throw new Invalid(`${kind}: field "${key}" must be ${rule} (1-${charsMax} characters), not ${describe(v)}`);
  }
  return v;
}

const nameRule = `letters, digits, ".", "_" and "-", starting with a letter or digit`;

function name(o: Obj, kind: string, key = "name"): string {
  return str(o, kind, key, catalogNamePattern, catalogNameCharsMax, nameRule);
}

function nodeId(o: Obj, kind: string, key = "id"): number {
  return int(o, kind, key, 1, Number.MAX_SAFE_INTEGER);
}

/** Bounded by the largest time a Date holds: the API turns `createdAt` into an ISO string, which throws past it. */
function at(o: Obj, kind: string): number {
  return int(o, kind, "at", 0, catalogTimeMsMax, " (milliseconds since the epoch)");
}

/** Whole sectors: the store refuses any other size, so a volume of another size would stop every node that holds it. */
function volumeSize(o: Obj, kind: string): number {
  const v = int(o, kind, "sizeBytes", 1, volumeBytesMax, " of bytes");
  const problem = volumeSizeSectorProblem(v);
  if (problem !== null) throw new Invalid(`${kind}: field "sizeBytes" ${problem}`);
  return v;
}

function nodeIds(o: Obj, kind: string, key: string, optional: boolean): number[] | undefined {
  const v = get(o, key);
  if (v === undefined && optional) return undefined;
  if (!Array.isArray(v) || v.length < 1 || v.length > volumeReplicasMax) {
    throw new Invalid(`${kind}: field "${key}" must be a list of 1-${volumeReplicasMax} node ids, not ${describe(v)}`);
  }
  return v.map((id, i) => {
    if (typeof id !== "number" || !Number.isSafeInteger(id) || id < 1) {
      throw new Invalid(`${kind}: field "${key}"[${i}] must be a node id (a positive integer), not ${describe(id)}`);
    }
    return id;
  });
}

function labels(o: Obj, kind: string, key: string, optional: boolean): NodeLabels | undefined {
  const v = get(o, key);
  if (v === undefined && optional) return undefined;
  if (!isPlainObject(v)) throw new Invalid(`${kind}: field "${key}" must be an object of label strings, not ${describe(v)}`);
  const keys = Object.keys(v);
  if (keys.length > nodeLabelsMax) throw new Invalid(`${kind}: field "${key}" has ${keys.length} labels; the most is ${nodeLabelsMax}`);
  const out: NodeLabels = {};
  for (const k of keys.sort()) {
    if (k.length > nodeLabelCharsMax || !labelKeyPattern.test(k)) {
      throw new Invalid(`${kind}: label key ${shown(k)} must be 1-${nodeLabelCharsMax} lower-case letters, digits, ".", "_", "/" or "-"`);
    }
    const value = v[k];
    if (typeof value !== "string" || value.length === 0 || value.length > nodeLabelCharsMax || !labelValuePattern.test(value)) {
      throw new Invalid(`${kind}: label "${k}" must be 1-${nodeLabelCharsMax} ${nameRule}, not ${describe(value)}`);
    }
    out[k] = value;
  }
  return out;
}

function health(o: Obj, kind: string): NodeHealth | undefined {
  const v = get(o, "health");
  if (v === undefined) return undefined;
  const found = nodeHealths.find((h) => h === v);
  if (found === undefined) throw new Invalid(`${kind}: field "health" must be one of ${nodeHealths.join(", ")}, not ${describe(v)}`);
  return found;
}

/** Copies the defined fields in the given order, so equal commands encode to equal bytes. */
function pick<T>(fields: Record<string, unknown>): T {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) out[k] = v;
  return out as T;
}

const port = (o: Obj, kind: string, key: string): number => int(o, kind, key, 1, 65_535);

const wrappedKeyPattern = new RegExp(`^[0-9a-f]{${wrappedVolumeKeyChars}}$`);

function encryption(o: Obj, kind: string): VolumeEncryption | undefined {
  const v = get(o, "encryption");
  if (v === undefined) return undefined;
  if (!isPlainObject(v) || Object.keys(v).length !== 2) throw new Invalid(`${kind}: field "encryption" must be an object of "cipher" and "wrappedKey", not ${describe(v)}`);
  const cipher = volumeCiphers.find((x) => x === get(v, "cipher"));
  if (cipher === undefined) throw new Invalid(`${kind}: field "encryption.cipher" must be one of ${volumeCiphers.join(", ")}, not ${describe(get(v, "cipher"))}`);
  const wrappedKey = get(v, "wrappedKey");
  if (typeof wrappedKey !== "string" || !wrappedKeyPattern.test(wrappedKey)) throw new Invalid(`${kind}: field "encryption.wrappedKey" must be ${wrappedVolumeKeyChars} lower-case hex digits, not ${describe(wrappedKey)}`);
  return { cipher, wrappedKey };
}

function cloneSource(o: Obj, kind: string): CloneSource | undefined {
  const v = get(o, "source");
  if (v === undefined) return undefined;
  const keys = ["volumeId", "snapshotId", "seeds"];
  if (!isPlainObject(v) || Object.keys(v).length !== keys.length || !keys.every((key) => get(v, key) !== undefined)) {
    throw new Invalid(`${kind}: field "source" must be an object of ${keys.map((key) => `"${key}"`).join(", ")}, not ${describe(v)}`);
  }
  const what = `${kind}: source`;
  const seeds = nodeIds(v, what, "seeds", false)!;
  if (new Set(seeds).size !== seeds.length) throw new Invalid(`${what}: field "seeds" names a node twice`);
  return { volumeId: int(v, what, "volumeId", 1, Number.MAX_SAFE_INTEGER), snapshotId: int(v, what, "snapshotId", 1, snapshotIdMax), seeds };
}

function via(o: Obj, kind: string): AttachVia {
  const v = get(o, "via");
  const found = attachVias.find((x) => x === v);
  if (found === undefined) throw new Invalid(`${kind}: field "via" must be one of ${attachVias.join(", ")}, not ${describe(v)}`);
  return found;
}

function invalidMissing(kind: string, key: string): never {
  throw new Invalid(`${kind}: field "${key}" must be true or false, not missing`);
}
/** 0 (no limit), else at least qosBandwidthBytesMin: a lower rate would take minutes per request. */
function optBandwidth(o: Obj, kind: string): number | undefined {
  const v = optInt(o, kind, "maxBandwidthBytes", 0, qosBandwidthBytesMax, " of bytes a second");
  if (v !== undefined && v > 0 && v < qosBandwidthBytesMin) {
    throw new Invalid(`${kind}: field "maxBandwidthBytes" must be 0 (no limit) or at least ${qosBandwidthBytesMin} bytes a second, not ${v}`);
  }
  return v;
}
const optIops = (o: Obj, kind: string): number | undefined => optInt(o, kind, "maxIops", 0, qosIopsMax, " of requests a second");
const optBurst = (o: Obj, kind: string): number | undefined => optInt(o, kind, "burstSec", 1, qosBurstSecMax, " of seconds");
const bytes = (o: Obj, kind: string, key: string): number => int(o, kind, key, 0, nodeBytesMax, " of bytes");
const optBytes = (o: Obj, kind: string, key: string): number | undefined => optInt(o, kind, key, 0, nodeBytesMax, " of bytes");

const fieldsOf: Record<CommandKind, readonly string[]> = {
  addNode: ["kind", "id", "name", "address", "nbdPort", "apiPort", "peerPort", "capacityBytes", "labels", "at"],
  updateNode: ["kind", "id", "at", "freeBytes", "usedBytes", "capacityBytes", "health", "labels"],
  removeNode: ["kind", "id", "force"],
  drainNode: ["kind", "id", "draining"],
  createVolume: ["kind", "name", "sizeBytes", "repl", "nodes", "zones", "shared", "owner", "maxIops", "maxBandwidthBytes", "burstSec", "encryption", "source", "at"],
  deleteVolume: ["kind", "name", "force"],
  attachVolume: ["kind", "name", "host", "device", "via", "readOnly", "node", "at"],
  detachVolume: ["kind", "name", "host"],
  resizeVolume: ["kind", "name", "sizeBytes"],
  setReplicas: ["kind", "name", "nodes", "repl", "expect"],
  setSetting: ["kind", "key", "value"],
  revokeToken: ["kind", "id", "expiresAt", "at"],
  addSnapshot: ["kind", "name", "snapshot", "id", "sizeBytes", "at"],
  removeSnapshot: ["kind", "name", "snapshot"],
  setSnapshotSchedule: ["kind", "name", "everyMs", "keep"],
  setVolumeQos: ["kind", "name", "maxIops", "maxBandwidthBytes", "burstSec"],
};

export const commandKinds = Object.keys(fieldsOf) as CommandKind[];

const validators: Record<CommandKind, (o: Obj, k: string) => CatalogCommand> = {
  addNode: (o, k) =>
    pick<AddNode>({
      kind: k,
      id: nodeId(o, k),
      name: name(o, k),
      address: str(o, k, "address", addressPattern, nodeAddressCharsMax, "a host name or IP address"),
      nbdPort: port(o, k, "nbdPort"),
      apiPort: port(o, k, "apiPort"),
      peerPort: port(o, k, "peerPort"),
      capacityBytes: bytes(o, k, "capacityBytes"),
      labels: labels(o, k, "labels", false),
      at: at(o, k),
    }),
  updateNode: (o, k) => {
    const c = pick<UpdateNode>({
      kind: k,
      id: nodeId(o, k),
      at: at(o, k),
      freeBytes: optBytes(o, k, "freeBytes"),
      usedBytes: optBytes(o, k, "usedBytes"),
      capacityBytes: optBytes(o, k, "capacityBytes"),
      health: health(o, k),
      labels: labels(o, k, "labels", true),
    });
    return c;
  },
  removeNode: (o, k) => pick<RemoveNode>({ kind: k, id: nodeId(o, k), force: bool(o, k, "force") }),
  drainNode: (o, k) => pick<DrainNode>({ kind: k, id: nodeId(o, k), draining: bool(o, k, "draining") }),
  createVolume: (o, k) => {
    const c = pick<CreateVolume>({
      kind: k,
      name: name(o, k),
      sizeBytes: volumeSize(o, k),
      repl: int(o, k, "repl", 1, volumeReplicasMax),
      nodes: nodeIds(o, k, "nodes", true),
      zones: bool(o, k, "zones"),
      shared: bool(o, k, "shared"),
      owner: get(o, "owner") === undefined ? undefined : name(o, k, "owner"),
      maxIops: optIops(o, k),
      maxBandwidthBytes: optBandwidth(o, k),
      burstSec: optBurst(o, k),
      encryption: encryption(o, k),
      source: cloneSource(o, k),
      at: at(o, k),
    });
    const problem = c.encryption === undefined ? null : encryptedSizeProblem(c.sizeBytes);
    if (problem !== null) throw new Invalid(`${k}: field "sizeBytes" ${problem}`);
    return c;
  },
  deleteVolume: (o, k) => pick<DeleteVolume>({ kind: k, name: name(o, k), force: bool(o, k, "force") }),
  attachVolume: (o, k) =>
    pick<AttachVolume>({
      kind: k,
      name: name(o, k),
      host: name(o, k, "host"),
      device: get(o, "device") === undefined ? undefined : str(o, k, "device", attachDevicePattern, 40, "a device path like /dev/nbd0"),
      via: via(o, k),
      readOnly: bool(o, k, "readOnly") ?? invalidMissing(k, "readOnly"),
      node: get(o, "node") === undefined ? undefined : name(o, k, "node"),
      at: at(o, k),
    }),
  detachVolume: (o, k) => pick<DetachVolume>({ kind: k, name: name(o, k), host: name(o, k, "host") }),
  resizeVolume: (o, k) => pick<ResizeVolume>({ kind: k, name: name(o, k), sizeBytes: volumeSize(o, k) }),
  setReplicas: (o, k) =>
    pick<SetReplicas>({
      kind: k,
      name: name(o, k),
      nodes: nodeIds(o, k, "nodes", false),
      repl: optInt(o, k, "repl", 1, volumeReplicasMax),
      expect: nodeIds(o, k, "expect", true),
    }),
  setSetting: (o, k) => {
    const key = get(o, "key");
    const spec = typeof key === "string" && hasOwn(catalogSettings, key) ? catalogSettings[key] : undefined;
    if (spec === undefined || typeof key !== "string") {
      throw new Invalid(`${k}: unknown setting ${shown(key)}; the settings are ${Object.keys(catalogSettings).join(", ")}`);
    }
    const value = get(o, "value");
    if (value !== null) {
      const problem = spec.check(value);
      if (problem !== null) throw new Invalid(`${k}: setting "${key}" ${problem}`);
    }
    return { kind: "setSetting", key, value: value as SettingValue | null };
  },
  revokeToken: (o, k) =>
    pick<RevokeToken>({
      kind: k,
      id: str(o, k, "id", tokenIdPattern, apiTokenIdChars, `${apiTokenIdChars} lower-case hex digits`),
      expiresAt: int(o, k, "expiresAt", 0, catalogTimeMsMax, " (milliseconds since the epoch)"),
      at: at(o, k),
    }),
  addSnapshot: (o, k) =>
    pick<AddSnapshot>({
      kind: k,
      name: name(o, k),
      snapshot: name(o, k, "snapshot"),
      id: int(o, k, "id", 1, snapshotIdMax),
      sizeBytes: volumeSize(o, k),
      at: at(o, k),
    }),
  removeSnapshot: (o, k) => pick<RemoveSnapshot>({ kind: k, name: name(o, k), snapshot: name(o, k, "snapshot") }),
  setSnapshotSchedule: (o, k) => {
    const everyMs = int(o, k, "everyMs", 0, snapshotEveryMsMax, " of milliseconds");
    if (everyMs !== 0 && everyMs < snapshotEveryMsMin) throw new Invalid(`${k}: field "everyMs" must be 0 (no schedule) or at least ${snapshotEveryMsMin} (a minute), not ${everyMs}`);
    const keep = int(o, k, "keep", everyMs === 0 ? 0 : 1, volumeSnapshotsMax);
    return pick<SetSnapshotSchedule>({ kind: k, name: name(o, k), everyMs, keep });
  },
  setVolumeQos: (o, k) => {
    const c = pick<SetVolumeQos>({ kind: k, name: name(o, k), maxIops: optIops(o, k), maxBandwidthBytes: optBandwidth(o, k), burstSec: optBurst(o, k) });
    if (c.maxIops === undefined && c.maxBandwidthBytes === undefined && c.burstSec === undefined) {
      throw new Invalid(`${k}: name at least one of maxIops, maxBandwidthBytes, burstSec`);
    }
    return c;
  },
};

export type Validated = { ok: true; command: CatalogCommand } | { ok: false; error: string };

/** The kind an object claims, when it is a known one (what a refusal of it is filed under). */
export function commandKindOf(input: unknown): CommandKind | undefined {
  if (!isPlainObject(input)) return undefined;
  const kind = get(input, "kind");
  return typeof kind === "string" && hasOwn(fieldsOf, kind) ? (kind as CommandKind) : undefined;
}

/** Checks anything that claims to be a command; never throws for any input. */
export function validateCommand(input: unknown): Validated {
  if (!isPlainObject(input)) return { ok: false, error: `a catalog command must be an object, not ${describe(input)}` };
  const k = commandKindOf(input);
  if (k === undefined) {
    return { ok: false, error: `unknown catalog command kind ${shown(get(input, "kind"))}; the kinds are ${commandKinds.join(", ")}` };
  }
  const allowed = fieldsOf[k];
  for (const key of Object.keys(input)) {
    if (!allowed.includes(key)) {
      return { ok: false, error: `${k}: unknown field ${shown(key)}; the fields are ${allowed.slice(1).join(", ")}` };
    }
  }
  try {
    return { ok: true, command: validators[k](input, k) };
  } catch (e) {
    if (e instanceof Invalid) return { ok: false, error: e.message };
    throw e;
  }
}

// ---- encoding ----

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

export class CatalogCommandError extends Error {
  override name = "CatalogCommandError";
}

/** Version byte + msgpack of the normalized command. Throws CatalogCommandError for an invalid one. */
export function encodeCommand(command: CatalogCommand): Uint8Array {
  const v = validateCommand(command);
  if (!v.ok) throw new CatalogCommandError(v.error);
  const out = encodeCommandUnchecked(v.command);
  if (out.length > catalogCommandBytesMax) throw new CatalogCommandError(`command of ${out.length} bytes is over the ${catalogCommandBytesMax}-byte limit`);
  return out;
}

/**
 * Version byte + msgpack of any value, without validation. Only for the
 * daemon's fault-injection hook (`pxd daemon --unsafe-debug-api`), which
 * commits invalid entries to show that every node refuses them alike.
 */
export function encodeCommandUnchecked(value: unknown): Uint8Array {
  const body = packr.pack(value);
  const out = new Uint8Array(1 + body.length);
  out[0] = catalogCommandVersion;
  out.set(body, 1);
  return out;
}

export type DecodedEntry = { ok: true; value: unknown } | { ok: false; error: string };

/** The value a log entry holds (length, version byte and msgpack checked), not yet validated; never throws. */
export function decodeEntry(bytes: Uint8Array): DecodedEntry {
  if (!(bytes instanceof Uint8Array)) return { ok: false, error: `a catalog command is bytes, not ${describe(bytes)}` };
  if (bytes.length === 0) return { ok: false, error: "empty catalog command" };
  if (bytes.length > catalogCommandBytesMax) {
    return { ok: false, error: `catalog command of ${bytes.length} bytes is over the ${catalogCommandBytesMax}-byte limit` };
  }
  if (bytes[0] !== catalogCommandVersion) {
    return { ok: false, error: `catalog command version ${bytes[0]} is not ${catalogCommandVersion}; is this node running an older pxd than the one that proposed it?` };
  }
  try {
    return { ok: true, value: packr.unpack(bytes.subarray(1)) as unknown };
  } catch (e) {
    const why = e instanceof Error ? e.message.slice(0, 80) : "undecodable";
    return { ok: false, error: `catalog command is not valid msgpack (${why})` };
  }
}

/** Decodes and validates bytes from the log; never throws. */
export function decodeCommand(bytes: Uint8Array): Validated {
  const d = decodeEntry(bytes);
  return d.ok ? validateCommand(d.value) : d;
}
