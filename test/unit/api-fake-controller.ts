// A small in-memory Controller for the API and CLI tests: volumes in a Map,
// errors thrown the way the daemon's controller throws them.

import {
  ApiError,
  type AttachmentInfo,
  type AttachRequest,
  type AuditResponse,
  type Caller,
  type Controller,
  type CreateTokenRequest,
  type RevokeTokenRequest,
  type TokenInfo,
  type CreateVolumeRequest,
  type UpdateVolumeRequest,
  type DeleteVolumeOptions,
  type DrainNodeRequest,
  type JoinRequest,
  type JoinResponse,
  type NodeConnections,
  type NodeInfo,
  type NodeStatus,
  type ScrubRequest,
  type ScrubResponse,
  type SetSettingRequest,
  type SettingInfo,
  type VolumeInfo,
  type EventsResponse,
  type VolumeStatsResponse,
  type CreateSnapshotRequest,
  type RollbackRequest,
  type RollbackResult,
  type SnapshotHolding,
  type SnapshotInfo,
  type SnapshotScheduleRequest,
} from "../../src/api/types.js";

export class FakeController implements Controller {
  readonly volumes = new Map<string, VolumeInfo>();
  private nextId = 1;
  /** What status() reports as the reasons the node is degraded. */
  reasons: string[] = [];
  /** What status() reports as the catalog's refused entries. */
  refusals: NodeStatus["catalog"]["refusals"] = [];
  /** Set to make the next call of any method throw this (then cleared). */
  failNext: unknown = null;
  /** Calls seen, "method name" strings, for asserting what reached the controller. */
  readonly calls: string[] = [];

  status(): Promise<NodeStatus> {
    this.seen("status");
    return Promise.resolve({
      nodeId: "n1",
      version: "0.1.0-test",
      dataDir: "/tmp/pxd-test/node1",
      listen: "127.0.0.1",
      nbdPort: 10809,
      apiPort: 9001,
      peerPort: 9002,
      uptimeSec: 3725,
      health: this.reasons.length === 0 ? "online" : "degraded",
      reasons: this.reasons,
      capacity: { totalBytes: 10 * 1024 ** 3, usedBytes: 1024 ** 3, freeBytes: 9 * 1024 ** 3 },
      volumeCount: this.volumes.size,
      store: { logBytes: 4096, segments: 1 },
      clusterId: "c0ffee",
      catalog: { leader: 1, commitIndex: 1, appliedIndex: 1, snapshotIndex: 0, logFirstIndex: 1, startSnapshotIndex: 0, startReplayedEntries: 1, refusals: this.refusals },
      nodes: [this.node],
      pool: { totalBytes: 10 * 1024 ** 3, usedBytes: 1024 ** 3, freeBytes: 9 * 1024 ** 3 },
      integrity: {
        checksumErrors: 0,
        blocksRepaired: 0,
        blocksUnrepaired: 0,
        scrub: {
          intervalSec: 604800,
          bandwidthBytesPerSec: 32 * 1024 ** 2,
          lastPassAt: "2026-01-01T00:00:00.000Z",
          nextPassAt: "2026-01-08T00:00:00.000Z",
          running: false,
          bytesScrubbed: 0,
          blocksDamaged: 0,
          blocksRepaired: 0,
          blocksUnrepaired: 0,
        },
      },
    });
  }

  readonly node: NodeInfo = {
    id: 7,
    name: "n1",
    address: "127.0.0.1",
    nbdPort: 10809,
    apiPort: 9001,
    peerPort: 9002,
    health: "up",
    catalogHealth: "up",
    capacityBytes: 10 * 1024 ** 3,
    freeBytes: 9 * 1024 ** 3,
    usedBytes: 1024 ** 3,
    labels: {},
    draining: false,
    metaVoter: true,
    metaLeader: true,
  };

  listNodes(): Promise<NodeInfo[]> {
    this.seen("listNodes");
    return Promise.resolve([this.node]);
  }

  clusterId(): string {
    return "c0ffee";
  }

  createToken(request: CreateTokenRequest, caller: Caller): Promise<TokenInfo> {
    this.seen(`createToken ${request.role} ${request.name ?? "-"} by ${caller.name}`);
    return Promise.resolve({ token: "pxd1.fake.token", id: "0123456789abcdef", name: request.name ?? request.role, role: request.role, expiresAt: "2026-01-02T00:00:00.000Z" });
  }

  audit(): Promise<AuditResponse> {
    this.seen("audit");
    return Promise.resolve({ nodes: [] });
  }

  revokeToken(request: RevokeTokenRequest): Promise<{ id: string; revoked: boolean }> {
    this.seen(`revokeToken ${request.id}`);
    return Promise.resolve({ id: request.id, revoked: true });
  }

  join(request: JoinRequest): Promise<JoinResponse> {
    this.seen(`join ${request.id}`);
    if (request.proof !== "good") return Promise.reject(new ApiError(403, "forbidden", "the join request does not prove the cluster secret"));
    return Promise.resolve({ clusterId: "c0ffee", metaVoters: [7], peers: [{ id: 7, host: "127.0.0.1", port: 9002 }] });
  }

  listVolumes(): Promise<VolumeInfo[]> {
    this.seen("listVolumes");
    return Promise.resolve([...this.volumes.values()]);
  }

  inspectVolume(name: string): Promise<VolumeInfo> {
    this.seen(`inspectVolume ${name}`);
    const v = this.volumes.get(name);
    if (!v) return Promise.reject(new ApiError(404, "not_found", `no volume named "${name}"; list them with "pxd volume list"`));
    return Promise.resolve(v);
  }

  createVolume(request: CreateVolumeRequest): Promise<VolumeInfo> {
    this.seen(`createVolume ${request.name} ${request.sizeBytes} ${request.repl ?? "-"}`);
    if (this.volumes.has(request.name)) {
      return Promise.reject(
        new ApiError(409, "exists", `volume "${request.name}" already exists; pick another name or delete it with "pxd volume delete ${request.name}"`),
      );
    }
    if ((request.repl ?? 1) > 1) {
      return Promise.reject(new ApiError(400, "invalid", `volume "${request.name}" needs ${request.repl} replicas but only 1 node is up; add a node or use --repl 1`));
    }
    const v: VolumeInfo = {
      id: this.nextId++,
      name: request.name,
      sizeBytes: request.sizeBytes,
      repl: request.repl ?? 1,
      createdAt: "2026-01-01T00:00:00.000Z",
      state: "online",
      allocatedBytes: 0,
      snapshots: 0,
      owner: "admin",
      nbdUri: `nbd://127.0.0.1:10809/${request.name}`,
      connections: 0,
      replicas: [{ node: "n1", nodeId: 7, state: "in-sync", leader: true }],
      shared: request.shared === true,
      encrypted: request.encrypted === true,
      attachments: [],
      qos: { maxIops: request.maxIops ?? 0, maxBandwidthBytesPerSec: request.maxBandwidthBytesPerSec ?? 0, burstSec: request.burstSec ?? 1 },
    };
    this.volumes.set(v.name, v);
    return Promise.resolve(v);
  }

  attachVolume(name: string, request: AttachRequest): Promise<VolumeInfo> {
    this.seen(`attachVolume ${name} ${request.host}`);
    const v = this.volumes.get(name);
    if (!v) return Promise.reject(new ApiError(404, "not_found", `no volume named "${name}"`));
    v.attachments = [...v.attachments.filter((a) => a.host !== request.host), { volume: name, host: request.host, device: request.device ?? "", via: request.via, readOnly: request.readOnly, node: request.node ?? "", since: "2026-01-01T00:00:00.000Z" }];
    return Promise.resolve(v);
  }

  detachVolume(name: string, host: string): Promise<void> {
    this.seen(`detachVolume ${name} ${host}`);
    const v = this.volumes.get(name);
    if (v) v.attachments = v.attachments.filter((a) => a.host !== host);
    return Promise.resolve();
  }

  listAttachments(): Promise<AttachmentInfo[]> {
    this.seen("listAttachments");
    return Promise.resolve([...this.volumes.values()].flatMap((v) => v.attachments));
  }

  readonly snapshots: SnapshotInfo[] = [];

  createSnapshot(volume: string, request: CreateSnapshotRequest): Promise<SnapshotInfo> {
    this.seen(`createSnapshot ${volume} ${request.name}`);
    const v = this.volumes.get(volume);
    if (v === undefined) return Promise.reject(new ApiError(404, "not_found", `no volume named "${volume}"`));
    if (this.snapshots.some((s) => s.volume === volume && s.name === request.name)) return Promise.reject(new ApiError(409, "exists", `volume ${volume} has a snapshot named "${request.name}" already`));
    const s: SnapshotInfo = { volume, name: request.name, id: this.snapshots.length + 1, createdAt: "2026-01-01T00:00:00.000Z", sizeBytes: v.sizeBytes, nbdUri: `nbd://127.0.0.1:10809/${volume}@${request.name}` };
    this.snapshots.push(s);
    return Promise.resolve(s);
  }

  listSnapshots(volume: string | undefined): Promise<SnapshotInfo[]> {
    this.seen(`listSnapshots ${volume ?? "*"}`);
    return Promise.resolve(this.snapshots.filter((s) => volume === undefined || s.volume === volume));
  }

  inspectSnapshot(volume: string, snapshot: string): Promise<SnapshotInfo> {
    this.seen(`inspectSnapshot ${volume} ${snapshot}`);
    const s = this.snapshots.find((x) => x.volume === volume && x.name === snapshot);
    return s === undefined ? Promise.reject(new ApiError(404, "not_found", `volume ${volume} has no snapshot named "${snapshot}"`)) : Promise.resolve({ ...s, holders: ["n1"], allocatedBytes: 4096, exclusiveBytes: 0 });
  }

  snapshotHolding(volume: string, snapshot: string): Promise<SnapshotHolding> {
    this.seen(`snapshotHolding ${volume} ${snapshot}`);
    return Promise.resolve({ node: "n1", held: this.snapshots.some((x) => x.volume === volume && x.name === snapshot) });
  }

  deleteSnapshot(volume: string, snapshot: string): Promise<void> {
    this.seen(`deleteSnapshot ${volume} ${snapshot}`);
    const i = this.snapshots.findIndex((x) => x.volume === volume && x.name === snapshot);
    if (i < 0) return Promise.reject(new ApiError(404, "not_found", `volume ${volume} has no snapshot named "${snapshot}"`));
    this.snapshots.splice(i, 1);
    return Promise.resolve();
  }

  setSnapshotSchedule(volume: string, request: SnapshotScheduleRequest): Promise<VolumeInfo> {
    this.seen(`setSnapshotSchedule ${volume} ${request.everySec} ${request.keep}`);
    const v = this.volumes.get(volume);
    if (v === undefined) return Promise.reject(new ApiError(404, "not_found", `no volume named "${volume}"`));
    if (request.everySec === 0) delete v.snapshotSchedule;
    else v.snapshotSchedule = { ...request };
    return Promise.resolve(v);
  }

  rollbackVolume(volume: string, request: RollbackRequest): Promise<RollbackResult> {
    this.seen(`rollbackVolume ${volume} ${request.snapshot}`);
    if (!this.snapshots.some((x) => x.volume === volume && x.name === request.snapshot)) return Promise.reject(new ApiError(404, "not_found", `volume ${volume} has no snapshot named "${request.snapshot}"`));
    return Promise.resolve({ volume, snapshot: request.snapshot, writtenBytes: 0, trimmedBytes: 0 });
  }

  volumeServers(name: string): Promise<string[]> {
    this.seen(`volumeServers ${name}`);
    return this.volumes.has(name) ? Promise.resolve(["127.0.0.1:10809"]) : Promise.reject(new ApiError(404, "not_found", `no volume named "${name}"`));
  }

  deleteVolume(name: string, options: DeleteVolumeOptions = {}): Promise<void> {
    this.seen(`deleteVolume ${name}${options.force === true ? " force" : ""}`);
    if (!this.volumes.delete(name)) return Promise.reject(new ApiError(404, "not_found", `no volume named "${name}"`));
    return Promise.resolve();
  }

  volumeConnections(name: string): Promise<NodeConnections> {
    this.seen(`volumeConnections ${name}`);
    return Promise.resolve({ nodeId: 7, node: "n1", connections: this.volumes.get(name)?.connections ?? 0 });
  }

  disconnectVolume(name: string): Promise<NodeConnections> {
    this.seen(`disconnectVolume ${name}`);
    return Promise.resolve({ nodeId: 7, node: "n1", connections: 0 });
  }

  updateVolume(name: string, request: UpdateVolumeRequest): Promise<VolumeInfo> {
    this.seen(`updateVolume ${name} ${request.repl}${request.sizeBytes !== undefined ? ` size ${request.sizeBytes}` : ""}`);
    const v = this.volumes.get(name);
    if (v === undefined) return Promise.reject(new ApiError(404, "not_found", `no volume named "${name}"`));
    if (request.repl !== undefined) v.repl = request.repl;
    if (request.sizeBytes !== undefined) v.sizeBytes = request.sizeBytes;
    if (request.maxIops !== undefined) v.qos.maxIops = request.maxIops;
    if (request.maxBandwidthBytesPerSec !== undefined) v.qos.maxBandwidthBytesPerSec = request.maxBandwidthBytesPerSec;
    if (request.burstSec !== undefined) v.qos.burstSec = request.burstSec;
    return Promise.resolve(v);
  }

  scrub(request: ScrubRequest): Promise<ScrubResponse> {
    this.seen(`scrub ${request.volume ?? "-"}`);
    const volumes = [...this.volumes.values()].filter((v) => request.volume === undefined || v.name === request.volume);
    const report = (name: string): ScrubResponse["nodes"][number]["volumes"][number] => ({
      volume: name,
      startedAt: "2026-01-01T00:00:00.000Z",
      finishedAt: "2026-01-01T00:00:01.000Z",
      interrupted: false,
      bytesScrubbed: 4096,
      blocksDamaged: 0,
      blocksRepaired: 0,
      blocksUnrepaired: 0,
    });
    return Promise.resolve({ nodes: [{ nodeId: 7, node: "n1", volumes: volumes.map((v) => report(v.name)) }] });
  }

  readonly settings: SettingInfo[] = [
    { key: "overcommitPercent", value: 100, defaultValue: 100, set: false, doc: "bytes a node may have promised to volumes, as a percentage of its capacity" },
    { key: "clusterName", value: "pxd", defaultValue: "pxd", set: false, doc: "a name for people" },
  ];

  listSettings(): Promise<SettingInfo[]> {
    this.seen("listSettings");
    return Promise.resolve(this.settings);
  }

  setSetting(key: string, request: SetSettingRequest): Promise<SettingInfo> {
    this.seen(`setSetting ${key} ${JSON.stringify(request.value)}`);
    const s = this.settings.find((x) => x.key === key);
    if (s === undefined) return Promise.reject(new ApiError(400, "invalid", `setSetting: unknown setting "${key}"; the settings are ${this.settings.map((x) => x.key).join(", ")}`));
    s.value = request.value ?? s.defaultValue;
    s.set = request.value !== null;
    return Promise.resolve(s);
  }

  drainNode(node: string, request: DrainNodeRequest): Promise<NodeInfo> {
    this.seen(`drainNode ${node} ${String(request.draining ?? "-")}`);
    if (node !== this.node.name && node !== String(this.node.id)) return Promise.reject(new ApiError(404, "not_found", `no node named or numbered "${node}"`));
    this.node.draining = request.draining ?? true;
    return Promise.resolve(this.node);
  }

  removeNode(node: string, options: { force: boolean }): Promise<void> {
    this.seen(`removeNode ${node}${options.force ? " force" : ""}`);
    return Promise.reject(new ApiError(409, "conflict", `node ${node} is up; stop its daemon first`));
  }

  scrubStatus(): Promise<ScrubResponse> {
    this.seen("scrubStatus");
    return Promise.resolve({ nodes: [{ nodeId: 7, node: "n1", volumes: [] }] });
  }

  async events(sinceSeq: number): Promise<EventsResponse> {
    this.seen("events");
    const all: EventsResponse["events"] = [{ seq: 1, at: new Date(0).toISOString(), kind: "volume-created", volume: "db", message: "volume db was created, replicas on n1" }];
    return { node: "n1", events: all.filter((e) => e.seq > sinceSeq) };
  }

  async volumeStats(name: string, _local: boolean): Promise<VolumeStatsResponse> {
    this.seen("volumeStats");
    if (!this.volumes.has(name)) throw new ApiError(404, "not_found", `no volume named "${name}"; list them with "pxd volume list"`);
    return { volume: name, samples: [], nodes: ["n1"], silent: [] };
  }

  async metrics(): Promise<string> {
    this.seen("metrics");
    return `# HELP pxd_volumes Volumes on this node.\n# TYPE pxd_volumes gauge\npxd_volumes ${this.volumes.size}\n`;
  }

  private seen(call: string): void {
    this.calls.push(call);
    const failure = this.failNext;
    if (failure !== null) {
      this.failNext = null;
      throw failure;
    }
  }
}
