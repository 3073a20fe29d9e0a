// Encrypted volumes' keys on this node (docs/architecture.md, "Encryption at
// rest"): a new volume's data key, made and wrapped on the meta leader, and
// the cipher of each encrypted volume this node serves, unwrapped once from
// the catalog's record with this node's cluster key. A node without the key
// (or with another) serves none of them: its NBD handshake refuses the export
// and a request that reaches it as leader fails with EIO, each saying why.

import { ApiError } from "../api/types.js";
import { assert } from "../base/assert.js";
import { catalogVolumesMax } from "../constants.js";
import type { CatalogVolume } from "../cluster/catalog.js";
import type { VolumeEncryption } from "../cluster/commands.js";
import { wrappedVolumeKeyChars } from "../cluster/rules.js";
import { clusterKeyEnv, newDataKey, type KeySource } from "../os/cluster-key.js";
import { xtsCipherName, xtsKeyBytes, xtsVolumeCipher } from "../os/xts-cipher.js";
import type { MissingKey, VolumeCipher } from "../replication/volume-cipher.js";

/** What a wrapped volume key is bound to: another cluster's record, or another volume's, does not unwrap. */
export function volumeKeyAad(clusterId: string, volume: string): string {
  return `pxd volume key v1; cluster ${clusterId}; volume ${volume}`;
}

export class VolumeKeys {
  /**
   * By volume group id: its cipher, why it cannot be opened here, or null for
   * a plain volume. Kept: a volume's encryption never changes and ids are
   * never reused. Bounded: cleared when full, and filled again as used.
   */
  private readonly byGroup = new Map<number, VolumeCipher | MissingKey | null>();

  constructor(
    private readonly source: KeySource | undefined,
    private readonly nodeId: number,
    private readonly clusterId: () => string,
    private readonly warn: (message: string) => void,
  ) {}

  /** A new volume's encryption record; refused (400) on a node without the cluster key. */
  newEncryption(volume: string): VolumeEncryption {
    if (this.source === undefined) {
      throw new ApiError(400, "invalid", `volume "${volume}" cannot be encrypted: node ${this.nodeId}, which leads the catalog, has no cluster key; start every node with --cluster-key-file FILE (32 bytes, raw or hex) or ${clusterKeyEnv} set to the cluster key`);
    }
    const wrappedKey = this.source.wrap(newDataKey(xtsKeyBytes), volumeKeyAad(this.clusterId(), volume));
    assert(wrappedKey.length === wrappedVolumeKeyChars, "a wrapped volume key has the length the catalog checks");
    return { cipher: xtsCipherName, wrappedKey };
  }

  /** Volume `v`'s data key wrapped for a clone of it named `name` (the same key: the clone shares its extents as they are); refused (400) on a node without the key. */
  rewrapFor(v: CatalogVolume, name: string): VolumeEncryption {
    const e = v.encryption;
    assert(e !== null, "only an encrypted volume's key is rewrapped");
    const refuse = (why: string): ApiError => new ApiError(400, "invalid", `a clone of volume "${v.name}" is encrypted with its key, and node ${this.nodeId}, which leads the catalog, ${why}; start every node with --cluster-key-file FILE or ${clusterKeyEnv} set to the cluster key`);
    if (this.source === undefined) throw refuse("has no cluster key");
    let key: Buffer;
    try {
      key = this.source.unwrap(e.wrappedKey, volumeKeyAad(this.clusterId(), v.name));
    } catch (err) {
      throw refuse(`cannot open its key (${(err as Error).message})`);
    }
    return { cipher: e.cipher, wrappedKey: this.source.wrap(key, volumeKeyAad(this.clusterId(), name)) };
  }

  /**
   * The cipher of volume group `group` (`lookup` finds it in the catalog, only
   * the first time): null for a plain volume, MissingKey (logged once) where
   * this node cannot open its key, undefined while the catalog does not know it.
   */
  cipherOf(group: number, lookup: (group: number) => CatalogVolume | undefined): VolumeCipher | MissingKey | null | undefined {
    const known = this.byGroup.get(group);
    if (known !== undefined) return known;
    const v = lookup(group);
    if (v === undefined) return undefined;
    const cipher = v.encryption === null ? null : this.open(v, v.encryption);
    if (this.byGroup.size >= catalogVolumesMax) this.byGroup.clear();
    this.byGroup.set(group, cipher);
    if (cipher !== null && "missing" in cipher) this.warn(cipher.missing);
    return cipher;
  }

  private open(v: CatalogVolume, e: VolumeEncryption): VolumeCipher | MissingKey {
    const what = `volume "${v.name}" is encrypted and node ${this.nodeId}`;
    if (this.source === undefined) return { missing: `${what} has no cluster key, so it serves neither its data nor its snapshots; start the node with --cluster-key-file FILE or ${clusterKeyEnv} set to the cluster key` };
    try {
      return xtsVolumeCipher(this.source.unwrap(e.wrappedKey, volumeKeyAad(this.clusterId(), v.name)));
    } catch (err) {
      return { missing: `${what} cannot open its key: ${(err as Error).message}; start the node with the cluster key the volume was created under` };
    }
  }
}
