// The one place NBD tests get a server to talk to. Today: pxd's NBD listener
// over in-memory exports. To run the interop and bad-input suites against a
// real daemon, change startNbdTarget and nothing else.

import type { NbdLimits } from "../../src/nbd/ports.js";
import { listenNbd, type NbdListener } from "../../src/os/nbd-listener.js";
import { MemoryRegistry, type MemoryExportOptions } from "./memory-export.js";

export const MiB = 1024 * 1024;

export interface NbdTargetOptions {
  exports?: MemoryExportOptions[];
  limits?: Partial<NbdLimits>;
  unixPath?: string;
}

export interface NbdTarget {
  host: string;
  port: number;
  unixPath: string | undefined;
  registry: MemoryRegistry;
  listener: NbdListener;
  /** Log lines the server wrote, as "level: message". */
  logs: string[];
  uri(exportName: string): string;
  stop(): Promise<void>;
}

/** The default target: a 64 MiB writable "disk", a 1 MiB read-only "ro", and "small" (1 MiB). */
export const defaultExports: MemoryExportOptions[] = [
  { name: "disk", sizeBytes: 64 * MiB, description: "test disk" },
  { name: "ro", sizeBytes: 1 * MiB, readOnly: true },
  { name: "small", sizeBytes: 1 * MiB },
];

export async function startNbdTarget(opts: NbdTargetOptions = {}): Promise<NbdTarget> {
  const registry = new MemoryRegistry(opts.exports ?? defaultExports);
  const logs: string[] = [];
  const verbose = process.env["NBD_TEST_LOG"] !== undefined;
  const record = (level: string) => (m: string) => {
    logs.push(`${level}: ${m}`);
    if (verbose) console.error(`[nbd ${level}] ${m}`);
  };
  const listener = await listenNbd({
    host: "127.0.0.1",
    port: 0,
    unixPath: opts.unixPath,
    registry,
    log: { info: record("info"), warn: record("warn"), error: record("error") },
    limits: opts.limits,
  });
  const { host, port } = listener.address;
  return {
    host,
    port,
    unixPath: opts.unixPath,
    registry,
    listener,
    logs,
    uri: (name) => `nbd://${host}:${port}/${name}`,
    stop: () => listener.close(),
  };
}
