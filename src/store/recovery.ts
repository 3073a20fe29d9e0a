// Recovery: replay the log from the checkpoint's position.
//
// A record that fails its checks is either a torn write (its commit never
// completed, so nothing in it was acknowledged) or corruption (a record that
// was durable and acknowledged is damaged). The difference is whether a
// commit far enough ahead is found valid after it: the log writes commit s
// only once commit s - window is durable (window = commitsInFlightMax, stored
// in each header), so a valid record of commit >= damaged + window proves the
// damaged one had been durable. Otherwise the tail is torn: the log ends
// there and the torn bytes are zeroed. A commit is acknowledged as a whole,
// so it is replayed only once its last record is found: a tail torn inside a
// commit of several records drops every record of it, and the log resumes
// where that commit began.
//
// Corruption with the record's header intact (a version 2 header matches its
// own checksum; only the payload does not) says which group, kind and Raft
// entry lost its data: the record is reported (`damaged`) and the scan goes
// on after it, so only that volume is affected (Store.open decides how). A
// damaged header says nothing trustworthy, not even where the next record
// starts: the store refuses to open (CorruptionError) rather than guess.

import { recordHeaderBytes, recordPayloadBytesMax, segmentBytes } from "../constants.js";
import type { DiskFile } from "./disk.js";
import { CorruptionError } from "./errors.js";
import type { LogPosition } from "./log.js";
import { decodeHeader, payloadBytesOf, payloadMatches, recordHeaderBytesV1, recordMagic, RecordKind, type RecordHeader } from "./record.js";

export interface ScanResult {
  end: LogPosition;
  /** A torn tail that was found: [position, endPosition) in segment segmentId must be zeroed before new appends. */
  torn?: { segmentId: number; position: number; endPosition: number };
  recordsReplayed: number;
}

/** Called for each valid record in log order with the log address of its payload and a view of it (valid during the call). */
export type ReplayRecord = (header: RecordHeader, payloadAddress: number, payload: Buffer) => void;

/** Called, in log order with the valid ones, for an acknowledged record whose header is intact and whose payload is damaged. */
export type ReplayDamaged = (header: RecordHeader, payloadAddress: number) => void;

/** Reads and checks whole records; the payload view is valid until the next call. */
export class SegmentReader {
  private readonly headerBuf = Buffer.alloc(recordHeaderBytes);
  private readonly payloadBuf = Buffer.alloc(recordPayloadBytesMax);

  /** The header at `position` if it decodes (a version 2 header also matches its own checksum). */
  headerAt(file: DiskFile, segmentId: number, position: number): RecordHeader | undefined {
    const n = Math.min(recordHeaderBytes, segmentBytes - position);
    if (n < recordHeaderBytesV1) return undefined;
    const got = file.readSync(this.headerBuf, 0, n, position);
    return decodeHeader(this.headerBuf.subarray(0, got), segmentId, position);
  }

  /** The record at `position` if it is whole and its checksums match. */
  recordAt(file: DiskFile, segmentId: number, position: number): { header: RecordHeader; payload: Buffer } | undefined {
    const h = this.headerAt(file, segmentId, position);
    if (h === undefined) return undefined;
    const n = payloadBytesOf(h.kind, h.lengthBytes);
    const payload = this.payloadBuf.subarray(0, n);
    if (n > 0 && file.readSync(payload, 0, n, position + h.headerBytes) !== n) return undefined;
    return payloadMatches(h, this.headerBuf, payload) ? { header: h, payload } : undefined;
  }

  /** Where the record at `position` ends by its header alone (its own position when the header is not ours). */
  claimedEnd(file: DiskFile, segmentId: number, position: number): number {
    const h = this.headerAt(file, segmentId, position);
    return h === undefined ? position : position + recordBytes(h);
  }
}

/** Header and payload bytes of a record. */
export function recordBytes(h: RecordHeader): number {
  return h.headerBytes + payloadBytesOf(h.kind, h.lengthBytes);
}

export function scanLog(segments: ReadonlyMap<number, DiskFile>, start: LogPosition, replay: ReplayRecord, damaged: ReplayDamaged): ScanResult {
  const reader = new SegmentReader();
  const ids = [...segments.keys()].filter((id) => id >= start.segmentId).sort((a, b) => a - b);
  let seq = start.commitSeq;
  let batchComplete = true;
  let replayed = 0;
  // A commit's records are replayed only once its last record is found whole:
  // a commit is acknowledged as a whole, so a tail torn inside one drops all
  // of it, and the log goes on from where that commit began (with the commit
  // sequence before it, which the next recovery expects there).
  const batch = new CommitBatch();
  for (let k = 0; k < ids.length; k++) {
    const id = ids[k]!;
    if (id !== start.segmentId + k) throw new CorruptionError(start.segmentId + k, 0, "segment file is missing from the log");
    const file = segments.get(id)!;
    let position = id === start.segmentId ? start.position : 0;
    for (;;) {
      const record = reader.recordAt(file, id, position);
      const h = record?.header;
      const expectedSeq = batchComplete ? seq + 1 : seq;
      if (h === undefined || h.commitSeq !== expectedSeq) {
        const bad = tornOrCorrupt(reader, segments, ids.slice(k), position, expectedSeq, seq, replayed);
        if (!("header" in bad)) {
          if (batch.isEmpty()) return bad;
          // Torn inside a commit: none of it was acknowledged.
          const from = batch.startPosition;
          return {
            end: { segmentId: id, position: from, commitSeq: batch.seqBefore },
            torn: { segmentId: id, position: from, endPosition: Math.max(bad.torn?.endPosition ?? position, position) },
            recordsReplayed: replayed,
          };
        }
        // Acknowledged, its payload damaged, its header intact: report it and go on after it.
        if (batchComplete) batch.begin(position, seq);
        batch.addDamaged(bad.header, id * segmentBytes + position + bad.header.headerBytes);
        seq = bad.header.commitSeq;
        batchComplete = bad.header.batchPos === bad.header.batchCount - 1;
        if (batchComplete) replayed += batch.flush(replay, damaged);
        position += recordBytes(bad.header);
        continue;
      }
      if (batchComplete) batch.begin(position, seq);
      seq = h.commitSeq;
      batchComplete = h.batchPos === h.batchCount - 1;
      const size = recordBytes(h);
      if (h.kind === RecordKind.Seal) {
        replayed += batch.flush(replay, damaged);
        break;
      }
      batch.add(h, id * segmentBytes + position + h.headerBytes, record!.payload, batchComplete);
      if (batchComplete) replayed += batch.flush(replay, damaged);
      position += size;
    }
  }
  // The last segment ended with a Seal: the log continues in a segment not yet created.
  const last = ids.length > 0 ? ids[ids.length - 1]! : start.segmentId - 1;
  return { end: { segmentId: last + 1, position: 0, commitSeq: seq }, recordsReplayed: replayed };
}

/**
 * The records of the commit being read, held until its last record is found.
 * A commit of one record (most of them) is replayed from the reader's buffer
 * without a copy; the records of a larger one are copied, since the reader's
 * payload view is reused.
 */
class CommitBatch {
  private items: { header: RecordHeader; address: number; payload: Buffer | undefined }[] = [];
  startPosition = 0;
  seqBefore = 0;

  isEmpty(): boolean {
    return this.items.length === 0;
  }

  begin(position: number, seqBefore: number): void {
    this.items = [];
    this.startPosition = position;
    this.seqBefore = seqBefore;
  }

  add(header: RecordHeader, address: number, payload: Buffer, last: boolean): void {
    this.items.push({ header, address, payload: last && this.items.length === 0 ? payload : Buffer.from(payload) });
  }

  addDamaged(header: RecordHeader, address: number): void {
    this.items.push({ header, address, payload: undefined });
  }

  /** Replays the commit's records in log order; returns how many were valid. */
  flush(replay: ReplayRecord, damaged: ReplayDamaged): number {
    let n = 0;
    for (const r of this.items) {
      if (r.payload === undefined) damaged(r.header, r.address);
      else {
        replay(r.header, r.address, r.payload);
        n++;
      }
    }
    this.items = [];
    return n;
  }
}

function tornOrCorrupt(
  reader: SegmentReader,
  segments: ReadonlyMap<number, DiskFile>,
  idsFromHere: number[],
  position: number,
  expectedSeq: number,
  seq: number,
  replayed: number,
): ScanResult | { header: RecordHeader } {
  const id = idsFromHere[0]!;
  const file = segments.get(id)!;
  let tornEnd = reader.claimedEnd(file, id, position);
  for (const [k, laterId] of idsFromHere.entries()) {
    const from = k === 0 ? position : 0;
    for (const found of validRecordsAfter(reader, segments.get(laterId)!, laterId, from, k === 0)) {
      // The writer starts commit s only once commit s - window is durable, so a
      // valid record of commit >= expected + window proves the damaged one had
      // been acknowledged. A later segment is used only after the previous one
      // was durable in full.
      if (found.commitSeq >= expectedSeq + found.commitWindow || k > 0) {
        const h = reader.headerAt(file, id, position);
        if (h !== undefined && h.version >= 2 && h.commitSeq === expectedSeq && h.kind !== RecordKind.Seal) return { header: h };
        throw new CorruptionError(
          id,
          position,
          `a record whose header is damaged is followed by commit ${found.commitSeq} in segment ${laterId}: it was acknowledged, and nothing says which volume it belonged to, so the store will not open; restore this node's data dir from a backup, or remove it and let the other replicas refill this node`,
        );
      }
      tornEnd = Math.max(tornEnd, found.end);
    }
  }
  return {
    end: { segmentId: id, position, commitSeq: seq },
    torn: { segmentId: id, position, endPosition: tornEnd },
    recordsReplayed: replayed,
  };
}

/** Every valid record that starts after `from` (searching for the record magic). */
function* validRecordsAfter(
  reader: SegmentReader,
  file: DiskFile,
  segmentId: number,
  from: number,
  skipFrom: boolean,
): Generator<{ commitSeq: number; commitWindow: number; end: number }> {
  const windowBytes = 8 * 1024 * 1024;
  const window = Buffer.alloc(windowBytes);
  const magic = Buffer.alloc(4);
  magic.writeUInt32LE(recordMagic, 0);
  for (let base = from; base < segmentBytes; base += windowBytes - 4) {
    const n = file.readSync(window, 0, Math.min(windowBytes, segmentBytes - base), base);
    let at = window.indexOf(magic, 0);
    while (at >= 0 && at < n) {
      const p = base + at;
      if (p > from || !skipFrom) {
        const h = reader.recordAt(file, segmentId, p)?.header;
        if (h !== undefined) yield { commitSeq: h.commitSeq, commitWindow: h.commitWindow, end: p + recordBytes(h) };
      }
      at = window.indexOf(magic, at + 1);
    }
    if (n < windowBytes) break;
  }
}
