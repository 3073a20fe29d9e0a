// The boundary between the NBD protocol layer and whatever stores the data.
// src/nbd validates every request (range, flags, negotiated features) before
// calling a Backend, so an Export may assume offset + length <= sizeBytes and
// that the export is writable when a write arrives.

import type { ErrorKind } from "../base/error-kind.js";

/**
 * The one failure a backend may raise: its kind chooses the NBD error the
 * client sees (src/nbd/errors.ts). Anything else a backend throws is a bug
 * and ends the process (src/base/fail-stop.ts).
 */
export class BackendError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
  ) {
    super(message);
    this.name = "BackendError";
  }
}

/** One run of base:allocation status (NBD spec, "base:allocation" context). */
export interface AllocationExtent {
  lengthBytes: number;
  /** true: reads as zeroes and holds no data (NBD_STATE_HOLE | NBD_STATE_ZERO). */
  hole: boolean;
}

export interface Export {
  readonly name: string;
  readonly description: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** Preferred and minimum I/O sizes, for NBD_INFO_BLOCK_SIZE. */
  readonly blockBytesMin: number;
  readonly blockBytesPreferred: number;

  /** Synchronous where the data is local: returns the bytes (a buffer the caller owns until it calls release). */
  read(offsetBytes: number, lengthBytes: number): Buffer | Promise<Buffer>;
  /** Optional: the server is done with a buffer read() returned (it reached the socket or the connection died). */
  release?(buffer: Buffer): void;
  /** Resolves only when the data is durable. `data` are views the backend must not keep after it resolves. */
  write(offsetBytes: number, data: readonly Buffer[], lengthBytes: number, fua: boolean): Promise<void>;
  /** Resolves when every write acknowledged before it is durable. */
  flush(): Promise<void>;
  /** Deallocate; later reads return zeroes. */
  trim(offsetBytes: number, lengthBytes: number, fua: boolean): Promise<void>;
  /**
   * Zero the range; with noHole the range stays allocated. With fastZero the
   * client asked to fail fast (BackendError "ENOTSUP", export unchanged) unless
   * zeroing is cheaper than writing zeroes (NBD_CMD_FLAG_FAST_ZERO).
   */
  writeZeroes(offsetBytes: number, lengthBytes: number, fua: boolean, noHole: boolean, fastZero: boolean): Promise<void>;
  /** Allocation status from offsetBytes, covering at least one byte and at most lengthBytes. */
  blockStatus(offsetBytes: number, lengthBytes: number): AllocationExtent[] | Promise<AllocationExtent[]>;
  /** Optional NBD_CMD_CACHE: prefetch the range. Without it CACHE succeeds and does nothing. */
  cache?(offsetBytes: number, lengthBytes: number): Promise<void>;
  /**
   * Optional: called once when the connection that opened this Export is done
   * with it (after its last request settled), or right after an NBD_OPT_INFO.
   */
  close?(): void;
}

/** What the NBD server asks of the daemon: the exports that exist right now. */
/**
 * Who asks, as far as the connection shows it: the identity its client proved
 * over TLS (a checked certificate's subject CN, or a PSK identity; undefined
 * without), and whether it came through the local Unix socket.
 */
export interface NbdClient {
  readonly identity: string | undefined;
  readonly local: boolean;
}

/** An export that exists but is not served here: why, for the client (NBD_REP_ERR_POLICY) and the log. */
export interface ExportRefusal {
  refused: string;
}

export interface ExportRegistry {
  /** The exports this client may see (NBD_OPT_LIST). */
  list(client: NbdClient): readonly { name: string; description: string }[];
  /**
   * Opens an export for one connection; undefined when no such export exists,
   * or this client may not have it (the same answer: the name is not
   * revealed); a refusal when it exists but this server cannot serve it now,
   * with the sentence the client is told.
   */
  open(name: string, client: NbdClient): Export | ExportRefusal | undefined;
  /** The export served to a client that asks for the empty name, if any. */
  defaultName(): string | undefined;
  /**
   * Optional: a registry whose view may lag (a cluster node's copy of the
   * catalog, just restarted or behind a volume created elsewhere) returns a
   * promise that settles once it has caught up, when it cannot answer for
   * `name` (undefined: NBD_OPT_LIST) right now; undefined when it can. The
   * handshake asks at most once per connection and answers after the promise
   * settles, so an unknown name costs one bounded wait, not a wrong "no such
   * export".
   */
  catchUp?(name: string | undefined): Promise<void> | undefined;
}
