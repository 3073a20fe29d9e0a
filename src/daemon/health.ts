// Why a node is degraded, as sentences for `GET /v1/status` and `pxd status`:
// a pure function of what the daemon observed, so each rule has its own test.

import { formatSize } from "../base/sizes.js";
import { listNames } from "../cluster/index.js";
import { diskFreeBytesMin, diskFreePercentMin } from "../constants.js";

export interface HealthFacts {
  /** Nodes of the catalog this node has no peer connection to. */
  nodesDown: readonly string[];
  /** The catalog's Raft group stopped on this node: why, else undefined. */
  catalogStopped: string | undefined;
  /** Volume groups stopped on this node (their log could not be persisted): name and why. */
  volumesStopped: readonly { name: string; why: string }[];
  /** Why the store stopped taking writes, else undefined. */
  storeFailure: string | undefined;
  /** The data dir's filesystem. */
  disk: { totalBytes: number; freeBytes: number };
  /** Volumes with blocks here that fail their checksum and had no good copy anywhere: name and how many blocks. */
  volumesDamaged: readonly { name: string; blocks: number }[];
  /** Volumes whose replica here lost Raft entries to damage at start-up and is getting them back (it does not vote meanwhile). */
  volumesRecovering: readonly string[];
}

/** The bytes below which the data dir's filesystem counts as nearly full. */
export function diskLowBytes(totalBytes: number): number {
  return Math.max(diskFreeBytesMin, Math.floor((totalBytes * diskFreePercentMin) / 100));
}

/** One sentence per problem, each saying what to do; empty when the node is healthy. */
export function healthReasons(f: HealthFacts): string[] {
  const out: string[] = [];
  if (f.storeFailure !== undefined) {
    out.push(`the store stopped taking writes (${f.storeFailure}); nothing more is written on this node until the daemon restarts: free space or fix the disk, then restart it`);
  }
  // A group stops because the store did: the store's reason is said once.
  const cause = (why: string): string => (why === f.storeFailure ? "its log could not be written: the store stopped" : why);
  if (f.catalogStopped !== undefined) {
    out.push(`the catalog's Raft group stopped on this node (${cause(f.catalogStopped)}); this node no longer follows catalog changes: restart the daemon once the store takes writes`);
  }
  if (f.volumesStopped.length > 0) {
    const what = f.volumesStopped.length === 1 ? `volume ${f.volumesStopped[0]!.name}` : `${f.volumesStopped.length} volumes (${listNames(f.volumesStopped.map((v) => v.name))})`;
    out.push(`the replica of ${what} stopped on this node (${cause(f.volumesStopped[0]!.why)}); other replicas serve it: restart the daemon once the store takes writes`);
  }
  const low = diskLowBytes(f.disk.totalBytes);
  if (f.disk.freeBytes < low) {
    out.push(
      `the data dir's filesystem is nearly full: ${formatSize(f.disk.freeBytes)} free of ${formatSize(f.disk.totalBytes)}, under ${formatSize(low)}; the store needs room for new log segments: free space or move the data dir to a larger disk`,
    );
  }
  if (f.volumesDamaged.length > 0) {
    const blocks = f.volumesDamaged.reduce((a, v) => a + v.blocks, 0);
    out.push(
      `${blocks} block(s) of ${listNames(f.volumesDamaged.map((v) => v.name))} failed their checksum here and no replica had a good copy: reads of them fail with EIO (the log names the offsets); rewrite them or restore the volume from a backup`,
    );
  }
  if (f.volumesRecovering.length > 0) {
    out.push(
      `the replica of ${listNames(f.volumesRecovering)} here lost Raft log entries to damage on disk and is getting them back from its leader; it does not vote until then, so its group tolerates one failure less`,
    );
  }
  if (f.nodesDown.length > 0) {
    const one = f.nodesDown.length === 1;
    const who = one ? `node ${f.nodesDown[0]} is` : `${f.nodesDown.length} nodes (${listNames(f.nodesDown)}) are`;
    out.push(`${who} down: this node has no connection to ${one ? "it" : "them"}; start ${one ? "it" : "them"} again (the catalog's leader moves ${one ? "its" : "their"} replicas elsewhere after --replace-down-after)`);
  }
  return out;
}
