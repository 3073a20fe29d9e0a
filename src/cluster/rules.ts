// Field rules of the catalog that the control API and the CLI also check
// before anything is proposed, so a person hears the rule at once and in the
// same words; the catalog's validator (commands.ts) keeps them for every
// entry it applies. Imports only the limits: the CLI loads this.

import { formatSize } from "../base/sizes.js";
import { apiTokenIdChars, sectorBytes } from "../constants.js";

/**
 * Why a volume size is not whole sectors, or null when it is. The store maps
 * a volume in 512-byte sectors and refuses any other size, so a size that is
 * not a multiple would stop every node that holds a replica.
 */
export function volumeSizeSectorProblem(sizeBytes: number): string | null {
  if (sizeBytes % sectorBytes === 0) return null;
  const down = sizeBytes - (sizeBytes % sectorBytes);
  const nearest = down <= 0 ? `${down + sectorBytes}` : `${down} or ${down + sectorBytes}`;
  return `must be a multiple of ${sectorBytes} bytes (the sector size), not ${sizeBytes}; ${nearest} would do`;
}

/** An encrypted volume's data unit (src/replication/volume-cipher.ts): its size is whole units. */
export const encryptedUnitBytes = 4096;
/** The ciphers a volume may be encrypted with. */
export const volumeCiphers = ["aes-256-xts"] as const;
/** A wrapped 512-bit volume key: version, 12-byte nonce, 64 bytes, 16-byte tag, as hex (src/os/cluster-key.ts). */
export const wrappedVolumeKeyChars = 2 * (1 + 12 + 64 + 16);

/** Why a size does not suit an encrypted volume (whole 4 KiB data units), or null when it does. */
export function encryptedSizeProblem(sizeBytes: number): string | null {
  if (sizeBytes % encryptedUnitBytes === 0) return null;
  const up = sizeBytes + encryptedUnitBytes - (sizeBytes % encryptedUnitBytes);
  return `is ${sizeBytes} bytes, and an encrypted volume's size is a multiple of ${encryptedUnitBytes} bytes (its data unit); ${up} would do`;
}

/** An attachment's block device: /dev/ and a kernel device name (nbd0, loop3). */
export const attachDevicePattern = /^\/dev\/[a-z][a-z0-9]{0,30}$/;

/** An API token's id (src/api/token.ts): what a revokeToken command names. */
export const tokenIdPattern = new RegExp(`^[0-9a-f]{${apiTokenIdChars}}$`);

/** A volume's QoS limits in words, for logs and the CLI: "at most 200 IOPS and 1.00 MiB/s (bursts of 1 s)", or "no limits". */
export function qosSummary(maxIops: number, maxBandwidthBytes: number, burstSec: number): string {
  const parts = [maxIops > 0 ? `${maxIops} IOPS` : "", maxBandwidthBytes > 0 ? `${formatSize(maxBandwidthBytes)}/s` : ""].filter((p) => p !== "");
  return parts.length === 0 ? "no limits" : `at most ${parts.join(" and ")} (bursts of ${burstSec} s)`;
}
