// Text rendering for the CLI: pure functions from API types to lines.

import { printable } from "../base/printable.js";
import { formatSize } from "../base/sizes.js";
import { logLineCharsMax } from "../constants.js";
import { qosSummary } from "../cluster/rules.js";
import type { AttachmentInfo, CopyProgress, NodeInfo, NodeStatus, ScrubResponse, SettingInfo, VolumeInfo } from "../api/types.js";

/** Left-aligned columns separated by two spaces; the last column is not padded. */
export function table(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, c) => Math.max(...all.map((r) => (r[c] ?? "").length)));
  return all
    .map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c] ?? 0))).join("  ").trimEnd())
    .join("\n");
}

export function volumeTable(volumes: VolumeInfo[]): string {
  const header = ["NAME", "SIZE", "REPL", "STATE", "ALLOCATED", "CONNECTIONS", "NBD-URI"];
  const rows = volumes.map((v) => [
    v.name,
    formatSize(v.sizeBytes),
    String(v.repl),
    v.state,
    formatSize(v.allocatedBytes),
    String(v.connections),
    v.nbdUri,
  ]);
  return table(header, rows);
}

/** "key  value" lines with the keys aligned; a value of several lines keeps them aligned under the first. */
export function fields(pairs: [string, string][]): string {
  const width = Math.max(...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${k.padEnd(width)}  ${v.split("\n").join(`\n${" ".repeat(width + 2)}`)}`).join("\n");
}

/** A copy under way: "copy 1.50 GiB of 10.0 GiB (15%), 96.0 MiB/s, 1m29s left". */
export function copyText(c: CopyProgress): string {
  const pct = c.totalBytes > 0 ? Math.floor((100 * c.doneBytes) / c.totalBytes) : 100;
  const rate = c.bytesPerSec > 0 ? `, ${formatSize(c.bytesPerSec)}/s` : "";
  const left = c.etaSec !== undefined ? `, ${durationText(c.etaSec)} left` : "";
  return `${c.delta ? "changes" : "copy"} ${formatSize(c.doneBytes)} of ${formatSize(c.totalBytes)} (${pct}%)${rate}${left}`;
}

function durationText(sec: number): string {
  const s = Math.ceil(sec);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

export function volumeDetails(v: VolumeInfo): string {
  const replicas = v.replicas
    .map((r) => `${r.node} ${r.state}${r.progress ? ` ${r.progress}` : ""}${r.copy ? ` [${copyText(r.copy)}]` : ""}${r.leader ? " (leader)" : ""}`)
    .join(", ");
  return fields([
    ["name", v.name],
    ["id", String(v.id)],
    ["size", `${formatSize(v.sizeBytes)} (${v.sizeBytes} bytes)`],
    ["replicas", `${v.repl}${replicas ? ` (${replicas})` : ""}`],
    ["state", v.state],
    ["allocated", formatSize(v.allocatedBytes)],
    ["connections", String(v.connections)],
    ["attached", attachmentSummary(v)],
    ["encrypted", v.encrypted ? "yes (AES-256-XTS, its key wrapped by the cluster key)" : "no"],
    ["nbd uri", v.nbdUri],
    ["created", v.createdAt],
    ...(v.clonedFrom !== undefined ? [["cloned from", v.clonedFrom] as [string, string]] : []),
    ["snapshots", `${v.snapshots ?? 0}${v.snapshotSchedule ? `; one every ${formatDuration(v.snapshotSchedule.everySec)}, the newest ${v.snapshotSchedule.keep} kept` : ""} (pxd snapshot list ${v.name})`],
    ["scrubbed", scrubSummary(v.scrub)],
    ["qos", qosText(v.qos)],
    ...(v.throttle !== undefined ? [["waited", waitedText(v.throttle)] as [string, string]] : []),
  ]);
}

/** A volume's limits: "at most 500 IOPS and 100 MiB/s (bursts of 1 s) on each node its clients use", or "no limits". */
export function qosText(q: VolumeInfo["qos"]): string {
  const text = qosSummary(q.maxIops, q.maxBandwidthBytesPerSec, q.burstSec);
  return q.maxIops > 0 || q.maxBandwidthBytesPerSec > 0 ? `${text} on each node its clients use` : text;
}

/** What the limits and the node's fair share held back, on the node asked. */
function waitedText(t: NonNullable<VolumeInfo["throttle"]>): string {
  return `on ${t.node}: ${t.throttledRequests} requests held by the limits for ${t.throttleWaitSec.toFixed(1)} s, ${t.queuedRequests} queued for the node's fair share for ${t.queueWaitSec.toFixed(1)} s`;
}

/** Each replica's last scrub, on one line: "node1 2026-12-06T04:00:00Z 0 damaged, node2 never". */
function scrubSummary(reports: VolumeInfo["scrub"]): string {
  if (reports === undefined || reports.length === 0) return "not yet (pxd scrub NAME runs one now)";
  return reports
    .map((r) => {
      const when = r.finishedAt ?? `running since ${r.startedAt}`;
      const damage = r.blocksDamaged === 0 ? "no damage" : `${r.blocksDamaged} damaged, ${r.blocksRepaired} repaired${r.blocksUnrepaired > 0 ? `, ${r.blocksUnrepaired} NOT REPAIRABLE` : ""}`;
      return `${r.node} ${when} ${damage}`;
    })
    .join("; ");
}

export function scrubTable(r: ScrubResponse): string {
  const header = ["NODE", "VOLUME", "CHECKED", "DAMAGED", "REPAIRED", "UNREPAIRED", "FINISHED"];
  const rows: string[][] = [];
  for (const n of r.nodes) {
    if (n.error !== undefined) rows.push([n.node, "-", "-", "-", "-", "-", `error: ${n.error}`]);
    for (const v of n.volumes) {
      rows.push([n.node, v.volume, formatSize(v.bytesScrubbed), String(v.blocksDamaged), String(v.blocksRepaired), String(v.blocksUnrepaired), v.finishedAt ?? (v.interrupted ? "interrupted" : "running")]);
    }
  }
  if (rows.length === 0) return "nothing to scrub: no volume has a replica on the nodes asked";
  return table(header, rows);
}

export function statusDetails(s: NodeStatus): string {
  const store = Object.entries(s.store)
    .map(([k, n]) => `${k}=${n}`)
    .join(" ");
  return fields([
    ["node", `${s.nodeId} (pxd ${s.version})`],
    ["health", [s.health, ...s.reasons.map((r) => `- ${printable(r, logLineCharsMax)}`)].join("\n")],
    ["listen", `${s.listen}  api ${s.apiPort}  nbd ${s.nbdPort}  peer ${s.peerPort}`],
    ["data dir", s.dataDir],
    ["uptime", formatDuration(s.uptimeSec)],
    ["capacity", `${formatSize(s.capacity.usedBytes)} used of ${formatSize(s.capacity.totalBytes)}, ${formatSize(s.capacity.freeBytes)} free`],
    ["volumes", String(s.volumeCount)],
    ["store", store || "-"],
    ["cluster", `${s.clusterId}: ${s.nodes.filter((n) => n.health === "up").length} of ${s.nodes.length} nodes up`],
    ["pool", `${formatSize(s.pool.freeBytes)} free of ${formatSize(s.pool.totalBytes)} on the nodes that are up`],
    ["checksums", integritySummary(s.integrity)],
    ["scrub", scrubSchedule(s.integrity.scrub)],
    ["catalog", `entry ${s.catalog.appliedIndex} applied of ${s.catalog.commitIndex} committed, leader ${s.catalog.leader === 0 ? "unknown" : `node ${s.catalog.leader}`}`],
    ["catalog log", `${s.catalog.snapshotIndex === 0 ? "no snapshot" : `snapshot at entry ${s.catalog.snapshotIndex}`}, entries from ${s.catalog.logFirstIndex} held here`],
    ...(s.catalog.refusals.length === 0 ? [] : [["refused", s.catalog.refusals.map((r) => printable(`entry ${r.index} ${r.kind} (${r.code}): ${r.error}`, logLineCharsMax)).join("\n")] as [string, string]]),
  ]) + "\n\n" + nodeTable(s.nodes);
}

function integritySummary(i: NodeStatus["integrity"]): string {
  if (i.checksumErrors === 0) return "no damage found";
  return `${i.checksumErrors} check(s) found damage; ${i.blocksRepaired} block(s) repaired from replicas${i.blocksUnrepaired > 0 ? `, ${i.blocksUnrepaired} NOT REPAIRABLE (reads of them fail)` : ""}`;
}

function scrubSchedule(s: NodeStatus["integrity"]["scrub"]): string {
  const every = s.intervalSec === 0 ? "off" : `every ${formatDuration(s.intervalSec)} at ${formatSize(s.bandwidthBytesPerSec)}/s`;
  const next = s.nextPassAt === null ? "" : `, next ${s.nextPassAt}`;
  return `${every}; last ${s.lastPassAt}${next}${s.running ? " (running)" : ""}; ${formatSize(s.bytesScrubbed)} checked since start, ${s.blocksDamaged} damaged block(s) found`;
}

export function nodeTable(nodes: NodeInfo[]): string {
  const header = ["ID", "NAME", "ADDRESS", "HEALTH", "CAPACITY", "FREE", "CATALOG", "LABELS"];
  const rows = [...nodes]
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((n) => [
      String(n.id),
      n.name,
      `${n.address}:${n.apiPort}`,
      n.health + (n.draining ? " (draining)" : ""),
      formatSize(n.capacityBytes),
      formatSize(n.freeBytes),
      n.metaLeader ? "leader" : n.metaVoter ? "voter" : "learner",
      Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(",") || "-",
    ]);
  return table(header, rows);
}

export function settingsTable(settings: SettingInfo[]): string {
  const rows = settings.map((s) => [s.key, JSON.stringify(s.value), s.set ? JSON.stringify(s.defaultValue) : "(default)", s.doc]);
  return table(["KEY", "VALUE", "DEFAULT", "WHAT"], rows);
}

export function formatDuration(totalSec: number): string {
  const sec = Math.max(0, Math.floor(totalSec));
  const d = Math.floor(sec / 86400);
  const h = Math.floor((sec % 86400) / 3600);
  const m = Math.floor((sec % 3600) / 60);
  const s = sec % 60;
  if (d > 0) return `${d}d ${h}h ${m}m`;
  if (h > 0) return `${h}h ${m}m ${s}s`;
  if (m > 0) return `${m}m ${s}s`;
  return `${s}s`;
}

export function json(value: unknown): string {
  return JSON.stringify(value, null, 2);
}

/** A volume's attachments as inspect shows them. */
export function attachmentSummary(v: VolumeInfo): string {
  if (v.attachments.length === 0) return v.shared ? "none (shared: hosts may attach it read-write together)" : "none";
  return v.attachments.map((a) => `${a.host} ${a.device || "(attaching)"} via ${a.via}${a.readOnly ? " ro" : ""}${a.node ? ` from ${a.node}` : ""} since ${a.since}`).join("; ");
}

export function attachmentTable(list: AttachmentInfo[]): string {
  if (list.length === 0) return 'no volume is attached anywhere; "pxd volume attach NAME" attaches one here';
  return table(
    ["VOLUME", "HOST", "DEVICE", "VIA", "MODE", "NODE", "SINCE"],
    list.map((a) => [a.volume, a.host, a.device || "(attaching)", a.via, a.readOnly ? "ro" : "rw", a.node || "-", a.since]),
  );
}
