// Coalesced heartbeats (docs/formats/peer-protocol.md, "Coalesced
// heartbeats"). Every group ticks at once, so the heartbeats of all the
// groups two nodes share fall due together; one envelope each made hundreds
// of frames per tick per peer. The driver hands a turn's heartbeats and
// heartbeat responses to a BeatsOutbox, which sends each destination one
// envelope of compact items; the receiver checks every item before it
// rebuilds the Messages its cores step.

import { assert } from "../base/assert.js";
import { peerBeatContextBytesMax, peerBeatsMax } from "../constants.js";
import { MessageType, newMessage, type Message, type NodeId } from "../raft/types.js";

type BeatType = typeof MessageType.heartbeat | typeof MessageType.heartbeatResp;

/**
 * One heartbeat or heartbeat response of one group: what the core reads from
 * them (term; commit in a heartbeat, 0 in a response; the ReadIndex context
 * or null). `from` and `to` are the envelope's two ends.
 */
export type BeatItem = [group: number, type: BeatType, term: number, commit: number, context: Uint8Array | null];

/** What travels between drivers: heartbeats and responses of many groups, from one node to another. */
export interface BeatsEnvelope {
  kind: "beats";
  items: BeatItem[];
}

/** A heartbeat rebuilt for its group's core. */
export interface Beat {
  group: number;
  message: Message;
}

export function isBeat(m: Message): boolean {
  return m.type === MessageType.heartbeat || m.type === MessageType.heartbeatResp;
}

/** The item of a heartbeat or response; asserts that it carries nothing the item leaves out. */
export function beatItem(group: number, m: Message): BeatItem {
  assert(isBeat(m), () => `message type ${m.type} of group ${group} is not a heartbeat`);
  assert(m.logTerm === 0 && m.index === 0 && m.entries.length === 0 && !m.reject && m.rejectHint === 0 && m.snapshot === null,
    () => `a heartbeat of group ${group} carries only term, commit and context`);
  assert(m.type === MessageType.heartbeat || m.commit === 0, () => `a heartbeat response of group ${group} carries no commit`);
  assert(m.context === null || m.context.length <= peerBeatContextBytesMax, () => `a heartbeat context of group ${group} fits peerBeatContextBytesMax`);
  return [group, m.type as BeatType, m.term, m.commit, m.context];
}

/**
 * Checks a received envelope whole, then rebuilds its messages; a string says
 * why it is malformed (nothing in it may be acted on). Never throws.
 */
export function parseBeats(envelope: unknown, from: NodeId, to: NodeId): Beat[] | string {
  if (typeof envelope !== "object" || envelope === null) return "not an object";
  const items = (envelope as { items?: unknown }).items;
  if (!Array.isArray(items)) return "items is not an array";
  if (items.length === 0 || items.length > peerBeatsMax) return `${items.length} items, not 1 to ${peerBeatsMax}`;
  for (let i = 0; i < items.length; i++) {
    const error = itemError(items[i]);
    if (error !== undefined) return `item ${i}: ${error}`;
  }
  return (items as BeatItem[]).map(([group, type, term, commit, context]) => {
    const message = newMessage(type, from, to, term);
    message.commit = commit;
    message.context = context;
    return { group, message };
  });
}

function itemError(item: unknown): string | undefined {
  if (!Array.isArray(item) || item.length !== 5) return "not an array of 5";
  const [group, type, term, commit, context] = item as unknown[];
  if (!isIntAtLeast(group, 0)) return `group ${show(group)} is not a group id`;
  if (type !== MessageType.heartbeat && type !== MessageType.heartbeatResp) return `type ${show(type)} is not a heartbeat or its response`;
  if (!isIntAtLeast(term, 1)) return `term ${show(term)} is not a term`;
  if (!isIntAtLeast(commit, 0)) return `commit ${show(commit)} is not an index`;
  if (type === MessageType.heartbeatResp && commit !== 0) return "a response carries a commit";
  if (context !== null && !(context instanceof Uint8Array && context.length <= peerBeatContextBytesMax)) {
    return `context is not null or at most ${peerBeatContextBytesMax} bytes`;
  }
  return undefined;
}

function isIntAtLeast(v: unknown, min: number): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= min;
}

/** A peer's value for a log line: numbers as they are, anything else by its type only. */
function show(v: unknown): string {
  return typeof v === "number" ? String(v) : `(${v === null ? "null" : typeof v})`;
}

/**
 * Heartbeats and responses on their way out, per destination node, until
 * flush(). A failed send reports the peer unreachable to every group with an
 * item in it, as a failed send of each message alone would have.
 */
export class BeatsOutbox {
  private readonly pending = new Map<NodeId, BeatItem[]>();

  constructor(
    private readonly o: {
      send(to: NodeId, envelope: BeatsEnvelope): boolean;
      unreachable(to: NodeId, groups: readonly number[]): void;
    },
  ) {}

  add(group: number, m: Message): void {
    let items = this.pending.get(m.to);
    if (items === undefined) this.pending.set(m.to, (items = []));
    items.push(beatItem(group, m));
    // Full: it goes now, still no earlier than each message would have gone alone.
    if (items.length === peerBeatsMax) this.sendTo(m.to);
  }

  flush(): void {
    for (const to of [...this.pending.keys()]) this.sendTo(to);
  }

  private sendTo(to: NodeId): void {
    const items = this.pending.get(to);
    if (items === undefined) return;
    this.pending.delete(to);
    if (!this.o.send(to, { kind: "beats", items })) this.o.unreachable(to, [...new Set(items.map((item) => item[0]))]);
  }
}
