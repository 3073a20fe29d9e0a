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

/** An attachment's block device: /dev/ and a kernel device name (nbd0, loop3). */
export const attachDevicePattern = /^\/dev\/[a-z][a-z0-9]{0,30}$/;

/** An API token's id (src/api/token.ts): what a revokeToken command names. */
export const tokenIdPattern = new RegExp(`^[0-9a-f]{${apiTokenIdChars}}$`);

/** A volume's QoS limits in words, for logs and the CLI: "at most 200 IOPS and 1.00 MiB/s (bursts of 1 s)", or "no limits". */
export function qosSummary(maxIops: number, maxBandwidthBytes: number, burstSec: number): string {
  const parts = [maxIops > 0 ? `${maxIops} IOPS` : "", maxBandwidthBytes > 0 ? `${formatSize(maxBandwidthBytes)}/s` : ""].filter((p) => p !== "");
  return parts.length === 0 ? "no limits" : `at most ${parts.join(" and ")} (bursts of ${burstSec} s)`;
}
