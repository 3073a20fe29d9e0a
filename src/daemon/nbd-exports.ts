// What this node serves over NBD: every volume of the catalog (and each
// snapshot, as VOLUME@SNAPSHOT, read-only), to any client, whichever nodes
// hold its replicas (VolumeIo forwards to the leader). The registry the NBD
// server asks at each handshake; the count of open connections per export;
// the fence that keeps clients out of a volume a forced delete is
// disconnecting. With --nbd-tls-owners a TCP client reaches only the volumes
// whose owner is the identity it proved over TLS.

import { BufferPool } from "../base/buffer-pool.js";
import { printable } from "../base/printable.js";
import type { CatalogSnapshot, CatalogState, CatalogVolume } from "../cluster/index.js";
import { logFieldCharsMax, readPoolBufferBytesMax, readPoolBufferBytesMin, readPoolBytesMax, verifyOffThreadBytesMin } from "../constants.js";
import type { ExportRefusal, ExportRegistry, NbdClient } from "../nbd/backend.js";
import type { VolumeIo } from "../replication/volume-io.js";
import type { VolumeGate } from "./qos.js";
import type { VolumeKeys } from "./volume-keys.js";
import type { VolumeStats } from "./volume-stats.js";
import { ReplicatedVolumeExport, SnapshotExport } from "./volume-export.js";

/**
 * After a forced delete disconnected a volume's clients on this node, new
 * connections to it are refused until the catalog drops it, or this long
 * (a delete that never committed).
 */
const deleteFenceMs = 30_000;

/** What the exports need of their node. */
export interface ExportsContext {
  /** --nbd-tls-owners: a TCP client reaches only the volumes its TLS identity owns. */
  readonly tlsOwners: boolean;
  readonly io: VolumeIo;
  readonly volumeKeys: Pick<VolumeKeys, "cipherOf">;
  /** The catalog as this node has applied it now. */
  catalog(): CatalogState;
  /** Settles once this node's catalog has caught up with the leader's (bounded; never rejects). */
  catalogCatchUp(): Promise<void>;
  /** The snapshot's size as this node holds it, if it does. */
  snapshotSizeHere(v: CatalogVolume, s: CatalogSnapshot): number | undefined;
  /** The volume's QoS gate on this node (src/daemon/qos.ts). */
  gate(volume: string): VolumeGate;
  /** The volume's I/O counters on this node; undefined with --no-metrics. */
  statsFor(volume: string): VolumeStats | undefined;
  /** Closes the NBD server's connections to the export, telling the clients why; how many it closed. */
  closeExport(exportName: string, why: string): number;
  wallMs(): number;
  log: { warn(line: string): void };
}

export class NbdExports {
  /** Open NBD connections by export name. */
  private readonly connectionCount = new Map<string, number>();
  /** Volumes a forced delete is disconnecting: no NBD client may open them until this time (ms); at most one per catalog volume. */
  private readonly fenced = new Map<string, number>();
  private readonly readBuffers = new BufferPool(readPoolBufferBytesMin, readPoolBufferBytesMax, readPoolBytesMax, verifyOffThreadBytesMin);

  constructor(private readonly c: ExportsContext) {}

  /** NBD connections open to the export (a volume, or VOLUME@SNAPSHOT) on this node. */
  connections(exportName: string): number {
    return this.connectionCount.get(exportName) ?? 0;
  }

  /** Closes this node's NBD connections to the volume; a volume the catalog knows is fenced so no client reopens it before the delete applies. */
  disconnect(name: string): number {
    if (this.c.catalog().volumes.has(name)) this.fenced.set(name, this.c.wallMs() + deleteFenceMs);
    return this.c.closeExport(name, `volume ${name} is being deleted (--force): disconnected`);
  }

  /** The catalog dropped the volume: its fence goes with it. */
  volumeGone(name: string): void {
    this.fenced.delete(name);
  }

  registry(): ExportRegistry {
    const { c } = this;
    const defaultName = (): string | undefined => (c.catalog().volumes.size === 1 ? [...c.catalog().volumes.keys()][0] : undefined);
    // With --nbd-tls-owners a TCP client reaches the volumes its TLS identity owns; the same answer as "no such export" otherwise.
    const reaches = (v: CatalogVolume, client: NbdClient): boolean => !c.tlsOwners || client.local || (client.identity !== undefined && client.identity === v.owner);
    return {
      list: (client) => [...c.catalog().volumes.values()].filter((v) => reaches(v, client)).map((v) => ({ name: v.name, description: `pxd volume ${v.name}` })),
      defaultName,
      catchUp: (name) => {
        const known = name !== undefined && (name === "" ? defaultName() !== undefined : c.catalog().volumes.has(name));
        return known ? undefined : c.catalogCatchUp();
      },
      open: (name, client) => {
        const at = name.indexOf("@");
        if (at > 0) return this.openSnapshot(name.slice(0, at), name.slice(at + 1), client, reaches);
        const v = c.catalog().volumes.get(name);
        if (v === undefined || !reaches(v, client) || (this.fenced.get(name) ?? 0) > c.wallMs()) return undefined;
        const refused = this.keyRefusal(v, name, client);
        if (refused !== undefined) return refused;
        this.connectionCount.set(name, (this.connectionCount.get(name) ?? 0) + 1);
        const sizeNow = (): number => {
          const now = c.catalog().volumes.get(name);
          return now !== undefined && now.id === v.id ? now.sizeBytes : v.sizeBytes;
        };
        return new ReplicatedVolumeExport(v, sizeNow, c.io, this.readBuffers, () => {
          this.connectionCount.set(name, (this.connectionCount.get(name) ?? 1) - 1);
        }, c.gate(name), c.statsFor(name));
      },
    };
  }

  /** An encrypted volume's export on a node that cannot open its key: refused with the reason (never ciphertext served as data), and logged. */
  private keyRefusal(v: CatalogVolume, exportName: string, client: NbdClient): ExportRefusal | undefined {
    const k = this.c.volumeKeys.cipherOf(v.id, () => v);
    if (k === null || k === undefined || !("missing" in k)) return undefined;
    const who = client.local ? "a local client" : client.identity !== undefined ? `client ${printable(client.identity, logFieldCharsMax)}` : "a TCP client";
    this.c.log.warn(`NBD: export ${printable(exportName, logFieldCharsMax)} refused to ${who}: ${k.missing}`);
    return { refused: k.missing };
  }

  /** A snapshot's read-only export (VOLUME@SNAPSHOT); its connections count under that name, not the volume's. */
  private openSnapshot(volume: string, snapshot: string, client: NbdClient, reaches: (v: CatalogVolume, client: NbdClient) => boolean): SnapshotExport | ExportRefusal | undefined {
    const { c } = this;
    const v = c.catalog().volumes.get(volume);
    const s = v?.snapshots.find((x) => x.name === snapshot);
    if (v === undefined || s === undefined || !reaches(v, client)) return undefined;
    const name = `${volume}@${snapshot}`;
    const refused = this.keyRefusal(v, name, client);
    if (refused !== undefined) return refused;
    this.connectionCount.set(name, (this.connectionCount.get(name) ?? 0) + 1);
    return new SnapshotExport(v, s, c.snapshotSizeHere(v, s) ?? s.sizeBytes, c.io, this.readBuffers, () => {
      this.connectionCount.set(name, (this.connectionCount.get(name) ?? 1) - 1);
    }, c.gate(volume));
  }
}
