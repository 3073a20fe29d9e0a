// What a peer sends is checked before it is used (src/replication/peer-messages.ts):
// the messages pxd sends pass, and each malformed field is named.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { peerMessageProblem } from "../../src/replication/peer-messages.js";
import { decodeMessage, encodeMessage } from "../../src/replication/frame.js";
import { EntryType, MessageType, newMessage, type Message } from "../../src/raft/types.js";

/** A message as it arrives: encoded and decoded as the transport does. */
const wire = (m: unknown): unknown => decodeMessage(encodeMessage(m));

function append(): Message {
  const m = newMessage(MessageType.app, 1, 2, 5);
  m.index = 10;
  m.logTerm = 4;
  m.commit = 9;
  m.entries = [
    { index: 11, term: 4, type: EntryType.normal, data: new Uint8Array([1, 2, 3]) },
    { index: 12, term: 5, type: EntryType.confChange, data: new Uint8Array(0) },
  ];
  return m;
}

test("the messages pxd sends pass", () => {
  assert.is(peerMessageProblem(wire({ kind: "raft", group: 3, message: append() })), undefined);
  const vote = newMessage(MessageType.vote, 1, 2, 7);
  vote.context = new Uint8Array([1]);
  assert.is(peerMessageProblem(wire({ kind: "raft", group: 0, message: vote })), undefined);
  const snap = newMessage(MessageType.snap, 1, 2, 7);
  snap.snapshot = { meta: { index: 100, term: 6, conf: { voters: [1, 2, 3], learners: [] } }, data: new Uint8Array(0) };
  assert.is(peerMessageProblem(wire({ kind: "raft", group: 4, message: snap })), undefined);
  assert.is(peerMessageProblem(wire({ kind: "compact", group: 4, index: 99 })), undefined);
  assert.is(peerMessageProblem(wire({ kind: "snap-ack", group: 4, index: 99, seq: 0, ok: false })), undefined);
  assert.is(peerMessageProblem(wire({ kind: "fwd", id: 1, group: 4, op: "write", offsetBytes: 512, lengthBytes: 3, data: new Uint8Array(3) })), undefined);
  assert.is(peerMessageProblem(wire({ kind: "fwd", id: 2, group: 4, op: "read", offsetBytes: 0, lengthBytes: 4096, data: null })), undefined);
  assert.is(peerMessageProblem(wire({ kind: "fwd-re", id: 2, error: null, data: new Uint8Array(8), extents: null })), undefined);
  assert.is(peerMessageProblem(wire({ kind: "fwd-re", id: 3, error: null, data: null, extents: [{ lengthBytes: 4096, hole: true }] })), undefined);
  assert.is(peerMessageProblem(wire({ kind: "fwd-re", id: 4, error: { code: "io", kind: "ENOSPC", message: "full", leader: 0 }, data: null, extents: null })), undefined);
  // An older node's reply has no kind; a newer node's may carry a kind this one does not know (read as EIO).
  assert.is(peerMessageProblem(wire({ kind: "fwd-re", id: 5, error: { code: "io", message: "?", leader: 0 }, data: null, extents: null })), undefined);
  assert.is(peerMessageProblem(wire({ kind: "fwd-re", id: 6, error: { code: "io", kind: "EFUTURE", message: "?", leader: 0 }, data: null, extents: null })), undefined);
  // Kinds checked by their receivers, and kinds this node does not know, pass here.
  assert.is(peerMessageProblem(wire({ kind: "beats", items: "checked by parseBeats" })), undefined);
  assert.is(peerMessageProblem(wire({ kind: "from-a-newer-pxd", x: 1 })), undefined);
});

test("a malformed message is named, never thrown", () => {
  const raft = (edit: (m: Record<string, unknown>) => void): unknown => {
    const m = append() as unknown as Record<string, unknown>;
    edit(m);
    return wire({ kind: "raft", group: 1, message: m });
  };
  assert.match(peerMessageProblem(wire([1, 2])) ?? "", /not a map/);
  assert.match(peerMessageProblem(wire({ kind: 7 })) ?? "", /kind is not a string/);
  assert.match(peerMessageProblem(wire({ kind: "raft", group: -1, message: append() })) ?? "", /group -1/);
  assert.match(peerMessageProblem(wire({ kind: "raft", group: 1, message: null })) ?? "", /message: not a map/);
  assert.match(peerMessageProblem(raft((m) => (m["type"] = 99))) ?? "", /type 99 is not a Raft message type/);
  assert.match(peerMessageProblem(raft((m) => (m["from"] = 0))) ?? "", /from 0 is not a node id/);
  assert.match(peerMessageProblem(raft((m) => (m["term"] = "5"))) ?? "", /term \(string\)/);
  assert.match(peerMessageProblem(raft((m) => (m["commit"] = 2 ** 60))) ?? "", /commit/);
  assert.match(peerMessageProblem(raft((m) => (m["reject"] = 0))) ?? "", /reject is not a boolean/);
  assert.match(peerMessageProblem(raft((m) => (m["context"] = "x"))) ?? "", /context/);
  assert.match(peerMessageProblem(raft((m) => (m["entries"] = {}))) ?? "", /entries is not a list/);
  assert.match(peerMessageProblem(raft((m) => ((m["entries"] as { index: number }[])[1]!.index = 14))) ?? "", /entry 1 has index 14, not 12/);
  assert.match(peerMessageProblem(raft((m) => ((m["entries"] as { term: number }[])[1]!.term = 3))) ?? "", /entry 1 has term 3 \(after term 4\)/);
  assert.match(peerMessageProblem(raft((m) => ((m["entries"] as { type: number }[])[0]!.type = 5))) ?? "", /entry 0 has type 5/);
  assert.match(peerMessageProblem(raft((m) => ((m["entries"] as { data: unknown }[])[0]!.data = null))) ?? "", /entry 0 has no bytes/);
  assert.match(peerMessageProblem(raft((m) => (m["snapshot"] = { meta: { index: 1, term: 1, conf: { voters: [0], learners: [] } }, data: new Uint8Array(0) }))) ?? "", /snapshot conf/);
  assert.match(peerMessageProblem(wire({ kind: "compact", group: 1, index: "all" })) ?? "", /index/);
  assert.match(peerMessageProblem(wire({ kind: "snap-ack", group: 1, index: 1, seq: 0, ok: "yes" })) ?? "", /ok/);
  assert.match(peerMessageProblem(wire({ kind: "fwd", id: 1, group: 4, op: "erase", offsetBytes: 0, lengthBytes: 1, data: null })) ?? "", /op \(string\) is not a volume operation/);
  assert.match(peerMessageProblem(wire({ kind: "fwd", id: 1, group: 4, op: "write", offsetBytes: 0, lengthBytes: 4, data: new Uint8Array(3) })) ?? "", /a write without lengthBytes of data/);
  assert.match(peerMessageProblem(wire({ kind: "fwd", id: 1, group: 4, op: "trim", offsetBytes: 0, lengthBytes: 4, data: new Uint8Array(4) })) ?? "", /a trim with data/);
  assert.match(peerMessageProblem(wire({ kind: "fwd-re", id: 1, error: { code: "bad", message: "", leader: 0 }, data: null, extents: null })) ?? "", /error is not null/);
  assert.match(peerMessageProblem(wire({ kind: "fwd-re", id: 1, error: { code: "io", kind: 28, message: "", leader: 0 }, data: null, extents: null })) ?? "", /error kind is not a string/);
  assert.match(peerMessageProblem(wire({ kind: "fwd-re", id: 1, error: null, data: null, extents: [{ lengthBytes: -1, hole: true }] })) ?? "", /extents/);
});

test.run();
