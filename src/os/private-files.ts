// A data dir readable only by the daemon's user. New files get that from the
// daemon's umask (src/daemon/main.ts); this walks a tree made by an older
// pxd, or under another umask, and tightens what is already there.

import { chmodSync, lstatSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { privateTreeDepthMax } from "../constants.js";

export const privateDirMode = 0o700;
export const privateFileMode = 0o600;

/**
 * Directories become 0700 and everything else 0600 (the NBD socket too);
 * symbolic links are not followed. Returns how many modes it changed. A file
 * the daemon's user cannot chmod (another owner) throws, naming it.
 */
export function makePrivate(dir: string, depth = 0): number {
  let changed = tighten(dir, privateDirMode);
  if (depth >= privateTreeDepthMax) return changed;
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    const st = lstatSync(path);
    if (st.isSymbolicLink()) continue;
    changed += st.isDirectory() ? makePrivate(path, depth + 1) : tighten(path, privateFileMode);
  }
  return changed;
}

function tighten(path: string, mode: number): number {
  if ((lstatSync(path).mode & 0o777) === mode) return 0;
  try {
    chmodSync(path, mode);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw new Error(`cannot make ${path} private to the daemon's user (${code}); chown the data dir to the user that runs pxd daemon`);
  }
  return 1;
}
