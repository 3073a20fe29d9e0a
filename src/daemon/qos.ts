// Where a node admits a volume's NBD requests (docs/architecture.md, "QoS and
// rebuild limits"):
//
// 1. VolumeThrottle: the volume's limits (pxd volume create/update --max-iops,
//    --max-bandwidth, --burst-seconds), one token bucket each, on this node.
//    A request over the limit waits in the volume's FIFO; none is refused.
// 2. IoScheduler: at most ioNodeRequestsInFlightMax volume requests run on
//    the node at once; the rest wait in one queue per volume, taken in
//    deficit round-robin, fair in bytes: a volume with one request waiting is
//    served within one round whatever another volume has queued.
//
// Neither queue needs its own bound: every waiting request is one the NBD
// layer admitted, at most nbdRequestsInFlightMax per connection and
// nbdConnectionsMax connections (qosQueuedRequestsMax, asserted). The clock
// and the timer are ports, so tests drive both with a fake clock.

import { assert } from "../base/assert.js";
import { TokenBucket } from "../base/token-bucket.js";
import type { VolumeQos } from "../cluster/commands.js";
import { ioFairQuantumBytes, ioFairRequestCostBytes, qosLimitRecheckMs, qosQueuedRequestsMax, resyncBurstSec, snapshotChunkBytes } from "../constants.js";
import type { ResyncPacer } from "../replication/snapshot.js";

export interface QosClock {
  /** Milliseconds on a monotonic clock. */
  now(): number;
  /** Runs fn once after ms; returns a function that cancels it. */
  after(ms: number, fn: () => void): () => void;
}

interface Waiter {
  bytes: number;
  sinceMs: number;
  resolve(): void;
}

/** Whether the volume has any limit. */
export function hasLimit(q: VolumeQos | undefined): q is VolumeQos {
  return q !== undefined && (q.maxIops > 0 || q.maxBandwidthBytes > 0);
}

/** One volume's limits on this node: requests over them wait, in order. */
export class VolumeThrottle {
  private iops: TokenBucket | undefined;
  private bytes: TokenBucket | undefined;
  /** The limits the buckets were made for (compared by value on each request: the catalog may change them any time). */
  private shaped = { maxIops: 0, maxBandwidthBytes: 0, burstSec: 0 };
  private readonly queue: Waiter[] = [];
  private cancelTimer: (() => void) | undefined;
  /** Requests that had to wait, and the seconds they waited in all (counted when they go on). */
  throttledRequests = 0;
  throttleWaitSec = 0;

  constructor(
    private readonly clock: QosClock,
    /** The volume's limits now (the catalog's record); undefined or zeroes: none. */
    private readonly limits: () => VolumeQos | undefined,
  ) {}

  get waiting(): number {
    return this.queue.length;
  }

  /** undefined: the request may go now; else it goes when the promise resolves. */
  admit(bytes: number): Promise<void> | undefined {
    const q = this.limits();
    if (this.queue.length === 0) {
      if (!hasLimit(q)) return undefined;
      const now = this.clock.now();
      this.shape(q, now);
      if (this.waitMs(bytes, now) === 0) {
        this.take(bytes, now);
        return undefined;
      }
    }
    assert(this.queue.length < qosQueuedRequestsMax, "a volume's throttle queue holds at most what the NBD layer admits");
    this.throttledRequests++;
    return new Promise<void>((resolve) => {
      this.queue.push({ bytes, sinceMs: this.clock.now(), resolve });
      if (this.queue.length === 1) this.drain();
    });
  }

  /** Lets waiting requests go while the buckets allow, in order; then sleeps until the head may go. */
  private drain(): void {
    this.cancelTimer?.();
    this.cancelTimer = undefined;
    const now = this.clock.now();
    const q = this.limits();
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      if (hasLimit(q)) {
        this.shape(q, now);
        const wait = this.waitMs(head.bytes, now);
        if (wait > 0) {
          // Looked at again at least once a second, so a limit raised or removed meanwhile frees the queue soon.
          this.cancelTimer = this.clock.after(Math.min(Math.ceil(wait), qosLimitRecheckMs), () => this.drain());
          return;
        }
        this.take(head.bytes, now);
      }
      this.queue.shift();
      this.throttleWaitSec += (now - head.sinceMs) / 1000;
      head.resolve();
    }
  }

  private waitMs(bytes: number, now: number): number {
    return Math.max(this.iops?.waitMs(1, now) ?? 0, this.bytes?.waitMs(bytes, now) ?? 0);
  }

  private take(bytes: number, now: number): void {
    this.iops?.take(1, now);
    this.bytes?.take(bytes, now);
  }

  /** Makes the buckets match the limits (a limit set, changed or removed since the last request). */
  private shape(q: VolumeQos, now: number): void {
    const s = this.shaped;
    if (s.maxIops === q.maxIops && s.maxBandwidthBytes === q.maxBandwidthBytes && s.burstSec === q.burstSec) return;
    this.iops = bucketFor(this.iops, q.maxIops, q.burstSec, now);
    this.bytes = bucketFor(this.bytes, q.maxBandwidthBytes, q.burstSec, now);
    this.shaped = { maxIops: q.maxIops, maxBandwidthBytes: q.maxBandwidthBytes, burstSec: q.burstSec };
  }

  /** Stops the timer (the volume left the node, or the daemon stops); waiting requests go on unthrottled. */
  close(): void {
    this.cancelTimer?.();
    this.cancelTimer = undefined;
    for (const w of this.queue.splice(0)) w.resolve();
  }
}

function bucketFor(b: TokenBucket | undefined, rate: number, burstSec: number, now: number): TokenBucket | undefined {
  if (rate <= 0) return undefined;
  // At least one request's worth, so an IOPS limit of 1 with a burst of 1 s still lets one through.
  const capacity = Math.max(1, rate * burstSec);
  if (b === undefined) return new TokenBucket(rate, capacity, now);
  b.configure(rate, capacity, now);
  return b;
}

/** One volume's queue in the node's fair share. */
export class FairQueue {
  readonly waiters: Waiter[] = [];
  deficit = 0;
  /** Requests of this volume that waited for a slot, and the seconds they waited. */
  queuedRequests = 0;
  queueWaitSec = 0;
}

/**
 * The node's volume requests: at most `slots` run at once; when they are all
 * taken, each volume's requests wait in its FairQueue and a freed slot goes
 * to the queues in deficit round-robin (Shreedhar and Varghese, 1995): each
 * turn credits a queue ioFairQuantumBytes, and it starts requests while its
 * credit covers their cost (bytes plus ioFairRequestCostBytes).
 */
export class IoScheduler {
  private running = 0;
  private waitingCount = 0;
  /** Queues with requests waiting, in round-robin order. */
  private readonly active: FairQueue[] = [];
  private turn = 0;
  /** The queue at `turn` got its quantum for this turn already. */
  private credited = false;

  constructor(
    private readonly clock: QosClock,
    private readonly slots: number,
  ) {
    assert(slots >= 1, "the node runs at least one request at once");
  }

  get inFlight(): number {
    return this.running;
  }

  get waiting(): number {
    return this.waitingCount;
  }

  /** undefined: the request runs now (call done() when it ends); else once the promise resolves. */
  admit(q: FairQueue, bytes: number): Promise<void> | undefined {
    if (this.running < this.slots && this.waitingCount === 0) {
      this.running++;
      return undefined;
    }
    assert(this.waitingCount < qosQueuedRequestsMax, "the node's fair-share queues hold at most what the NBD layer admits");
    q.queuedRequests++;
    return new Promise<void>((resolve) => {
      if (q.waiters.length === 0) this.active.push(q);
      q.waiters.push({ bytes, sinceMs: this.clock.now(), resolve });
      this.waitingCount++;
      this.dispatch();
    });
  }

  /** A request admitted here ended. */
  done(): void {
    assert(this.running > 0, "done() follows an admitted request");
    this.running--;
    this.dispatch();
  }

  private dispatch(): void {
    const now = this.clock.now();
    while (this.running < this.slots && this.active.length > 0) {
      if (this.turn >= this.active.length) this.turn = 0;
      const q = this.active[this.turn]!;
      if (!this.credited) {
        q.deficit += ioFairQuantumBytes;
        this.credited = true;
      }
      const head = q.waiters[0]!;
      const cost = head.bytes + ioFairRequestCostBytes;
      if (q.deficit < cost) {
        this.turn++;
        this.credited = false;
        continue;
      }
      q.deficit -= cost;
      q.waiters.shift();
      this.waitingCount--;
      this.running++;
      q.queueWaitSec += (now - head.sinceMs) / 1000;
      head.resolve();
      if (q.waiters.length === 0) {
        // An empty queue keeps no credit (DRR): idle volumes do not save up turns. The next queue moves into `turn`.
        q.deficit = 0;
        this.active.splice(this.turn, 1);
        this.credited = false;
      }
    }
  }
}

/** What one volume's requests pass through on this node: its limits, then the node's fair share. */
export interface VolumeGate {
  /** undefined: the request runs now; else once the promise resolves. Every admitted request ends with done(). */
  admit(bytes: number): Promise<void> | undefined;
  done(): void;
}

export interface AdmissionCounters {
  throttledRequests: number;
  throttleWaitSec: number;
  queuedRequests: number;
  queueWaitSec: number;
}

interface VolumeAdmission {
  throttle: VolumeThrottle;
  queue: FairQueue;
  gate: VolumeGate;
}

/** The node's admission of every volume's NBD requests: one throttle and fair queue per volume, one scheduler. */
export class NodeAdmission {
  private readonly scheduler: IoScheduler;
  private readonly volumes = new Map<string, VolumeAdmission>();

  constructor(
    private readonly clock: QosClock,
    slots: number,
    /** A volume's limits now (undefined: no such volume, no limits). */
    private readonly limitsOf: (volume: string) => VolumeQos | undefined,
  ) {
    this.scheduler = new IoScheduler(clock, slots);
  }

  gate(volume: string): VolumeGate {
    let a = this.volumes.get(volume);
    if (a === undefined) {
      const throttle = new VolumeThrottle(this.clock, () => this.limitsOf(volume));
      const queue = new FairQueue();
      const scheduler = this.scheduler;
      const gate: VolumeGate = {
        admit: (bytes) => {
          const t = throttle.admit(bytes);
          return t === undefined ? scheduler.admit(queue, bytes) : t.then(() => scheduler.admit(queue, bytes));
        },
        done: () => scheduler.done(),
      };
      this.volumes.set(volume, (a = { throttle, queue, gate }));
    }
    return a.gate;
  }

  counters(volume: string): AdmissionCounters | undefined {
    const a = this.volumes.get(volume);
    if (a === undefined) return undefined;
    return { throttledRequests: a.throttle.throttledRequests, throttleWaitSec: a.throttle.throttleWaitSec, queuedRequests: a.queue.queuedRequests, queueWaitSec: a.queue.queueWaitSec };
  }

  /** Requests running and waiting for a slot on the node. */
  get load(): { inFlight: number; waiting: number } {
    return { inFlight: this.scheduler.inFlight, waiting: this.scheduler.waiting };
  }

  /** Forgets volumes `keep` says no (gone from the catalog, no connection here) with nothing waiting: the map holds the volumes in use here. */
  prune(keep: (volume: string) => boolean): void {
    for (const [name, a] of this.volumes) {
      if (!keep(name) && a.throttle.waiting === 0 && a.queue.waiters.length === 0) {
        a.throttle.close();
        this.volumes.delete(name);
      }
    }
  }

  close(): void {
    for (const a of this.volumes.values()) a.throttle.close();
  }
}

/**
 * The node's rebuild bandwidth (pxd daemon --resync-bandwidth, or the
 * catalog's resyncBandwidthBytesPerSec setting): one token bucket that every
 * copy this node sends draws from, so the copies together keep to the rate,
 * read again before each chunk (0: no limit). The bucket holds
 * resyncBurstSec of the rate (at least a chunk): a timer that fires late on a
 * busy event loop loses nothing, and no second sends more than 1.1 times it.
 */
export function resyncPacer(clock: QosClock, bytesPerSec: () => number): ResyncPacer {
  let bucket: TokenBucket | undefined;
  const current = (): TokenBucket | undefined => {
    const rate = bytesPerSec();
    if (rate <= 0) return (bucket = undefined);
    const capacity = Math.max(snapshotChunkBytes, rate * resyncBurstSec);
    if (bucket === undefined) bucket = new TokenBucket(rate, capacity, clock.now());
    else if (bucket.rate !== rate) bucket.configure(rate, capacity, clock.now());
    return bucket;
  };
  return {
    waitMs: () => current()?.waitMs(snapshotChunkBytes, clock.now()) ?? 0,
    sent: (bytes) => current()?.take(bytes, clock.now()),
    after: (ms, fn) => clock.after(ms, fn),
  };
}
