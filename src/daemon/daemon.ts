// The composition root of one pxd node: catalog, store, NBD listener and
// control API, wired together, and their orderly shutdown.

import { statfsSync } from "node:fs";
import { join } from "node:path";
import { ApiError, type Controller, type CreateVolumeRequest, type NodeStatus, type VolumeInfo } from "../api/types.js";
import { startApiServer, type ApiServer } from "../api/server.js";
import { formatSize } from "../base/sizes.js";
import { BufferPool } from "../base/buffer-pool.js";
import { checkConstants, readPoolBufferBytesMax, readPoolBufferBytesMin, readPoolBytesMax, sectorBytes, volumeBytesMax } from "../constants.js";
import type { ExportRegistry } from "../nbd/backend.js";
import { listenNbd, type NbdListener } from "../os/nbd-listener.js";
import { deferImmediate, NodeDisk } from "../os/node-disk.js";
import { Store } from "../store/store.js";
import { Catalog, type VolumeRecord } from "./catalog.js";
import { VolumeExport } from "./volume-export.js";

export interface DaemonOptions {
  dataDir: string;
  listen: string;
  nbdPort: number;
  apiPort: number;
  peerPort: number;
}

export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

const version = "0.1.0";

export class Daemon implements Controller {
  private readonly connections = new Map<string, number>();
  /** Large read buffers, recycled once the NBD server has written them (DESIGN §9). */
  private readonly readBuffers = new BufferPool(readPoolBufferBytesMin, readPoolBufferBytesMax, readPoolBytesMax);
  private nbd: NbdListener | undefined;
  private api: ApiServer | undefined;
  private readonly startedAt = process.hrtime.bigint();
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly options: DaemonOptions,
    private readonly catalog: Catalog,
    private readonly store: Store,
    private readonly log: Logger,
  ) {}

  static async start(options: DaemonOptions, log: Logger): Promise<Daemon> {
    checkConstants();
    const catalog = await Catalog.open(join(options.dataDir, "catalog"));
    let store: Store;
    try {
      const specs = catalog.list().map((v) => ({ groupId: v.id, sizeBytes: v.sizeBytes }));
      store = await Store.open({ disk: new NodeDisk(join(options.dataDir, "store")), defer: deferImmediate, log: (l) => log.info(l) }, specs);
    } catch (e) {
      await catalog.close();
      throw e;
    }
    const d = new Daemon(options, catalog, store, log);
    try {
      d.nbd = await listenNbd({
        host: options.listen,
        port: options.nbdPort,
        unixPath: join(options.dataDir, "nbd.sock"),
        registry: d.registry(),
        log,
      });
      d.api = await startApiServer({ host: options.listen, port: options.apiPort, controller: d, log: (l) => log.info(l) });
    } catch (e) {
      await d.stop();
      throw e;
    }
    const s = store.stats();
    log.info(`pxd ${version} node ${catalog.nodeId} up: ${catalog.list().length} volumes, ${s.recordsReplayed} log records replayed`);
    return d;
  }

  get nbdPort(): number {
    return this.nbd?.address.port ?? this.options.nbdPort;
  }

  /** Orderly shutdown: stop accepting, finish in-flight requests, flush, checkpoint, close. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const steps: [string, () => Promise<void>][] = [
        ["nbd", async () => this.nbd?.close()],
        ["api", async () => this.api?.close()],
        ["store", () => this.store.close()],
        ["catalog", () => this.catalog.close()],
      ];
      for (const [what, step] of steps) {
        try {
          await step();
        } catch (e) {
          this.log.error(`shutdown: closing ${what} failed: ${(e as Error).message}`);
        }
      }
    })();
    return this.stopping;
  }

  // ---- NBD exports ----

  private registry(): ExportRegistry {
    return {
      list: () => this.catalog.list().map((v) => ({ name: v.name, description: `pxd volume ${v.name}` })),
      defaultName: () => (this.catalog.list().length === 1 ? this.catalog.list()[0]!.name : undefined),
      open: (name) => {
        const v = this.catalog.get(name);
        if (v === undefined) return undefined;
        this.connections.set(name, (this.connections.get(name) ?? 0) + 1);
        return new VolumeExport(v, this.store, this.readBuffers, () => {
          this.connections.set(name, (this.connections.get(name) ?? 1) - 1);
        });
      },
    };
  }

  // ---- Controller (control API) ----

  async status(): Promise<NodeStatus> {
    const fsStat = statfsSync(this.options.dataDir);
    const total = fsStat.blocks * fsStat.bsize;
    const free = fsStat.bavail * fsStat.bsize;
    const stats = this.store.stats();
    return {
      nodeId: this.catalog.nodeId,
      version,
      dataDir: this.options.dataDir,
      listen: this.options.listen,
      nbdPort: this.nbdPort,
      apiPort: this.api?.port ?? this.options.apiPort,
      peerPort: this.options.peerPort,
      uptimeSec: Math.floor(Number(process.hrtime.bigint() - this.startedAt) / 1e9),
      health: "online",
      capacity: { totalBytes: total, freeBytes: free, usedBytes: stats.diskBytes ?? 0 },
      volumeCount: this.catalog.list().length,
      store: stats,
    };
  }

  async listVolumes(): Promise<VolumeInfo[]> {
    return this.catalog.list().map((v) => this.info(v));
  }

  async inspectVolume(name: string): Promise<VolumeInfo> {
    return this.info(this.mustGet(name));
  }

  async createVolume(request: CreateVolumeRequest): Promise<VolumeInfo> {
    const repl = request.repl ?? 1;
    if (this.catalog.get(request.name)) {
      throw new ApiError(409, "exists", `volume "${request.name}" already exists; pick another name or delete it with "pxd volume delete ${request.name}"`);
    }
    if (repl !== 1) {
      throw new ApiError(400, "invalid", `volume "${request.name}" needs ${repl} replicas but this cluster has 1 node; use --repl 1 (replication across nodes is not built yet)`);
    }
    const size = request.sizeBytes;
    if (!Number.isSafeInteger(size) || size < 1024 * 1024 || size % sectorBytes !== 0 || size > volumeBytesMax) {
      throw new ApiError(400, "invalid", `volume size ${size} must be a multiple of ${sectorBytes} bytes between 1 MiB and ${formatSize(volumeBytesMax)}; e.g. --size 10G`);
    }
    const v = await this.catalog.create(request.name, size, repl);
    this.store.addGroup({ groupId: v.id, sizeBytes: v.sizeBytes });
    this.log.info(`volume ${v.name} created: ${formatSize(v.sizeBytes)}, id ${v.id}`);
    return this.info(v);
  }

  async deleteVolume(name: string): Promise<void> {
    const v = this.mustGet(name);
    const open = this.connections.get(name) ?? 0;
    if (open > 0) {
      throw new ApiError(409, "busy", `volume "${name}" has ${open} NBD connection(s); disconnect the clients (nbd-client -d, or stop nbdfuse/qemu) and try again`);
    }
    await this.catalog.remove(name);
    this.store.dropGroup(v.id);
    this.log.info(`volume ${name} deleted`);
  }

  metrics(): string {
    const lines: string[] = [];
    for (const [k, v] of Object.entries(this.store.stats())) {
      const name = `pxd_store_${k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)}`;
      lines.push(`# TYPE ${name} gauge`, `${name} ${v}`);
    }
    lines.push("# TYPE pxd_volumes gauge", `pxd_volumes ${this.catalog.list().length}`);
    for (const v of this.catalog.list()) {
      lines.push(`pxd_volume_allocated_bytes{volume="${v.name}"} ${this.store.allocatedBytes(v.id)}`);
      lines.push(`pxd_volume_connections{volume="${v.name}"} ${this.connections.get(v.name) ?? 0}`);
    }
    return lines.join("\n") + "\n";
  }

  private mustGet(name: string): VolumeRecord {
    const v = this.catalog.get(name);
    if (v === undefined) throw new ApiError(404, "not_found", `no volume named "${name}"; see "pxd volume list"`);
    return v;
  }

  private info(v: VolumeRecord): VolumeInfo {
    const host = this.options.listen.includes(":") ? `[${this.options.listen}]` : this.options.listen;
    return {
      id: v.id,
      name: v.name,
      sizeBytes: v.sizeBytes,
      repl: v.repl,
      createdAt: v.createdAt,
      state: "online",
      allocatedBytes: this.store.allocatedBytes(v.id),
      nbdUri: `nbd://${host}:${this.nbdPort}/${v.name}`,
      connections: this.connections.get(v.name) ?? 0,
      replicas: [{ node: this.catalog.nodeId, state: "in-sync" }],
    };
  }
}
