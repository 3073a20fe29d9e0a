// nbdkit (an NBD server no one here wrote) on a free loopback port, for tests
// of the NBD client: `startNbdkit(["memory", "size=64M"])`, plugins and
// filters as nbdkit's own arguments. --exit-with-parent: it goes away with
// the test process, even one killed.

import { spawn } from "node:child_process";
import { connect } from "node:net";
import { freePort } from "./daemon.js";

export interface NbdkitServer {
  /** HOST:PORT. */
  server: string;
  /** SIGKILL: a server that dies, as a test may want mid-transfer. */
  stop(): void;
}

export async function startNbdkit(args: string[]): Promise<NbdkitServer> {
  const port = await freePort();
  const child = spawn("nbdkit", ["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", String(port), ...args], { stdio: "ignore" });
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const s = connect({ host: "127.0.0.1", port });
      s.once("connect", () => (s.destroy(), resolve(true)));
      s.once("error", () => resolve(false));
    });
    if (up) return { server: `127.0.0.1:${port}`, stop: () => child.kill("SIGKILL") };
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`nbdkit ${args.join(" ")} did not start`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
