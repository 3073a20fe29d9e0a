// A real pxd cluster for tests: daemons on 127.0.0.11, .12, .13 ... with the
// standard ports (DESIGN §1: distinct loopback addresses, so nftables rules on
// address pairs can cut links), one bootstrapping and the others joining.

import { join } from "node:path";
import { DaemonProcess } from "./daemon.js";
import { tempDir } from "./tmp.js";
import { testClusterSecret } from "./auth.js";

export interface Cluster {
  nodes: DaemonProcess[];
  secret: string;
  dir: string;
  /** The index in `nodes` of the volume's current Raft leader, as a node hosting it reports. */
  leaderOf(volume: string, timeoutMs?: number): Promise<number>;
  /** The volume's leader as the nodes at indexes `among` report it, when it is one of them and not `not`. */
  leaderAmong(volume: string, among: number[], not?: number, timeoutMs?: number): Promise<number>;
  /** Indexes of every node but i. */
  others(i: number): number[];
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

export interface ClusterOptions {
  /**
   * Runs before node i first starts, with its data dir (not created yet), e.g.
   * to mount a small filesystem there; what it returns runs in dispose() once
   * every node has stopped, before the directories are removed.
   */
  prepare?: (i: number, dataDir: string) => Promise<(() => Promise<void>) | void>;
}

/** `daemonArgs`: more `pxd daemon` arguments for every node (e.g. --log-retain). */
export async function startCluster(size = 3, daemonArgs: string[] = [], options: ClusterOptions = {}): Promise<Cluster> {
  const t = tempDir("cluster");
  const secret = testClusterSecret;
  const nodes: DaemonProcess[] = [];
  const base = await freeBase(size);
  const cleanups: (() => Promise<void>)[] = [];
  for (let i = 0; i < size; i++) {
    const d = new DaemonProcess(join(t.dir, `node${i + 1}`), nodeHost(i, base), 10809, 9001, () => {}, 9002);
    d.extraArgs = ["--cluster-secret", secret, "--name", `node${i + 1}`, ...daemonArgs];
    if (i > 0) d.extraArgs.push("--join", `${nodeHost(0, base)}:9001`);
    nodes.push(d);
  }
  const cluster: Cluster = {
    nodes,
    secret,
    dir: t.dir,
    leaderOf(volume, timeoutMs = 20000) {
      return cluster.leaderAmong(volume, nodes.map((_, i) => i), -1, timeoutMs);
    },
    leaderAmong(volume, among, not = -1, timeoutMs = 30000) {
      const what = `a leader for ${volume} among nodes ${among.join(",")}${not >= 0 ? ` other than ${not}` : ""}`;
      return waitUntil(what, async () => {
        for (const i of among) {
          if (nodes[i]?.pid === undefined) continue;
          const info = await nodes[i]!.api.inspectVolume(volume).catch(() => undefined);
          const l = info?.replicas.find((r) => r.leader);
          // Test clusters name their nodes node1, node2 ... in index order.
          const at = l ? Number(/^node(\d+)$/.exec(l.node)?.[1] ?? "0") - 1 : -1;
          if (at >= 0 && at !== not && among.includes(at)) return at;
        }
        return undefined;
      }, timeoutMs);
    },
    others: (i) => nodes.map((_, x) => x).filter((x) => x !== i),
    async healthy(timeoutMs = 30000) {
      let stuck: (typeof nodes)[number] | undefined;
      await waitUntil("every node up, every node a catalog voter", async () => {
        for (const n of nodes) {
          stuck = n;
          const s = await n.api.status();
          if (s.nodes.length !== size || s.nodes.some((x) => x.health !== "up" || !x.metaVoter)) return false;
        }
        stuck = undefined;
        return true;
      }, timeoutMs).catch((e: Error) => {
        // What the node that held things up printed last: a CI failure leaves nothing else behind.
        const tail = stuck === undefined ? "" : stuck.output.split("\n").slice(-40).join("\n");
        throw new Error(stuck === undefined ? e.message : `${e.message}\nlast lines of ${stuck.host}'s log:\n${tail}`);
      });
    },
    async dispose() {
      for (const n of nodes) n.resume();
      for (const n of nodes) await n.dispose().catch(() => {});
      for (const cleanup of cleanups) await cleanup().catch(() => {});
      t.remove();
    },
  };
  try {
    for (const [i, n] of nodes.entries()) {
      const cleanup = await options.prepare?.(i, n.dataDir);
      if (cleanup) cleanups.push(cleanup);
    }
    for (const n of nodes) await n.start();
    await cluster.healthy();
  } catch (e) {
    await cluster.dispose();
    throw e;
  }
  return cluster;
}
