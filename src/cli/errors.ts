// How the CLI ends: exit code 1 when the daemon (or the machine) said no,
// 2 when the command line itself is wrong. Messages are one line that says
// what happened and what to do; no stack traces for user errors.

export const exitOk = 0;
export const exitFailed = 1;
export const exitUsage = 2;

/** The command line is wrong (bad size, bad name, bad address): exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Something the user can fix went wrong outside the daemon (a daemon that would not start, a stale pid): exit code 1. */
export class CliError extends Error {
  override name = "CliError";
}
