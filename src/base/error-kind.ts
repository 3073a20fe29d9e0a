// What went wrong with a volume request, independent of where it went wrong.
// An error keeps its kind from the layer that raised it (the store, the
// replication layer, a remote leader) to the client: the peer protocol carries
// it on forwarded requests (docs/formats/peer-protocol.md), and src/nbd turns
// it into the NBD errno in one place (src/nbd/errors.ts). The names are the
// errno names a storage engineer expects.

export const errorKinds = [
  /** No room: a replica's disk is full (its store stopped for lack of space). NBD_ENOSPC. */
  "ENOSPC",
  /** The export takes no writes (a volume snapshot, VOLUME@SNAPSHOT). NBD_EPERM. */
  "EROFS",
  /** The data could not be read or written: a disk error, damaged blocks with no good copy, no leader within the deadline. NBD_EIO. */
  "EIO",
  /** The request does not fit the volume (a range past its end, a bad size). NBD_EINVAL. */
  "EINVAL",
  /** No such volume: it was deleted while a client had it open. NBD_ESHUTDOWN. */
  "ENOENT",
  /** This node is shutting down. NBD_ESHUTDOWN. */
  "ESHUTDOWN",
  /** The operation is not offered (a fast zero that would write data). NBD_ENOTSUP. */
  "ENOTSUP",
  /** A reply would be larger than the client allows. NBD_EOVERFLOW. */
  "EOVERFLOW",
] as const;

export type ErrorKind = (typeof errorKinds)[number];

export function isErrorKind(v: unknown): v is ErrorKind {
  return typeof v === "string" && (errorKinds as readonly string[]).includes(v);
}
