// Seeded simulation of the cluster's control plane: four whole nodes, each
// with the real store (over the simulated disk), the Raft driver, volume I/O,
// repair and the ClusterNode of src/node (the catalog as the meta group's
// state machine, the replicas it places on the node, and the control loops:
// registration, catalog learner promotion, failure detection,
// re-replication, the replica reconcile), wired as the daemon wires them,
// over a simulated network on one simulated clock.
//
// The run bootstraps a cluster (nodes 1-3 vote in the catalog's group, node 4
// joins as the daemon's join does), creates one volume with three replicas,
// and writes to it through any node while nodes crash and restart, one node
// stays down long enough for its replica to be moved to the spare node,
// links are cut both ways or one way, and messages are lost, duplicated and
// delayed. Each node's monotonic clock may jump ahead (durations are measured
// on one node's monotonic clock, never across nodes).
//
// Checker, once the faults heal and the long outage ended (within 120 s of
// simulated time):
//   - every node's catalog is the same (the same applied index, the same
//     encoded snapshot);
//   - the catalog's invariants hold: each volume's replicas are on distinct
//     nodes the catalog knows, the replica count is reached again, and every
//     node is marked up;
//   - the volume's Raft group is what the catalog says: its voters are the
//     catalog's replica set, no learners are left, every listed node applied
//     to the commit index, and a node the catalog dropped no longer hosts it;
//   - the replicas' copies are identical, and no acknowledged write is lost.

import { AssertionError } from "../../src/base/assert.js";
import { Prng } from "../../src/base/prng.js";
import { admitNode, encodeCatalogSnapshot, encodeCommand } from "../../src/cluster/index.js";
import { ClusterNode, metaGroupId, type HostedGroup, type HostingState, type PeerEntry } from "../../src/node/cluster-node.js";
import { StateRole } from "../../src/raft/types.js";
import { dispatchPeerMessage } from "../../src/replication/dispatch.js";
import { MultiRaft, NotLeaderError, ProposalDroppedError } from "../../src/replication/driver.js";
import { Repairer } from "../../src/replication/repair.js";
import { VolumeIo } from "../../src/replication/volume-io.js";
import { Store } from "../../src/store/store.js";
import { healthyDisk, SimClock, SimDisk } from "./disk.js";
import { SimNet } from "./net.js";
import { SimProcesses } from "./process.js";

const sectorBytes = 512;
const volumeBytes = 256 * 1024;
const tickMs = 100;
const nodeCount = 4;
const metaVoters = [1, 2, 3];
/** Simulated: a replica on a node marked down this long moves (the daemon's default is 600 s). */
const replaceDownAfterMs = 4000;

export interface CatalogSimOptions {
  seed: number;
  ops?: number;
  log?: (line: string) => void;
}

export interface CatalogSimResult {
  seed: number;
  writes: number;
  acked: number;
  crashes: number;
  partitions: number;
  /** Replica moves the catalog committed (re-replication). */
  moves: number;
  messages: number;
  dropped: number;
  simMs: number;
}

export class CatalogSimFailure extends Error {
  constructor(
    readonly seed: number,
    message: string,
  ) {
    super(`catalog sim seed ${seed}: ${message}`);
    this.name = "CatalogSimFailure";
  }
}

/** The node state the daemon keeps on disk (src/daemon/node-state.ts): here it survives crashes whole. */
class SimHosting implements HostingState {
  readonly hosted = new Map<number, HostedGroup>();
  peers: PeerEntry[] = [];
  async host(g: HostedGroup): Promise<void> {
    this.hosted.set(g.id, g);
  }
  async unhost(id: number): Promise<void> {
    this.hosted.delete(id);
  }
  async setPeers(peers: PeerEntry[]): Promise<void> {
    this.peers = peers;
  }
}

interface SimNode {
  id: number;
  disk: SimDisk;
  hosting: SimHosting;
  gen: number;
  up: boolean;
  booting: boolean;
  skewMs: number;
  /** Kept down until this simulated time (a long outage). */
  downUntil: number;
  store: Store | undefined;
  driver: MultiRaft | undefined;
  io: VolumeIo | undefined;
  repairer: Repairer | undefined;
  cluster: ClusterNode | undefined;
}

interface Write {
  issued: number;
  acked: number;
  first: number;
  count: number;
}

function fillSector(out: Uint8Array, at: number, v: number, s: number): void {
  const dv = new DataView(out.buffer, out.byteOffset + at, sectorBytes);
  dv.setUint32(0, v, true);
  dv.setUint32(4, s, true);
  out.fill(((v * 31 + s * 7) & 0xff) | 1, at + 8, at + sectorBytes);
}

function versionAt(buf: Uint8Array, at: number): number {
  return new DataView(buf.buffer, buf.byteOffset + at, 8).getUint32(0, true);
}

export async function runCatalogSim(o: CatalogSimOptions): Promise<CatalogSimResult> {
  const prng = new Prng(o.seed * 13 + 5);
  const clock = new SimClock();
  const log = o.log ?? (() => {});
  const ops = o.ops ?? 400;
  const ids = Array.from({ length: nodeCount }, (_, i) => i + 1);
  const r: CatalogSimResult = { seed: o.seed, writes: 0, acked: 0, crashes: 0, partitions: 0, moves: 0, messages: 0, dropped: 0, simMs: 0 };
  /** A failure found in a callback: the run stops at the next step of the clock. */
  let failure: unknown;
  const fail = (m: string): never => {
    const e = new CatalogSimFailure(o.seed, m);
    failure ??= e;
    throw e;
  };
  const nodes = new Map<number, SimNode>();
  for (const id of ids) {
    nodes.set(id, { id, disk: new SimDisk(prng, clock, { ...healthyDisk }), hosting: new SimHosting(), gen: 0, up: false, booting: false, skewMs: 0, downUntil: 0, store: undefined, driver: undefined, io: undefined, repairer: undefined, cluster: undefined });
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
    crash(node);
  });
  const guard = (node: SimNode, gen: number, fn: () => void): void => processes.guard(node, gen, fn);
  const after = (node: SimNode, gen: number, ms: number, fn: () => void): (() => void) => processes.after(node, gen, ms, fn);

  const every = (node: SimNode, gen: number, ms: number, fn: () => void): void => {
    const turn = (): void => {
      fn();
      after(node, gen, ms, turn);
    };
    after(node, gen, prng.int(ms), turn);
  };

  const boot = async (node: SimNode): Promise<void> => {
    const gen = ++node.gen;
    node.booting = true;
    let store: Store | undefined;
    let error: unknown;
    const specs = [{ groupId: metaGroupId, sizeBytes: 0 }, ...[...node.hosting.hosted.values()].map((g) => ({ groupId: g.id, sizeBytes: g.sizeBytes }))];
    Store.open({ disk: node.disk, defer: (fn) => after(node, gen, 0, fn), log: (l) => log(`node ${node.id}: ${l}`) }, specs).then(
      (s) => (store = s),
      (e) => (error = e ?? new Error("rejected")),
    );
    await clock.runUntil(() => store !== undefined || error !== undefined || node.gen !== gen);
    if (node.gen !== gen) return;
    node.booting = false;
    if (error !== undefined) fail(`node ${node.id}'s store did not open: ${(error as Error).stack ?? String(error)}`);
    const s = store!;
    const now = (): number => clock.now + node.skewMs;
    const nodeLog = (l: string): void => log(`node ${node.id}: ${l}`);
    let cluster: ClusterNode | undefined;
    const replicasOf = (group: number): number[] => cluster?.volumeById(group)?.nodes ?? [];
    const repairer = new Repairer({
      nodeId: node.id,
      store: s,
      send: (to, m) => send(node, gen, to, m),
      replicasOf,
      nameOf: (group) => cluster?.volumeById(group)?.name ?? `(group ${group})`,
      after: (ms, fn) => after(node, gen, ms, fn),
      now,
      log: nodeLog,
    });
    const driver = new MultiRaft({
      nodeId: node.id,
      store: s,
      send: (to, env) => send(node, gen, to, env),
      defer: (fn) => void after(node, gen, 0, fn),
      resume: (fn) => guard(node, gen, fn),
      random: { int: (k) => prng.int(k) },
      log: nodeLog,
      damaged: (e) => void repairer.repair(e),
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
      replicasOf,
      cipherOf: () => null,
    });
    cluster = new ClusterNode({
      nodeId: node.id,
      store: s,
      driver,
      state: node.hosting,
      self: () => describe(node.id),
      isConnected: (id) => net.linked(node.id, id),
      setTransportPeers: () => {},
      volumeGone: () => {},
      monotonicMs: now,
      wallMs: now,
      replaceDownAfterMs,
      after: (ms, fn) => after(node, gen, ms, fn),
      log: { info: nodeLog, warn: nodeLog, error: nodeLog },
    });
    Object.assign(node, { store: s, driver, io, repairer, cluster, up: true });
    cluster.start(metaVoters);
    every(node, gen, tickMs, () => driver.tick());
    every(node, gen, 300, () => {
      cluster!.registerSelf();
      cluster!.promoteLearners();
    });
    every(node, gen, 1000, () => cluster!.detectFailures());
    every(node, gen, 500, () => cluster!.reconcileReplicas());
    log(`node ${node.id} up (incarnation ${gen}) at ${clock.now} ms; hosts ${[...node.hosting.hosted.keys()].join(", ") || "no volume"}`);
  };

  const describe = (id: number): ReturnType<ClusterNodePortsSelf> => ({ id, name: `node-${id}`, address: `10.0.0.${id}`, nbdPort: 10809, apiPort: 9001, peerPort: 9101, capacityBytes: 1 << 30, labels: {} });

  const crash = (node: SimNode): void => {
    log(`node ${node.id} crashes at ${clock.now} ms`);
    node.gen++;
    node.up = false;
    node.booting = false;
    node.disk.crash();
    Object.assign(node, { store: undefined, driver: undefined, io: undefined, repairer: undefined, cluster: undefined });
    r.crashes++;
  };

  const runFor = async (ms: number): Promise<void> => {
    const until = clock.now + ms;
    while (clock.now < until) {
      const more = await clock.step();
      if (failure !== undefined) throw failure;
      if (!more) break;
    }
  };

  const metaLeader = (): SimNode | undefined => [...nodes.values()].find((x) => x.up && x.driver?.status(metaGroupId)?.role === StateRole.leader);

  /** Runs a control-plane request on the meta leader until it is taken (as a CLI call retried on 503). */
  const onLeader = async (what: string, fn: (leader: SimNode) => Promise<unknown>, withinMs = 60_000): Promise<void> => {
    const deadline = clock.now + withinMs;
    while (clock.now < deadline) {
      const leader = metaLeader();
      if (leader !== undefined) {
        let done = false;
        let refused: unknown;
        fn(leader).then(
          () => (done = true),
          (e) => (refused = e ?? new Error("rejected")),
        );
        await clock.runUntil(() => done || refused !== undefined || clock.now > deadline);
        if (done) return;
        if (refused instanceof AssertionError || !(refused instanceof NotLeaderError || refused instanceof ProposalDroppedError)) fail(`${what}: ${(refused as Error)?.stack ?? String(refused)}`);
      }
      await runFor(200);
    }
    fail(`${what}: not done within ${withinMs} ms of simulated time`);
  };

  // ---- bootstrap: the cluster, its fourth node, a volume ----
  for (const node of nodes.values()) await boot(node);
  for (const id of ids) {
    await onLeader(`admitting node ${id}`, async (leader) => {
      if (leader.cluster!.catalog.nodes.has(id) && [...leader.driver!.voters(metaGroupId), ...leader.driver!.learners(metaGroupId)].includes(id)) return;
      const admit = admitNode(describe(id), clock.now);
      if ("error" in admit) fail(`node ${id}'s description: ${admit.error}`);
      const result = await leader.cluster!.admit((admit as { command: Parameters<ClusterNode["admit"]>[0] }).command);
      if (!result.ok) fail(`the catalog refused node ${id}: ${result.error}`);
    });
  }
  await onLeader("creating the volume", async (leader) => {
    if (leader.cluster!.catalog.volumes.has("v")) return;
    const result = await leader.cluster!.proposeCommand(encodeCommand({ kind: "createVolume", name: "v", sizeBytes: volumeBytes, repl: 3, at: clock.now }));
    if (!result.ok) fail(`the catalog refused the volume: ${result.error}`);
  });
  /** The volume as the node that applied the most of the catalog knows it (as last known while every node that knew is restarting). */
  let known: { id: number; nodes: number[]; repl: number } | undefined;
  const volume = (): { id: number; nodes: number[]; repl: number } => {
    const best = [...nodes.values()].filter((x) => x.cluster?.catalog.volumes.has("v")).sort((a, b) => b.cluster!.catalog.appliedIndex - a.cluster!.catalog.appliedIndex)[0];
    if (best !== undefined) known = best.cluster!.catalog.volumes.get("v")!;
    return known ?? fail("no node's catalog knows the volume");
  };
  const groupId = volume().id;
  log(`volume v (group ${groupId}) placed on nodes ${volume().nodes.join(", ")} at ${clock.now} ms`);

  // ---- the model ----
  const writes = new Map<number, Write>();
  const bySector: number[][] = Array.from({ length: volumeBytes / sectorBytes }, () => []);
  let version = 0;
  /** Client writes not answered yet, with the incarnation of the node they went to (a crash drops its own). */
  const pending = new Set<{ node: SimNode; gen: number }>();
  const open = (): number => [...pending].filter((q) => q.node.gen === q.gen).length;
  const clientWrite = (node: SimNode | undefined): void => {
    if (node?.io === undefined) return; // crashed meanwhile
    const count = 1 + prng.int(16);
    const first = prng.int(volumeBytes / sectorBytes - count + 1);
    const v = ++version;
    const data = Buffer.allocUnsafe(count * sectorBytes);
    for (let i = 0; i < count; i++) fillSector(data, i * sectorBytes, v, first + i);
    const w: Write = { issued: clock.now, acked: Infinity, first, count };
    writes.set(v, w);
    for (let i = 0; i < count; i++) bySector[first + i]!.push(v);
    r.writes++;
    const gen = node.gen;
    const q = { node, gen };
    pending.add(q);
    node.io!.write(groupId, first * sectorBytes, [data], count * sectorBytes).then(
      () => {
        pending.delete(q);
        if (node.gen !== gen) return;
        w.acked = clock.now;
        r.acked++;
      },
      (e: Error) => {
        pending.delete(q);
        if (e instanceof AssertionError) failure ??= e;
      },
    );
  };

  // ---- the run ----
  let movesSeen = 0;
  const countMoves = (): void => {
    const nodesNow = volume().nodes.join(",");
    if (nodesNow !== lastNodes) {
      movesSeen++;
      log(`volume v now on nodes ${nodesNow} at ${clock.now} ms`);
      lastNodes = nodesNow;
    }
  };
  let lastNodes = volume().nodes.join(",");
  /** One long outage per run, of a replica holder: past nodeDownAfterMs and replaceDownAfterMs, so its replica moves. */
  const longOutageAt = prng.int(Math.floor(ops / 3));
  for (let op = 0; op < ops; op++) {
    const up = [...nodes.values()].filter((x) => x.up && x.io !== undefined);
    if (op === longOutageAt) {
      const holders = up.filter((x) => volume().nodes.includes(x.id));
      const victim = holders[prng.int(holders.length)];
      if (victim !== undefined && up.length > 2) {
        crash(victim);
        victim.downUntil = clock.now + 20_000 + prng.int(10_000);
        log(`node ${victim.id} stays down until ${victim.downUntil} ms`);
      }
    }
    const dice = prng.int(1000);
    if (dice < 600 && up.length > 0 && open() < 16) clientWrite(up[prng.int(up.length)]!);
    else if (dice < 615) {
      const victim = up[prng.int(up.length)];
      if (victim !== undefined && up.length > 2) crash(victim);
    } else if (dice < 680) {
      const down = [...nodes.values()].filter((x) => !x.up && !x.booting && x.downUntil <= clock.now);
      const back = down[prng.int(down.length)];
      if (back !== undefined) await boot(back);
    } else if (dice < 700) {
      const cut = net.cutAtRandom(ids);
      if (cut !== undefined) {
        r.partitions++;
        log(`${cut} at ${clock.now} ms`);
      }
    } else if (dice < 740) {
      net.blocked.clear();
      log(`partitions healed at ${clock.now} ms`);
    } else if (dice < 760) {
      net.roughen();
    } else if (dice < 765) {
      const x = up[prng.int(up.length)];
      if (x !== undefined) x.skewMs += 1000 + prng.int(60_000);
    }
    for (const x of nodes.values()) if (!x.up && !x.booting && x.downUntil > 0 && x.downUntil <= clock.now && prng.chance(0.2)) await boot(x);
    await runFor(20 + prng.int(80));
    countMoves();
  }

  // ---- heal, converge, check ----
  net.heal();
  // The long outage lasts its whole time (its replica moves meanwhile); every other node restarts now.
  const restartDue = async (): Promise<void> => {
    for (const x of nodes.values()) if (!x.up && !x.booting && x.downUntil <= clock.now) await boot(x);
  };
  await restartDue();
  const problem = (): string | undefined => {
    if (open() > 0) return `${open()} client writes open`;
    const leader = metaLeader();
    if (leader === undefined) return "the catalog's group has no leader";
    const catalog = leader.cluster!.catalog;
    const encoded = Buffer.from(encodeCatalogSnapshot(catalog));
    for (const x of nodes.values()) {
      if (!x.up || x.cluster === undefined) return `node ${x.id} is not up`;
      if (x.cluster.catalog.appliedIndex !== catalog.appliedIndex) return `node ${x.id}'s catalog applied ${x.cluster.catalog.appliedIndex}, the leader's ${catalog.appliedIndex}`;
      if (!Buffer.from(encodeCatalogSnapshot(x.cluster.catalog)).equals(encoded)) return `node ${x.id}'s catalog differs from the leader's at the same index ${catalog.appliedIndex}`;
    }
    for (const n of catalog.nodes.values()) if (n.health !== "up") return `node ${n.id} is marked ${n.health} in the catalog`;
    for (const v of catalog.volumes.values()) {
      if (new Set(v.nodes).size !== v.nodes.length) return `volume ${v.name}'s replicas are not on distinct nodes: ${v.nodes.join(", ")}`;
      if (v.nodes.some((id) => !catalog.nodes.has(id))) return `volume ${v.name} has a replica on a node the catalog does not know: ${v.nodes.join(", ")}`;
      if (v.nodes.length !== v.repl) return `volume ${v.name} has ${v.nodes.length} of its ${v.repl} replicas`;
      const holders = v.nodes.map((id) => nodes.get(id)!);
      const gl = holders.find((x) => x.driver?.status(v.id)?.role === StateRole.leader);
      if (gl === undefined) return `volume ${v.name}'s group has no leader among nodes ${v.nodes.join(", ")}`;
      const voters = [...gl.driver!.voters(v.id)].sort().join(",");
      if (voters !== [...v.nodes].sort().join(",")) return `volume ${v.name}'s group has voters ${voters}, the catalog lists ${v.nodes.join(", ")}`;
      if (gl.driver!.learners(v.id).length > 0) return `volume ${v.name}'s group still has learners ${gl.driver!.learners(v.id).join(", ")}`;
      const st = gl.driver!.status(v.id)!;
      for (const x of holders) {
        const s = x.driver?.status(v.id);
        if (s === undefined) return `node ${x.id} does not run volume ${v.name}'s group`;
        if (s.applied !== st.commit || s.commit !== st.commit) return `node ${x.id} applied ${s.applied} of volume ${v.name}'s commit ${st.commit}`;
      }
      for (const x of nodes.values()) if (!v.nodes.includes(x.id) && (x.driver?.hasGroup(v.id) || x.hosting.hosted.has(v.id))) return `node ${x.id} still hosts volume ${v.name}, which the catalog placed on ${v.nodes.join(", ")}`;
    }
    return undefined;
  };
  const outageEnds = (): number => Math.max(0, ...[...nodes.values()].map((x) => x.downUntil));
  let why = problem();
  for (let round = 0; round < 1500 && (why !== undefined || clock.now < outageEnds()); round++) {
    await restartDue();
    if (round % 50 === 10 && open() === 0) {
      // A write commits an entry of the current term, so every replica applies all before it.
      const up = [...nodes.values()].filter((x) => x.up && x.io !== undefined);
      clientWrite(up[prng.int(up.length)]!);
    }
    await runFor(tickMs);
    why = problem();
  }
  if (why !== undefined) fail(`the cluster did not converge within 120 s of simulated time after the faults healed (and the long outage ended): ${why}`);
  countMoves();
  r.moves = movesSeen;

  // The data: every replica's copy the same, and no acknowledged write lost.
  const v = volume();
  const copies: Buffer[] = [];
  for (const id of v.nodes) {
    const x = nodes.get(id)!;
    let copy: Buffer | undefined;
    let error: unknown;
    Promise.resolve(x.repairer!.read(groupId, 0, volumeBytes)).then((b) => (copy = b), (e) => (error = e ?? new Error("rejected")));
    await clock.runUntil(() => copy !== undefined || error !== undefined);
    if (copy === undefined) fail(`node ${id}'s copy could not be read: ${String(error)}`);
    copies.push(copy!);
  }
  for (let i = 1; i < copies.length; i++) {
    if (!copies[i]!.equals(copies[0]!)) fail(`the replicas on nodes ${v.nodes[0]} and ${v.nodes[i]} differ after healing`);
  }
  for (let s = 0; s < volumeBytes / sectorBytes; s++) {
    const held = versionAt(copies[0]!, s * sectorBytes);
    const heldAck = held === 0 ? -1 : (writes.get(held)?.acked ?? Infinity);
    for (const w of bySector[s]!) {
      const x = writes.get(w)!;
      // An acknowledged write issued after the one the sector holds was acknowledged: it was lost.
      if (x.acked !== Infinity && x.issued > heldAck) fail(`sector ${s} holds write ${held}, but write ${w}, acknowledged at ${x.acked} ms, wholly followed it: an acknowledged write was lost`);
    }
  }
  r.simMs = clock.now;
  r.messages = net.messages;
  r.dropped = net.dropped;
  return r;
}

type ClusterNodePortsSelf = ConstructorParameters<typeof ClusterNode>[0]["self"];
