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
import { checksumBlockBytes, recordPayloadBytesMax, sectorBytes } from "../constants.js";
import type { NodeId } from "../raft/types.js";
import type { Store, StoreExtent } from "../store/store.js";
import { GroupStoppedError, MultiRaft, NotLeaderError, ProposalDroppedError } from "./driver.js";
import { errorKindOf, VolumeIoError } from "./errors.js";
import type { Repairer } from "./repair.js";
import { volumeOpOverheadBytes } from "./volume-op.js";

export type IoOp = "read" | "write" | "trim" | "zero" | "zero-nohole" | "status";

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
}

/** Data per proposal: whole sectors, leaving room for the block checksums and the trailer in one store record. */
const proposalBytesMax = recordPayloadBytesMax - 2 * checksumBlockBytes;
assert(proposalBytesMax + volumeOpOverheadBytes(proposalBytesMax) <= recordPayloadBytesMax && proposalBytesMax % sectorBytes === 0, "a proposal fits one record");
const zeroes = new Uint8Array(proposalBytesMax);
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
  private readonly rmwTails = new Map<number, Promise<void>>();

  constructor(private readonly o: VolumeIoOptions) {
    this.nextId = o.random.int(2 ** 31) * requestIdSpan + 1;
  }

  /**
   * A group whose only replica is on this node needs no consensus: its I/O
   * goes straight to the store (local Write records, applied once durable),
   * with the store's own group commit pipeline. Nothing else can lead it.
   */
  soleReplica(group: number): boolean {
    return this.sole(group);
  }

  private sole(group: number): boolean {
    const voters = this.o.driver.voters(group);
    return voters.length === 1 && voters[0] === this.o.nodeId && this.o.driver.learners(group).length === 0;
  }

  read(group: number, offsetBytes: number, lengthBytes: number, into?: Buffer): Promise<Buffer> | Buffer {
    if (this.sole(group)) return this.o.repairer.read(group, offsetBytes, lengthBytes, into);
    return this.route(group, "read", offsetBytes, lengthBytes, null).then((r) => Buffer.from(r.data!.buffer, r.data!.byteOffset, r.data!.byteLength));
  }

  write(group: number, offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Promise<void> {
    if (this.sole(group)) return this.o.store.write(group, offsetBytes, data, lengthBytes);
    const joined = data.length === 1 ? data[0]! : Buffer.concat(data as Uint8Array[], lengthBytes);
    // On the leader, a write of whole sectors that fits one proposal goes
    // straight to the driver: route(), serveLocal() and writeLocal() cost a
    // promise hop each on every write. Leadership lost meanwhile falls back to
    // route(), which finds the new leader (retrying an unacknowledged write is
    // safe, see forwardAttemptMs).
    if (this.o.driver.leader(group) === this.o.nodeId && offsetBytes % sectorBytes === 0 && lengthBytes % sectorBytes === 0 && lengthBytes <= proposalBytesMax) {
      return this.o.driver.write(group, offsetBytes, [joined], lengthBytes).catch((e: unknown) => {
        if (!(e instanceof NotLeaderError || e instanceof ProposalDroppedError)) throw e;
        return this.route(group, "write", offsetBytes, lengthBytes, joined).then(() => {});
      });
    }
    return this.route(group, "write", offsetBytes, lengthBytes, joined).then(() => {});
  }

  trim(group: number, offsetBytes: number, lengthBytes: number): Promise<void> {
    if (this.sole(group)) return this.o.store.trim(group, offsetBytes, lengthBytes);
    return this.route(group, "trim", offsetBytes, lengthBytes, null).then(() => {});
  }

  writeZeroes(group: number, offsetBytes: number, lengthBytes: number, noHole: boolean): Promise<void> {
    if (this.sole(group)) return this.o.store.writeZeroes(group, offsetBytes, lengthBytes, noHole);
    return this.route(group, noHole ? "zero-nohole" : "zero", offsetBytes, lengthBytes, null).then(() => {});
  }

  blockStatus(group: number, offsetBytes: number, lengthBytes: number): Promise<StoreExtent[]> | StoreExtent[] {
    if (this.sole(group)) return this.o.store.blockStatus(group, offsetBytes, lengthBytes);
    return this.route(group, "status", offsetBytes, lengthBytes, null).then((r) => r.extents!);
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

  /** Serves locally when this node leads, else forwards; retries across leader changes until the deadline. */
  private async route(group: number, op: IoOp, offsetBytes: number, lengthBytes: number, data: Uint8Array | null): Promise<ForwardReply> {
    const deadline = this.now() + this.o.deadlineMs;
    let last = "no leader is known";
    /** Why a replica could not take a change, if one said (its store stopped: no room): the client's error at the deadline. A read finds no leader: EIO. */
    let cause: ErrorKind | undefined;
    const changes = op !== "read" && op !== "status";
    let hint: NodeId = 0;
    for (let attempt = 0; ; attempt++) {
      // The connection was opened on a volume this node's catalog knew; now it knows none: deleted.
      if (!this.o.driver.hasGroup(group) && this.o.replicasOf(group).length === 0) throw new VolumeIoError("ENOENT", `volume group ${group} no longer exists: the volume was deleted`);
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
      if (this.sole(group)) return await this.serveSole(group, op, offsetBytes, lengthBytes, data);
      switch (op) {
        case "read":
          await this.o.driver.readBarrier(group);
          return ok(await this.o.repairer.read(group, offsetBytes, lengthBytes));
        case "status":
          await this.o.driver.readBarrier(group);
          return ok(null, this.o.store.blockStatus(group, offsetBytes, lengthBytes));
        case "write":
          assert(data !== null && data.length === lengthBytes, "a write carries its data");
          await this.writeLocal(group, offsetBytes, data);
          return ok();
        case "trim":
          await this.trimLocal(group, offsetBytes, lengthBytes);
          return ok();
        case "zero":
        case "zero-nohole":
          await this.zeroLocal(group, offsetBytes, lengthBytes, op === "zero-nohole");
          return ok();
      }
    } catch (e) {
      return { kind: "fwd-re", id: 0, error: this.failure(group, e), data: null, extents: null };
    }
  }

  /** What a failure of a request served here tells the requester; anything that is no expected failure ends the process. */
  private failure(group: number, e: unknown): ForwardError {
    if (e instanceof NotLeaderError) return withKind({ code: "not-leader", message: e.message, leader: e.leader }, this.stoppedKind(group));
    if (e instanceof GroupStoppedError) return { code: "retry", kind: e.kind, message: e.message, leader: 0 };
    if (e instanceof ProposalDroppedError) return { code: "retry", message: e.message, leader: 0 };
    const kind = errorKindOf(e);
    if (kind === undefined) return failStop(e, `volume I/O: serving a request of group ${group}`);
    return { code: "io", kind, message: (e as Error).message, leader: 0 };
  }

  /** The group stopped here (its log could not be persisted): why, as the store failed. */
  private stoppedKind(group: number): ErrorKind | undefined {
    if (!this.o.driver.stoppedGroups().has(group)) return undefined;
    return errorKindOf(this.o.store.failure) ?? "EIO";
  }

  private async serveSole(group: number, op: IoOp, offsetBytes: number, lengthBytes: number, data: Uint8Array | null): Promise<ForwardReply> {
    const reply = (d: Uint8Array | null, extents: StoreExtent[] | null): ForwardReply => ({ kind: "fwd-re", id: 0, error: null, data: d, extents });
    if (op === "read") return reply(await this.o.repairer.read(group, offsetBytes, lengthBytes), null);
    if (op === "status") return reply(null, this.o.store.blockStatus(group, offsetBytes, lengthBytes));
    if (op === "write") await this.o.store.write(group, offsetBytes, [data!], lengthBytes);
    else if (op === "trim") await this.o.store.trim(group, offsetBytes, lengthBytes);
    else await this.o.store.writeZeroes(group, offsetBytes, lengthBytes, op === "zero-nohole");
    return reply(null, null);
  }

  private async writeLocal(group: number, offsetBytes: number, data: Uint8Array): Promise<void> {
    const end = offsetBytes + data.length;
    if (offsetBytes % sectorBytes !== 0 || end % sectorBytes !== 0) return this.readModifyWrite(group, offsetBytes, data);
    const parts: Promise<void>[] = [];
    for (let at = 0; at < data.length; at += proposalBytesMax) {
      const n = Math.min(proposalBytesMax, data.length - at);
      parts.push(this.o.driver.write(group, offsetBytes + at, [data.subarray(at, at + n)], n));
    }
    await Promise.all(parts);
  }

  /** Partial sectors: read, merge, write whole sectors; one at a time per volume so neighbours do not undo each other. */
  private readModifyWrite(group: number, offsetBytes: number, data: Uint8Array): Promise<void> {
    const op = (this.rmwTails.get(group) ?? Promise.resolve()).then(async () => {
      const from = Math.floor(offsetBytes / sectorBytes) * sectorBytes;
      const to = Math.ceil((offsetBytes + data.length) / sectorBytes) * sectorBytes;
      await this.o.driver.readBarrier(group);
      const merged = await this.o.repairer.read(group, from, to - from);
      merged.set(data, offsetBytes - from);
      await this.writeLocal(group, from, merged);
    });
    this.rmwTails.set(group, op.catch(() => {}));
    return op;
  }

  private async trimLocal(group: number, offsetBytes: number, lengthBytes: number): Promise<void> {
    const from = Math.ceil(offsetBytes / sectorBytes) * sectorBytes;
    const to = Math.floor((offsetBytes + lengthBytes) / sectorBytes) * sectorBytes;
    if (to > from) await this.o.driver.trim(group, from, to - from);
  }

  private async zeroLocal(group: number, offsetBytes: number, lengthBytes: number, noHole: boolean): Promise<void> {
    const end = offsetBytes + lengthBytes;
    const from = Math.ceil(offsetBytes / sectorBytes) * sectorBytes;
    const to = Math.floor(end / sectorBytes) * sectorBytes;
    if (to <= from) return this.readModifyWrite(group, offsetBytes, new Uint8Array(lengthBytes));
    const parts: Promise<void>[] = [];
    if (noHole) {
      // Zeroes written as data (the range stays allocated), a bounded chunk at a time.
      for (let at = from; at < to; at += proposalBytesMax) {
        const n = Math.min(proposalBytesMax, to - at);
        parts.push(this.o.driver.write(group, at, [zeroes.subarray(0, n)], n));
      }
    } else {
      parts.push(this.o.driver.trim(group, from, to - from));
    }
    if (offsetBytes < from) parts.push(this.readModifyWrite(group, offsetBytes, new Uint8Array(from - offsetBytes)));
    if (to < end) parts.push(this.readModifyWrite(group, to, new Uint8Array(end - to)));
    await Promise.all(parts);
  }
}

function withKind(e: ForwardError, kind: ErrorKind | undefined): ForwardError {
  return kind === undefined ? e : { ...e, kind };
}
