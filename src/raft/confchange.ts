// Membership changes, one server at a time (Ongaro's thesis §4.1).
//
// A config entry carries the whole configuration that results from the
// change, not just the delta, so any node can take it into force from the
// entry alone: a new node that never saw the earlier configuration, a node
// that reverts after its log was truncated, a node restarting from its log.
//
// The rule (checked by the leader in Raft.proposeConfChange):
//   - each change adds, removes, promotes or demotes exactly one node, so the
//     old and the new set of voters differ by at most one and any majority of
//     one overlaps any majority of the other;
//   - a configuration takes effect on every node as soon as its entry is in
//     that node's log (committed or not), and reverts if the entry is truncated;
//   - a leader proposes a change only after it has committed an entry of its
//     own term (the fix to the single-server bug, raft-dev 2015) and only when
//     no config entry is uncommitted in its log: never two changes in flight.

import { assert } from "../base/assert.js";
import type { ConfState, NodeId } from "./types.js";

export const ConfChangeType = {
  addVoter: 1,
  addLearner: 2,
  removeNode: 3,
} as const;
export type ConfChangeType = (typeof ConfChangeType)[keyof typeof ConfChangeType];

export interface ConfChange {
  type: ConfChangeType;
  nodeId: NodeId;
}

/** What a config entry's data decodes to: the change and the configuration it produces. */
export interface ConfChangeEntry {
  change: ConfChange;
  conf: ConfState;
}

const formatVersion = 1;
const nodesMax = 1024;

export function isValidNodeId(id: number): boolean {
  return Number.isSafeInteger(id) && id > 0;
}

/** The configuration after `change`, or a string that says why the change is refused. */
export function applyConfChange(conf: ConfState, change: ConfChange): ConfState | string {
  const id = change.nodeId;
  if (!isValidNodeId(id)) return `node id ${id} is not a positive integer`;
  const isVoter = conf.voters.includes(id);
  const isLearner = conf.learners.includes(id);
  const voters = conf.voters.filter((v) => v !== id);
  const learners = conf.learners.filter((l) => l !== id);
  switch (change.type) {
    case ConfChangeType.addVoter:
      if (isVoter) return `node ${id} is already a voter`;
      voters.push(id);
      break;
    case ConfChangeType.addLearner:
      if (isLearner) return `node ${id} is already a learner`;
      learners.push(id);
      break;
    case ConfChangeType.removeNode:
      if (!isVoter && !isLearner) return `node ${id} is not a member`;
      break;
    default:
      return `unknown config change type ${String((change as ConfChange).type)}`;
  }
  if (voters.length === 0) return `removing node ${id} would leave no voter`;
  if (voters.length + learners.length > nodesMax) return `a group holds at most ${nodesMax} members`;
  voters.sort((a, b) => a - b);
  learners.sort((a, b) => a - b);
  return { voters, learners };
}

/** Encoding: u8 version, u8 type, f64 node, u16 voter count, f64 voters, u16 learner count, f64 learners. */
export function encodeConfChange(entry: ConfChangeEntry): Uint8Array {
  const { change, conf } = entry;
  assert(conf.voters.length <= nodesMax && conf.learners.length <= nodesMax, "configuration too large");
  const bytes = 2 + 8 + 2 + 8 * conf.voters.length + 2 + 8 * conf.learners.length;
  const out = new Uint8Array(bytes);
  const view = new DataView(out.buffer);
  let at = 0;
  view.setUint8(at++, formatVersion);
  view.setUint8(at++, change.type);
  view.setFloat64(at, change.nodeId);
  at += 8;
  for (const list of [conf.voters, conf.learners]) {
    view.setUint16(at, list.length);
    at += 2;
    for (const id of list) {
      assert(isValidNodeId(id), "node ids are positive integers");
      view.setFloat64(at, id);
      at += 8;
    }
  }
  assert(at === bytes, "conf change encoding length");
  return out;
}

export function decodeConfChange(data: Uint8Array): ConfChangeEntry {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  assert(data.byteLength >= 14, "conf change entry too short");
  let at = 0;
  assert(view.getUint8(at++) === formatVersion, "conf change entry version");
  const type = view.getUint8(at++) as ConfChangeType;
  assert(type >= ConfChangeType.addVoter && type <= ConfChangeType.removeNode, "conf change type");
  const nodeId = view.getFloat64(at);
  at += 8;
  const lists: NodeId[][] = [];
  for (let l = 0; l < 2; l++) {
    assert(at + 2 <= data.byteLength, "conf change entry truncated");
    const count = view.getUint16(at);
    at += 2;
    assert(count <= nodesMax && at + 8 * count <= data.byteLength, "conf change entry truncated");
    const list: NodeId[] = [];
    for (let i = 0; i < count; i++) {
      const id = view.getFloat64(at);
      at += 8;
      assert(isValidNodeId(id), "conf change node id");
      list.push(id);
    }
    lists.push(list);
  }
  assert(at === data.byteLength, "conf change entry has trailing bytes");
  return { change: { type, nodeId }, conf: { voters: lists[0] ?? [], learners: lists[1] ?? [] } };
}

export function confStatesEqual(a: ConfState, b: ConfState): boolean {
  return sameIds(a.voters, b.voters) && sameIds(a.learners, b.learners);
}

function sameIds(a: NodeId[], b: NodeId[]): boolean {
  if (a.length !== b.length) return false;
  const sa = [...a].sort((x, y) => x - y);
  const sb = [...b].sort((x, y) => x - y);
  return sa.every((v, i) => v === sb[i]);
}

export function cloneConfState(c: ConfState): ConfState {
  return { voters: [...c.voters], learners: [...c.learners] };
}
