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
 * Volume data read back does not match its block checksums: this node's copy
 * of those blocks is damaged (bit rot, a bad disk, a stray write). `blocks`
 * are block numbers (byte offset / checksumBlockBytes), `addresses` the log
 * address of each one's first sector, for the log line an operator reads.
 */
export class ChecksumError extends StoreError {
  constructor(
    readonly groupId: number,
    readonly blocks: readonly number[],
    readonly addresses: readonly number[],
    blockBytes: number,
    segmentBytes: number,
  ) {
    const first = blocks[0] ?? 0;
    const at = addresses[0] ?? 0;
    const where = at === 0 ? "" : ` (log segment ${Math.floor(at / segmentBytes)}, byte ${at % segmentBytes})`;
    super("EIO", `volume group ${groupId}: ${blocks.length} block(s) of ${blockBytes} bytes fail their checksum, the first at volume byte ${first * blockBytes}${where}`);
    this.name = "ChecksumError";
  }
}

/** A Raft entry's record fails its checksums: this node lost that entry's data. */
export class DamagedEntryError extends StoreError {
  constructor(
    readonly groupId: number,
    readonly index: number,
  ) {
    super("EIO", `Raft entry ${index} of group ${groupId} is damaged in this node's log`);
    this.name = "DamagedEntryError";
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
