// The daemon's fail-stop handler (src/base/fail-stop.ts): one log line naming
// the code that caught the error and the error with its stack, then exit at
// once, without the orderly shutdown (no checkpoint, no flush: nothing the
// broken state could still write). A restart recovers from what is on disk.
// Exceptions nothing caught and promise rejections nothing handled end the
// process the same way.

import { describeFailure, installFailStop } from "../base/fail-stop.js";

/** EX_SOFTWARE (sysexits.h): an internal software error. A supervisor restarts the daemon; its log says why. */
export const failStopExitCode = 70;

/** Installs the handler for this process; `logError` must write synchronously (stderr to a file or pipe does, on Linux). */
export function installProcessFailStop(logError: (line: string) => void): void {
  let stopping = false;
  const stop = (err: unknown, where: string): never => {
    if (!stopping) {
      stopping = true;
      try {
        logError(`FAIL-STOP in ${where}: ${describeFailure(err)} (the process exits now with code ${failStopExitCode}; a restart recovers from what is on disk)`);
      } catch {
        // Nothing more can be reported; exiting is what matters.
      }
    }
    return process.exit(failStopExitCode);
  };
  installFailStop(stop);
  process.on("uncaughtException", (err) => stop(err, "an exception nothing caught"));
  process.on("unhandledRejection", (reason) => stop(reason, "a promise rejection nothing handled"));
}
