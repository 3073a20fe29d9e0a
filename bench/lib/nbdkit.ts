// nbdkit's file plugin as the reference NBD server: foreground, loopback only.

import type { ChildProcess } from "node:child_process";
import { freePort } from "../../test/helpers/daemon.js";
import { captureOk, spawnTracked, waitForPort } from "./proc.js";

export class Nbdkit {
  output = "";
  private readonly exited: Promise<void>;

  private constructor(
    readonly child: ChildProcess,
    readonly port: number,
  ) {
    child.stdout!.on("data", (d: Buffer) => (this.output += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (this.output += d.toString()));
    this.exited = new Promise((resolve) => child.once("exit", () => resolve()));
  }

  static async start(file: string, host = "127.0.0.1"): Promise<Nbdkit> {
    const port = await freePort(host);
    // --exit-with-parent: nbdkit goes away even if this process is SIGKILLed.
    const child = spawnTracked("nbdkit", ["-f", "--exit-with-parent", "-i", host, "-p", String(port), "file", file]);
    const k = new Nbdkit(child, port);
    try {
      await waitForPort(host, port, 10000, () => child.exitCode === null && child.signalCode === null);
    } catch (e) {
      await k.stop();
      throw new Error(`nbdkit did not start: ${(e as Error).message}\n${k.output}`);
    }
    return k;
  }

  get pid(): number {
    return this.child.pid!;
  }

  uri(): string {
    return `nbd://127.0.0.1:${this.port}/`;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill("SIGTERM");
    const timeout = new Promise((r) => setTimeout(r, 5000, "timeout"));
    if ((await Promise.race([this.exited, timeout])) === "timeout") {
      this.child.kill("SIGKILL");
      await this.exited;
    }
  }
}

export async function nbdkitVersion(): Promise<string> {
  return (await captureOk("nbdkit", ["--version"], 10000)).trim();
}
