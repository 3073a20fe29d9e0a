// Adversarial tests of the snapshot stream (src/replication/snapshot.ts), in
// process: three replicas, each a real Store on real files, a real MultiRaft
// and a real authenticated peer transport on 127.0.0.71-73, ticks on a timer.
// Every envelope a driver sends passes a fault rule, so a test can drop, hold,
// delay, duplicate or reorder chunks, acknowledgements and the core's snap
// message.
//
// Each scenario stops a follower, writes far past the log retention (64 KiB
// here) so the other two compact past it, and restarts it: it must come back
// through a snapshot. After the faults stop, every store holds the model's
// bytes and holes (the model is what the test wrote and saw acknowledged),
// writes after that reach all three, no staging group is left behind, and the
// follower still holds the same after a crash and a recovery from its log.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Prng } from "../../src/base/prng.js";
import { startPeerTransport } from "../../src/os/peer-listener.js";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { MultiRaft, NotLeaderError, type CompactEnvelope, type RaftEnvelope } from "../../src/replication/driver.js";
import type { SnapAckEnvelope, SnapChunkEnvelope } from "../../src/replication/snapshot.js";
import type { BeatsEnvelope } from "../../src/replication/beats.js";
import { MessageType, StateRole } from "../../src/raft/types.js";
import { Store } from "../../src/store/store.js";
import { crashReplica, waitFor as waitForMs, type Replica } from "../helpers/replica.js";
import { tempDir } from "../helpers/tmp.js";
import { encodeTrim, encodeWrite } from "../../src/replication/volume-op.js";
import { VolumeReplica } from "../../src/replication/volume-replica.js";

const MiB = 1024 * 1024;
const sectorBytes = 512;
const group = 7;
const sizeBytes = 32 * MiB;
const volume = { groupId: group, sizeBytes };
/** The store's staging group of `group` (src/store/store.ts: the group id + 2^40). */
const stagingId = group + 2 ** 40;
const secret = Buffer.from("snapshot-stream-test-secret-0123");
/** Election timeout 10-20 ticks (250-500 ms); a stream without progress is given up after 100 ticks (2.5 s). */
const tickMs = 25;
const logRetainBytes = 64 * 1024;
/** Deadline of a wait that normally takes well under a second; the machine may be loaded. */
const waitMs = 30_000;

type Envelope = RaftEnvelope | CompactEnvelope | SnapChunkEnvelope | SnapAckEnvelope | BeatsEnvelope;
/** Deliver it, lose it (the sender believes it went out), or deliver it that many ms later. */
type Verdict = "pass" | "drop" | number;
type Rule = (from: number, to: number, env: Envelope) => Verdict;

const isChunk = (e: Envelope): e is SnapChunkEnvelope => e.kind === "snap-chunk";
const isAck = (e: Envelope): e is SnapAckEnvelope => e.kind === "snap-ack";
const isSnapMessage = (e: Envelope): e is RaftEnvelope => e.kind === "raft" && e.message.type === MessageType.snap;

/** The store's count of snapshots it installed since it was opened. */
const installed = (r: Replica): number => r.store?.stats().snapshotsInstalled ?? 0;

/** Deadlines here are generous (waitMs): the machine may be loaded. */
const waitFor = <T>(what: string, f: () => T | undefined | false, timeoutMs = waitMs): Promise<T> => waitForMs(what, f, timeoutMs);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The network between the drivers: every send passes `rule`; each link stays FIFO (TCP), so a delayed envelope holds back what follows it. */
class Net {
  rule: Rule = () => "pass";
  /** Envelopes waiting on each link "from>to", with the time each may go. */
  private readonly links = new Map<string, { env: Envelope; due: number }[]>();
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly replica: (id: number) => Replica) {}

  send(from: Replica, to: number, env: Envelope): boolean {
    const v = this.rule(from.id, to, env);
    if (v === "drop") return true;
    const key = `${from.id}>${to}`;
    const q = this.links.get(key) ?? [];
    if (v === "pass" && q.length === 0) return this.inject(from, to, env);
    q.push({ env, due: v === "pass" ? 0 : Date.now() + v });
    this.links.set(key, q);
    this.flush(key);
    return true;
  }

  /** Sends past the rule: a duplicate, or an envelope put back out of order. */
  inject(from: Replica, to: number, env: Envelope): boolean {
    return from.peer?.transport.send(to, env) ?? false;
  }

  dispose(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.links.clear();
  }

  private flush(key: string): void {
    const q = this.links.get(key)!;
    const [from, to] = key.split(">").map(Number) as [number, number];
    while (q.length > 0 && q[0]!.due <= Date.now()) this.inject(this.replica(from), to, q.shift()!.env);
    if (q.length === 0) return void this.links.delete(key);
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (this.links.has(key)) this.flush(key);
    }, q[0]!.due - Date.now());
    this.timers.add(t);
  }
}

type SenderCounters = MultiRaft["snapshotSender"]["counters"];

/** Three replicas of one volume group, the network between them, and a model of what the volume must hold. */
class TestCluster {
  readonly all: Replica[];
  readonly net: Net;
  readonly logs: string[] = [];
  /** The volume as acknowledged writes and trims left it, and which sectors are allocated. */
  readonly model = Buffer.alloc(sizeBytes);
  readonly allocated = new Uint8Array(sizeBytes / sectorBytes);
  private readonly prng: Prng;
  private readonly dirs: { dir: string; remove(): void }[];
  /** Sender counters of drivers that were stopped. */
  private readonly retired: SenderCounters = { snapshotsStarted: 0, snapshotsSent: 0, snapshotsFailed: 0, snapshotBytesSent: 0, snapshotDeltas: 0, snapshotBytesKept: 0 };

  constructor(name: string, seed: number) {
    this.dirs = [1, 2, 3].map((i) => tempDir(`${name}${i}`));
    this.all = [71, 72, 73].map((n, i) => ({ id: i + 1, host: `127.0.0.${n}`, dir: this.dirs[i]!.dir, port: 0 }));
    this.net = new Net((id) => this.all[id - 1]!);
    this.prng = new Prng(seed);
  }

  async startAll(): Promise<void> {
    for (const r of this.all) await this.start(r);
    this.connect();
  }

  /** Opens the replica's store (`onOpen` sees it before the driver does), its transport and its driver. */
  async start(r: Replica, onOpen?: (store: Store) => void): Promise<void> {
    r.store = await Store.open({ disk: new NodeDisk(r.dir), defer: deferImmediate, log: (l) => this.note(r, l) }, [volume]);
    onOpen?.(r.store);
    const silent = { info: () => {}, warn: () => {}, error: (m: string) => this.note(r, m) };
    r.peer = await startPeerTransport({ nodeId: r.id, clusterId: "snaptest", secret, host: r.host, port: 0, log: silent });
    r.port = r.peer.address.port;
    const prng = new Prng(r.id * 7919 + 17);
    const driver = new MultiRaft({
      nodeId: r.id,
      store: r.store,
      send: (to, env) => this.net.send(r, to, env),
      logRetainBytes,
      defer: deferImmediate,
      random: { int: (n) => prng.int(n) },
      log: (l) => this.note(r, l),
    });
    r.driver = driver;
    r.peer.transport.onMessage((from, m) => {
      const env = m as Envelope;
      if (env.kind === "raft") driver.receive(from, env);
      else if (env.kind === "compact") driver.receiveCompact(from, env);
      else if (env.kind === "snap-chunk") driver.receiveSnapChunk(from, env);
      else if (env.kind === "snap-ack") driver.receiveSnapAck(from, env);
      else if (env.kind === "beats") driver.receiveBeats(from, env);
    });
    driver.addGroup(group, this.all.map((x) => x.id), new VolumeReplica(r.store!, group));
    r.timer = setInterval(() => driver.tick(), tickMs);
  }

  connect(): void {
    const up = this.all.filter((x) => x.peer !== undefined).map((x) => ({ id: x.id, host: x.host, port: x.port }));
    for (const r of this.all) r.peer?.transport.setPeers(up);
  }

  /** A crash: no checkpoint; the store keeps what its log made durable. */
  async crash(r: Replica): Promise<void> {
    if (r.driver !== undefined) for (const [k, v] of Object.entries(r.driver.snapshotSender.counters)) this.retired[k as keyof SenderCounters] += v;
    await crashReplica(r);
  }

  async restart(r: Replica, onOpen?: (store: Store) => void): Promise<void> {
    await this.start(r, onOpen);
    this.connect();
  }

  async dispose(): Promise<void> {
    this.net.dispose();
    for (const r of this.all) await this.crash(r);
    for (const d of this.dirs) d.remove();
  }

  /** Every replica's snapshot sender counters added up, stopped ones included. */
  senders(): SenderCounters {
    const sum = { ...this.retired };
    for (const r of this.all) {
      if (r.driver === undefined) continue;
      for (const [k, v] of Object.entries(r.driver.snapshotSender.counters)) sum[k as keyof SenderCounters] += v;
    }
    return sum;
  }

  leader(among: Replica[] = this.all): Replica | undefined {
    return among.find((r) => r.driver?.status(group)?.role === StateRole.leader);
  }

  logged(r: Replica, text: string): boolean {
    return this.logs.some((l) => l.startsWith(`node ${r.id}: `) && l.includes(text));
  }

  /** Writes through whoever leads, retrying on a leader change as a client would (a retry writes the same bytes). */
  async write(offset: number, data: Buffer): Promise<void> {
    await this.retry(`write at ${offset}`, (l) => l.driver!.proposeData(group, encodeWrite(offset, [data], data.length)).then(() => {}));
    data.copy(this.model, offset);
    this.allocated.fill(1, offset / sectorBytes, (offset + data.length) / sectorBytes);
  }

  async trim(offset: number, lengthBytes: number): Promise<void> {
    await this.retry(`trim at ${offset}`, (l) => l.driver!.proposeData(group, encodeTrim(offset, lengthBytes)).then(() => {}));
    this.model.fill(0, offset, offset + lengthBytes);
    this.allocated.fill(0, offset / sectorBytes, (offset + lengthBytes) / sectorBytes);
  }

  randomBytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    this.prng.fill(b);
    return b;
  }

  pick(n: number): number {
    return this.prng.int(n);
  }

  /** Fills MiB [fromMiB, fromMiB + mib) with random data, four 1 MiB writes at a time. */
  async fill(fromMiB: number, mib: number): Promise<void> {
    for (let i = fromMiB; i < fromMiB + mib; i += 4) {
      const ks = [0, 1, 2, 3].filter((k) => i + k < fromMiB + mib);
      await Promise.all(ks.map((k) => this.write((i + k) * MiB, this.randomBytes(MiB))));
    }
  }

  /** Waits until every running replica applied everything its leader committed and holds exactly the model. */
  async converged(what: string, timeoutMs = waitMs): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const why = this.mismatch();
      if (why === undefined) return;
      if (Date.now() > deadline) throw new Error(`${what}: ${why}`);
      await sleep(50);
    }
  }

  private mismatch(): string | undefined {
    const up = this.all.filter((r) => r.driver !== undefined);
    const l = this.leader(up);
    if (l === undefined) return "no leader";
    const commit = l.driver!.status(group)!.commit;
    for (const r of up) {
      const st = r.driver!.status(group)!;
      if (st.applied < commit) return `node ${r.id} applied ${st.applied} of ${commit}`;
    }
    const allocatedBytes = this.allocated.reduce((n, x) => n + x, 0) * sectorBytes;
    for (const r of up) {
      const have = r.store!.allocatedBytes(group);
      if (have !== allocatedBytes) return `node ${r.id} has ${have} bytes allocated, the model ${allocatedBytes}`;
      for (let at = 0; at < sizeBytes; at += MiB) {
        if (!r.store!.read(group, at, MiB).equals(this.model.subarray(at, at + MiB))) return `node ${r.id} differs from the model in MiB ${at / MiB}`;
      }
    }
    return undefined;
  }

  private async retry(what: string, op: (leader: Replica) => Promise<void>): Promise<void> {
    for (let attempt = 0; attempt < 100; attempt++) {
      const l = await waitFor("a leader", () => this.leader());
      try {
        return await op(l);
      } catch (e) {
        if (!(e instanceof NotLeaderError) && (e as Error).name !== "ProposalDroppedError") throw e;
        await sleep(50);
      }
    }
    throw new Error(`no leader took the ${what}`);
  }

  private note(r: Replica, line: string): void {
    this.logs.push(`node ${r.id}: ${line}`);
  }
}

/** Runs a scenario on a fresh cluster; on failure prints what the nodes logged. */
async function scenario(name: string, seed: number, body: (c: TestCluster) => Promise<void>): Promise<void> {
  const c = new TestCluster(name, seed);
  const started = Date.now();
  try {
    await c.startAll();
    await body(c);
    console.log(`${name}: ${Date.now() - started} ms`);
    if (process.env.PXD_TEST_VERBOSE) console.log(c.logs.join("\n"));
  } catch (e) {
    console.error(`--- ${name}: what the nodes logged ---\n${c.logs.join("\n")}\n---`);
    throw e;
  } finally {
    await c.dispose();
  }
}

interface LeftBehind {
  follower: Replica;
  /** The follower's last log index when it stopped. */
  lastIndex: number;
  /** The model as it was when the follower stopped (it had applied all of it). */
  modelAtStop: Buffer;
  allocatedAtStop: number;
}

/**
 * Writes `initialMiB` from offset 0 on every replica, stops a follower, writes
 * `awayMiB` more (far past the retention) and waits until both others compacted
 * their logs past the follower's last entry: it can only come back through a
 * snapshot.
 */
async function leaveFollowerBehind(c: TestCluster, initialMiB: number, awayMiB: number, stop: "a follower" | "the leader" = "a follower"): Promise<LeftBehind> {
  await c.fill(0, initialMiB);
  await c.converged("the first writes on every replica");
  const leader = c.leader()!;
  const follower = stop === "the leader" ? leader : c.all.find((r) => r !== leader)!;
  // A group's log is compacted every 20 ticks up to what all three hold: let that happen once.
  const held = leader.store!.raftState(group).appliedIndex;
  await waitFor("the first writes compacted on every replica", () => c.all.every((r) => r.store!.raftState(group).snapshotIndex >= held));
  const lastIndex = follower.store!.raftState(group).lastIndex;
  const modelAtStop = Buffer.from(c.model);
  const allocatedAtStop = follower.store!.allocatedBytes(group);
  await c.crash(follower);
  await c.fill(initialMiB, awayMiB);
  const others = c.all.filter((r) => r !== follower);
  await waitFor("the other two to compact past the stopped follower", () => others.every((r) => r.store!.raftState(group).snapshotIndex > lastIndex));
  return { follower, lastIndex, modelAtStop, allocatedAtStop };
}

/** The end state every scenario must reach once its faults have stopped. */
async function assertRecovered(c: TestCluster, f: Replica, freeMiB: number): Promise<void> {
  await waitFor(`node ${f.id} to install a snapshot`, () => installed(f) >= 1);
  await c.converged("identical replicas after the snapshot");
  await c.fill(freeMiB, 2);
  await c.trim(freeMiB * MiB + 4096, 8192);
  await c.converged("writes after the snapshot on every replica");
  for (const r of c.all) assert.not.ok(r.store!.hasGroup(stagingId), `node ${r.id} has no staging group left`);
  // The install is durable: a crash and a recovery from the follower's log give the same volume.
  await c.crash(f);
  await c.restart(f);
  await c.converged(`node ${f.id} after a crash and a recovery`);
}

/**
 * Restarts `f`, which the others compacted past, and checks it came back
 * through a delta: with one stream, exactly `sent` bytes of data crossed the
 * network and `kept` bytes were copied from its own group.
 */
async function backThroughDelta(c: TestCluster, name: string, f: Replica, sentBytes: number, keptBytes: number): Promise<void> {
  const before = c.senders();
  await c.restart(f);
  await assertRecovered(c, f, 24);
  const after = c.senders();
  const started = after.snapshotsStarted - before.snapshotsStarted;
  const sent = after.snapshotBytesSent - before.snapshotBytesSent;
  const kept = after.snapshotBytesKept - before.snapshotBytesKept;
  console.log(`${name}: ${started} snapshot(s), ${after.snapshotDeltas - before.snapshotDeltas} delta(s), ${sent} bytes sent, ${kept} bytes kept`);
  assert.ok(started >= 1, "the leader started a snapshot");
  assert.ok(after.snapshotDeltas > before.snapshotDeltas, "a delta: the leader kept what changed while the member was away");
  if (started === 1) {
    assert.is(sent, sentBytes, "only what changed crossed the network");
    assert.is(kept, keptBytes, "the rest of what it held it copied from its own group");
  } else assert.ok(sent >= sentBytes, `a stream was given up and sent again (${started} streams, ${sent} bytes)`);
}

test("plain: a follower behind the compaction point gets what changed since it left, keeps the rest, and ends identical", async () => {
  await scenario("plain", 1, async (c) => {
    const { follower: f } = await leaveFollowerBehind(c, 4, 8);
    // More while it is away, now over what it holds: MiB 1 rewritten, 8 KiB of MiB 2 trimmed.
    await c.fill(1, 1);
    await c.trim(2 * MiB + 4096, 8192);
    // Sent: the 8 MiB written while it was away and the rewritten MiB; kept: the other 3 MiB it held, less the trimmed range.
    await backThroughDelta(c, "plain", f, 9 * MiB, 3 * MiB - 8192);
  });
});

test("the leader is the one away: the new leader, which never saw it leave, still sends only what changed", async () => {
  await scenario("oldleader", 10, async (c) => {
    const { follower: old } = await leaveFollowerBehind(c, 4, 8, "the leader");
    await c.fill(1, 1);
    // The old leader restarts having applied less than the new leader's base (commit indexes are persisted late): it applies its own log up to there first.
    await backThroughDelta(c, "oldleader", old, 9 * MiB, 3 * MiB);
  });
});

test("the follower crashes after acknowledging 2 chunks: its group is intact, the staging is dropped, a later snapshot completes", async () => {
  await scenario("midstream", 2, async (c) => {
    const { follower: f, lastIndex, modelAtStop, allocatedAtStop } = await leaveFollowerBehind(c, 4, 16);
    let acked = 0;
    let cut = false;
    c.net.rule = (from, to, env) => {
      if (from === f.id && isAck(env) && env.ok) acked++;
      if (acked >= 2) cut = true;
      return cut && to === f.id && isChunk(env) ? "drop" : "pass";
    };
    await c.restart(f);
    await waitFor("two chunks acknowledged", () => acked >= 2);
    await c.crash(f);
    // While it is down: the first MiB (the first chunk it had staged) becomes a hole, and the
    // trim is compacted, so the next snapshot (not the log) is what tells the follower.
    await c.trim(0, MiB);
    await c.write(20 * MiB, c.randomBytes(MiB));
    const trimmedAt = c.leader()!.driver!.status(group)!.applied;
    await waitFor("the trim compacted", () => c.all.every((r) => r.store === undefined || r.store.raftState(group).snapshotIndex >= trimmedAt));

    await c.restart(f, (store) => {
      assert.not.ok(store.hasGroup(stagingId), "the unfinished snapshot is dropped at open");
      assert.is(store.raftState(group).lastIndex, lastIndex, "the follower's own log is as it was");
    });
    await waitFor("the follower to re-apply its own log", () => f.driver!.status(group)!.applied >= lastIndex);
    assert.ok(f.store!.read(group, 0, sizeBytes).equals(modelAtStop), "the follower's own group holds what it had when it stopped");
    assert.is(f.store!.allocatedBytes(group), allocatedAtStop);
    assert.is(installed(f), 0);
    cut = false;
    acked = -Infinity;
    await assertRecovered(c, f, 24);
  });
});

test("snap-acks lost for a while: the leader gives up, starts over, and the end state is right", async () => {
  await scenario("acks", 3, async (c) => {
    const { follower: f } = await leaveFollowerBehind(c, 2, 8);
    let dropAcks = true;
    c.net.rule = (from, _to, env) => (dropAcks && from === f.id && isAck(env) ? "drop" : "pass");
    const before = c.senders();
    await c.restart(f);
    await waitFor("the leader to give up", () => c.senders().snapshotsFailed > before.snapshotsFailed);
    assert.ok(c.logs.some((l) => l.includes("given up (no acknowledgement)")), "it gave up for want of acknowledgements");
    assert.is(installed(f), 0, "nothing is installed without acknowledgements");
    dropAcks = false;
    await assertRecovered(c, f, 24);
    assert.ok(c.senders().snapshotsStarted >= before.snapshotsStarted + 2, "the leader started over");
  });
});

test("the core's snap message lost after the last chunk: the leader times out and sends it all again", async () => {
  await scenario("snapmsg", 4, async (c) => {
    const { follower: f } = await leaveFollowerBehind(c, 2, 8);
    let dropped = 0;
    c.net.rule = (_from, to, env) => (to === f.id && isSnapMessage(env) && dropped++ === 0 ? "drop" : "pass");
    const before = c.senders();
    await c.restart(f);
    await assertRecovered(c, f, 24);
    assert.ok(dropped >= 2, "the snap message was sent again after the lost one");
    assert.ok(c.senders().snapshotsFailed > before.snapshotsFailed, "the first stream counts as failed");
    assert.ok(c.logs.some((l) => l.includes("given up (the follower did not install it)")));
  });
});

test("writes and trims go on while the snapshot streams: the fuzzy copy plus the log replay ends identical", async () => {
  await scenario("fuzzy", 5, async (c) => {
    const { follower: f } = await leaveFollowerBehind(c, 4, 12);
    let streaming = false;
    c.net.rule = (from, to, env) => {
      if (to === f.id && isChunk(env)) streaming = true;
      // A slower follower disk: each acknowledgement takes 40 ms, so the stream lasts a while.
      return from === f.id && isAck(env) ? 40 : "pass";
    };
    let stop = false;
    let duringStream = 0;
    const busy = new Set<number>();
    const writer = async (): Promise<void> => {
      while (!stop) {
        const block = c.pick(sizeBytes / (64 * 1024));
        if (busy.has(block)) continue;
        busy.add(block);
        if (c.pick(4) === 0) await c.trim(block * 64 * 1024, 64 * 1024);
        else await c.write(block * 64 * 1024, c.randomBytes(64 * 1024));
        busy.delete(block);
        if (streaming && installed(f) === 0) duringStream++;
      }
    };
    const writers = [writer(), writer(), writer()];
    try {
      await c.restart(f);
      await waitFor("the snapshot installed", () => installed(f) >= 1);
      await sleep(200);
    } finally {
      stop = true;
      await Promise.all(writers);
    }
    assert.ok(duringStream >= 10, `writes were acknowledged while the copy streamed (${duringStream})`);
    c.net.rule = () => "pass";
    await assertRecovered(c, f, 28);
  });
});

test("a duplicated or reordered chunk is refused; the leader starts the stream over", async () => {
  await scenario("order", 6, async (c) => {
    const { follower: f } = await leaveFollowerBehind(c, 2, 10);
    // Stream 1: chunk 2 arrives twice. Stream 2: chunk 4 before chunk 3. Stream 3: chunk 0
    // again in the middle (it restarts the staging, so the next chunk is out of order).
    let stream = 0;
    let first: SnapChunkEnvelope | undefined;
    let held: SnapChunkEnvelope | undefined;
    let refusals = 0;
    c.net.rule = (from, to, env) => {
      if (from === f.id && isAck(env) && !env.ok) refusals++;
      if (to !== f.id || !isChunk(env)) return "pass";
      const leader = c.all[from - 1]!;
      if (env.seq === 0) {
        stream++;
        first = env;
      }
      if (stream === 1 && env.seq === 2) queueMicrotask(() => c.net.inject(leader, to, env));
      if (stream === 2 && env.seq === 3) {
        held = env;
        return "drop";
      }
      if (stream === 2 && env.seq === 4) queueMicrotask(() => c.net.inject(leader, to, held!));
      if (stream === 3 && env.seq === 1) queueMicrotask(() => c.net.inject(leader, to, first!));
      return "pass";
    };
    const before = c.senders();
    await c.restart(f);
    await assertRecovered(c, f, 24);
    assert.ok(stream >= 4, `the leader streamed again after each refusal (${stream} streams)`);
    assert.ok(refusals >= 3, `the follower refused (${refusals} refusals)`);
    assert.ok(c.senders().snapshotsFailed >= before.snapshotsFailed + 3);
    assert.ok(c.logged(f, "out of order"));
  });
});

test("the leader dies mid-stream: the new leader sends its own snapshot; the old leader returns and all three end identical", async () => {
  await scenario("newleader", 7, async (c) => {
    const { follower: f } = await leaveFollowerBehind(c, 2, 10);
    const old = c.leader()!;
    const other = c.all.find((r) => r !== f && r !== old)!;
    // After two acknowledged chunks the old leader's chunks stop reaching the follower: it dies mid-stream.
    let acked = 0;
    c.net.rule = (from, to, env) => {
      if (from === f.id && to === old.id && isAck(env) && env.ok) acked++;
      return acked >= 2 && from === old.id && isChunk(env) ? "drop" : "pass";
    };
    await c.restart(f);
    await waitFor("two chunks acknowledged", () => acked >= 2);
    await c.crash(old);
    const survivors = [f, other];
    await waitFor("the other node to lead", () => c.leader(survivors) === other);
    await waitFor(`node ${f.id} to install the new leader's snapshot`, () => installed(f) >= 1);
    await c.converged("the survivors identical");
    await c.fill(12, 2);
    await c.restart(old);
    await assertRecovered(c, f, 24);
    assert.ok(other.driver!.snapshotSender.counters.snapshotsStarted >= 1, "the new leader streamed its own copy");
  });
});

test("the leader dies mid-stream and the new leader still has the log: the follower catches up from it and keeps no staging", async () => {
  await scenario("newleaderlog", 8, async (c) => {
    // The other follower never hears of the compaction, so it keeps the whole log.
    c.net.rule = (_from, _to, env) => (env.kind === "compact" ? "drop" : "pass");
    await c.fill(0, 2);
    await c.converged("the first writes on every replica");
    const old = c.leader()!;
    const f = c.all.find((r) => r !== old)!;
    const other = c.all.find((r) => r !== f && r !== old)!;
    const lastIndex = f.store!.raftState(group).lastIndex;
    await c.crash(f);
    await c.fill(2, 10);
    await waitFor("the leader to compact past the stopped follower", () => old.store!.raftState(group).snapshotIndex > lastIndex);
    assert.ok(other.store!.raftState(group).firstIndex <= lastIndex + 1, "the other follower kept the log");
    let acked = 0;
    c.net.rule = (from, to, env) => {
      if (from === f.id && to === old.id && isAck(env) && env.ok) acked++;
      return env.kind === "compact" || (acked >= 2 && from === old.id && isChunk(env)) ? "drop" : "pass";
    };
    await c.restart(f);
    await waitFor("two chunks acknowledged", () => acked >= 2);
    await c.crash(old);
    await waitFor("the other node to lead", () => c.leader([f, other]) === other);
    await c.converged("the follower caught up from the new leader's log");
    assert.is(installed(f), 0, "no snapshot was needed");
    await c.restart(old);
    await c.fill(24, 2);
    await c.converged("all three identical");
    assert.not.ok(f.store!.hasGroup(stagingId), "the unfinished staging group is not left behind");
  });
});

test("chunk 0 replayed right behind the snap message, and again after the install: the follower installs the copy it checked and keeps no other", async () => {
  await scenario("replay", 9, async (c) => {
    const { follower: f } = await leaveFollowerBehind(c, 2, 8);
    let first: SnapChunkEnvelope | undefined;
    let sender: Replica | undefined;
    let replayed = false;
    c.net.rule = (from, to, env) => {
      if (to === f.id && isChunk(env) && env.seq === 0) {
        first = env;
        sender = c.all[from - 1]!;
      }
      if (!replayed && to === f.id && isSnapMessage(env) && first !== undefined) {
        replayed = true;
        queueMicrotask(() => c.net.inject(sender!, to, first!));
      }
      return "pass";
    };
    await c.restart(f);
    await waitFor("the snapshot installed", () => installed(f) >= 1);
    assert.ok(replayed);
    // A copy at an index the follower has already applied is of no use to it.
    c.net.inject(sender!, f.id, first!);
    await assertRecovered(c, f, 24);
  });
});

test.run();
