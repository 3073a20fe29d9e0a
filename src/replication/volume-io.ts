// Volume I/O on a replicated group, from any node (DESIGN §2, issue 4 item 4).
//
// On the group's leader a request runs here: writes are proposed and
// acknowledged once committed and applied; reads wait for a ReadIndex round
// (a deposed leader never answers). On any other node the request is
// forwarded to the leader over the peer transport, and retried against a new
// leader when leadership moves, until a deadline; only then does the client
// see an error. A failure keeps its kind (src/base/error-kind.ts) on the way
// back: a leader's ENOSPC is the forwarding node's client's ENOSPC.

import { assert } from "../base/assert.js";
import { isErrorKind, type ErrorKind } from "../base/error-kind.js";
import { failStop } from "../base/fail-stop.js";
import { catalogSnapshotsMax } from "../constants.js";
import type { NodeId } from "../raft/types.js";
import type { Store, StoreExtent } from "../store/store.js";
import { GroupStoppedError, MultiRaft, NotLeaderError, ProposalDroppedError } from "./driver.js";
import { CatalogLagError, errorKindOf, VolumeIoError } from "./errors.js";
import type { Repairer } from "./repair.js";
import { snapshotGroupId, volumeGroupOf } from "../store/store.js";
import { decryptedRead, type MissingKey, type VolumeCipher } from "./volume-cipher.js";
import { decodeSnapshotOp, encodeSnapshotOp, type SnapshotOp } from "./volume-op.js";
import { VolumeReplica, type ReplicaPort } from "./volume-replica.js";

/**
 * "resize": grow the volume (the new size in offsetBytes, length 0);
 * "snapshot": a snapshot operation (its entry data, volume-op.ts), proposed on
 * the leader; "snap-read" and "snap-status": a read of a volume snapshot the
 * answering node holds (group: the snapshot's group id).
 */
export type IoOp = "read" | "write" | "trim" | "zero" | "zero-nohole" | "status" | "resize" | "snapshot" | "snap-read" | "snap-status";

export interface ForwardRequest {
  kind: "fwd";
  id: number;
  group: number;
  op: IoOp;
  offsetBytes: number;
  lengthBytes: number;
  data: Uint8Array | null;
}

export interface ForwardReply {
  kind: "fwd-re";
  id: number;
  /** null on success; else why, and the leader if the answering node knows it. */
  error: ForwardError | null;
  data: Uint8Array | null;
  extents: StoreExtent[] | null;
}

/**
 * A failed forwarded request. `code` says what the forwarding node does next:
 * ask the leader named (not-leader), ask again (retry), or give the client
 * the error (io). `kind` is what went wrong: with io, the client's error
 * (a reply without one, from an older node, is EIO); with not-leader or
 * retry, why this node could not serve it (its replica stopped for lack of
 * space), the client's error should no other replica serve it in time.
 */
export interface ForwardError {
  code: "not-leader" | "retry" | "io";
  kind?: ErrorKind;
  message: string;
  leader: NodeId;
}

export interface VolumeIoOptions {
  nodeId: NodeId;
  driver: MultiRaft;
  store: Store;
  /** Reads checked against the blocks' checksums, damaged blocks repaired from another replica. */
  repairer: Repairer;
  send(to: NodeId, message: ForwardRequest | ForwardReply): boolean;
  /** Runs fn after ms; the daemon passes setTimeout. Returns a cancel function. */
  after(ms: number, fn: () => void): () => void;
  /** Monotonic milliseconds, for deadlines. */
  now(): number;
  /** Uniform integers in [0, n): where this process's request ids start. */
  random: { int(n: number): number };
  /** The nodes holding a group's replicas (from the catalog), for groups this node does not host. */
  replicasOf(group: number): NodeId[];
  /** How long a request may wait for a leader before it fails. */
  deadlineMs: number;
  /**
   * A volume group's cipher: null for a plain volume, MissingKey where this
   * node cannot open an encrypted one's key, undefined while this node's
   * catalog does not know the volume (CatalogLagError: asked again). Writes are encrypted on the
   * leader before they are proposed and reads decrypted where the store is
   * read, so only these two places, on the node that serves the request, see
   * plaintext (docs/architecture.md, "Encryption at rest").
   */
  cipherOf(group: number): VolumeCipher | MissingKey | null | undefined;
}

const retryDelayMs = 50;
/**
 * How long one forwarded attempt waits before trying again (the leader may be
 * dead). Retrying an unacknowledged write is safe: the client issues no write
 * that depends on it before it is acknowledged, and a stale copy can only sit
 * earlier in the log than the retry.
 */
const forwardAttemptMs = 2000;

/**
 * Forwarded request ids start at a random multiple of this in every process,
 * so a reply that was meant for a request of an earlier run of this node (it
 * was in flight when the node restarted) never matches a request of this one.
 */
const requestIdSpan = 2 ** 21;

export class VolumeIo {
  private nextId: number;
  private readonly waiting = new Map<number, { from: NodeId; resolve(r: ForwardReply): void }>();
  private readonly ports = new Map<number, ReplicaPort>();
  /** The node that last served a snapshot this node does not hold, by the snapshot's group id (at most catalogSnapshotsMax). */
  private readonly snapshotHolders = new Map<number, NodeId>();

  constructor(private readonly o: VolumeIoOptions) {
    this.nextId = o.random.int(2 ** 31) * requestIdSpan + 1;
  }

  /**
   * Reads are served here, synchronously, when the driver says this node may
   * read now (it leads and is the only voter: no ReadIndex round needed);
   * else on the leader after a ReadIndex round, here or forwarded.
   */
  read(group: number, offsetBytes: number, lengthBytes: number, into?: Buffer): Promise<Buffer> | Buffer {
    if (this.readsHere(group)) return this.plainRead(group, offsetBytes, lengthBytes, into, (o, n, i) => this.o.repairer.read(group, o, n, i));
    return this.route(group, "read", offsetBytes, lengthBytes, null).then((r) => Buffer.from(r.data!.buffer, r.data!.byteOffset, r.data!.byteLength));
  }

  write(group: number, offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Promise<void> {
    return this.change(group, "write", offsetBytes, lengthBytes, data);
  }

  trim(group: number, offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.change(group, "trim", offsetBytes, lengthBytes, null);
  }

  writeZeroes(group: number, offsetBytes: number, lengthBytes: number, noHole: boolean): Promise<void> {
    return this.change(group, noHole ? "zero-nohole" : "zero", offsetBytes, lengthBytes, null);
  }

  /**
   * Grows the volume to `sizeBytes` through its group's log, on its leader
   * (here or forwarded, retried across leader changes like a write: a resize
   * applied twice grows once). Resolves once the leader applied it.
   */
  resize(group: number, sizeBytes: number): Promise<void> {
    return this.change(group, "resize", sizeBytes, 0, null);
  }

  blockStatus(group: number, offsetBytes: number, lengthBytes: number): Promise<StoreExtent[]> | StoreExtent[] {
    if (this.readsHere(group)) return this.o.store.blockStatus(group, offsetBytes, lengthBytes);
    return this.route(group, "status", offsetBytes, lengthBytes, null).then((r) => r.extents!);
  }

  /** Takes or drops a snapshot of a volume group on its leader (here or forwarded); retried like a write (the operation is idempotent). */
  snapshot(group: number, op: SnapshotOp): Promise<void> {
    return this.change(group, "snapshot", 0, 0, [encodeSnapshotOp(op)]);
  }

  /**
   * Rolls the volume back to a snapshot (VolumeReplica.rollback) on this
   * node, which must lead its group (else NotLeaderError) and hold the
   * snapshot (else ENOENT, saying so).
   */
  rollback(group: number, snapshotId: number): Promise<{ writtenBytes: number; trimmedBytes: number }> {
    const replica = this.o.driver.stateMachine(group);
    if (!(replica instanceof VolumeReplica) || this.o.driver.leader(group) !== this.o.nodeId) return Promise.reject(new NotLeaderError(group, this.o.driver.leader(group)));
    if (!this.o.store.hasGroup(snapshotGroupId(group, snapshotId))) {
      return Promise.reject(new VolumeIoError("ENOENT", `this node (${this.o.nodeId}) leads volume group ${group} but does not hold that snapshot: its replica was copied in after the snapshot was taken`));
    }
    return replica.rollback(this.portOf(group), snapshotId);
  }

  /**
   * Reads a volume snapshot: here when this node holds it (a snapshot never
   * changes: no leader, no barrier), else from a replica of the volume that
   * holds it, asked in turn.
   */
  readSnapshot(group: number, snapshotId: number, offsetBytes: number, lengthBytes: number, into?: Buffer): Promise<Buffer> | Buffer {
    const id = snapshotGroupId(group, snapshotId);
    if (this.o.store.hasGroup(id)) return this.plainRead(group, offsetBytes, lengthBytes, into, (o, n, i) => this.o.store.read(id, o, n, i));
    return this.fromSnapshotHolder(group, id, "snap-read", offsetBytes, lengthBytes).then((r) => Buffer.from(r.data!.buffer, r.data!.byteOffset, r.data!.byteLength));
  }

  snapshotStatus(group: number, snapshotId: number, offsetBytes: number, lengthBytes: number): Promise<StoreExtent[]> | StoreExtent[] {
    const id = snapshotGroupId(group, snapshotId);
    if (this.o.store.hasGroup(id)) return this.o.store.blockStatus(id, offsetBytes, lengthBytes);
    return this.fromSnapshotHolder(group, id, "snap-status", offsetBytes, lengthBytes).then((r) => r.extents!);
  }

  /**
   * Asks the volume's other replicas in turn for a snapshot read; the first
   * that holds it answers, and is asked first next time.
   */
  private async fromSnapshotHolder(group: number, id: number, op: IoOp, offsetBytes: number, lengthBytes: number): Promise<ForwardReply> {
    const deadline = this.now() + this.o.deadlineMs;
    const last = this.snapshotHolders.get(id);
    const holders = this.o.replicasOf(group).filter((n) => n !== this.o.nodeId).sort((a, b) => Number(b === last) - Number(a === last));
    const why: string[] = [];
    for (const n of holders) {
      if (this.now() >= deadline) break;
      const r = await this.forward(n, id, op, offsetBytes, lengthBytes, null, Math.min(deadline, this.now() + forwardAttemptMs));
      if (r === undefined) why.push(`node ${n} did not answer`);
      else if (r.error === null) {
        if (last !== n) {
          if (this.snapshotHolders.size >= catalogSnapshotsMax) this.snapshotHolders.clear();
          this.snapshotHolders.set(id, n);
        }
        return r;
      }
      else if (r.error.code === "io" && r.error.kind !== "ENOENT") throw new VolumeIoError(isErrorKind(r.error.kind) ? r.error.kind : "EIO", r.error.message);
      else why.push(r.error.message);
    }
    throw new VolumeIoError("EIO", `no replica of volume group ${group} could serve its snapshot read (${why.join("; ") || "no other replica"})`);
  }

  /**
   * A read of a volume (or its snapshot) from this node's store: ciphertext
   * decrypted, the covering data units read for a range that cuts one.
   * Throws EIO, saying why, where this node has no key for the volume.
   */
  private plainRead(group: number, offsetBytes: number, lengthBytes: number, into: Buffer | undefined, readRaw: (offsetBytes: number, lengthBytes: number, into?: Buffer) => Buffer | Promise<Buffer>): Buffer | Promise<Buffer> {
    const cipher = this.cipher(group);
    if (cipher === undefined) return readRaw(offsetBytes, lengthBytes, into);
    return decryptedRead(cipher, offsetBytes, lengthBytes, into, readRaw);
  }

  /** The volume group's cipher, undefined for a plain volume; throws EIO where this node has no key for it. */
  private cipher(group: number): VolumeCipher | undefined {
    const c = this.o.cipherOf(group);
    if (c === null) return undefined;
    if (c === undefined) throw new CatalogLagError(group);
    if ("missing" in c) throw new VolumeIoError("EIO", c.missing);
    return c;
  }

  /** A forwarded request or reply from a peer. */
  receive(from: NodeId, m: ForwardRequest | ForwardReply): void {
    if (m.kind === "fwd-re") {
      // Only the node the request went to answers it; anything else is stale or stray.
      const w = this.waiting.get(m.id);
      if (w === undefined || w.from !== from) return;
      this.waiting.delete(m.id);
      w.resolve(m);
      return;
    }
    void this.serveLocal(m.group, m.op, m.offsetBytes, m.lengthBytes, m.data).then((r) => this.o.send(from, { ...r, id: m.id }));
  }

  // ---- routing ----

  /**
   * Whether a read of the group is served here without a ReadIndex round:
   * this node leads and is its only voter (the driver knows), or it holds the
   * only replica and the group stopped here (its log could not be persisted:
   * no change can happen anywhere, and every change it acknowledged is applied).
   */
  private readsHere(group: number): boolean {
    return this.o.driver.readsHere(group) || this.stoppedAlone(group);
  }

  /** Whether the group stopped on this node (its log could not be persisted), which holds its only replica. */
  private stoppedAlone(group: number): boolean {
    return this.o.driver.stoppedGroups().has(group) && this.o.replicasOf(group).every((n) => n === this.o.nodeId);
  }

  /**
   * A change goes straight to this node's replica when this node leads (no
   * routing promise hops); a leadership lost meanwhile, or another leader,
   * takes route(), which finds the leader (retrying an unacknowledged write
   * is safe, see forwardAttemptMs).
   */
  private change(group: number, op: IoOp, offsetBytes: number, lengthBytes: number, data: readonly Uint8Array[] | null): Promise<void> {
    const joined = () => (data === null ? null : data.length === 1 ? data[0]! : Buffer.concat(data as Uint8Array[], lengthBytes));
    if (this.o.driver.leader(group) !== this.o.nodeId) return this.route(group, op, offsetBytes, lengthBytes, joined()).then(nothing);
    return this.changeHere(group, op, offsetBytes, lengthBytes, data).catch((e: unknown) => {
      if (!(e instanceof NotLeaderError || e instanceof ProposalDroppedError)) throw e;
      return this.route(group, op, offsetBytes, lengthBytes, joined()).then(nothing);
    });
  }

  /** A change on this node's replica, which must lead its group (else NotLeaderError). */
  private changeHere(group: number, op: IoOp, offsetBytes: number, lengthBytes: number, data: readonly Uint8Array[] | null): Promise<void> {
    const replica = this.o.driver.stateMachine(group);
    if (!(replica instanceof VolumeReplica)) return Promise.reject(new NotLeaderError(group, 0));
    try {
      return this.changeOn(replica, this.portOf(group), op, offsetBytes, lengthBytes, data);
    } catch (e) {
      return Promise.reject(e); // the volume's key is missing here (EIO), or a bug: the caller decides
    }
  }

  private changeOn(replica: VolumeReplica, port: ReplicaPort, op: IoOp, offsetBytes: number, lengthBytes: number, data: readonly Uint8Array[] | null): Promise<void> {
    switch (op) {
      case "write":
        assert(data !== null, "a write carries its data");
        return replica.write(port, offsetBytes, data, lengthBytes);
      case "trim":
        return replica.trim(port, offsetBytes, lengthBytes);
      case "zero":
      case "zero-nohole":
        return replica.writeZeroes(port, offsetBytes, lengthBytes, op === "zero-nohole");
      case "resize":
        return replica.resize(port, offsetBytes);
      case "snapshot": {
        const s = data?.length === 1 ? decodeSnapshotOp(data[0]!) : undefined;
        if (s === undefined) return Promise.reject(new VolumeIoError("EINVAL", "a snapshot request carries no snapshot operation"));
        return replica.snapshot(port, s);
      }
      default:
        throw new Error(`${op} changes nothing`);
    }
  }

  private portOf(group: number): ReplicaPort {
    let port = this.ports.get(group);
    if (port === undefined) {
      port = {
        propose: (command) => this.o.driver.propose(group, command),
        readBarrier: () => this.o.driver.readBarrier(group),
        read: (offsetBytes, lengthBytes) => this.o.repairer.read(group, offsetBytes, lengthBytes),
        cipher: () => this.cipher(group),
      };
      this.ports.set(group, port);
    }
    return port;
  }

  /** Serves locally when this node leads, else forwards; retries across leader changes until the deadline. */
  private async route(group: number, op: IoOp, offsetBytes: number, lengthBytes: number, data: Uint8Array | null): Promise<ForwardReply> {
    const deadline = this.now() + this.o.deadlineMs;
    let last = "no leader is known";
    /** Why a replica could not take a change, if one said (its store stopped: no room): the client's error at the deadline. A read finds no leader: EIO. */
    let cause: ErrorKind | undefined;
    const changes = op !== "read" && op !== "status" && op !== "snap-read" && op !== "snap-status";
    let hint: NodeId = 0;
    for (let attempt = 0; ; attempt++) {
      // The connection was opened on a volume this node's catalog knew; now it knows none: deleted.
      if (!this.o.driver.hasGroup(group) && this.o.replicasOf(group).length === 0) throw new VolumeIoError("ENOENT", `volume group ${group} no longer exists: the volume was deleted`);
      // Its only replica is here and stopped: no other node can take the change.
      if (changes && this.stoppedAlone(group)) throw new VolumeIoError(this.stoppedKind(group) ?? "EIO", `volume group ${group} stopped on node ${this.o.nodeId}, its only replica: ${this.o.driver.stoppedGroups().get(group)}`);
      const leader = this.target(group, hint, attempt);
      hint = 0;
      let r: ForwardReply | undefined;
      if (leader === this.o.nodeId) r = await this.serveLocal(group, op, offsetBytes, lengthBytes, data);
      else if (leader !== 0) {
        r = await this.forward(leader, group, op, offsetBytes, lengthBytes, data, Math.min(deadline, this.now() + forwardAttemptMs));
        if (r === undefined) last = `the leader, node ${leader}, did not answer`;
      }
      if (r !== undefined && r.error === null) return r;
      if (r?.error?.code === "io") throw new VolumeIoError(isErrorKind(r.error.kind) ? r.error.kind : "EIO", r.error.message);
      if (r?.error) {
        last = r.error.message;
        if (changes && isErrorKind(r.error.kind)) cause = r.error.kind;
        hint = r.error.leader;
        // Told who leads: go there at once, but never loop faster than the retry delay for long.
        if (hint !== 0 && hint !== leader && attempt % 4 !== 3 && this.now() < deadline) continue;
      }
      if (this.now() + retryDelayMs > deadline) throw new VolumeIoError(cause ?? "EIO", `volume group ${group}: ${last}; gave up after ${this.o.deadlineMs} ms`);
      await new Promise<void>((resolve) => this.o.after(retryDelayMs, resolve));
    }
  }

  /**
   * Where to send a request: the leader a reply just named, else the leader
   * this node knows (it hosts a replica), else one of the replica nodes in
   * turn (it knows the leader and answers with it, or says why its replica
   * stopped). A node with a replica of its own learns the leader from its
   * group; while it knows none, it asks another replica every fourth attempt
   * (0: wait and try again).
   */
  private target(group: number, hint: NodeId, attempt: number): NodeId {
    if (hint !== 0) return hint;
    const known = this.o.driver.leader(group);
    if (known !== 0) return known;
    const others = this.o.replicasOf(group).filter((n) => n !== this.o.nodeId);
    if (others.length === 0) return 0;
    if (!this.o.driver.hasGroup(group)) return others[attempt % others.length]!;
    return attempt % 4 === 3 ? others[Math.floor(attempt / 4) % others.length]! : 0;
  }

  private forward(to: NodeId, group: number, op: IoOp, offsetBytes: number, lengthBytes: number, data: Uint8Array | null, deadline: number): Promise<ForwardReply | undefined> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      const cancel = this.o.after(Math.max(1, deadline - this.now()), () => {
        this.waiting.delete(id);
        resolve(undefined);
      });
      this.waiting.set(id, {
        from: to,
        resolve: (r) => {
          cancel();
          resolve(r);
        },
      });
      if (!this.o.send(to, { kind: "fwd", id, group, op, offsetBytes, lengthBytes, data })) {
        this.waiting.delete(id);
        cancel();
        resolve(undefined);
      }
    });
  }

  private now(): number {
    return this.o.now();
  }

  // ---- serving on the leader ----

  private async serveLocal(group: number, op: IoOp, offsetBytes: number, lengthBytes: number, data: Uint8Array | null): Promise<ForwardReply> {
    const ok = (d: Uint8Array | null = null, extents: StoreExtent[] | null = null): ForwardReply => ({ kind: "fwd-re", id: 0, error: null, data: d, extents });
    try {
      switch (op) {
        case "snap-read":
        case "snap-status":
          if (!this.o.store.hasGroup(group)) return { kind: "fwd-re", id: 0, error: { code: "io", kind: "ENOENT", message: `node ${this.o.nodeId} does not hold that snapshot`, leader: 0 }, data: null, extents: null };
          if (op === "snap-status") return ok(null, this.o.store.blockStatus(group, offsetBytes, lengthBytes));
          return ok(await this.plainRead(volumeGroupOf(group), offsetBytes, lengthBytes, undefined, (o, n) => this.o.store.read(group, o, n)));
        case "read":
          if (!this.readsHere(group)) await this.o.driver.readBarrier(group);
          return ok(await this.plainRead(group, offsetBytes, lengthBytes, undefined, (o, n) => this.o.repairer.read(group, o, n)));
        case "status":
          if (!this.readsHere(group)) await this.o.driver.readBarrier(group);
          return ok(null, this.o.store.blockStatus(group, offsetBytes, lengthBytes));
        default:
          assert(op !== "write" || (data !== null && data.length === lengthBytes), "a write carries its data");
          await this.changeHere(group, op, offsetBytes, lengthBytes, data === null ? null : [data]);
          return ok();
      }
    } catch (e) {
      return { kind: "fwd-re", id: 0, error: this.failure(group, e), data: null, extents: null };
    }
  }

  /** What a failure of a request served here tells the requester; anything that is no expected failure ends the process. */
  private failure(group: number, e: unknown): ForwardError {
    // The only replica stopped here: the requester's client gets why at once.
    if ((e instanceof NotLeaderError || e instanceof ProposalDroppedError) && this.stoppedAlone(group)) return { code: "io", kind: this.stoppedKind(group) ?? "EIO", message: (e as Error).message, leader: 0 };
    if (e instanceof NotLeaderError) return withKind({ code: "not-leader", message: e.message, leader: e.leader }, this.stoppedKind(group));
    if (e instanceof GroupStoppedError) return { code: "retry", kind: e.kind, message: e.message, leader: 0 };
    if (e instanceof ProposalDroppedError || e instanceof CatalogLagError) return { code: "retry", message: e.message, leader: 0 };
    const kind = errorKindOf(e);
    if (kind === undefined) return failStop(e, `volume I/O: serving a request of group ${group}`);
    return { code: "io", kind, message: (e as Error).message, leader: 0 };
  }

  /** The group stopped here (its log could not be persisted): why, as the store failed. */
  private stoppedKind(group: number): ErrorKind | undefined {
    if (!this.o.driver.stoppedGroups().has(group)) return undefined;
    return errorKindOf(this.o.store.failure) ?? "EIO";
  }
}

function nothing(): void {}

function withKind(e: ForwardError, kind: ErrorKind | undefined): ForwardError {
  return kind === undefined ? e : { ...e, kind };
}
