// What happened in the cluster, as this node saw it: a bounded ring of events
// derived by comparing what the node sees now (its catalog, its connections,
// the leaders of the groups it holds) with what it saw a second ago. Served
// by GET /v1/events (the web console, `pxd events`). Each node keeps its own:
// a node's up or down is this node's view of it.

import type { ClusterEvent, ClusterEventKind } from "../api/types.js";

/** Events a node keeps; older ones are dropped. */
export const eventsMax = 256;

/** What a node sees of the cluster at one moment. */
export interface ClusterView {
  /** Node id -> its name and whether this node sees it up. */
  nodes: Map<number, { name: string; up: boolean }>;
  /** Volume name -> its replica nodes and its leader (0: unknown here). */
  volumes: Map<string, { nodes: readonly number[]; leader: number }>;
}

type NewEvent = Omit<ClusterEvent, "seq" | "at">;

/** The events that take `prev` to `next` (none from nothing: the first view is the baseline). */
export function viewChanges(prev: ClusterView, next: ClusterView): NewEvent[] {
  const out: NewEvent[] = [];
  const name = (id: number): string => next.nodes.get(id)?.name ?? prev.nodes.get(id)?.name ?? `node-${id}`;
  const ev = (kind: ClusterEventKind, message: string, extra: { node?: string; volume?: string }): void => void out.push({ kind, message, ...extra });
  for (const [id, n] of next.nodes) {
    const was = prev.nodes.get(id);
    if (was === undefined) ev("node-joined", `node ${n.name} joined the cluster`, { node: n.name });
    else if (was.up && !n.up) ev("node-down", `node ${n.name} is down (no connection to it)`, { node: n.name });
    else if (!was.up && n.up) ev("node-up", `node ${n.name} is up again`, { node: n.name });
  }
  for (const [id, n] of prev.nodes) if (!next.nodes.has(id)) ev("node-removed", `node ${n.name} was removed from the cluster`, { node: n.name });
  for (const [v, now] of next.volumes) {
    const was = prev.volumes.get(v);
    if (was === undefined) {
      ev("volume-created", `volume ${v} was created, replicas on ${now.nodes.map(name).join(", ")}`, { volume: v });
      continue;
    }
    const added = now.nodes.filter((id) => !was.nodes.includes(id));
    const removed = was.nodes.filter((id) => !now.nodes.includes(id));
    if (added.length > 0 && removed.length > 0) ev("replica-moved", `volume ${v}: replica moved from ${removed.map(name).join(", ")} to ${added.map(name).join(", ")}`, { volume: v });
    else if (added.length > 0) ev("replica-added", `volume ${v}: replica added on ${added.map(name).join(", ")}`, { volume: v });
    else if (removed.length > 0) ev("replica-removed", `volume ${v}: replica removed from ${removed.map(name).join(", ")}`, { volume: v });
    if (now.leader !== 0 && now.leader !== was.leader) ev("leader-changed", `volume ${v}: ${name(now.leader)} leads${was.leader !== 0 ? ` (was ${name(was.leader)})` : ""}`, { volume: v, node: name(now.leader) });
  }
  for (const v of prev.volumes.keys()) if (!next.volumes.has(v)) ev("volume-deleted", `volume ${v} was deleted`, { volume: v });
  return out;
}

/** The latest eventsMax events, numbered from 1 in the order they were seen. */
export class EventRing {
  private readonly events: ClusterEvent[] = [];
  private seq = 0;
  private last: ClusterView | undefined;

  /** Records what changed since the last view (the first view records nothing). */
  observe(view: ClusterView, atMs: number): void {
    const prev = this.last;
    this.last = view;
    if (prev === undefined) return;
    for (const e of viewChanges(prev, view)) {
      this.events.push({ seq: ++this.seq, at: new Date(atMs).toISOString(), ...e });
      if (this.events.length > eventsMax) this.events.shift();
    }
  }

  /** Events after `sinceSeq` (0: all kept), oldest first. */
  since(sinceSeq: number): ClusterEvent[] {
    return this.events.filter((e) => e.seq > sinceSeq);
  }
}
