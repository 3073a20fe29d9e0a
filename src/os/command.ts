// Runs a host program (mount, losetup, blkid, mkfs...) and returns its exit
// code and output; 127 when it is not installed. Never rejects.

import { execFile } from "node:child_process";

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `timeoutMs`: kill it after this long (its code is then not 0). */
export function runCommand(cmd: string, args: string[], timeoutMs = 0): Promise<CommandResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: "utf8", maxBuffer: 1 << 20, timeout: timeoutMs }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null;
      const code = e === null ? 0 : typeof e.code === "number" ? e.code : e.code === "ENOENT" ? 127 : 1;
      resolve({ code, stdout, stderr });
    });
  });
}
