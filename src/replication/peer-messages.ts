// Checks the shape of what a peer sent before any of it is used: every field
// of the type and in the bounds pxd sends (docs/formats/peer-protocol.md).
// A message that fails is a peer's bad frame, an expected failure: its
// connection is closed with one log line (PeerMessageError, transport.ts).
// What passes may still break a rule of the protocol (two leaders in a term,
// an entry conflicting with a committed one); the Raft core asserts those,
// and such a break stops the process: a peer that sends it is broken, and so
// may this node be.
//
// `snap-chunk`, `beats` and `repair-*` are checked by their receivers, which
// know the volume (snapshot.ts, beats.ts, repair.ts). A kind this node does
// not know is ignored (a newer peer's).

import { EntryType, MessageType } from "../raft/types.js";
import { volumeOpTrailerBytes } from "./volume-op.js";

const messageTypes: readonly unknown[] = Object.values(MessageType);
const entryTypes: readonly unknown[] = Object.values(EntryType);
const forwardOps: readonly unknown[] = ["read", "write", "trim", "zero", "zero-nohole", "status", "resize", "snapshot", "snap-read", "snap-status"];
const forwardCodes: readonly unknown[] = ["not-leader", "retry", "io"];

/** Why the message is malformed, or undefined when its shape is right. Never throws. */
export function peerMessageProblem(m: unknown): string | undefined {
  if (!isObject(m)) return "not a map";
  switch (m.kind) {
    case "raft":
      return fieldProblem(m, "group", isIndex) ?? raftMessageProblem(m.message);
    case "compact":
      return fieldProblem(m, "group", isIndex) ?? fieldProblem(m, "index", isIndex);
    case "snap-ack":
      return fieldProblem(m, "group", isIndex) ?? fieldProblem(m, "index", isIndex) ?? fieldProblem(m, "seq", isIndex) ?? fieldProblem(m, "ok", isBoolean) ?? (m["applied"] === undefined ? undefined : fieldProblem(m, "applied", isIndex));
    case "fwd":
      return forwardProblem(m);
    case "fwd-re":
      return forwardReplyProblem(m);
    default:
      return typeof m.kind === "string" ? undefined : "kind is not a string";
  }
}

function raftMessageProblem(m: unknown): string | undefined {
  if (!isObject(m)) return "message: not a map";
  if (!messageTypes.includes(m.type)) return `message: type ${show(m.type)} is not a Raft message type`;
  for (const key of ["from", "to"]) if (!isNodeId(m[key])) return `message: ${key} ${show(m[key])} is not a node id`;
  for (const key of ["term", "logTerm", "index", "commit", "rejectHint"]) if (!isIndex(m[key])) return `message: ${key} ${show(m[key])} is not a term or index`;
  if (!isBoolean(m.reject)) return "message: reject is not a boolean";
  if (m.context !== null && !(m.context instanceof Uint8Array)) return "message: context is not null or bytes";
  return entriesProblem(m.entries, m.index as number) ?? snapshotProblem(m.snapshot);
}

/** Entries follow the one before them (index), in ascending terms: what any leader's log slice is. */
function entriesProblem(entries: unknown, prevIndex: number): string | undefined {
  if (!Array.isArray(entries)) return "message: entries is not a list";
  let term = 0;
  for (let i = 0; i < entries.length; i++) {
    const e: unknown = entries[i];
    if (!isObject(e)) return `message: entry ${i} is not a map`;
    if (e.index !== prevIndex + 1 + i) return `message: entry ${i} has index ${show(e.index)}, not ${prevIndex + 1 + i}`;
    if (!isIndex(e.term) || e.term < term || e.term === 0) return `message: entry ${i} has term ${show(e.term)} (after term ${term})`;
    term = e.term;
    if (!entryTypes.includes(e.type)) return `message: entry ${i} has type ${show(e.type)}`;
    if (!(e.data instanceof Uint8Array)) return `message: entry ${i} has no bytes`;
  }
  return undefined;
}

function snapshotProblem(s: unknown): string | undefined {
  if (s === null) return undefined;
  if (!isObject(s) || !(s.data instanceof Uint8Array) || !isObject(s.meta)) return "message: snapshot is not null or {meta, data}";
  const meta = s.meta;
  if (!isIndex(meta.index) || !isIndex(meta.term)) return "message: snapshot meta has no index and term";
  const conf = meta.conf;
  if (!isObject(conf) || !isNodeIdList(conf.voters) || !isNodeIdList(conf.learners)) return "message: snapshot conf is not lists of node ids";
  return undefined;
}

function forwardProblem(m: Record<string, unknown>): string | undefined {
  const p = fieldProblem(m, "id", isIndex) ?? fieldProblem(m, "group", isIndex) ?? fieldProblem(m, "offsetBytes", isIndex) ?? fieldProblem(m, "lengthBytes", isIndex);
  if (p !== undefined) return p;
  if (!forwardOps.includes(m.op)) return `op ${show(m.op)} is not a volume operation`;
  if (m.op === "write") return m.data instanceof Uint8Array && m.data.length === m.lengthBytes ? undefined : "a write without lengthBytes of data";
  if (m.op === "snapshot") return m.data instanceof Uint8Array && m.data.length === volumeOpTrailerBytes ? undefined : "a snapshot request without its operation";
  return m.data === null ? undefined : `a ${String(m.op)} with data`;
}

function forwardReplyProblem(m: Record<string, unknown>): string | undefined {
  const p = fieldProblem(m, "id", isIndex);
  if (p !== undefined) return p;
  if (m.data !== null && !(m.data instanceof Uint8Array)) return "data is not null or bytes";
  if (m.extents !== null && !(Array.isArray(m.extents) && m.extents.every((x: unknown) => isObject(x) && isIndex(x.lengthBytes) && isBoolean(x.hole)))) {
    return "extents is not null or a list of {lengthBytes, hole}";
  }
  const e = m.error;
  if (e === null) return undefined;
  if (!isObject(e) || !forwardCodes.includes(e.code) || typeof e.message !== "string" || !isIndex(e.leader)) return "error is not null or {code, message, leader}";
  // A kind this node does not know (a newer peer's) is read as EIO.
  return e.kind === undefined || typeof e.kind === "string" ? undefined : "error kind is not a string";
}

function fieldProblem(m: Record<string, unknown>, key: string, ok: (v: unknown) => boolean): string | undefined {
  return ok(m[key]) ? undefined : `${key} ${show(m[key])} is not valid`;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function isIndex(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function isNodeId(v: unknown): v is number {
  return isIndex(v) && v > 0;
}

function isNodeIdList(v: unknown): boolean {
  return Array.isArray(v) && v.every(isNodeId);
}

function isBoolean(v: unknown): v is boolean {
  return typeof v === "boolean";
}

/** A peer's value for a log line: numbers as they are, anything else by its type only (peer-protocol.md). */
function show(v: unknown): string {
  return typeof v === "number" ? String(v) : `(${v === null ? "null" : typeof v})`;
}
