// Where a message from a peer goes, by its `kind`: Raft traffic to the
// driver, forwarded volume I/O to VolumeIo, block repair to the repairer,
// after the shape checks of peer-messages.ts (a malformed message is the
// peer's fault: PeerMessageError, and the transport drops that connection).
// The daemon and the simulator wire a node's parts the same way through it.

import type { NodeId } from "../raft/types.js";
import type { CompactEnvelope, MultiRaft, RaftEnvelope } from "./driver.js";
import type { RepairDataEnvelope, RepairGetEnvelope, Repairer } from "./repair.js";
import type { SnapAckEnvelope, SnapChunkEnvelope } from "./snapshot.js";
import type { ForwardReply, ForwardRequest, VolumeIo } from "./volume-io.js";
import { peerMessageProblem } from "./peer-messages.js";
import { PeerMessageError } from "./transport.js";

export interface PeerMessageTargets {
  driver: MultiRaft;
  io: VolumeIo;
  repairer: Repairer;
}

/** Hands a decoded peer message to the part that handles its kind; false for a kind nothing handles (dropped). */
export function dispatchPeerMessage(t: PeerMessageTargets, from: NodeId, m: unknown): boolean {
  const malformed = peerMessageProblem(m);
  if (malformed !== undefined) throw new PeerMessageError(malformed);
  const kind = (m as { kind?: unknown } | null)?.kind;
  if (kind === "raft") t.driver.receive(from, m as RaftEnvelope);
  else if (kind === "compact") t.driver.receiveCompact(from, m as CompactEnvelope);
  else if (kind === "snap-chunk") t.driver.receiveSnapChunk(from, m as SnapChunkEnvelope);
  else if (kind === "snap-ack") t.driver.receiveSnapAck(from, m as SnapAckEnvelope);
  else if (kind === "beats") t.driver.receiveBeats(from, m);
  else if (kind === "fwd" || kind === "fwd-re") t.io.receive(from, m as ForwardRequest | ForwardReply);
  else if (kind === "repair-get" || kind === "repair-data") t.repairer.receive(from, m as RepairGetEnvelope | RepairDataEnvelope);
  else return false;
  return true;
}
