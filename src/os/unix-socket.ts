// A Unix socket path a server is about to listen on: a socket left by a
// server that died is removed; a live one (something answers) or anything
// that is not a socket is an error, never removed.

import { existsSync, lstatSync, rmSync } from "node:fs";
import { connect } from "node:net";

/** `option`: the command-line option that names the path, for the error. */
export async function claimSocketPath(path: string, option: string): Promise<void> {
  if (!existsSync(path)) return;
  if (!lstatSync(path).isSocket()) throw new Error(`${path} exists and is not a socket; give ${option} a path of its own`);
  const live = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once("connect", () => (s.destroy(), resolve(true)));
    s.once("error", () => resolve(false));
  });
  if (live) throw new Error(`another process serves ${path}; stop it first`);
  rmSync(path, { force: true });
}
