// What one node sees of each volume's NBD I/O: plain counters bumped on the
// request path (a few additions per request, no allocation, no label lookup),
// read lazily by /metrics (src/daemon/metrics.ts) and sampled once a second
// into a bounded ring for the web console (GET /v1/volumes/NAME/stats).
//
// Counted where requests enter this node (the NBD export), so a request this
// node forwards to the volume's leader counts here, on the node the client
// talks to, and not again on the leader.

import type { VolumeSampleInfo } from "../api/types.js";

/**
 * Upper bounds of the request latency histogram, in seconds: 8 buckets (plus
 * +Inf) from a page-cache read to a write waiting on a slow fdatasync. Few, so
 * a volume's histogram is 11 series per operation (docs/metrics.md).
 */
export const latencyBucketsSec: readonly number[] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1];

/** Samples the console's graphs keep per volume: two minutes at one a second. */
export const volumeSamplesMax = 120;

/**
 * A volume's counters on a node are dropped after this many seconds without
 * an NBD connection or a request there, so what they hold is bounded by the
 * volumes clients use through the node (at most nbdConnectionsMax), not by
 * the volumes in the catalog. Its series then leave /metrics.
 */
export const volumeStatsIdleSec = 600;

/** At most this many volumes carry per-volume series on one node; the rest count only in the node's totals (docs/metrics.md). */
export const metricsVolumesMax = 500;

/**
 * Series one labelled volume adds at most: requests, errors (2 each), bytes
 * read, written, in flight, allocated, NBD connections (1 each), the latency
 * histogram (2 x 11), the Raft group's role, term, commit, applied, apply lag
 * (5), on its leader up to 4 other members' lag, and the requests its QoS
 * limits held and how long (2). So a node exports at most
 * metricsVolumesMax x 42 = 21,000 per-volume series, however many volumes it
 * holds (test/unit/metrics.test.ts counts them).
 */
export const metricsSeriesPerVolumeMax = 42;

export type IoOp = 0 | 1;
export const opRead: IoOp = 0;
export const opWrite: IoOp = 1;
export const opNames = ["read", "write"] as const;

/** One operation's counters (reads, or writes including trims and zeroing). */
export class OpCounters {
  requests = 0;
  bytes = 0;
  errors = 0;
  latencySumSec = 0;
  /** Requests per latency bucket, not cumulative; the last slot is above every bound (+Inf). */
  readonly buckets = new Float64Array(latencyBucketsSec.length + 1);

  observe(seconds: number): void {
    this.latencySumSec += seconds;
    let i = 0;
    while (i < latencyBucketsSec.length && seconds > latencyBucketsSec[i]!) i++;
    this.buckets[i]!++;
  }
}

/** One second of a volume's I/O as the console graphs it (GET /v1/volumes/NAME/stats). */
export type VolumeSample = VolumeSampleInfo;

export class VolumeStats {
  readonly ops = [new OpCounters(), new OpCounters()] as const;
  inFlight = 0;
  /** The ring of the latest samples, oldest first once full (`next` is where the next one goes). */
  private readonly ring: VolumeSample[] = [];
  private next = 0;
  private last = { requests: [0, 0], bytes: [0, 0], latency: [0, 0], at: 0 };
  /** Samples in a row with no request and none in flight. */
  idleSamples = 0;

  constructor(readonly name: string) {}

  /** A request began; returns its start time for done(). */
  begin(now: number): number {
    this.inFlight++;
    return now;
  }

  /** A request of `bytes` that began at `startMs` ended at `nowMs`. */
  done(op: IoOp, bytes: number, startMs: number, nowMs: number, failed: boolean): void {
    this.inFlight--;
    const c = this.ops[op];
    c.requests++;
    c.bytes += bytes;
    if (failed) c.errors++;
    c.observe((nowMs - startMs) / 1000);
  }

  /** Takes one sample of what happened since the last one (the first call only sets the baseline). */
  sample(wallMs: number, monoMs: number): void {
    const prev = this.last;
    const now = {
      requests: [this.ops[0].requests, this.ops[1].requests],
      bytes: [this.ops[0].bytes, this.ops[1].bytes],
      latency: [this.ops[0].latencySumSec, this.ops[1].latencySumSec],
      at: monoMs,
    };
    this.last = now;
    if (prev.at === 0) return;
    const sec = Math.max(0.001, (monoMs - prev.at) / 1000);
    const busy = this.inFlight > 0 || now.requests[0] !== prev.requests[0] || now.requests[1] !== prev.requests[1];
    this.idleSamples = busy ? 0 : this.idleSamples + 1;
    const d = (k: "requests" | "bytes" | "latency", op: number): number => now[k][op]! - prev[k][op]!;
    const meanMs = (op: number): number => (d("requests", op) > 0 ? (d("latency", op) * 1000) / d("requests", op) : 0);
    const s: VolumeSample = {
      at: wallMs,
      readIops: d("requests", 0) / sec,
      writeIops: d("requests", 1) / sec,
      readBytesPerSec: d("bytes", 0) / sec,
      writeBytesPerSec: d("bytes", 1) / sec,
      readLatencyMs: meanMs(0),
      writeLatencyMs: meanMs(1),
      inFlight: this.inFlight,
    };
    if (this.ring.length < volumeSamplesMax) this.ring.push(s);
    else this.ring[this.next] = s;
    this.next = (this.next + 1) % volumeSamplesMax;
  }

  /** The samples, oldest first. */
  samples(): VolumeSample[] {
    return this.ring.length < volumeSamplesMax ? [...this.ring] : [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)];
  }
}

/** Several nodes' samples of one volume as one series: summed per wall-clock second, latencies weighted by each node's IOPS. */
export function sumSamples(perNode: readonly (readonly VolumeSample[])[]): VolumeSample[] {
  const bySecond = new Map<number, VolumeSample>();
  const mean = (a: number, wa: number, b: number, wb: number): number => (wa + wb > 0 ? (a * wa + b * wb) / (wa + wb) : 0);
  for (const samples of perNode) {
    for (const s of samples) {
      const sec = Math.round(s.at / 1000);
      const t = bySecond.get(sec);
      if (t === undefined) {
        bySecond.set(sec, { ...s, at: sec * 1000 });
        continue;
      }
      t.readLatencyMs = mean(t.readLatencyMs, t.readIops, s.readLatencyMs, s.readIops);
      t.writeLatencyMs = mean(t.writeLatencyMs, t.writeIops, s.writeLatencyMs, s.writeIops);
      t.readIops += s.readIops;
      t.writeIops += s.writeIops;
      t.readBytesPerSec += s.readBytesPerSec;
      t.writeBytesPerSec += s.writeBytesPerSec;
      t.inFlight += s.inFlight;
    }
  }
  return [...bySecond.values()].sort((a, b) => a.at - b.at);
}
