// Seeded simulation of whole replica nodes: on each, the real store (over the
// simulated disk of test/sim/disk.ts), the Raft driver with its snapshots and
// delta catch-up, volume I/O with forwarding to the leader, and block repair,
// wired as the daemon wires them (dispatchPeerMessage) but in one process,
// over a simulated network, on one simulated clock. One seed drives the
// workload, every fault and the order of every event, so a failure replays.
//
// Faults: a node crashes (its disk loses what was not synced and tears the
// last writes; its timers and in-flight work vanish) and restarts later;
// partitions between two nodes, both ways or one way; messages lost,
// duplicated, reordered and delayed (each goes through msgpackr, so only
// plain data crosses); a slow disk; a disk that fails writes with EIO; bits
// flipped in one replica's log; a node's monotonic clock jumping ahead; a
// node's disk full for 1-10 s (see "A full disk" below). A
// store error that reaches the top of a node's event loop ends that process
// (fail-stop), which restarts later from its disk. A node whose store
// refuses to open after bit rot hit a record header stays down (an operator
// rebuilds its data dir); the others must still converge.
//
// Checker, per 512-byte sector of the volume (every sector names the write
// that put it there):
//   - a read returns a write issued before the read ended, and never one
//     that a write acknowledged before the read began had wholly followed
//     (no stale reads; unacknowledged writes count as concurrent forever);
//   - no acknowledged write is lost: after the faults heal, what every
//     sector holds is not wholly followed by an acknowledged write;
//   - the replicas converge: once healed and quiet, every node's copy of the
//     volume is the same, byte for byte.
//
// A full disk: one node's filesystem has only a few KiB free for 1-10 s of
// simulated time, half the time copy-on-write (an overwrite of a
// preallocated segment needs room too). Its checkpoints fail (maintenance
// stops and resumes later); on a copy-on-write filesystem a log write fails,
// the store stops and every request through that node fails with an error
// of an expected kind (errorKindOf), which the checker treats as a write
// that may or may not have happened. The disk stays full across a crash; a
// node that cannot open its store while it is full stays down; a stopped
// store is restarted (as its operator would, after freeing space) only once
// the space is back. Afterwards the replicas must converge as usual.
//
// The catalog, its control loops and membership changes run in
// test/sim/catalog-sim.ts.

import { AssertionError } from "../../src/base/assert.js";
import { Prng } from "../../src/base/prng.js";
import { dispatchPeerMessage } from "../../src/replication/dispatch.js";
import { MultiRaft } from "../../src/replication/driver.js";
import { StateRole } from "../../src/raft/types.js";
import { Repairer } from "../../src/replication/repair.js";
import { VolumeIo } from "../../src/replication/volume-io.js";
import { decodeOp, VolumeOpKind } from "../../src/replication/volume-op.js";
import { CorruptionError, StoreError } from "../../src/store/errors.js";
import { Store } from "../../src/store/store.js";
import { commitsInFlightMax, raftLogRetainBytes } from "../../src/constants.js";
import { healthyDisk, SimClock, SimDisk } from "./disk.js";
import { VolumeReplica } from "../../src/replication/volume-replica.js";
import { SimNet } from "./net.js";
import { SimProcesses } from "./process.js";
import { errorKindOf } from "../../src/replication/errors.js";

const sectorBytes = 512;
const KiB = 1024;
const groupId = 1;
const volumeBytes = 512 * KiB;
const tickMs = 100;

export interface ClusterSimOptions {
  seed: number;
  nodes?: number;
  ops?: number;
  log?: (line: string) => void;
  /** Bits flipped in one replica's log (default true). */
  flips?: boolean;
  /** With log: at every crash and boot, say where this write is (which Raft entry holds it on each node, and whether the node's volume shows it). */
  traceWrite?: number;
  /**
   * Raft log a leader keeps for a member that is down (the driver's
   * logRetainBytes). Default: drawn per seed, half the seeds the daemon's
   * default (the log is never compacted past a member here), half 8-64 KiB,
   * so a member that was down a while catches up by a snapshot: the changes
   * since it left (a delta) or a full copy. With a small retention, a
   * crash takes a node only while all are up and keeps it down 2-8 s
   * (longer than an election timeout, so its leader stops waiting for it).
   */
  logRetainBytes?: number;
  /** Windows of a full disk (default true; false replays a seed as it ran before they existed, with logRetainBytes at the daemon's default). */
  diskFull?: boolean;
}

export interface ClusterSimResult {
  seed: number;
  writes: number;
  acked: number;
  reads: number;
  readsChecked: number;
  crashes: number;
  partitions: number;
  flips: number;
  messages: number;
  dropped: number;
  /** Nodes whose store refused to open after bit rot hit a record header (left down). */
  retired: number;
  /** Processes ended by a store error at the top of their event loop (then restarted). */
  failStops: number;
  /** Snapshot streams leaders started, and how many of them were deltas (counted until each leader's process ends). */
  snapshots: number;
  snapshotDeltas: number;
  /** Windows of a full disk on one node. */
  diskFullWindows: number;
  /** Client writes answered with an error: ENOSPC, and any other kind. */
  writesFailedEnospc: number;
  writesFailedOther: number;
  simMs: number;
}

export class ClusterSimFailure extends Error {
  constructor(
    readonly seed: number,
    message: string,
  ) {
    super(`cluster sim seed ${seed}: ${message}`);
    this.name = "ClusterSimFailure";
  }
}

interface Write {
  version: number;
  issued: number;
  /** When the client got its acknowledgement; Infinity while it has none (it may or may not have happened). */
  acked: number;
  first: number;
  count: number;
}

interface SimNode {
  id: number;
  disk: SimDisk;
  /** Bumped by a crash: timers and callbacks of the crashed process do nothing. */
  gen: number;
  up: boolean;
  booting: boolean;
  /** Its store refused to open after bit rot hit a record header: it stays down, as an operator would leave it until its data dir is rebuilt. */
  retired: boolean;
  flipped: boolean;
  skewMs: number;
  /** A crashed node stays down until then (a long outage); the heal restarts it anyway. */
  downUntil: number;
  /** Its disk is full until then (0: not full). */
  fullUntil: number;
  store: Store | undefined;
  driver: MultiRaft | undefined;
  io: VolumeIo | undefined;
  repairer: Repairer | undefined;
}

/** An error that says the disk is full: the store's ENOSPC, or the disk's own errno. */
function isNoSpace(e: unknown): boolean {
  return (e instanceof StoreError && e.code === "ENOSPC") || (e as { code?: unknown } | undefined)?.code === "ENOSPC";
}

function fillSector(out: Uint8Array, at: number, v: number, s: number): void {
  const dv = new DataView(out.buffer, out.byteOffset + at, sectorBytes);
  dv.setUint32(0, v, true);
  dv.setUint32(4, s, true);
  out.fill(((v * 31 + s * 7) & 0xff) | 1, at + 8, at + sectorBytes);
}

/** The write a sector read back names: 0 for zeros, undefined for bytes no write put there. */
function versionOf(buf: Uint8Array, at: number, s: number): number | undefined {
  let zero = true;
  for (let i = at; i < at + sectorBytes && zero; i++) zero = buf[i] === 0;
  if (zero) return 0;
  const dv = new DataView(buf.buffer, buf.byteOffset + at, sectorBytes);
  const v = dv.getUint32(0, true);
  if (dv.getUint32(4, true) !== s) return undefined;
  const b = ((v * 31 + s * 7) & 0xff) | 1;
  for (let i = at + 8; i < at + sectorBytes; i++) if (buf[i] !== b) return undefined;
  return v;
}

export async function runClusterSim(o: ClusterSimOptions): Promise<ClusterSimResult> {
  const prng = new Prng(o.seed * 7 + 3);
  // Its own generator, so every other draw of a seed is what it was before this option existed.
  const retainPrng = new Prng(o.seed * 11 + 5);
  const fullPrng = new Prng(o.seed * 13 + 9);
  const logRetainBytes = o.logRetainBytes ?? (retainPrng.chance(0.5) ? raftLogRetainBytes : 8 * KiB * (1 + retainPrng.int(8)));
  /** Members catch up by snapshot: outages are long, one node at a time. */
  const catchUp = logRetainBytes < raftLogRetainBytes;
  const clock = new SimClock();
  const log = o.log ?? (() => {});
  const n = o.nodes ?? 3;
  const ops = o.ops ?? 500;
  const ids = Array.from({ length: n }, (_, i) => i + 1);
  const r: ClusterSimResult = { seed: o.seed, writes: 0, acked: 0, reads: 0, readsChecked: 0, crashes: 0, partitions: 0, flips: 0, messages: 0, dropped: 0, retired: 0, failStops: 0, snapshots: 0, snapshotDeltas: 0, diskFullWindows: 0, writesFailedEnospc: 0, writesFailedOther: 0, simMs: 0 };
  /** A failure found in a callback (a client's answer): the run stops at the next step of the clock. */
  let failure: unknown;
  const fail = (m: string): never => {
    const e = new ClusterSimFailure(o.seed, m);
    failure ??= e;
    throw e;
  };
  const noteFailure = (e: unknown): void => {
    failure ??= e;
  };
  const nodes = new Map<number, SimNode>();
  /** The one node whose disk rots. */
  const rotten = 1 + prng.int(n);
  for (const id of ids) {
    nodes.set(id, { id, disk: new SimDisk(prng, clock, { ...healthyDisk }), gen: 0, up: false, booting: false, retired: false, flipped: false, skewMs: 0, downUntil: 0, fullUntil: 0, store: undefined, driver: undefined, io: undefined, repairer: undefined });
  }

  // ---- the network ----
  const net = new SimNet(prng, clock, nodes, (dest, from, m) => {
    if (dest.driver === undefined) return false;
    guard(dest, dest.gen, () => dispatchPeerMessage({ driver: dest.driver!, io: dest.io!, repairer: dest.repairer! }, from, m));
    return true;
  });
  const send = (from: SimNode, gen: number, to: number, m: unknown): boolean => net.send(from, gen, to, m);

  const processes = new SimProcesses<SimNode>(clock, (node, e) => {
    log(`node ${node.id} dies: ${e.message}`);
    r.failStops++;
    crash(node);
  });
  const guard = (node: SimNode, gen: number, fn: () => void): void => processes.guard(node, gen, fn);
  const after = (node: SimNode, gen: number, ms: number, fn: () => void): (() => void) => processes.after(node, gen, ms, fn);

  const boot = async (node: SimNode): Promise<void> => {
    const gen = ++node.gen;
    node.booting = true;
    let store: Store | undefined;
    let error: unknown;
    Store.open({ disk: node.disk, defer: (fn) => after(node, gen, 0, fn), log: (l) => log(`node ${node.id}: ${l}`) }, [{ groupId, sizeBytes: volumeBytes }]).then(
      (s) => (store = s),
      (e) => (error = e ?? new Error("rejected")),
    );
    await clock.runUntil(() => store !== undefined || error !== undefined || node.gen !== gen || failure !== undefined);
    if (failure !== undefined) throw failure;
    if (node.gen !== gen) return; // crashed again while opening
    node.booting = false;
    if (error instanceof AssertionError) throw error;
    if (error instanceof CorruptionError && node.flipped) {
      log(`node ${node.id} stays down: its store refuses to open after bit rot (${error.message})`);
      node.retired = true;
      r.retired++;
      return;
    }
    if (error !== undefined && node.fullUntil > clock.now && isNoSpace(error)) {
      log(`node ${node.id} stays down: its store cannot open on a full disk (${(error as Error).message})`);
      return;
    }
    if (error !== undefined) fail(`node ${node.id}'s store did not open: ${(error as Error).stack ?? String(error)}`);
    if (store === undefined) fail(`node ${node.id}'s store never finished opening`);
    const s = store!;
    const now = (): number => clock.now + node.skewMs;
    const repairer = new Repairer({
      nodeId: node.id,
      store: s,
      send: (to, m) => send(node, gen, to, m),
      replicasOf: () => ids,
      nameOf: () => "v",
      after: (ms, fn) => after(node, gen, ms, fn),
      now,
      log: (l) => log(`node ${node.id}: ${l}`),
    });
    const driver = new MultiRaft({
      nodeId: node.id,
      store: s,
      send: (to, env) => send(node, gen, to, env),
      defer: (fn) => void after(node, gen, 0, fn),
      resume: (fn) => guard(node, gen, fn),
      random: { int: (k) => prng.int(k) },
      log: (l) => log(`node ${node.id}: ${l}`),
      damaged: (e) => void repairer.repair(e),
      logRetainBytes,
    });
    const io = new VolumeIo({
      nodeId: node.id,
      driver,
      store: s,
      repairer,
      send: (to, m) => send(node, gen, to, m),
      after: (ms, fn) => after(node, gen, ms, fn),
      now,
      random: { int: (k) => prng.int(k) },
      deadlineMs: 5000,
      replicasOf: () => ids,
      cipherOf: () => null,
    });
    driver.addGroup(groupId, ids, new VolumeReplica(s, groupId));
    Object.assign(node, { store: s, driver, io, repairer, up: true });
    const tick = (): void => {
      driver.tick();
      after(node, gen, tickMs, tick);
    };
    after(node, gen, prng.int(tickMs), tick);
    log(`node ${node.id} up (incarnation ${gen}) at ${clock.now} ms (Raft ${JSON.stringify(driver.status(groupId))})${where(node)}`);
  };

  const where = (node: SimNode): string => {
    const v = o.traceWrite;
    const st = node.store;
    if (v === undefined || st === undefined) return "";
    const rs = st.raftState(groupId);
    const found: number[] = [];
    for (let i = rs.firstIndex; i <= rs.lastIndex; i++) {
      const e = st.raftEntries(groupId, i, i + 1, 1 << 30)[0];
      const op = e === undefined ? undefined : decodeOp(e.data);
      const w = writes.get(v);
      if (e === undefined || op === undefined || w === undefined || op.kind !== VolumeOpKind.Write) continue;
      const at = w.first * sectorBytes - op.offsetBytes;
      if (at >= 0 && at + 8 <= op.lengthBytes && new DataView(e.data.buffer, e.data.byteOffset + at).getUint32(0, true) === v) found.push(i);
    }
    const w = writes.get(v);
    let shows = "?";
    if (w !== undefined) {
      try {
        shows = String(versionOf(st.read(groupId, w.first * sectorBytes, sectorBytes), 0, w.first));
      } catch (e) {
        shows = (e as Error).name;
      }
    }
    return ` [write ${v}: in entries ${found.join(",") || "none"} of [${rs.firstIndex}, ${rs.lastIndex}], applied ${rs.appliedIndex}, hard state ${JSON.stringify(rs.hardState)}, its first sector shows write ${shows}]`;
  };

  /** One node's filesystem full for a while (its own generator: the seed's other draws stay as they were). */
  const fillDisk = (x: SimNode): void => {
    const copyOnWrite = fullPrng.chance(0.5);
    x.fullUntil = clock.now + 1000 + fullPrng.int(9000);
    x.disk.faults = { ...x.disk.faults, capacityBytes: x.disk.usedBytes() + fullPrng.int(16 * KiB), copyOnWrite };
    r.diskFullWindows++;
    log(`node ${x.id}'s disk is full until ${x.fullUntil} ms${copyOnWrite ? " (copy-on-write: overwrites need room too)" : ""}`);
    clock.schedule(() => {
      if (x.fullUntil > clock.now) return; // a later window, or the heal, owns it now
      x.disk.faults = { ...x.disk.faults, capacityBytes: healthyDisk.capacityBytes, copyOnWrite: false };
      log(`node ${x.id}'s disk has room again at ${clock.now} ms`);
    }, x.fullUntil - clock.now);
  };

  const noteSnapshots = (node: SimNode): void => {
    const c = node.driver?.snapshotSender.counters;
    if (c === undefined) return;
    r.snapshots += c.snapshotsStarted;
    r.snapshotDeltas += c.snapshotDeltas;
  };

  const crash = (node: SimNode): void => {
    log(`node ${node.id} before the crash:${where(node)}`);
    log(`node ${node.id} crashes at ${clock.now} ms (Raft ${JSON.stringify(node.driver?.status(groupId))})`);
    noteSnapshots(node);
    node.gen++;
    node.up = false;
    node.booting = false;
    node.disk.crash();
    // A full filesystem stays full across a crash.
    node.disk.faults = node.fullUntil > clock.now ? { ...healthyDisk, capacityBytes: node.disk.faults.capacityBytes, copyOnWrite: node.disk.faults.copyOnWrite ?? false } : { ...healthyDisk };
    Object.assign(node, { store: undefined, driver: undefined, io: undefined, repairer: undefined });
    r.crashes++;
  };

  // ---- the model ----
  const writes = new Map<number, Write>();
  const bySector: number[][] = Array.from({ length: volumeBytes / sectorBytes }, () => []);
  let version = 0;
  /** Client requests not answered yet, with the incarnation of the node they went to (a crash drops its own). */
  const open = new Set<{ node: SimNode; gen: number; what: string; at: number }>();
  const outstanding = (): number => [...open].filter((q) => q.node.gen === q.gen).length;
  const begin = (node: SimNode, what: string): { node: SimNode; gen: number; what: string; at: number } => {
    const q = { node, gen: node.gen, what, at: clock.now };
    open.add(q);
    return q;
  };

  const stale = (v: number, s: number, before: number): boolean => {
    // Some write to s acknowledged before `before` wholly followed v (v was acknowledged before it was issued).
    const vAck = v === 0 ? -1 : writes.get(v)!.acked;
    return bySector[s]!.some((w) => {
      const x = writes.get(w)!;
      return x.acked < before && vAck < x.issued;
    });
  };

  let callbackFailure: unknown;
  const checkRead = (buf: Uint8Array, first: number, started: number, ended: number, what: string): void => {
    for (let i = 0; i < buf.length / sectorBytes; i++) {
      const s = first + i;
      const v = versionOf(buf, i * sectorBytes, s);
      if (v === undefined) fail(`${what}: sector ${s} holds bytes no write put there`);
      if (v! !== 0) {
        const w = writes.get(v!);
        if (w === undefined || w.issued > ended || !bySector[s]!.includes(v!)) fail(`${what}: sector ${s} holds write ${v}, which was never issued there before the read ended`);
      }
      if (stale(v!, s, started)) {
        const history = bySector[s]!.map((x) => `${x} issued ${writes.get(x)!.issued} acked ${writes.get(x)!.acked}`).join("; ");
        fail(`${what}: sector ${s} holds write ${v}, but a write acknowledged before the read began had wholly followed it (stale read); writes there: ${history}`);
      }
    }
  };

  const upNodes = (): SimNode[] => [...nodes.values()].filter((x) => x.up);

  const clientWrite = (node: SimNode): void => {
    const count = 1 + prng.int(32);
    const first = prng.int(volumeBytes / sectorBytes - count + 1);
    const v = ++version;
    const data = Buffer.allocUnsafe(count * sectorBytes);
    for (let i = 0; i < count; i++) fillSector(data, i * sectorBytes, v, first + i);
    const w: Write = { version: v, issued: clock.now, acked: Infinity, first, count };
    writes.set(v, w);
    for (let i = 0; i < count; i++) bySector[first + i]!.push(v);
    r.writes++;
    const q = begin(node, `write ${v} of [${first}, +${count})`);
    node.io!.write(groupId, first * sectorBytes, [data], count * sectorBytes).then(
      () => {
        open.delete(q);
        log(`write ${v} acknowledged through node ${node.id} at ${clock.now} ms; Raft: ${[...nodes.values()].map((x) => `${x.id} ${JSON.stringify(x.driver?.status(groupId))}`).join(" ")}`);
        w.acked = clock.now;
        r.acked++;
      },
      (e: Error) => {
        open.delete(q);
        if (e instanceof AssertionError) throw e;
        // Not acknowledged: w.acked stays Infinity, so the checker holds it concurrent with everything after it.
        const kind = errorKindOf(e);
        if (kind === undefined) fail(`write ${v} through node ${node.id} failed with an error of no expected kind: ${e.stack ?? String(e)}`);
        if (kind === "ENOSPC") r.writesFailedEnospc++;
        else r.writesFailedOther++;
      },
    ).catch(noteFailure);
  };

  const clientRead = (node: SimNode): void => {
    const count = 1 + prng.int(64);
    const first = prng.int(volumeBytes / sectorBytes - count + 1);
    const started = clock.now;
    r.reads++;
    const q = begin(node, `read of [${first}, +${count})`);
    let result: Promise<Buffer> | Buffer;
    try {
      result = node.io!.read(groupId, first * sectorBytes, count * sectorBytes);
    } catch (e) {
      open.delete(q);
      if (e instanceof AssertionError) throw e;
      return;
    }
    Promise.resolve(result).then(
      (buf) => {
        open.delete(q);
        // A failure found here is thrown by the run loop (runFor), where the caller catches it.
        try {
          checkRead(buf, first, started, clock.now, `read of [${first}, +${count}) through node ${node.id} from ${started} to ${clock.now} ms`);
        } catch (e) {
          callbackFailure ??= e;
        }
        r.readsChecked++;
      },
      (e: Error) => {
        open.delete(q);
        if (e instanceof AssertionError) throw e;
      },
    ).catch(noteFailure);
  };

  const runFor = async (ms: number): Promise<void> => {
    const until = clock.now + ms;
    while (clock.now < until) {
      const more = await clock.step();
      if (failure !== undefined) throw failure;
      if (!more) break;
    }
  };

  for (const node of nodes.values()) await boot(node);

  // ---- the run: client I/O with faults ----
  for (let op = 0; op < ops; op++) {
    const up = upNodes().filter((x) => x.io !== undefined);
    const dice = prng.int(1000);
    if (dice < 450 && up.length > 0 && outstanding() < 32) clientWrite(up[prng.int(up.length)]!);
    else if (dice < 850 && up.length > 0 && outstanding() < 32) clientRead(up[prng.int(up.length)]!);
    else if (dice < 860) {
      const victim = up[prng.int(up.length)];
      // With a small retention, long crashes of one node at a time: a leader keeps writing while a member is away.
      const skip = catchUp && (up.length < n || retainPrng.chance(0.3));
      if (victim !== undefined && up.length > 1 && !skip) {
        crash(victim);
        if (catchUp) victim.downUntil = clock.now + 2000 + retainPrng.int(6000);
      }
    } else if (dice < 900) {
      const down = [...nodes.values()].filter((x) => !x.up && !x.booting && !x.retired && clock.now >= x.downUntil);
      const back = down[prng.int(down.length)];
      if (back !== undefined) await boot(back);
    } else if (dice < 920) {
      const cut = net.cutAtRandom(ids);
      if (cut !== undefined) {
        r.partitions++;
        log(`${cut} at ${clock.now} ms`);
      }
    } else if (dice < 945) {
      net.blocked.clear();
      log(`partitions healed at ${clock.now} ms`);
    } else if (dice < 960) {
      net.roughen();
    } else if (dice < 970) {
      const x = up[prng.int(up.length)];
      if (x !== undefined) x.disk.faults = prng.chance(0.5) ? { ...healthyDisk, latency: [1, 150] } : { ...healthyDisk, writeEio: 0.02 };
    } else if (dice < 975) {
      // Bit rot, always on the same replica (one bad disk): the others keep good copies.
      const x = nodes.get(rotten);
      const seg = x?.disk.list().filter((f) => f.startsWith("seg-"))[0];
      if (o.flips !== false && x?.up && seg !== undefined && x.disk.flipSomewhere(seg, commitsInFlightMax + 1)) {
        r.flips++;
        x.flipped = true;
        log(`bit flipped on node ${x.id} in ${seg} at ${clock.now} ms`);
      }
    } else if (dice < 980) {
      const x = up[prng.int(up.length)];
      if (x !== undefined) x.skewMs += 1000 + prng.int(60_000);
    } else if (dice < 985) {
      const x = up[prng.int(up.length)];
      if (x !== undefined && x.fullUntil <= clock.now && o.diskFull !== false) fillDisk(x);
    }
    // A node whose store stopped after a disk error is restarted, as its supervisor would (a full disk: once there is room again).
    for (const x of upNodes()) {
      if (x.store?.failure !== undefined && x.fullUntil <= clock.now && prng.chance(0.3)) {
        crash(x);
        await boot(x);
      }
    }
    await runFor(prng.int(40));
  }

  // ---- heal, converge, check ----
  net.heal();
  for (const x of nodes.values()) {
    x.fullUntil = 0;
    x.disk.faults = { ...healthyDisk };
    if (!x.up && !x.booting && !x.retired) await boot(x);
  }
  const quiet = (): boolean => {
    if (outstanding() > 0) return false;
    const st = [...nodes.values()].filter((x) => !x.retired).map((x) => x.driver?.status(groupId));
    if (st.some((s) => s === undefined)) return false;
    const leaders = st.filter((s) => s!.role === StateRole.leader);
    if (leaders.length !== 1) return false;
    // Everything in the leader's log is committed: an entry of its term that a
    // majority holds but whose commit the leader has not counted yet is not quiet.
    const commit = leaders[0]!.commit;
    if (commit !== leaders[0]!.lastIndex) return false;
    return st.every((s) => s!.applied === commit && s!.commit === commit && s!.lastIndex === leaders[0]!.lastIndex);
  };
  // A last write through the leader commits an entry of its term, so every replica applies everything before it.
  for (let round = 0; round < 600 && !quiet(); round++) {
    for (const x of nodes.values()) {
      // A node that stopped on a disk error is restarted by its operator once the disk is healthy again.
      if (x.up && x.store?.failure !== undefined) crash(x);
      if (!x.up && !x.booting && !x.retired) await boot(x); // or a fail-stop while healing
    }
    if (round % 50 === 10 && outstanding() === 0) {
      const up = upNodes();
      clientWrite(up[prng.int(up.length)]!);
    }
    await runFor(tickMs);
  }
  if (!quiet()) {
    const st = [...nodes.values()].map((x) => `node ${x.id}: ${JSON.stringify(x.driver?.status(groupId))}`);
    fail(`the replicas did not converge within 60 s of simulated time after the faults healed (${outstanding()} client requests open: ${[...open].filter((q) => q.node.gen === q.gen).map((q) => `${q.what} through node ${q.node.id} since ${q.at} ms`).join(", ")}): ${st.join("; ")}`);
  }
  const copies = new Map<number, Buffer>();
  for (const x of nodes.values()) {
    if (x.retired) continue;
    // A damaged block is repaired from the other replicas: let the clock run while it is.
    let copy: Buffer | undefined;
    let error: unknown;
    Promise.resolve(x.repairer!.read(groupId, 0, volumeBytes)).then((b) => (copy = b), (e) => (error = e ?? new Error("rejected")));
    await clock.runUntil(() => copy !== undefined || error !== undefined || failure !== undefined);
    if (failure !== undefined) throw failure;
    if (copy === undefined) return fail(`node ${x.id}'s copy could not be read after healing: ${error === undefined ? "the read never finished" : ((error as Error).stack ?? String(error))}`);
    copies.set(x.id, copy);
  }
  const reference = [...copies.values()][0]!;
  for (const [id, copy] of copies) {
    if (copy.equals(reference)) continue;
    let i = 0;
    while (copy[i] === reference[i]) i++;
    const s = Math.floor(i / sectorBytes);
    const holds = [...copies].map(([k, c]) => `node ${k} write ${versionOf(c, s * sectorBytes, s)}`).join(", ");
    fail(`the replicas diverged after healing: node ${id}'s copy differs from node ${[...copies.keys()][0]}'s at byte ${i} (sector ${s}: ${holds})`);
  }
  if (callbackFailure !== undefined) throw callbackFailure;
  checkRead(reference, 0, clock.now, clock.now, "the replicas' copy after healing (an acknowledged write lost?)");
  for (const x of nodes.values()) noteSnapshots(x);
  if (failure !== undefined) throw failure;
  r.simMs = clock.now;
  r.messages = net.messages;
  r.dropped = net.dropped;
  return r;
}
