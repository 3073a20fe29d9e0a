// The cluster's control loops as pure decisions: failure detection,
// re-replication, replica reconcile, promotion of the catalog's learners and
// admission of a joining node. Each takes the catalog, what the deciding
// node observes (connections, its groups' members and progress) and how long
// it has observed something, and returns at most one command or change; the
// daemon runs them on a timer and carries the decision out. One change at a
// time, everywhere: the next decision sees the catalog after the last one.
//
// Durations are measured on the deciding node's own monotonic clock
// (`Durations`), never as one node's wall clock minus a time another node
// wrote: a clock that jumps, or two nodes whose clocks disagree, cannot move
// a replica early. A node that becomes the catalog's leader starts its
// durations from zero, so a leader change delays a decision, never hastens it.

import { assert } from "../base/assert.js";
import { replicaSetFor, type CatalogState, type CatalogVolume } from "./catalog.js";
import { validateCommand, type CatalogCommand } from "./commands.js";

type NodeId = number;

/** Names of the snapshots a schedule takes: auto-YYYYMMDD-HHMMSS (UTC); only these count toward its keep. */
export const autoSnapshotPrefix = "auto-";

/** A snapshot name from a time, UTC, to the second: PREFIX + YYYYMMDD-HHMMSS. */
export function timedSnapshotName(prefix: string, wallMs: number): string {
  const iso = new Date(wallMs).toISOString(); // 2026-12-06T19:45:00.123Z
  return `${prefix}${iso.slice(0, 10).replaceAll("-", "")}-${iso.slice(11, 19).replaceAll(":", "")}`;
}

export function autoSnapshotName(wallMs: number): string {
  return timedSnapshotName(autoSnapshotPrefix, wallMs);
}

/**
 * Snapshot schedules, on the catalog's leader: `elapsedMs` is, per volume
 * with a schedule, how long since the leader last took its scheduled
 * snapshot (or began counting). Returns the volumes due one now, and the
 * scheduled snapshots past each volume's keep, oldest first, counting the
 * one about to be taken. Snapshots taken by hand are never dropped.
 */
export function snapshotSchedule(catalog: CatalogState, elapsedMs: ReadonlyMap<string, number>): { take: string[]; drop: { volume: string; snapshot: string }[] } {
  const take: string[] = [];
  const drop: { volume: string; snapshot: string }[] = [];
  for (const v of catalog.volumes.values()) {
    if (v.snapshotEveryMs === 0) continue;
    const due = (elapsedMs.get(v.name) ?? 0) >= v.snapshotEveryMs;
    if (due) take.push(v.name);
    const auto = v.snapshots.filter((s) => s.name.startsWith(autoSnapshotPrefix)).sort((a, b) => a.id - b.id);
    const excess = auto.length + (due ? 1 : 0) - v.snapshotKeep;
    for (const s of auto.slice(0, Math.max(0, excess))) drop.push({ volume: v.name, snapshot: s.name });
  }
  return { take, drop };
}

/**
 * How long each key has been in some condition, on one node's monotonic
 * clock: `observe` with the keys in the condition now; a key that leaves it
 * starts from zero when it enters again.
 */
export class Durations<K> {
  private readonly since = new Map<K, number>();

  /** Records which keys are in the condition at monotonic time `nowMs`; returns how long each has been. */
  observe(inCondition: Iterable<K>, nowMs: number): Map<K, number> {
    const now = new Set(inCondition);
    for (const k of this.since.keys()) if (!now.has(k)) this.since.delete(k);
    const out = new Map<K, number>();
    for (const k of now) {
      const s = this.since.get(k) ?? nowMs;
      this.since.set(k, s);
      assert(nowMs >= s, "a monotonic clock does not go back");
      out.set(k, nowMs - s);
    }
    return out;
  }

  clear(): void {
    this.since.clear();
  }
}

/**
 * Failure detection, on the catalog's leader: a node it has had no peer
 * connection to for `downAfterMs` is marked down (placement then avoids it),
 * a marked-down node it reaches again is marked up. `unreachableMs`: each
 * node the leader cannot reach and for how long; absent means reachable.
 * `atMs` is only recorded (the catalog shows when a node last changed).
 */
export function healthChange(
  catalog: CatalogState,
  self: NodeId,
  unreachableMs: ReadonlyMap<NodeId, number>,
  downAfterMs: number,
  atMs: number,
): Extract<CatalogCommand, { kind: "updateNode" }> | undefined {
  for (const n of catalog.nodes.values()) {
    const forMs = n.id === self ? undefined : unreachableMs.get(n.id);
    const health = forMs === undefined ? "up" : forMs >= downAfterMs ? "down" : n.health;
    if (health !== n.health) return { kind: "updateNode", id: n.id, health, at: atMs };
  }
  return undefined;
}

/**
 * Why a volume needs a replica placed: its replica on `from` is on a node
 * down past the wait, or on a node being drained; or it has fewer replicas
 * than its count (a node was removed with --force), and `from` is undefined.
 */
export type ReplacementReason = "down" | "draining" | "missing";

export type ReplacementDecision =
  | { kind: "move"; volume: CatalogVolume; from: NodeId | undefined; reason: ReplacementReason; command: Extract<CatalogCommand, { kind: "setReplicas" }> }
  | { kind: "unplaceable"; volume: CatalogVolume; from: NodeId | undefined; reason: ReplacementReason; error: string };

/**
 * Re-replication, on the catalog's leader: a volume's replica on a node that
 * has been marked down for `replaceAfterMs` (`downMs`: each node the catalog
 * says is down, and how long this leader has seen it so; 0: never), or on a
 * node being drained (at once), moves to another node chosen by placement;
 * a volume with fewer replicas than its count gets one more. The command is
 * guarded by `expect` so that it applies only to the replica set it was
 * decided on. The first volume that needs it, in catalog order; a volume
 * whose replica has nowhere to go is reported and the next one is tried.
 */
export function replicaReplacements(
  catalog: CatalogState,
  downMs: ReadonlyMap<NodeId, number>,
  replaceAfterMs: number,
): ReplacementDecision[] {
  const out: ReplacementDecision[] = [];
  const leaving = (id: NodeId): ReplacementReason | undefined => {
    const n = catalog.nodes.get(id);
    if (n === undefined) return undefined;
    if (n.draining) return "draining";
    return replaceAfterMs > 0 && n.health === "down" && (downMs.get(id) ?? -1) >= replaceAfterMs ? "down" : undefined;
  };
  for (const v of catalog.volumes.values()) {
    const from = v.nodes.find((id) => leaving(id) !== undefined);
    if (from === undefined && v.nodes.length >= v.repl) continue;
    const reason = from === undefined ? "missing" : leaving(from)!;
    const set = replicaSetFor(catalog, v.name, v.nodes.length + 1, from === undefined ? [] : [from]);
    if ("error" in set) {
      out.push({ kind: "unplaceable", volume: v, from, reason, error: set.error });
      continue;
    }
    const nodes = set.nodes.filter((id) => id !== from);
    out.push({ kind: "move", volume: v, from, reason, command: { kind: "setReplicas", name: v.name, nodes, expect: [...v.nodes] } });
    return out;
  }
  return out;
}

/** A change of a group's members, which the daemon proposes as a Raft configuration change. */
export interface MemberChange {
  kind: "addLearner" | "promote" | "remove";
  node: NodeId;
}

/** A member's replication progress as its group's leader sees it. */
export interface MemberProgress {
  node: NodeId;
  match: number;
  active: boolean;
}

/** A group as its leader sees it: members, commit index and each member's progress. */
export interface GroupView {
  voters: readonly NodeId[];
  learners: readonly NodeId[];
  commit: number;
  progress: readonly MemberProgress[];
}

/**
 * Replica reconcile, on the leader of a volume's group: the next change that
 * brings the group's members to the catalog's replica set `wanted`. A
 * learner the catalog lists whose log is within `caughtUpEntries` of the
 * commit index becomes a voter; then a listed node that is not a member
 * joins as a learner (a snapshot fills it); then a member the catalog no
 * longer lists is removed (never the leader itself: it hands leadership on
 * first, `leaveDecision`). The removal does not wait for the new learner to
 * catch up: a replica moves mostly off a node that is down, and a down voter
 * kept meanwhile would make the group need every other member, the learner
 * included once promoted, for a quorum. A drain of a live node so runs with
 * one copy fewer until the learner is promoted.
 */
export function nextMemberChange(self: NodeId, wanted: readonly NodeId[], g: GroupView, caughtUpEntries: number): MemberChange | undefined {
  const ready = g.learners.find((l) => {
    const p = g.progress.find((x) => x.node === l);
    return wanted.includes(l) && p !== undefined && p.active && p.match + caughtUpEntries >= g.commit;
  });
  if (ready !== undefined) return { kind: "promote", node: ready };
  const missing = wanted.find((n) => !g.voters.includes(n) && !g.learners.includes(n));
  if (missing !== undefined) return { kind: "addLearner", node: missing };
  const extra = [...g.voters, ...g.learners].find((n) => !wanted.includes(n) && n !== self);
  if (extra !== undefined) return { kind: "remove", node: extra };
  return undefined;
}

export type LeaveDecision = { kind: "transfer"; to: NodeId } | { kind: "drop" } | { kind: "wait" };

/**
 * A node the catalog no longer lists for a volume it hosts: while it leads
 * the group it hands leadership to a listed voter (whose reconcile then
 * removes it). Otherwise it keeps its replica while it may still be needed:
 * removing a member takes a quorum of the configuration before the change,
 * so the last removal from a group of two needs the leaving node's own
 * acknowledgement, and a node that dropped its replica first would leave
 * the group without a quorum for good. It drops its replica once it has
 * been excluded for `graceMs` and either is no longer in the configuration
 * it knows, or has known no leader for `graceMs` (a removed member does not
 * hear of its removal: the leader stops sending to it, so it sees no leader).
 */
export function leaveDecision(self: NodeId, wanted: readonly NodeId[], g: { leader: NodeId; voters: readonly NodeId[]; learners: readonly NodeId[] }, excludedMs: number, leaderlessMs: number, graceMs: number): LeaveDecision {
  if (g.leader === self) {
    const to = g.voters.find((n) => n !== self && wanted.includes(n));
    return to === undefined ? { kind: "wait" } : { kind: "transfer", to };
  }
  if (excludedMs < graceMs) return { kind: "wait" };
  const member = g.voters.includes(self) || g.learners.includes(self);
  return !member || leaderlessMs >= graceMs ? { kind: "drop" } : { kind: "wait" };
}

/**
 * Leadership follows the host: a volume attached read-write on exactly one
 * host, through a node that holds one of its replicas, is best led by that
 * node, so the host's reads are served where they arrive and its writes take
 * one hop fewer (what STORK gives Portworx). On the volume's leader: the node
 * to hand leadership to, once it is a voter that is connected and holds every
 * committed entry; undefined when this node should keep it.
 */
export function attachmentLeader(self: NodeId, v: CatalogVolume, nodeIdByName: (name: string) => NodeId | undefined, g: GroupView): NodeId | undefined {
  const writers = v.attachments.filter((a) => !a.readOnly && a.node !== "");
  if (writers.length !== 1) return undefined;
  const to = nodeIdByName(writers[0]!.node);
  if (to === undefined || to === self || !v.nodes.includes(to) || !g.voters.includes(to)) return undefined;
  const p = g.progress.find((x) => x.node === to);
  return p !== undefined && p.active && p.match >= g.commit ? to : undefined;
}

/**
 * On the catalog's leader: a learner of the meta group whose log holds every
 * entry (`lastIndex`) and which is connected becomes a voter, while the group
 * has fewer than `votersMax` voters.
 */
export function metaLearnerToPromote(g: GroupView, lastIndex: number, votersMax: number): NodeId | undefined {
  if (g.voters.length >= votersMax) return undefined;
  return g.progress.find((p) => g.learners.includes(p.node) && p.active && p.match >= lastIndex)?.node;
}

export type JoinFields = Omit<Extract<CatalogCommand, { kind: "addNode" }>, "kind" | "at">;

/**
 * Admission of a node that proved the cluster secret: the catalog command
 * that records it, or the catalog's sentence for why the request is invalid
 * (refused before anything is proposed). Once it applied, the node joins the
 * meta group as a learner (as a voter before it runs, it would be needed for
 * the quorum that commits its own admission); `metaLearnerToPromote` makes
 * it a voter once it has caught up.
 */
export function admitNode(fields: JoinFields, atMs: number): { error: string } | { command: Extract<CatalogCommand, { kind: "addNode" }> } {
  const command = { kind: "addNode" as const, ...fields, at: atMs };
  const valid = validateCommand(command);
  return valid.ok ? { command } : { error: valid.error };
}
