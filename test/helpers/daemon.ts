// A real pxd daemon process for tests: `node dist/bin/pxd.js daemon` on free
// ports with its own data dir, driven through the real API client.

import { spawn, type ChildProcess } from "node:child_process";
import { daemonNodeFlags } from "../../src/os/node-flags.js";
import { createServer } from "node:net";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ApiClient } from "../../src/api/client.js";
import { tempDir } from "./tmp.js";
import { testAdminToken, testClusterSecret } from "./auth.js";

export const pxdEntry = fileURLToPath(new URL("../../bin/pxd.js", import.meta.url));

export async function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, host, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export class DaemonProcess {
  child: ChildProcess | undefined;
  output = "";
  private client: { tls: boolean; api: ApiClient } | undefined;
  /** More `pxd daemon` arguments (--join, --cluster-secret, --name ...). */
  extraArgs: string[] = [];
  /** The daemon's environment: the test process's, with its cluster secret in PXD_CLUSTER_SECRET (set it to undefined to start without). */
  env: NodeJS.ProcessEnv = { ...process.env, PXD_CLUSTER_SECRET: testClusterSecret };
  peerPort: number;
  private exited: Promise<number | null> = Promise.resolve(null);

  constructor(
    readonly dataDir: string,
    readonly host: string,
    readonly nbdPort: number,
    readonly apiPort: number,
    private readonly removeDir: () => void,
    peerPort = apiPort + 1,
  ) {
    this.peerPort = peerPort;
  }

  /** The daemon's API as the test's admin: HTTPS checked against the cluster CA in its data dir (the default), plain HTTP with --api-plain-http. */
  get api(): ApiClient {
    const tls = !this.extraArgs.includes("--api-plain-http");
    if (this.client?.tls !== tls) {
      const address = `${tls ? "https" : "http"}://${this.host}:${this.apiPort}`;
      this.client = { tls, api: new ApiClient(address, { token: testAdminToken, ...(tls ? { ca: () => this.ca() } : {}) }) };
    }
    return this.client.api;
  }

  /** DIR/tls/ca-cert.pem: the CA the node made at bootstrap or received at its join (read for each request: a test may replace it). */
  get caFile(): string {
    return join(this.dataDir, "tls", "ca-cert.pem");
  }

  private ca(): string | undefined {
    return existsSync(this.caFile) ? readFileSync(this.caFile, "utf8") : undefined;
  }

  uri(volume: string): string {
    return `nbd://${this.host}:${this.nbdPort}/${volume}`;
  }

  /** Starts the process; `output` then holds what this run printed. */
  async start(): Promise<void> {
    this.output = "";
    const child = spawn(
      process.execPath,
      [...daemonNodeFlags, pxdEntry, "daemon", "--data-dir", this.dataDir, "--listen", this.host, "--nbd-port", String(this.nbdPort), "--api-port", String(this.apiPort), "--peer-port", String(this.peerPort), ...this.extraArgs],
      { stdio: ["ignore", "pipe", "pipe"], env: this.env },
    );
    this.child = child;
    const collect = (d: Buffer): void => {
      this.output += d.toString();
      if (process.env["PXD_TEST_LOG"]) process.stderr.write(d);
    };
    child.stdout!.on("data", collect);
    child.stderr!.on("data", collect);
    this.exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
    const deadline = Date.now() + 15000;
    for (;;) {
      try {
        await this.api.status();
        // CLI processes a test spawns inherit PXD_CA_FILE, as they inherit PXD_TOKEN (helpers/auth.ts): the CA of the cluster started last.
        if (!this.extraArgs.includes("--api-plain-http")) process.env["PXD_CA_FILE"] = this.caFile;
        return;
      } catch {
        if (child.exitCode !== null) throw new Error(`daemon exited with ${child.exitCode}:\n${this.output}`);
        if (Date.now() > deadline) throw new Error(`daemon did not answer within 15 s:\n${this.output}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** SIGTERM and wait: the orderly shutdown. Returns the exit code. */
  async stop(): Promise<number | null> {
    if (!this.child || this.child.exitCode !== null) return this.child?.exitCode ?? null;
    this.child.kill("SIGTERM");
    return this.exited;
  }

  get pid(): number | undefined {
    return this.child?.exitCode === null ? this.child.pid : undefined;
  }

  /** SIGSTOP / SIGCONT: a process that stops answering without dying. */
  pause(): void {
    this.child?.kill("SIGSTOP");
  }

  resume(): void {
    this.child?.kill("SIGCONT");
  }

  /** SIGKILL and wait: a crash. */
  async kill(): Promise<void> {
    if (!this.child || this.child.exitCode !== null) return;
    this.child.kill("SIGKILL");
    await this.exited;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Stops the process (SIGKILL if it hangs) and removes the data dir. */
  async dispose(): Promise<void> {
    const stopped = this.stop();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise((r) => (timer = setTimeout(r, 10000, "timeout")));
    const first = await Promise.race([stopped, timeout]);
    clearTimeout(timer); // a pending timer would hold the test process for its 10 s
    if (first === "timeout") await this.kill();
    if (process.env["PXD_CA_FILE"] === this.caFile) delete process.env["PXD_CA_FILE"];
    this.removeDir();
  }
}

export async function startDaemon(host = "127.0.0.1", extraArgs: string[] = []): Promise<DaemonProcess> {
  const t = tempDir("daemon");
  const d = new DaemonProcess(t.dir, host, await freePort(host), await freePort(host), t.remove, await freePort(host));
  d.extraArgs = extraArgs;
  await d.start();
  return d;
}
