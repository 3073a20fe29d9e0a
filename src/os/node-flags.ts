// The Node.js flags a pxd daemon runs with, in one place: `pxd up`, the test
// and bench harnesses, the Dockerfile and the bin/pxd shebang pass them; the
// daemon warns at start when they are missing.
//
// --initial-old-space-size=64: V8 starts a daemon with a small old generation,
// and the Buffers of the write path (external memory, counted against the
// same limit) then set off a full mark-compact GC about ten times a second on
// a repl-3 leader under 4k writes; every one also drops the optimized code of
// short-lived closures, which are compiled again. With 64 MiB a leader runs
// about a quarter as many, for some more resident memory per daemon; 32 MiB
// is not enough (docs/bench.md, "Tails: checkpoints and GC"). The flag is
// refused in NODE_OPTIONS.

export const daemonNodeFlags: readonly string[] = ["--initial-old-space-size=64"];

/**
 * The flags this process was started without (empty when all are in force).
 * V8 takes `_` for `-` in a flag's name, and a larger size serves as well.
 */
export function missingDaemonNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  const given = new Map<string, string>();
  for (const a of execArgv) {
    const eq = a.indexOf("=");
    if (a.startsWith("--") && eq > 0) given.set(a.slice(0, eq).replaceAll("_", "-"), a.slice(eq + 1));
  }
  return daemonNodeFlags.filter((f) => {
    const eq = f.indexOf("=");
    const value = given.get(f.slice(0, eq));
    return value === undefined || !(Number(value) >= Number(f.slice(eq + 1)));
  });
}
