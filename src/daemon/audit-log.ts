// The node's audit log (docs/formats/audit-log.md): one JSON line per
// request that changed something or was refused for its token, each carrying
// an HMAC-SHA256 over the previous record's MAC and its own fields, under a
// key derived from the cluster secret. A client only ever causes a record;
// it cannot write one, and a line changed, removed or inserted by anyone
// without the key breaks the chain, which every read checks.
//
// Two files at most: audit.log, and audit.log.1 it was rotated to once it
// passed auditFileBytesMax; the chain runs on across the rotation.

import { createHmac } from "node:crypto";
import { appendFileSync, closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, renameSync, statSync, truncateSync } from "node:fs";
import { join } from "node:path";
import type { AuditEvent, AuditRecord } from "../api/types.js";
import { auditFileBytesMax, auditRecordsReadMax } from "../constants.js";

export const auditFile = "audit.log";
/** The MAC the first record of a node's log chains to. */
const genesisMac = "0".repeat(64);
/** The tail read at start to find the last record (a record is far smaller). */
const tailBytesMax = 64 * 1024;

export interface AuditRead {
  records: AuditRecord[];
  /** Where the chain does not hold: the first record whose MAC is not what the key and its predecessor give. */
  chainBroken?: string;
}

export class AuditLog {
  private readonly key: Buffer;
  private readonly path: string;
  private seq = 0;
  private mac = genesisMac;

  constructor(
    private readonly dir: string,
    clusterSecret: Buffer,
    private readonly node: string,
    private readonly log: (line: string) => void,
  ) {
    this.key = auditKey(clusterSecret);
    this.path = join(dir, auditFile);
    const torn = dropTornTail(this.path);
    if (torn > 0) log(`audit: dropped ${torn} bytes of a record a crash cut short at the end of ${this.path}`);
    const last = lastRecord(this.path);
    if (last !== undefined) {
      this.seq = last.seq;
      this.mac = last.mac;
    }
  }

  /** Appends one record (synchronously: a few per API write, far below the disk's rate). A failed write is logged, never thrown at the request. */
  append(event: AuditEvent, wallMs: number): void {
    const record: AuditRecord = { seq: this.seq + 1, at: new Date(wallMs).toISOString(), node: this.node, ...event };
    const mac = recordMac(this.key, this.mac, record);
    const line = JSON.stringify({ ...record, mac }) + "\n";
    try {
      this.rotateIfFull(line.length);
      appendFileSync(this.path, line, { mode: 0o600 });
    } catch (e) {
      this.log(`audit: could not append to ${this.path} (${(e as Error).message}); record ${record.seq} of ${record.method} ${record.path} is lost`);
      return;
    }
    this.seq = record.seq;
    this.mac = mac;
  }

  /** Records at or after sinceMs, the newest auditRecordsReadMax, and the first break in the chain over everything kept. */
  read(sinceMs: number): AuditRead {
    const lines = [join(this.dir, `${auditFile}.1`), this.path].flatMap((p) => (existsSync(p) ? readFileSync(p, "utf8").split("\n").filter((l) => l !== "") : []));
    const out: AuditRecord[] = [];
    let prev: string | undefined;
    let chainBroken: string | undefined;
    for (const [i, line] of lines.entries()) {
      const parsed = parseLine(line);
      if (parsed === undefined) {
        chainBroken ??= `line ${i + 1} of the kept audit files is not a record (the log was altered, or a crash tore it)`;
        continue;
      }
      const { mac, record } = parsed;
      // The oldest record kept chains to one rotated away: the check starts there.
      if (prev !== undefined && mac !== recordMac(this.key, prev, record)) chainBroken ??= `record ${record.seq}: its MAC does not follow from the record before it (the log was altered)`;
      prev = mac;
      if (Date.parse(record.at) >= sinceMs) out.push(record);
    }
    return { records: out.slice(-auditRecordsReadMax), ...(chainBroken !== undefined ? { chainBroken } : {}) };
  }

  private rotateIfFull(adding: number): void {
    const size = existsSync(this.path) ? statSync(this.path).size : 0;
    if (size + adding <= auditFileBytesMax) return;
    renameSync(this.path, join(this.dir, `${auditFile}.1`));
  }
}

function auditKey(clusterSecret: Buffer): Buffer {
  return createHmac("sha256", clusterSecret).update("pxd-audit-key-v1").digest();
}

/** HMAC-SHA256(key, previous MAC (hex) + "\n" + the record's JSON), hex. */
function recordMac(key: Buffer, prev: string, record: AuditRecord): string {
  return createHmac("sha256", key).update(prev).update("\n").update(JSON.stringify(canonical(record))).digest("hex");
}

/** The record's fields in the order the format gives, whatever order a parsed line had. */
function canonical(r: AuditRecord): AuditRecord {
  return {
    seq: r.seq,
    at: r.at,
    node: r.node,
    who: r.who,
    tokenId: r.tokenId,
    role: r.role,
    from: r.from,
    method: r.method,
    path: r.path,
    status: r.status,
    ...(r.error !== undefined ? { error: r.error } : {}),
  };
}

function parseLine(line: string): { mac: string; record: AuditRecord } | undefined {
  try {
    const o = JSON.parse(line) as AuditRecord & { mac?: unknown };
    const strings = [o.at, o.node, o.who, o.tokenId, o.role, o.from, o.method, o.path];
    if (typeof o.mac !== "string" || !/^[0-9a-f]{64}$/.test(o.mac) || !Number.isSafeInteger(o.seq) || !Number.isSafeInteger(o.status) || strings.some((s) => typeof s !== "string")) return undefined;
    if (o.error !== undefined && typeof o.error !== "string") return undefined;
    return { mac: o.mac, record: canonical(o) };
  } catch {
    return undefined;
  }
}

/** The last tailBytesMax bytes of the file (all of a smaller one), and where they start. */
function readTail(path: string): { tail: Buffer; start: number; size: number } {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    const bytes = Math.min(size, tailBytesMax);
    const tail = Buffer.alloc(bytes);
    readSync(fd, tail, 0, bytes, size - bytes);
    return { tail, start: size - bytes, size };
  } finally {
    closeSync(fd);
  }
}

/** Cuts a last line without its newline (a write a crash cut short); returns the bytes dropped. */
function dropTornTail(path: string): number {
  if (!existsSync(path)) return 0;
  const { tail, start, size } = readTail(path);
  if (tail.length === 0 || tail[tail.length - 1] === 0x0a) return 0;
  const nl = tail.lastIndexOf(0x0a);
  const keep = nl < 0 ? start : start + nl + 1;
  truncateSync(path, keep);
  return size - keep;
}

/** The last whole record of the file, read from its tail. */
function lastRecord(path: string): { seq: number; mac: string } | undefined {
  if (!existsSync(path)) return undefined;
  const lines = readTail(path).tail.toString("utf8").split("\n").filter((l) => l !== "");
  for (let i = lines.length - 1; i >= 0; i--) {
    const p = parseLine(lines[i]!);
    if (p !== undefined) return { seq: p.record.seq, mac: p.mac };
  }
  return undefined;
}
