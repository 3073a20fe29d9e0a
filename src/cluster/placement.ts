// Placement: which nodes hold a new volume's replicas. Pure and
// deterministic: the same nodes and request give the same answer on every
// node of the meta group, so the catalog can call it while applying a command.
//
// Rules (docs/formats/catalog-commands.md, "Placement"):
//   * replicas go to distinct nodes that are up and not draining;
//   * a node takes a replica only while its promised bytes (the sizes of the
//     volumes it already holds) plus this volume stay within its capacity
//     times overcommitPercent/100;
//   * most unpromised space first (capacity minus promised, not the free space
//     the node last reported, so two creates in a row do not pile onto the
//     node that looked emptiest), ties broken by the lower node id;
//   * zones: with `zones` the replicas must sit in distinct zones; without it,
//     distinct zones and then distinct racks are preferred over free space;
//   * explicit `nodes` are checked (known, distinct, up, not draining, room,
//     zones) and used as given.

import { assert } from "../base/assert.js";
import { formatSize } from "../base/sizes.js";
import { catalogErrorNamesMax, volumeReplicasMax } from "../constants.js";

export interface PlacementNode {
  id: number;
  name: string;
  up: boolean;
  draining: boolean;
  capacityBytes: number;
  /** Sum of the sizes of the volumes that already have a replica here. */
  promisedBytes: number;
  zone?: string;
  rack?: string;
}

export interface PlacementRequest {
  /** The volume's name, for messages. */
  volume: string;
  sizeBytes: number;
  repl: number;
  nodes?: readonly number[];
  zones?: boolean;
  /** Promised bytes may reach capacity * overcommitPercent / 100 (default 100). */
  overcommitPercent?: number;
}

export type PlacementResult = { nodes: number[] } | { error: string };

export function place(nodes: readonly PlacementNode[], request: PlacementRequest): PlacementResult {
  assert(Number.isSafeInteger(request.repl) && request.repl >= 1 && request.repl <= volumeReplicasMax, `repl ${request.repl} is in range`);
  assert(Number.isSafeInteger(request.sizeBytes) && request.sizeBytes >= 0, `size ${request.sizeBytes} is a byte count`);
  assert(new Set(nodes.map((n) => n.id)).size === nodes.length, "candidate node ids are distinct");
  if (request.nodes !== undefined) return placeExplicit(nodes, request);
  return placeAutomatic(nodes, request);
}

/** Bytes the node could still promise to new volumes (may be negative after a capacity drop). */
export function roomBytes(node: PlacementNode, overcommitPercent = 100): number {
  return Math.floor((node.capacityBytes * overcommitPercent) / 100) - node.promisedBytes;
}

/** Most unpromised space first, then the lower id. */
export function placementOrder(a: PlacementNode, b: PlacementNode): number {
  const fa = a.capacityBytes - a.promisedBytes;
  const fb = b.capacityBytes - b.promisedBytes;
  if (fa !== fb) return fb - fa;
  return a.id - b.id;
}

function placeAutomatic(nodes: readonly PlacementNode[], r: PlacementRequest): PlacementResult {
  const v = JSON.stringify(r.volume);
  const up = nodes.filter((n) => n.up);
  if (up.length < r.repl) {
    if (up.length === 0) return { error: `volume ${v} needs ${replicas(r.repl)} but no node is up; add a node or bring one back up` };
    return { error: `volume ${v} needs ${replicas(r.repl)} but only ${count(up.length, "node is", "nodes are")} up; add a node or use --repl ${up.length}` };
  }
  const active = up.filter((n) => !n.draining);
  if (active.length < r.repl) {
    const draining = listIds(up.filter((n) => n.draining).map((n) => n.id).sort((a, b) => a - b));
    const fix = active.length === 0 ? "undrain a node or add one" : `undrain a node, add one or use --repl ${active.length}`;
    return { error: `volume ${v} needs ${replicas(r.repl)} but only ${active.length} of the ${up.length} nodes that are up ${active.length === 1 ? "is" : "are"} not draining (draining: ${draining}); ${fix}` };
  }
  const size = formatSize(r.sizeBytes);
  const roomy = active.filter((n) => roomBytes(n, r.overcommitPercent) >= r.sizeBytes).sort(placementOrder);
  if (roomy.length < r.repl) {
    const best = [...active].sort((a, b) => roomBytes(b, r.overcommitPercent) - roomBytes(a, r.overcommitPercent) || a.id - b.id)[0];
    assert(best !== undefined, "active nodes exist");
    const most = `the most any node has is ${formatSize(Math.max(0, roomBytes(best, r.overcommitPercent)))} on node ${best.id}`;
    const fix = roomy.length === 0 ? "add capacity, make the volume smaller or raise the setting overcommitPercent" : `add capacity, make the volume smaller, use --repl ${roomy.length} or raise the setting overcommitPercent`;
    const have = roomy.length === 0 ? "no node has" : `only ${count(roomy.length, "node has", "nodes have")}`;
    return { error: `volume ${v} needs ${replicas(r.repl)} of ${size} but ${have} ${size} unpromised (${most}); ${fix}` };
  }
  if (r.zones === true) return pickDistinctZones(roomy, r);
  return { nodes: spread(roomy, r.repl) };
}

/** Required zone spreading: the best node of each zone, best zones first. */
function pickDistinctZones(sorted: readonly PlacementNode[], r: PlacementRequest): PlacementResult {
  const chosen: number[] = [];
  const zones: string[] = [];
  for (const n of sorted) {
    if (n.zone === undefined || zones.includes(n.zone)) continue;
    zones.push(n.zone);
    chosen.push(n.id);
    if (chosen.length === r.repl) return { nodes: chosen };
  }
  const v = JSON.stringify(r.volume);
  if (zones.length === 0) {
    return { error: `volume ${v} needs ${replicas(r.repl)} in distinct zones but no node that can take it has a zone label; label nodes with a zone or drop --zones` };
  }
  const names = listNames(zones.slice().sort());
  const fix = `add a node in another zone, drop --zones or use --repl ${zones.length}`;
  return { error: `volume ${v} needs ${replicas(r.repl)} in distinct zones but the nodes that can take it span only ${count(zones.length, "zone", "zones")} (${names}); ${fix}` };
}

/**
 * Preferred spreading: first one node per zone, then one per rack, then the
 * rest, each pass in placement order. Unlabelled nodes share the zone "" and
 * the rack "", so without labels this is plain placement order.
 */
function spread(sorted: readonly PlacementNode[], repl: number): number[] {
  const chosen: PlacementNode[] = [];
  const passes: ((n: PlacementNode) => string)[] = [(n) => n.zone ?? "", (n) => `${n.zone ?? ""}\u0000${n.rack ?? ""}`, (n) => String(n.id)];
  for (const key of passes) {
    const used = new Set(chosen.map(key));
    for (const n of sorted) {
      if (chosen.length === repl) break;
      if (chosen.includes(n) || used.has(key(n))) continue;
      used.add(key(n));
      chosen.push(n);
    }
  }
  assert(chosen.length === repl, "enough candidates were checked before spreading");
  return chosen.map((n) => n.id);
}

function placeExplicit(nodes: readonly PlacementNode[], r: PlacementRequest): PlacementResult {
  const v = JSON.stringify(r.volume);
  const ids = r.nodes ?? [];
  if (ids.length !== r.repl) {
    return { error: `volume ${v} needs ${replicas(r.repl)} but --nodes names ${ids.length} (${listIds(ids)}); name ${r.repl} nodes or use --repl ${ids.length}` };
  }
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const chosen: PlacementNode[] = [];
  for (const id of ids) {
    const n = byId.get(id);
    if (chosen.some((c) => c.id === id)) return { error: `volume ${v}: node ${id} is named twice in --nodes; name each node once` };
    if (n === undefined) return { error: `volume ${v}: node ${id} in --nodes is not in the cluster; pxd node list shows the nodes` };
    const who = `node ${id} (${n.name})`;
    if (!n.up) return { error: `volume ${v}: ${who} in --nodes is down; pick a node that is up or bring it back` };
    if (n.draining) return { error: `volume ${v}: ${who} in --nodes is draining; pick another node or undrain it` };
    const room = roomBytes(n, r.overcommitPercent);
    if (room < r.sizeBytes) {
      return { error: `volume ${v}: ${who} in --nodes has ${formatSize(Math.max(0, room))} unpromised and the volume needs ${formatSize(r.sizeBytes)}; pick another node, add capacity or raise the setting overcommitPercent` };
    }
    chosen.push(n);
  }
  if (r.zones === true) {
    for (const [i, n] of chosen.entries()) {
      if (n.zone === undefined) return { error: `volume ${v}: node ${n.id} (${n.name}) in --nodes has no zone label and --zones asks for distinct zones; label it or drop --zones` };
      const twin = chosen.slice(0, i).find((c) => c.zone === n.zone);
      if (twin !== undefined) {
        return { error: `volume ${v}: nodes ${twin.id} and ${n.id} in --nodes are both in zone ${JSON.stringify(n.zone)} and --zones asks for distinct zones; pick nodes in different zones or drop --zones` };
      }
    }
  }
  return { nodes: [...ids] };
}

function replicas(n: number): string {
  return count(n, "replica", "replicas");
}

function count(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

function listIds(ids: readonly number[]): string {
  return listNames(ids.map(String));
}

/** "a, b, c" or "a, b, c, d, e and 3 more". */
export function listNames(names: readonly string[]): string {
  if (names.length <= catalogErrorNamesMax) return names.join(", ");
  return `${names.slice(0, catalogErrorNamesMax).join(", ")} and ${names.length - catalogErrorNamesMax} more`;
}
