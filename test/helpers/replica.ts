// A replica of a volume group run in the test's own process: a real store on
// real files, a real MultiRaft and a real peer transport
// (test/cluster/replication-driver.test.ts, test/cluster/snapshot-stream.test.ts).

import type { PeerListener } from "../../src/os/peer-listener.js";
import type { MultiRaft } from "../../src/replication/driver.js";
import type { VolumeIo } from "../../src/replication/volume-io.js";
import type { Store } from "../../src/store/store.js";

export interface Replica {
  id: number;
  host: string;
  dir: string;
  port: number;
  store?: Store;
  peer?: PeerListener;
  driver?: MultiRaft;
  io?: VolumeIo;
  timer?: NodeJS.Timeout;
}

/** A crash: no checkpoint, nothing flushed beyond what the log made durable. */
export async function crashReplica(r: Replica): Promise<void> {
  clearInterval(r.timer);
  r.driver?.close();
  await r.peer?.close();
  await r.store?.closeWithoutCheckpoint();
  r.driver = undefined;
  r.peer = undefined;
  r.store = undefined;
  r.io = undefined;
}

/** Polls `f` every 10 ms until it returns a value (not undefined or false). */
export async function waitFor<T>(what: string, f: () => T | undefined | false, timeoutMs = 10000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((res) => setTimeout(res, 10));
  }
}
