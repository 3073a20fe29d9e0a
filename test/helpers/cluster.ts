// A real pxd cluster for tests: daemons on 127.0.0.11, .12, .13 ... with the
// standard ports (DESIGN §1: distinct loopback addresses, so nftables rules on
// address pairs can cut links), one bootstrapping and the others joining.

import { randomBytes } from "node:crypto";
import { join } from "node:path";
import type { VolumeInfo } from "../../src/api/types.js";
import { DaemonProcess } from "./daemon.js";
import { tempDir } from "./tmp.js";

export interface Cluster {
  nodes: DaemonProcess[];
  secret: string;
  dir: string;
  /** The index in `nodes` of the volume's current Raft leader, as a node hosting it reports. */
  leaderOf(volume: string, timeoutMs?: number): Promise<number>;
  /** Waits until every node answers and sees all nodes up. */
  healthy(timeoutMs?: number): Promise<void>;
  dispose(): Promise<void>;
}

/**
 * Node i's address in a cluster whose first node is 127.0.0.<base + 1>. Each
 * startCluster takes the first free base of 10, 20, 30 ... (probing the API
 * port), so two clusters started at once on this machine do not collide; use
 * `c.nodes[i].host`, not a fixed address.
 */
export function nodeHost(i: number, base = 10): string {
  return `127.0.0.${base + 1 + i}`;
}

export async function freeBase(size: number): Promise<number> {
  const { createServer } = await import("node:net");
  const free = (host: string): Promise<boolean> =>
    new Promise((resolve) => {
      const srv = createServer();
      srv.once("error", () => resolve(false));
      srv.listen(9001, host, () => srv.close(() => resolve(true)));
    });
  for (let base = 10; base <= 240; base += 10) {
    let ok = true;
    for (let i = 0; i < size && ok; i++) ok = await free(nodeHost(i, base));
    if (ok) return base;
  }
  throw new Error("no free 127.0.0.x address range for a test cluster");
}

export async function waitUntil<T>(what: string, f: () => Promise<T | undefined | false>, timeoutMs = 20000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? ` (last error: ${last})` : ""}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function startCluster(size = 3): Promise<Cluster> {
  const t = tempDir("cluster");
  const secret = randomBytes(16).toString("hex");
  const nodes: DaemonProcess[] = [];
  const base = await freeBase(size);
  for (let i = 0; i < size; i++) {
    const d = new DaemonProcess(join(t.dir, `node${i + 1}`), nodeHost(i, base), 10809, 9001, () => {}, 9002);
    d.extraArgs = ["--cluster-secret", secret, "--name", `node${i + 1}`];
    if (i > 0) d.extraArgs.push("--join", `${nodeHost(0, base)}:9001`);
    nodes.push(d);
  }
  const cluster: Cluster = {
    nodes,
    secret,
    dir: t.dir,
    async leaderOf(volume, timeoutMs = 20000) {
      return waitUntil(`a leader for ${volume}`, async () => {
        for (const n of nodes) {
          if (n.pid === undefined) continue;
          let info: VolumeInfo;
          try {
            info = await n.api.inspectVolume(volume);
          } catch {
            continue;
          }
          const leader = info.replicas.find((r) => r.leader);
          const at = leader ? nodes.findIndex((x) => x.pid !== undefined && x.host === addressOf(info, leader.nodeId, nodes)) : -1;
          if (at >= 0) return at;
        }
        return undefined;
      }, timeoutMs);
    },
    async healthy(timeoutMs = 30000) {
      await waitUntil("every node up, every node a catalog voter", async () => {
        for (const n of nodes) {
          const s = await n.api.status();
          if (s.nodes.length !== size || s.nodes.some((x) => x.health !== "up" || !x.metaVoter)) return false;
        }
        return true;
      }, timeoutMs);
    },
    async dispose() {
      for (const n of nodes) n.resume();
      for (const n of nodes) await n.dispose().catch(() => {});
      t.remove();
    },
  };
  try {
    for (const n of nodes) await n.start();
    await cluster.healthy();
  } catch (e) {
    await cluster.dispose();
    throw e;
  }
  return cluster;
}

/** Maps a node id from the API to its address (node names are node1, node2 ... in index order). */
function addressOf(info: VolumeInfo, nodeId: number, nodes: DaemonProcess[]): string | undefined {
  const r = info.replicas.find((x) => x.nodeId === nodeId);
  const i = r ? Number(/^node(\d+)$/.exec(r.node)?.[1] ?? "0") - 1 : -1;
  return i >= 0 ? nodes[i]?.host : undefined;
}
