// The one place that turns what a backend threw into the NBD error the client
// sees (STYLE.md: nbdkit's nbd_errno; NBD spec "Error values"). A
// BackendError's kind chooses the errno, whichever node the error came from
// (src/base/error-kind.ts). Anything else an Export throws is a bug in pxd:
// the process stops (src/base/fail-stop.ts) rather than answer EIO and serve
// on with whatever state the throw left behind.

import type { ErrorKind } from "../base/error-kind.js";
import { failStop } from "../base/fail-stop.js";
import { BackendError } from "./backend.js";
import { NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_ENOTSUP, NBD_EOVERFLOW, NBD_EPERM, NBD_ESHUTDOWN } from "./wire.js";

const nbdErrnoByKind: Readonly<Record<ErrorKind, number>> = {
  ENOSPC: NBD_ENOSPC,
  // Spec: "NBD_EPERM if it receives a write or trim request on a read-only export".
  EROFS: NBD_EPERM,
  EIO: NBD_EIO,
  EINVAL: NBD_EINVAL,
  // The export is gone (deleted under the connection): the client should stop using it, as at a shutdown.
  ENOENT: NBD_ESHUTDOWN,
  ESHUTDOWN: NBD_ESHUTDOWN,
  ENOTSUP: NBD_ENOTSUP,
  EOVERFLOW: NBD_EOVERFLOW,
};

/** The NBD errno for an error kind. */
export function nbdErrnoOf(kind: ErrorKind): number {
  return nbdErrnoByKind[kind] ?? NBD_EIO;
}

/** An NBD error with a message for NBD_REPLY_TYPE_ERROR. */
export interface NbdFailure {
  errno: number;
  message: string;
}

/** The NBD error for what an Export threw; anything but a BackendError ends the process (`where` names the request). */
export function nbdFailureOf(err: unknown, where: string): NbdFailure {
  if (err instanceof BackendError) return { errno: nbdErrnoOf(err.kind), message: err.message };
  return failStop(err, where);
}
