// The control API's wire types (HTTP/JSON, docs/formats/control-api.md) and the
// Controller the API server calls. The daemon implements Controller; the CLI,
// plugins and tests reach it only through src/api/client.ts.

export interface CapacityInfo {
  totalBytes: number;
  usedBytes: number;
  freeBytes: number;
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
  health: "online" | "degraded";
  capacity: CapacityInfo;
  volumeCount: number;
  /** Store counters: log bytes, segments, GC and checkpoint progress. */
  store: Record<string, number>;
}

export type VolumeState = "online" | "damaged";

export interface ReplicaInfo {
  node: string;
  state: "in-sync" | "catching-up" | "down";
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
}

export interface CreateVolumeRequest {
  name: string;
  sizeBytes: number;
  repl?: number;
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
  listVolumes(): Promise<VolumeInfo[]>;
  /** Throws ApiError(404, "not_found") for an unknown name. */
  inspectVolume(name: string): Promise<VolumeInfo>;
  /** Throws ApiError(409, "exists") or ApiError(400, "invalid") with a message saying what to do. */
  createVolume(request: CreateVolumeRequest): Promise<VolumeInfo>;
  deleteVolume(name: string): Promise<void>;
  /** Prometheus text exposition for GET /metrics. */
  metrics(): string;
}
