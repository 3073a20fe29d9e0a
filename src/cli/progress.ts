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

/** How often a byte count's progress is written when it is not a terminal. */
const jsonProgressMs = 1000;

export interface ByteProgress {
  update(doneBytes: number, totalBytes: number): void;
  /** Starts the count again from zero (the work starts over); returns true, to sit in a condition. */
  restart(): true;
  /** Ends the bar's line (a terminal) or writes the last line; once, whatever more calls come (a failure's cleanup calls it too). */
  end(): void;
}

/**
 * Progress of work over a byte count (a backup, a restore): on a terminal a
 * bar redrawn in place, else one JSON object a second, `{"what", "doneBytes",
 * "totalBytes", "done", "mibPerSec"}`. `pxd backup` draws it on stderr, so
 * that stdout holds only the result.
 */
export function byteProgress(out: { isTTY?: boolean; write(s: string): unknown }, what: string): ByteProgress {
  const started = Date.now();
  let last = { doneBytes: 0, totalBytes: 0 };
  let shownMs = 0;
  let ended = false;
  const rate = (): number => Math.round((last.doneBytes / 1048576 / Math.max(0.001, (Date.now() - started) / 1000)) * 10) / 10;
  const draw = (final: boolean): void => {
    const done = last.totalBytes > 0 ? last.doneBytes / last.totalBytes : 1;
    if (out.isTTY === true) {
      const filled = Math.round(done * barChars);
      out.write(`\r\x1b[2K${what} [${"#".repeat(filled)}${"-".repeat(barChars - filled)}] ${String(Math.floor(done * 100)).padStart(3)}%  ${rate()} MiB/s${final ? "\n" : ""}`);
    } else out.write(JSON.stringify({ what, doneBytes: last.doneBytes, totalBytes: last.totalBytes, done: Math.round(done * 1000) / 1000, mibPerSec: rate() }) + "\n");
  };
  return {
    update(doneBytes, totalBytes) {
      last = { doneBytes, totalBytes };
      const now = Date.now();
      if (now - shownMs >= (out.isTTY === true ? 100 : jsonProgressMs)) {
        shownMs = now;
        draw(false);
      }
    },
    restart() {
      if (out.isTTY === true) out.write("\n");
      last = { doneBytes: 0, totalBytes: last.totalBytes };
      return true;
    },
    end() {
      if (ended) return;
      ended = true;
      draw(true);
    },
  };
}
