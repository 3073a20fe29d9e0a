// The failures a volume request may meet on this node, as kinds
// (src/base/error-kind.ts): the one map from this node's errors to the kind a
// client sees, here or on the node that forwarded the request.

import type { ErrorKind } from "../base/error-kind.js";
import { StoreError } from "../store/errors.js";

/**
 * A volume request failed: as the node that served it reported (a forwarded
 * request), or as found here (no such volume, no leader within the deadline).
 */
export class VolumeIoError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
  ) {
    super(message);
    this.name = "VolumeIoError";
  }
}

/**
 * The kind of an expected failure of a volume request; undefined for anything
 * else, which is a bug (the caller hands it to failStop).
 */
export function errorKindOf(e: unknown): ErrorKind | undefined {
  if (e instanceof StoreError) return e.code;
  if (e instanceof VolumeIoError) return e.kind;
  return undefined;
}

/**
 * This node does not know yet whether a volume is encrypted (its catalog has
 * not applied the volume's creation: a node just restarted): a forwarded
 * request is asked again (the sender retries until its deadline), never
 * served as plaintext.
 */
export class CatalogLagError extends VolumeIoError {
  constructor(group: number) {
    super("EIO", `volume group ${group} is not in this node's catalog yet, so whether it is encrypted is not known here; asked again`);
    this.name = "CatalogLagError";
  }
}
