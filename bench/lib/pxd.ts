// Watching a pxd daemon from outside: is its store idle, how much disk and
// memory does it hold.

import { lstatSync, readdirSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { join } from "node:path";
import { DaemonProcess } from "../../test/helpers/daemon.js";
import { tempDir } from "../../test/helpers/tmp.js";
import { captureOk, cpuSeconds, sleep } from "./proc.js";

/** The store counters that move while writes land or GC and checkpoints run. */
export const storeKeys = ["segments", "freeSegments", "diskBytes", "liveBytes", "gcSegments", "gcBytesMoved", "logBytesAppended", "checkpoints", "commits", "recordsCommitted"] as const;

export type StoreSnapshot = Record<(typeof storeKeys)[number], number>;

export async function storeSnapshot(daemon: DaemonProcess): Promise<StoreSnapshot> {
  const store = (await daemon.api.status()).store;
  const snap = {} as StoreSnapshot;
  for (const k of storeKeys) snap[k] = store[k] ?? NaN;
  return snap;
}

export interface Settled {
  settled: boolean;
  waitedMs: number;
  store: StoreSnapshot;
}

/**
 * Waits until the store counters have not changed for stableMs and the daemon
 * used under 10% of a core meanwhile (background GC and checkpoints done), or
 * until maxMs.
 */
export async function waitForStoreSettle(daemon: DaemonProcess, stableMs: number, maxMs: number, pollMs = 250): Promise<Settled> {
  const pid = daemon.child!.pid!;
  const start = Date.now();
  let last = await storeSnapshot(daemon);
  let since = Date.now();
  let cpuSince = cpuSeconds(pid);
  for (;;) {
    await sleep(pollMs);
    const now = await storeSnapshot(daemon);
    const changed = storeKeys.some((k) => now[k] !== last[k]);
    const cpu = cpuSeconds(pid);
    const busy = (cpu - cpuSince) / ((Date.now() - since) / 1000) > 0.1;
    if (changed || busy) {
      last = now;
      since = Date.now();
      cpuSince = cpu;
    } else if (Date.now() - since >= stableMs) {
      return { settled: true, waitedMs: Date.now() - start, store: now };
    }
    if (Date.now() - start >= maxMs) return { settled: false, waitedMs: Date.now() - start, store: now };
  }
}

export interface DirUsage {
  files: number;
  /** Sum of file sizes (apparent). */
  sizeBytes: number;
  /** Sum of allocated blocks (st_blocks * 512): what the files really take. */
  allocatedBytes: number;
  /** `du -sb` (apparent size, directories included). */
  duApparentBytes: number;
  perFile: { path: string; sizeBytes: number; allocatedBytes: number }[];
}

export async function dirUsage(dir: string): Promise<DirUsage> {
  const perFile: DirUsage["perFile"] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else {
        const st = lstatSync(p);
        perFile.push({ path: p.slice(dir.length + 1), sizeBytes: st.size, allocatedBytes: st.blocks * 512 });
      }
    }
  };
  walk(dir);
  const du = await captureOk("du", ["-sb", dir], 30000);
  return {
    files: perFile.length,
    sizeBytes: perFile.reduce((a, f) => a + f.sizeBytes, 0),
    allocatedBytes: perFile.reduce((a, f) => a + f.allocatedBytes, 0),
    duApparentBytes: Number(du.split(/\s/)[0]),
    perFile,
  };
}

/**
 * A fresh pxd daemon on 127.0.0.1 with three distinct free ports (NBD, API,
 * peer). startDaemon() from test/helpers takes the peer port as API port + 1,
 * which the kernel has often just handed out as the NBD port (EADDRINUSE at
 * start); here all three are held open together while they are picked.
 */
/** `extraArgs`: more `pxd daemon` arguments (e.g. --no-metrics). */
export async function startBenchDaemon(host = "127.0.0.1", extraArgs: string[] = []): Promise<DaemonProcess> {
  const servers = [createServer(), createServer(), createServer()];
  const ports = await Promise.all(
    servers.map((s) => new Promise<number>((resolve, reject) => {
      s.once("error", reject);
      s.listen(0, host, () => resolve((s.address() as AddressInfo).port));
    })),
  );
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  const t = tempDir("daemon");
  const d = new DaemonProcess(t.dir, host, ports[0]!, ports[1]!, t.remove, ports[2]!);
  d.extraArgs = extraArgs;
  try {
    await d.start();
  } catch (e) {
    t.remove();
    throw e;
  }
  return d;
}
