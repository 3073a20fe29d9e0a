// The control API's wire types (HTTP/JSON, docs/formats/control-api.md) and the
// Controller the API server calls. The daemon implements Controller; the CLI,
// plugins and tests reach it only through src/api/client.ts.

export interface CapacityInfo {
  totalBytes: number;
  usedBytes: number;
  freeBytes: number;
}

export interface NodeInfo {
  /** The node's Raft id in the cluster. */
  id: number;
  name: string;
  address: string;
  nbdPort: number;
  apiPort: number;
  peerPort: number;
  /** up: this node hears from it (or it is this node); down: no live peer connection. */
  health: "up" | "down";
  /** What the catalog says (the meta leader's failure detector): placement uses only nodes that are up here. */
  catalogHealth: "up" | "down";
  capacityBytes: number;
  freeBytes: number;
  usedBytes: number;
  labels: Record<string, string>;
  draining: boolean;
  /** A voter of the meta group (the catalog's Raft group). */
  metaVoter: boolean;
  metaLeader: boolean;
}

/** A new node asks a member to be let in (POST /v1/cluster/join). */
export interface JoinRequest {
  id: number;
  name: string;
  address: string;
  nbdPort: number;
  apiPort: number;
  peerPort: number;
  capacityBytes: number;
  labels: Record<string, string>;
  /** Hex HMAC-SHA256 of the other fields with the cluster secret: only holders of the secret may join. */
  proof: string;
}

export interface JoinResponse {
  clusterId: string;
  /** The meta group's initial voters: the joining node starts its meta replica from them. */
  metaVoters: number[];
  peers: { id: number; host: string; port: number }[];
  /** The cluster CA: its certificate, and its key sealed under a key derived from the cluster secret (src/os/cluster-ca.ts); absent when the cluster has none. */
  ca?: { certPem: string; sealedKey: string };
}

export interface NodeStatus {
  nodeId: string;
  version: string;
  dataDir: string;
  listen: string;
  nbdPort: number;
  apiPort: number;
  peerPort: number;
  uptimeSec: number;
  /** degraded when `reasons` says why. */
  health: "online" | "degraded";
  /** One sentence per problem, each saying what to do: a node down, the store stopped, a Raft group stopped here, the disk nearly full. */
  reasons: string[];
  capacity: CapacityInfo;
  volumeCount: number;
  /** Store counters: log bytes, segments, GC and checkpoint progress. */
  store: Record<string, number>;
  clusterId: string;
  /**
   * This node's view of the catalog's Raft group (the meta group): its
   * leader's node id (0: none known), commit and applied index, and the latest
   * committed entries the catalog refused (part of the catalog's state: the
   * same on every node that applied as far).
   */
  catalog: {
    leader: number;
    commitIndex: number;
    appliedIndex: number;
    /** The latest catalog snapshot saved on this node (0: none); its log is compacted behind it. */
    snapshotIndex: number;
    /** The first meta-log entry this node still holds. */
    logFirstIndex: number;
    /** The catalog snapshot this node loaded when it started (0: none). */
    startSnapshotIndex: number;
    /** Entries after that snapshot it replayed from its own log at start (up to the last one it held). */
    startReplayedEntries: number;
    refusals: CatalogRefusalInfo[];
  };
  /** Every node of the cluster, this one included. */
  nodes: NodeInfo[];
  /** Sum over the nodes that are up. */
  pool: CapacityInfo;
  /** Block checksums on this node: damage found by reads and the scrub, and what was repaired. */
  integrity: IntegrityStatus;
}

export interface IntegrityStatus {
  /** Reads, GC copies and scrub steps that found blocks failing their checksum. */
  checksumErrors: number;
  /** Damaged blocks rewritten from another replica's good copy. */
  blocksRepaired: number;
  /** Damaged blocks no replica had a good copy of (reads of them fail with EIO). */
  blocksUnrepaired: number;
  scrub: {
    /** 0: no scheduled scrub (pxd daemon --scrub-interval 0). */
    intervalSec: number;
    bandwidthBytesPerSec: number;
    /** When the last scheduled pass over everything here finished, and when the next is due (ISO 8601). */
    lastPassAt: string;
    nextPassAt: string | null;
    running: boolean;
    bytesScrubbed: number;
    blocksDamaged: number;
    blocksRepaired: number;
    blocksUnrepaired: number;
  };
}

/** One volume's scrub on one node. */
export interface ScrubVolumeReport {
  volume: string;
  startedAt: string;
  /** Absent while it runs. */
  finishedAt?: string;
  /** Cut short: the replica left the node, or the node stopped. */
  interrupted: boolean;
  bytesScrubbed: number;
  blocksDamaged: number;
  blocksRepaired: number;
  blocksUnrepaired: number;
}

export interface ScrubNodeReport {
  nodeId: number;
  node: string;
  volumes: ScrubVolumeReport[];
  /** The node could not be asked (down, or it failed): why. */
  error?: string;
}

/** POST /v1/scrub: read and check data now, repairing what fails. */
export interface ScrubRequest {
  /** Only this volume, on every node that holds a replica of it; absent: every volume on every node. */
  volume?: string;
  /** Read at most this many bytes a second on each node (default: the node's --scrub-bandwidth). */
  bandwidthBytesPerSec?: number;
  /** On the answering node only (what the node a request reached sends the others). */
  local?: boolean;
}

export interface ScrubResponse {
  nodes: ScrubNodeReport[];
}

/** A cluster-wide setting, kept in the catalog (GET /v1/settings). */
export interface SettingInfo {
  key: string;
  value: number | string | boolean;
  defaultValue: number | string | boolean;
  /** Set by someone (else the value is the default). */
  set: boolean;
  doc: string;
}

/** PUT /v1/settings/KEY: the new value; null returns the setting to its default. */
export interface SetSettingRequest {
  value: number | string | boolean | null;
}

/** POST /v1/nodes/NODE/drain: start (true, the default) or stop draining the node. */
export interface DrainNodeRequest {
  draining?: boolean;
}

/** A committed catalog entry that applied as a refusal. */
export interface CatalogRefusalInfo {
  /** The entry's index in the catalog's log. */
  index: number;
  /** The command kind it claimed, or "unknown". */
  kind: string;
  /** invalid, not_found, exists, conflict, placement or limit. */
  code: string;
  error: string;
}

/**
 * POST /v1/debug/catalog-propose (only with `pxd daemon --unsafe-debug-api`):
 * exactly one field. `command`: any JSON value, committed as the version
 * byte and its msgpack, unvalidated; `hex`: the entry's bytes as they are.
 */
export interface DebugProposeRequest {
  command?: unknown;
  hex?: string;
}

/** How the entry applied on the catalog's leader. */
export interface DebugProposeResponse {
  index: number;
  ok: boolean;
  code?: string;
  error?: string;
}

/** The fault-injection hooks the API serves when the daemon runs with --unsafe-debug-api. */
export interface DebugController {
  catalogPropose(request: DebugProposeRequest): Promise<DebugProposeResponse>;
}

export type VolumeState = "online" | "damaged";

export interface ReplicaInfo {
  node: string;
  nodeId: number;
  state: "in-sync" | "catching-up" | "down" | "unknown";
  /** For a replica catching up: entries it holds of the leader's log, e.g. "1200/1500". */
  progress?: string;
  /** A copy of the volume (a Raft snapshot) the leader is sending it: how far, how fast, how long to go. */
  copy?: CopyProgress;
  leader: boolean;
}

export interface CopyProgress {
  /** Bytes of the volume's address space the copy has gone through (holes count: they cost nothing to send). */
  doneBytes: number;
  totalBytes: number;
  /** Average since the leader began this copy; 0 in its first second. */
  bytesPerSec: number;
  /** Seconds left at that rate; absent until there is a rate. */
  etaSec?: number;
  /** Only what changed while the replica was away (the rest it copies from its own data). */
  delta: boolean;
}

export interface VolumeInfo {
  id: number;
  name: string;
  sizeBytes: number;
  repl: number;
  createdAt: string;
  state: VolumeState;
  /** Bytes of the volume that hold data (not holes). */
  allocatedBytes: number;
  nbdUri: string;
  connections: number;
  replicas: ReplicaInfo[];
  /** The volume's Raft log on the node that answered (its leader when reachable): entries first..last are kept; below first they are compacted. */
  log?: { firstIndex: number; lastIndex: number };
  /** The last scrub of each replica, as its node reports it (inspect only; a node that did not answer is left out). */
  scrub?: (ScrubVolumeReport & { node: string })[];
  /** Several hosts may attach it read-write at once (created with --shared). */
  shared: boolean;
  /** Its data is encrypted at rest (created with --encrypted). */
  encrypted: boolean;
  /** The snapshot it was cloned from, as VOLUME@SNAPSHOT (absent: made empty). */
  clonedFrom?: string;
  /** The token name that created it; "" for a volume from before owners (only admins reach it). */
  owner: string;
  /** Hosts that have it attached as a block device. */
  attachments: AttachmentInfo[];
  /** Its snapshot schedule (pxd snapshot schedule), absent when it has none. */
  snapshotSchedule?: { everySec: number; keep: number };
  /** How many snapshots it has. */
  snapshots: number;
  /** Its QoS limits, on each node its requests enter (0: none). */
  qos: VolumeQosInfo;
  /** Its requests that waited for the limits or the node's fair share, on the node that answered (inspect only; absent with --no-metrics or before its first request there). */
  throttle?: VolumeThrottleInfo;
}

/** A snapshot of a volume (pxd snapshot): read-only, exported over NBD as VOLUME@NAME. */
export interface SnapshotInfo {
  volume: string;
  name: string;
  id: number;
  /** When it was taken (ISO 8601, the catalog leader's clock). */
  createdAt: string;
  /** The volume's size when it was taken. */
  sizeBytes: number;
  nbdUri: string;
  /** Inspect only: the nodes that hold it (a replica copied in after it was taken does not), and its space as the first of them counts it. */
  holders?: string[];
  /** Bytes it maps. */
  allocatedBytes?: number;
  /** Bytes only it maps: what deleting it frees. */
  exclusiveBytes?: number;
}

/** POST /v1/volumes/NAME/snapshots */
export interface CreateSnapshotRequest {
  name: string;
}

/** PUT /v1/volumes/NAME/snapshot-schedule: a snapshot every everySec (0: none), the newest `keep` scheduled ones kept. */
export interface SnapshotScheduleRequest {
  everySec: number;
  keep: number;
}

/** POST /v1/volumes/NAME/rollback */
export interface RollbackRequest {
  snapshot: string;
}

export interface RollbackResult {
  volume: string;
  snapshot: string;
  /** What the rollback proposed: bytes written from the snapshot, bytes trimmed (where it has holes). */
  writtenBytes: number;
  trimmedBytes: number;
}

/** A node's own view of a snapshot (GET .../snapshots/NAME?local=true): whether it holds it, and its space here. */
export interface SnapshotHolding {
  node: string;
  held: boolean;
  sizeBytes?: number;
  allocatedBytes?: number;
  exclusiveBytes?: number;
  /** The index of the volume's Raft entry that took it. */
  index?: number;
}

export interface VolumeQosInfo {
  /** Requests a second, reads and writes together. */
  maxIops: number;
  /** Bytes a second, read and written together. */
  maxBandwidthBytesPerSec: number;
  /** Seconds of the limits an idle volume saves up and may spend at once. */
  burstSec: number;
}

export interface VolumeThrottleInfo {
  node: string;
  /** Requests that waited for the volume's limits, and the seconds they waited in all. */
  throttledRequests: number;
  throttleWaitSec: number;
  /** Requests that waited for a slot in the node's fair share between volumes, and the seconds they waited. */
  queuedRequests: number;
  queueWaitSec: number;
}

/** One host's attachment of a volume, as the catalog records it. */
export interface AttachmentInfo {
  volume: string;
  host: string;
  /** The block device on that host; "" while its attach is under way. */
  device: string;
  via: "kernel" | "fuse";
  readOnly: boolean;
  /** The node serving the host's connection when it attached; "" when not known. */
  node: string;
  /** When the host attached (ISO 8601, the host's clock). */
  since: string;
}

/** POST /v1/volumes/NAME/attachments: records (or updates) this host's attachment; refused (409) while another host has it read-write. */
export interface AttachRequest {
  host: string;
  device?: string;
  via: "kernel" | "fuse";
  readOnly: boolean;
  node?: string;
}

/** PATCH /v1/volumes/NAME: what to change (ha-update: repl; volume update: the size and the QoS limits, 0 removing one); at least one field. */
export interface UpdateVolumeRequest {
  /** The replica count (ha-update). */
  repl?: number;
  /** Grow the volume to this size (whole sectors); the same size changes nothing, a smaller one is refused (409). */
  sizeBytes?: number;
  maxIops?: number;
  maxBandwidthBytesPerSec?: number;
  burstSec?: number;
}

export interface CreateVolumeRequest {
  name: string;
  sizeBytes: number;
  repl?: number;
  /** Put the replicas on exactly these nodes (names or ids); repl defaults to how many. */
  nodes?: string[];
  /** Replicas must sit in distinct zones (without it distinct zones are only preferred). */
  zones?: boolean;
  /** Several hosts may attach it read-write at once. */
  shared?: boolean;
  /** Who owns it (admin only; default: the caller's token name). */
  owner?: string;
  /** QoS limits (0 or absent: none). */
  maxIops?: number;
  maxBandwidthBytesPerSec?: number;
  burstSec?: number;
  /** Encrypt its data at rest with a key of its own, wrapped by the cluster key (the meta leader must have one). */
  encrypted?: boolean;
  /**
   * Make it a clone of this snapshot (pxd volume clone): sizeBytes must be the
   * snapshot's, and it is encrypted exactly when the source is. Its replicas on
   * nodes holding the snapshot share its extents; others are filled by a copy.
   */
  clone?: { volume: string; snapshot: string };
}

/** DELETE /v1/volumes/NAME?force=true: disconnect every NBD client of the volume on every node first. */
export interface DeleteVolumeOptions {
  force?: boolean;
}

/**
 * GET /v1/volumes/NAME/connections and POST /v1/volumes/NAME/disconnect: about
 * the answering node only, never forwarded (the node handling a delete asks
 * each node). `connections`: NBD connections open to the volume on this node;
 * after a disconnect, how many it closed.
 */
export interface NodeConnections {
  nodeId: number;
  node: string;
  connections: number;
}

export type ClusterEventKind =
  | "node-joined"
  | "node-removed"
  | "node-down"
  | "node-up"
  | "volume-created"
  | "volume-deleted"
  | "replica-added"
  | "replica-removed"
  | "replica-moved"
  | "leader-changed";

/** GET /v1/events: something that happened in the cluster, as the answering node saw it. */
export interface ClusterEvent {
  /** Numbered from 1 on each node; GET /v1/events?since=SEQ lists the later ones. */
  seq: number;
  /** ISO 8601. */
  at: string;
  kind: ClusterEventKind;
  node?: string;
  volume?: string;
  message: string;
}

export interface EventsResponse {
  /** The answering node's name. */
  node: string;
  events: ClusterEvent[];
}

/** One second of a volume's I/O (GET /v1/volumes/NAME/stats). */
export interface VolumeSampleInfo {
  /** ms since the epoch. */
  at: number;
  readIops: number;
  writeIops: number;
  readBytesPerSec: number;
  writeBytesPerSec: number;
  readLatencyMs: number;
  writeLatencyMs: number;
  inFlight: number;
}

/**
 * GET /v1/volumes/NAME/stats: the volume's I/O of the last two minutes, a
 * sample a second, summed over the nodes clients use (each node counts the
 * requests that enter through it); with ?local=true, the answering node's only.
 */
export interface VolumeStatsResponse {
  volume: string;
  samples: VolumeSampleInfo[];
  /** Nodes whose samples are in the sum, and those that did not answer. */
  nodes: string[];
  silent: string[];
}

/** What an API token may do (docs/security.md, "Roles"). */
export const roles = ["admin", "user", "read-only"] as const;
export type Role = (typeof roles)[number];

/** Who sent a request: its checked token's claims, the token itself (forwarded as it is, so the meta leader sees the same caller), and where it came from. */
export interface Caller {
  tokenId: string;
  name: string;
  role: Role;
  token: string;
  /** The peer address of the request ("ip:port"). */
  address: string;
}

/** POST /v1/auth/tokens (admin): a new token; name defaults to the role, ttlSec to a day. */
export interface CreateTokenRequest {
  role: Role;
  name?: string;
  ttlSec?: number;
}

export interface TokenInfo {
  token: string;
  id: string;
  name: string;
  role: Role;
  /** ISO 8601. */
  expiresAt: string;
}

/** POST /v1/auth/revocations (admin): no node accepts the token any more; expiresAt (ms) bounds how long that is remembered, absent: the longest token lifetime. */
export interface RevokeTokenRequest {
  id: string;
  expiresAt?: number;
}

/** One record of a node's audit log (docs/formats/audit-log.md). */
export interface AuditRecord {
  /** Sequence number on its node, from 1; continues across rotations. */
  seq: number;
  /** ISO 8601, the node's clock. */
  at: string;
  /** The node that wrote it. */
  node: string;
  /** The token's holder and id; "" when the request had no valid token. */
  who: string;
  tokenId: string;
  role: string;
  /** The request's peer address. */
  from: string;
  method: string;
  path: string;
  status: number;
  /** The error sentence of a refused or failed request. */
  error?: string;
}

/** GET /v1/audit?since=MS[&local=true]: records at or after `since`, from every node (or only the answering one). */
export interface AuditResponse {
  nodes: { node: string; records: AuditRecord[]; error?: string; chainBroken?: string }[];
}

/** Checks a bearer token (the daemon: signature, expiry, the catalog's revocations). */
export interface Authenticator {
  verify(token: string): { ok: true; claims: { id: string; name: string; role: Role } } | { ok: false; why: string };
}

/** What the API server tells the audit log of one request (the daemon adds the time, its node and the chain). */
export type AuditEvent = Omit<AuditRecord, "seq" | "at" | "node">;

/** GET /v1/audit query: since (ms since the epoch), local (only the answering node). */
export interface AuditQuery {
  sinceMs: number;
  local: boolean;
}

/** Error body of every non-2xx answer: { error: { code, message } }. */
export interface ApiErrorBody {
  error: { code: string; message: string };
}

/** An error with the HTTP status and a message that says what to do. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export interface Controller {
  status(): Promise<NodeStatus>;
  listVolumes(caller: Caller): Promise<VolumeInfo[]>;
  /** Throws ApiError(404, "not_found") for an unknown name. */
  inspectVolume(name: string, caller: Caller): Promise<VolumeInfo>;
  /** Throws ApiError(409, "exists") or ApiError(400, "invalid") with a message saying what to do. */
  createVolume(request: CreateVolumeRequest, caller: Caller): Promise<VolumeInfo>;
  /** Refused (409 busy) while any node serves the volume or does not answer, unless forced; forced, every node disconnects its clients first. */
  deleteVolume(name: string, options: DeleteVolumeOptions, caller: Caller): Promise<void>;
  /** This node's NBD connections to the volume (0 for a name it does not know). */
  volumeConnections(name: string, caller: Caller): Promise<NodeConnections>;
  /** Closes this node's NBD connections to the volume and keeps new ones out while its delete runs. */
  disconnectVolume(name: string, caller: Caller): Promise<NodeConnections>;
  /** Changes the replica count; the volume's leader then adds or removes replicas in the background. */
  updateVolume(name: string, request: UpdateVolumeRequest, caller: Caller): Promise<VolumeInfo>;
  /** Takes a snapshot (forwarded to the meta leader): 409 when the name is taken or the volume has the most snapshots it may. */
  createSnapshot(volume: string, request: CreateSnapshotRequest, caller: Caller): Promise<SnapshotInfo>;
  /** The volume's snapshots, or every reachable volume's (volume undefined). */
  listSnapshots(volume: string | undefined, caller: Caller): Promise<SnapshotInfo[]>;
  inspectSnapshot(volume: string, snapshot: string, caller: Caller): Promise<SnapshotInfo>;
  /** Whether this node holds the snapshot, and its space here (what inspect asks each replica node). */
  snapshotHolding(volume: string, snapshot: string, caller: Caller): Promise<SnapshotHolding>;
  deleteSnapshot(volume: string, snapshot: string, caller: Caller): Promise<void>;
  /** Sets or clears the volume's snapshot schedule (forwarded to the meta leader). */
  setSnapshotSchedule(volume: string, request: SnapshotScheduleRequest, caller: Caller): Promise<VolumeInfo>;
  /** Makes the volume what the snapshot holds; refused (409) while the volume is attached or served to an NBD client. */
  rollbackVolume(volume: string, request: RollbackRequest, caller: Caller): Promise<RollbackResult>;
  /** Records a host's attachment (forwarded to the meta leader); 409 while another host has the volume read-write and it is not shared. */
  attachVolume(name: string, request: AttachRequest, caller: Caller): Promise<VolumeInfo>;
  /** Drops a host's attachment; a host without one is not an error. */
  detachVolume(name: string, host: string, caller: Caller): Promise<void>;
  /** Every attachment in the catalog, by volume then host. */
  listAttachments(caller: Caller): Promise<AttachmentInfo[]>;
  /** HOST:PORT of each node that serves the volume over NBD, the ones best to use first (the attach agent's node list). */
  volumeServers(name: string): Promise<string[]>;
  /** Prometheus text exposition for GET /metrics. */
  metrics(): Promise<string>;
  /** This node's events after `sinceSeq` (GET /v1/events). */
  events(sinceSeq: number): Promise<EventsResponse>;
  /** The volume's recent I/O samples, summed over every node, or this node's only (local). */
  /** A user's token reaches only its own volumes' samples, as for inspect. */
  volumeStats(name: string, local: boolean, caller: Caller): Promise<VolumeStatsResponse>;
  listNodes(): Promise<NodeInfo[]>;
  /** Admits a node (forwarded to the meta leader); throws ApiError(403) for a bad proof. */
  join(request: JoinRequest): Promise<JoinResponse>;
  /** Scrubs now and waits for it: on every node concerned, or (local) on this one. */
  scrub(request: ScrubRequest): Promise<ScrubResponse>;
  /** The last scrub report of each volume on this node (GET /v1/scrub). */
  scrubStatus(): Promise<ScrubResponse>;
  /** Every setting the catalog knows, with its value. */
  listSettings(): Promise<SettingInfo[]>;
  /** Throws ApiError(400) for an unknown key or a value the setting refuses. */
  setSetting(key: string, request: SetSettingRequest, caller: Caller): Promise<SettingInfo>;
  /** Marks a node (name or id) draining, or not: the meta leader moves its replicas to other nodes, one volume at a time. */
  drainNode(node: string, request: DrainNodeRequest, caller: Caller): Promise<NodeInfo>;
  /** Removes a node that is down from the catalog and the catalog's group; refused (409) while it holds replicas, unless forced. */
  removeNode(node: string, options: { force: boolean }, caller: Caller): Promise<void>;
  /** The cluster's id (public: a restarted node checks it belongs to the cluster it names with --join). */
  clusterId(): string;
  /** Signs a new token (admin). */
  createToken(request: CreateTokenRequest, caller: Caller): Promise<TokenInfo>;
  /** Records the revocation in the catalog, so every node refuses the token (admin). */
  revokeToken(request: RevokeTokenRequest, caller: Caller): Promise<{ id: string; revoked: boolean }>;
  /** Audit records at or after a time: this node's, or every node's (admin). */
  audit(query: AuditQuery, caller: Caller): Promise<AuditResponse>;
}
