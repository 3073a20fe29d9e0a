// The one place that turns what a backend threw into the NBD error the client
// sees (STYLE.md: nbdkit's nbd_errno). A BackendError chooses its errno; any
// other exception is a bug or an unforeseen failure: the client gets EIO, the
// connection keeps serving, and the log gets one line per connection (not one
// per request, so a failing disk cannot flood the log).

import { BackendError } from "./backend.js";
import { NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_ENOTSUP, NBD_EOVERFLOW, NBD_EPERM, NBD_ESHUTDOWN } from "./wire.js";
import type { NbdLog } from "./ports.js";

const errnoByName: Readonly<Record<BackendError["errno"], number>> = {
  EIO: NBD_EIO,
  ENOSPC: NBD_ENOSPC,
  EPERM: NBD_EPERM,
  EINVAL: NBD_EINVAL,
  ESHUTDOWN: NBD_ESHUTDOWN,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
};

/** An NBD error with a message for NBD_REPLY_TYPE_ERROR. */
export interface NbdFailure {
  errno: number;
  message: string;
}

/** Maps a thrown value to an NBD error; `unexpected` is true for anything that is not a BackendError. */
export function nbdErrnoOf(err: unknown): NbdFailure & { unexpected: boolean } {
  if (err instanceof BackendError) {
    return { errno: errnoByName[err.errno] ?? NBD_EIO, message: err.message, unexpected: false };
  }
  return { errno: NBD_EIO, message: "internal error", unexpected: true };
}

/** Per-connection error translation with log-once for unexpected exceptions. */
export class ErrorReporter {
  private unexpectedCount = 0;

  constructor(
    private readonly log: NbdLog,
    private readonly peer: string,
  ) {}

  toFailure(err: unknown, what: string): NbdFailure {
    const f = nbdErrnoOf(err);
    if (f.unexpected) {
      this.unexpectedCount++;
      if (this.unexpectedCount === 1) {
        const detail = err instanceof Error ? (err.stack ?? err.message) : String(err);
        this.log.error(`nbd ${this.peer}: ${what} failed unexpectedly, answering EIO (further ones on this connection are counted, not logged): ${detail}`);
      }
    }
    return f;
  }

  /** Called when the connection closes: reports what log-once suppressed. */
  summarize(): void {
    if (this.unexpectedCount > 1) {
      this.log.error(`nbd ${this.peer}: ${this.unexpectedCount} unexpected backend failures on this connection in total`);
    }
  }
}
