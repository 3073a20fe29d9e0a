// Errors the store raises. `code` follows errno names so the NBD layer can
// translate them in one place (src/nbd/errors.ts via the daemon's adapter).

export type StoreErrorCode = "EIO" | "ENOSPC" | "EINVAL" | "ESHUTDOWN" | "ENOENT";

export class StoreError extends Error {
  constructor(
    readonly code: StoreErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "StoreError";
  }
}

/**
 * The log holds a record that fails its checksum with valid, later-committed
 * records after it: acknowledged data is damaged. The store refuses to open
 * rather than drop it silently.
 */
export class CorruptionError extends Error {
  constructor(
    readonly segmentId: number,
    readonly position: number,
    detail: string,
  ) {
    super(`log corruption in segment ${segmentId} at byte ${position}: ${detail}`);
    this.name = "CorruptionError";
  }
}
