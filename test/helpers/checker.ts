// A linearizability checker for a replicated block device, per block (each
// block is a register). Clients write unique content per (block, sequence) --
// at most one write in flight per block, many blocks in flight -- and read
// random blocks; every invocation and completion is timed on one monotonic
// clock in this process, and every read is checked as it completes:
//
//   Writes to one block are sequential, so their sequence numbers are their
//   real-time (and, for a correct server, their linearization) order. Let the
//   block's *floor* at an instant be the highest of: the last write
//   acknowledged so far, and the newest value any completed read returned so
//   far. A read invoked when the floor was F and completing at time C must
//   return F's value or a write with a higher sequence that was invoked
//   before C (one in flight, or one that failed with an unknown outcome).
//   Anything older than F is a stale read; anything not written (or written
//   to another block, or not byte-for-byte the content of its sequence) is
//   garbage.
//
// Errors (an NBD errno, a closed connection, a timeout) are allowed; they are
// counted and leave the op's outcome unknown: a failed write may or may not
// have landed. A write whose reply was lost with its connection (closed or
// timed out) may still be working its way through the server, so its block
// is *frozen*: no later write is issued to it, and the lost write may land at
// any time. After the run, `verify` reads every block through a healthy
// target: each must hold its floor or a later write.
//
// The model (`History`) is pure and synchronous so it can be tested against
// deliberately wrong devices (test/unit/checker.test.ts); `Load` drives any
// number of `Target`s (NBD connections in the fault tests, in-memory fakes in
// the unit test).

import type { Test } from "uvu";
import { startCluster, type Cluster } from "./cluster.js";
import { CMD, RawClient } from "./nbd-raw-client.js";

export const checkerBlockBytes = 4096;
const magic = 0x70786421;

/** The content of write `seq` to `block`: every 16 bytes name both, plus a mix of them. */
export function blockData(block: number, seq: number, blockBytes = checkerBlockBytes): Buffer {
  const b = Buffer.alloc(blockBytes);
  for (let i = 0; i < blockBytes; i += 16) {
    b.writeUInt32LE(block, i);
    b.writeUInt32LE(seq, i + 4);
    b.writeUInt32LE((Math.imul(block, 2654435761) + Math.imul(seq, 40503) + i) >>> 0, i + 8);
    b.writeUInt32LE(magic, i + 12);
  }
  return b;
}

/** The sequence a block's content names: 0 for zeroes (never written), undefined for garbage. */
export function decodeBlock(block: number, data: Buffer): number | undefined {
  if (data.every((x) => x === 0)) return 0;
  if (data.length < 16) return undefined;
  const seq = data.readUInt32LE(4);
  if (data.readUInt32LE(0) !== block || seq === 0) return undefined;
  return data.equals(blockData(block, seq, data.length)) ? seq : undefined;
}

interface BlockState {
  /** Highest sequence acknowledged, or returned by a completed read (0 = initial zeroes). */
  floor: number;
  /** Highest sequence ever invoked on this block (0 = none). */
  invoked: number;
  /** Sequence of the write in flight, 0 = none. */
  inFlight: number;
  /** A write's reply was lost with its connection: no more writes to this block. */
  frozen: boolean;
  /** Every sequence invoked on this block, for the "was it ever written here" check. */
  seqs: Set<number>;
}

export interface ReadToken {
  block: number;
  floor: number;
  invokedAt: number;
}

export type Outcome = "ok" | "errno" | "lost";

export interface Counts {
  writesOk: number;
  writesErrno: number;
  writesLost: number;
  readsOk: number;
  readsErrno: number;
  readsLost: number;
  /** Reads that returned a write still in flight or of unknown outcome (allowed). */
  readsOfUnacked: number;
}

/** The per-block register model: feed it invocations and completions in real-time order. */
export class History {
  readonly blocks: BlockState[];
  readonly violations: string[] = [];
  readonly counts: Counts = { writesOk: 0, writesErrno: 0, writesLost: 0, readsOk: 0, readsErrno: 0, readsLost: 0, readsOfUnacked: 0 };
  private nextSeq = 1;
  private readonly t0 = performance.now();

  constructor(readonly blockCount: number) {
    this.blocks = Array.from({ length: blockCount }, () => ({ floor: 0, invoked: 0, inFlight: 0, frozen: false, seqs: new Set<number>() }));
  }

  now(): number {
    return performance.now() - this.t0;
  }

  /** May a write to `block` be issued now? */
  writable(block: number): boolean {
    const s = this.blocks[block]!;
    return s.inFlight === 0 && !s.frozen;
  }

  /** Starts a write; returns its sequence (unique over the whole history). */
  invokeWrite(block: number): number {
    const s = this.blocks[block]!;
    if (!this.writable(block)) throw new Error(`checker misuse: block ${block} is not writable`);
    const seq = this.nextSeq++;
    s.inFlight = seq;
    s.invoked = seq;
    s.seqs.add(seq);
    return seq;
  }

  completeWrite(block: number, seq: number, outcome: Outcome): void {
    const s = this.blocks[block]!;
    if (s.inFlight !== seq) throw new Error(`checker misuse: block ${block} has ${s.inFlight} in flight, not ${seq}`);
    s.inFlight = 0;
    if (outcome === "ok") {
      this.counts.writesOk++;
      s.floor = Math.max(s.floor, seq);
    } else if (outcome === "errno") {
      this.counts.writesErrno++;
    } else {
      this.counts.writesLost++;
      s.frozen = true;
    }
  }

  invokeRead(block: number): ReadToken {
    return { block, floor: this.blocks[block]!.floor, invokedAt: this.now() };
  }

  /** Checks a read's result; returns false (and records why) if no linearization allows it. */
  completeRead(t: ReadToken, outcome: Outcome, data?: Buffer, via = ""): boolean {
    if (outcome !== "ok") {
      if (outcome === "errno") this.counts.readsErrno++;
      else this.counts.readsLost++;
      return true;
    }
    this.counts.readsOk++;
    const ok = this.check(t.block, t.floor, data!, `read${via ? ` via ${via}` : ""} invoked at ${t.invokedAt.toFixed(0)} ms, completed at ${this.now().toFixed(0)} ms`);
    return ok;
  }

  /** The final state: `data` is what the block holds after the run. */
  checkFinal(block: number, data: Buffer, via = ""): boolean {
    const s = this.blocks[block]!;
    if (s.inFlight !== 0) throw new Error(`checker misuse: final read of block ${block} with a write in flight`);
    return this.check(block, s.floor, data, `final read${via ? ` via ${via}` : ""}`);
  }

  private check(block: number, floor: number, data: Buffer, what: string): boolean {
    const s = this.blocks[block]!;
    const seq = decodeBlock(block, data);
    const fail = (why: string): false => {
      this.violations.push(`block ${block}: ${what}: ${why} (floor when invoked ${floor}, last acknowledged/observed now ${s.floor}, newest invoked ${s.invoked}, in flight ${s.inFlight})`);
      return false;
    };
    if (seq === undefined) return fail(`garbage (${data.subarray(0, 16).toString("hex")}...)`);
    if (seq !== 0 && !s.seqs.has(seq)) return fail(`returned seq ${seq}, never written to this block`);
    if (seq < floor) return fail(`STALE: returned seq ${seq}, older than seq ${floor} that was acknowledged or already read before this read began`);
    if (seq > floor) this.counts.readsOfUnacked++;
    s.floor = Math.max(s.floor, seq);
    return true;
  }
}

// ---- driving targets ----

export type ErrorKind = "errno" | "closed" | "timeout";

export class OpError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    readonly errno = 0,
  ) {
    super(message);
  }
}

/** One client of the device: operations may run concurrently; failures throw OpError. */
export interface Target {
  readonly name: string;
  write(block: number, data: Buffer): Promise<void>;
  read(block: number): Promise<Buffer>;
  close(): void;
}

export interface LoadOptions {
  /** Concurrent operations per target. */
  depth?: number;
  /** Share of operations that are reads (0..1). */
  readShare?: number;
  seed?: number;
  /** Pause between a failed op and the worker's next one (a client backing off). */
  backoffMs?: number;
}

/** A running load over several targets against one History. */
export class Load {
  private stopping = false;
  private readonly workers: Promise<void>[] = [];
  private rng: number;
  /** Errors by kind and errno, e.g. "errno 5": 3, "closed": 2. */
  readonly errors = new Map<string, number>();
  private lastAckAt = 0;

  constructor(
    readonly history: History,
    readonly targets: Target[],
    readonly o: LoadOptions = {},
  ) {
    this.rng = (o.seed ?? 1) >>> 0 || 1;
    for (const t of targets) for (let i = 0; i < (o.depth ?? 8); i++) this.workers.push(this.worker(t));
  }

  private random(n: number): number {
    let x = this.rng;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.rng = x >>> 0;
    return this.rng % n;
  }

  private note(e: unknown): Outcome {
    const kind = e instanceof OpError ? (e.kind === "errno" ? `errno ${e.errno}` : e.kind) : `other: ${(e as Error).message}`;
    this.errors.set(kind, (this.errors.get(kind) ?? 0) + 1);
    return e instanceof OpError && e.kind === "errno" ? "errno" : "lost";
  }

  private async worker(t: Target): Promise<void> {
    const h = this.history;
    while (!this.stopping) {
      let failed = false;
      if (this.random(1000) < (this.o.readShare ?? 0.5) * 1000) {
        const block = this.random(h.blockCount);
        const tok = h.invokeRead(block);
        try {
          const data = await t.read(block);
          h.completeRead(tok, "ok", data, t.name);
        } catch (e) {
          h.completeRead(tok, this.note(e));
          failed = true;
        }
      } else {
        let block = this.random(h.blockCount);
        for (let tries = 0; !h.writable(block) && tries < h.blockCount; tries++) block = (block + 1) % h.blockCount;
        if (!h.writable(block)) {
          await new Promise((r) => setTimeout(r, 5));
          continue;
        }
        const seq = h.invokeWrite(block);
        try {
          await t.write(block, blockData(block, seq));
          h.completeWrite(block, seq, "ok");
          this.lastAckAt = h.now();
        } catch (e) {
          h.completeWrite(block, seq, this.note(e));
          failed = true;
        }
      }
      if (failed) await new Promise((r) => setTimeout(r, this.o.backoffMs ?? 50));
    }
  }

  /** Resolves once `n` more writes have been acknowledged (bounded). */
  async progress(n: number, timeoutMs: number, what = "progress"): Promise<void> {
    const target = this.history.counts.writesOk + n;
    const deadline = Date.now() + timeoutMs;
    while (this.history.counts.writesOk < target) {
      if (Date.now() > deadline) throw new Error(`no ${what}: ${this.history.counts.writesOk - (target - n)} of ${n} writes acknowledged in ${timeoutMs} ms; ${this.summary()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Stops issuing; waits until every op in flight has completed or failed. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.workers);
  }

  summary(): string {
    const c = this.history.counts;
    const errs = [...this.errors].map(([k, v]) => `${k}: ${v}`).join(", ") || "none";
    return `writes ${c.writesOk} ok / ${c.writesErrno} errno / ${c.writesLost} lost, reads ${c.readsOk} ok (${c.readsOfUnacked} of unacknowledged writes) / ${c.readsErrno} errno / ${c.readsLost} lost; errors ${errs}; violations ${this.history.violations.length}`;
  }
}

/**
 * Reads every block through `target` and checks it against the history
 * (retrying a block whose read fails, until `timeoutMs`). Returns the number
 * of violations found by this pass.
 */
export async function verifyAll(history: History, target: Target, timeoutMs = 30000): Promise<number> {
  const before = history.violations.length;
  const deadline = Date.now() + timeoutMs;
  const next = { b: 0 };
  const one = async (): Promise<void> => {
    for (;;) {
      const b = next.b++;
      if (b >= history.blockCount) return;
      for (;;) {
        try {
          history.checkFinal(b, await target.read(b), target.name);
          break;
        } catch (e) {
          if (!(e instanceof OpError) || Date.now() > deadline) throw new Error(`final read of block ${b} through ${target.name} failed: ${(e as Error).message}`);
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    }
  };
  await Promise.all(Array.from({ length: 16 }, one));
  return history.violations.length - before;
}

// ---- an NBD target over RawClient ----

/**
 * Pipelined NBD connection to one export (simple replies). A closed connection
 * fails every op in flight with "closed" and is re-dialled on the next op; an
 * op without a reply after `opTimeoutMs` fails with "timeout" and drops the
 * connection (so no reply can arrive for it later).
 */
export class NbdTarget implements Target {
  private client: RawClient | undefined;
  private connecting: Promise<RawClient> | undefined;
  private pending = new Map<bigint, { resolve: (b: Buffer) => void; reject: (e: OpError) => void; readBytes: number; timer: NodeJS.Timeout }>();
  private cookie = 0n;
  private closedByUs = false;

  constructor(
    readonly host: string,
    readonly port: number,
    readonly exportName: string,
    readonly blockBytes = checkerBlockBytes,
    readonly opTimeoutMs = 30000,
    readonly name = `${host}:${port}/${exportName}`,
  ) {}

  private conn(): Promise<RawClient> {
    if (this.client && !this.client.closed) return Promise.resolve(this.client);
    this.connecting ??= (async () => {
      try {
        const c = await RawClient.connect(this.port, this.host);
        try {
          await c.go(this.exportName);
        } catch (e) {
          c.destroy();
          throw e;
        }
        this.client = c;
        void this.readLoop(c);
        return c;
      } catch (e) {
        throw new OpError("closed", `connect to ${this.name}: ${(e as Error).message}`);
      } finally {
        this.connecting = undefined;
      }
    })();
    return this.connecting;
  }

  private async readLoop(c: RawClient): Promise<void> {
    try {
      for (;;) {
        const head = await c.read(16, 24 * 3600 * 1000);
        if (head.readUInt32BE(0) !== 0x67446698) throw new Error(`bad reply magic 0x${head.readUInt32BE(0).toString(16)}`);
        const errno = head.readUInt32BE(4);
        const cookie = head.readBigUInt64BE(8);
        const p = this.pending.get(cookie);
        if (!p) throw new Error(`reply for unknown cookie ${cookie}`);
        const data = errno === 0 && p.readBytes > 0 ? Buffer.from(await c.read(p.readBytes, 60000)) : Buffer.alloc(0);
        this.pending.delete(cookie);
        clearTimeout(p.timer);
        if (errno !== 0) p.reject(new OpError("errno", `${this.name}: errno ${errno}`, errno));
        else p.resolve(data);
      }
    } catch (e) {
      this.fail(c, "closed", (e as Error).message);
    }
  }

  private fail(c: RawClient, kind: ErrorKind, why: string): void {
    c.destroy();
    if (this.client === c) this.client = undefined;
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) {
      clearTimeout(p.timer);
      p.reject(new OpError(kind, `${this.name}: ${why}`));
    }
  }

  private async op(cmd: number, offset: number, length: number, payload: Buffer | undefined, readBytes: number): Promise<Buffer> {
    if (this.closedByUs) throw new OpError("closed", `${this.name}: closed`);
    const c = await this.conn();
    const cookie = ++this.cookie;
    return new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(c, "timeout", `no reply within ${this.opTimeoutMs} ms`), this.opTimeoutMs);
      this.pending.set(cookie, { resolve, reject, readBytes, timer });
      c.sendRequest(cmd, 0, cookie, offset, length, payload);
    });
  }

  async write(block: number, data: Buffer): Promise<void> {
    await this.op(CMD.WRITE, block * this.blockBytes, data.length, data, 0);
  }

  read(block: number): Promise<Buffer> {
    return this.op(CMD.READ, block * this.blockBytes, this.blockBytes, undefined, this.blockBytes);
  }

  /** NBD FLUSH; resolves when the server answered it without error. */
  async flush(): Promise<void> {
    await this.op(CMD.FLUSH, 0, 0, undefined, 0);
  }

  close(): void {
    this.closedByUs = true;
    if (this.client) this.fail(this.client, "closed", "closed by the test");
  }
}

// ---- running the checker against a test cluster ----

export interface ClusterNode {
  host: string;
  nbdPort: number;
  output: string;
}

export interface Checked {
  history: History;
  load: Load;
  targets: NbdTarget[];
  volume: string;
}

/** Starts a checked load on `volume` with one NBD client per node in `via`; waits for `warmup` acknowledged writes. */
export async function startChecked(volume: string, via: ClusterNode[], o: { blocks?: number; depth?: number; seed?: number; warmup?: number; readShare?: number } = {}): Promise<Checked> {
  const history = new History(o.blocks ?? 512);
  const targets = via.map((n) => new NbdTarget(n.host, n.nbdPort, volume));
  const seed = o.seed ?? (Date.now() & 0xffff) + 1;
  const load = new Load(history, targets, { depth: o.depth ?? 6, seed, readShare: o.readShare ?? 0.5 });
  console.log(`checker on ${volume}: ${history.blockCount} blocks, clients via ${via.map((n) => n.host).join(", ")}, seed ${seed}`);
  const ch = { history, load, targets, volume };
  running.add(ch);
  await load.progress(o.warmup ?? 100, 30000, "warm-up");
  return ch;
}

/**
 * Stops the load, reads every block through `verifyVia` (a healthy node) and
 * throws with the violations, if any. Returns the load's summary line.
 */
export async function finishChecked(ch: Checked, verifyVia: ClusterNode, logsOf: ClusterNode[] = []): Promise<string> {
  running.delete(ch);
  await ch.load.stop();
  for (const t of ch.targets) t.close();
  const v = new NbdTarget(verifyVia.host, verifyVia.nbdPort, ch.volume);
  try {
    await verifyAll(ch.history, v, 60000);
  } finally {
    v.close();
  }
  const summary = ch.load.summary();
  console.log(`checker on ${ch.volume}: ${summary}`);
  const vs = ch.history.violations;
  if (vs.length > 0) {
    const logs = logsOf.map((n) => `--- ${n.host} (last 3000 chars) ---\n${n.output.slice(-3000)}`).join("\n");
    throw new Error(`${vs.length} linearizability violations on ${ch.volume} (${summary}):\n${vs.slice(0, 20).join("\n")}\n${logs}`);
  }
  return summary;
}

const running = new Set<Checked>();

/** For `test.after.each`: stops every load a failed test left running (no checking), so the file can exit. */
export async function abortRunning(): Promise<void> {
  for (const ch of [...running]) await abortChecked(ch);
}

/**
 * The hooks of a test file that runs the checker on one cluster: the cluster
 * starts before the tests (handed to `use`), a load a failed test left running
 * stops after each test, and the cluster is disposed after all of them.
 */
export function checkedClusterHooks(suite: Test, size: number, use: (c: Cluster) => void): void {
  let c: Cluster | undefined;
  suite.before(async () => {
    c = await startCluster(size);
    use(c);
  });
  suite.after.each(abortRunning);
  suite.after(async () => {
    await c?.dispose();
  });
}

/** Stops the load without checking, closing the connections so nothing waits for a reply. */
export async function abortChecked(ch: Checked): Promise<void> {
  running.delete(ch);
  const stopped = ch.load.stop();
  for (const t of ch.targets) t.close();
  await Promise.race([stopped, new Promise((r) => setTimeout(r, 40000))]);
}
