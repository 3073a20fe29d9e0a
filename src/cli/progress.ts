// Progress of long work in the CLI: on a terminal a bar redrawn in place, else
// one JSON object a line (for scripts and logs). `pxd volume ha-update --wait`
// uses it while the new replicas are copied and catch up.

import type { ApiClient } from "../api/client.js";
import type { ReplicaInfo, VolumeInfo } from "../api/types.js";
import { copyText } from "./format.js";

/** How often the CLI asks for progress. */
const progressPollMs = 1000;
const barChars = 30;

/** How far a replica is, 0 to 1: an in-sync one is there; one being copied counts its copy; else its share of the leader's log. */
function replicaDone(r: ReplicaInfo): number {
  if (r.state === "in-sync") return 1;
  if (r.copy !== undefined) return r.copy.totalBytes > 0 ? r.copy.doneBytes / r.copy.totalBytes : 0;
  const m = /^(\d+)\/(\d+)/.exec(r.progress ?? "");
  return m !== null && Number(m[2]) > 0 ? Math.min(0.99, Number(m[1]) / Number(m[2])) : 0;
}

export function volumeDone(v: VolumeInfo): number {
  const parts = v.replicas.map(replicaDone);
  return parts.length === 0 ? 0 : parts.reduce((a, b) => a + b, 0) / parts.length;
}

function settled(v: VolumeInfo): boolean {
  return v.replicas.length === v.repl && v.replicas.every((r) => r.state === "in-sync");
}

function barLine(v: VolumeInfo): string {
  const done = volumeDone(v);
  const filled = Math.round(done * barChars);
  const behind = v.replicas.filter((r) => r.state !== "in-sync").map((r) => `${r.node} ${r.copy ? copyText(r.copy) : `${r.state}${r.progress ? ` ${r.progress}` : ""}`}`);
  return `[${"#".repeat(filled)}${"-".repeat(barChars - filled)}] ${String(Math.floor(done * 100)).padStart(3)}%  ${behind.join("; ") || "in sync"}`;
}

/** Polls the volume until it has its replica count, all in sync; draws progress on `out`. */
export async function waitForReplicas(api: ApiClient, name: string, out: { isTTY?: boolean; write(s: string): unknown }): Promise<VolumeInfo> {
  for (;;) {
    const v = await api.inspectVolume(name);
    const done = settled(v);
    if (out.isTTY === true) out.write(`\r\x1b[2K${barLine(v)}${done ? "\n" : ""}`);
    else out.write(JSON.stringify({ volume: v.name, done: Math.round(volumeDone(v) * 1000) / 1000, settled: done, replicas: v.replicas.map(({ node, state, progress, copy }) => ({ node, state, progress, copy })) }) + "\n");
    if (done) return v;
    await new Promise((r) => setTimeout(r, progressPollMs));
  }
}
