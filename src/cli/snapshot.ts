// pxd snapshot create|list|inspect|delete and pxd volume rollback: thin
// wrappers over ApiClient (docs/architecture.md, "Snapshots").

import type { Command } from "commander";
import { formatSize } from "../base/sizes.js";
import type { SnapshotInfo } from "../api/types.js";
import { parseSnapshotRef, snapshotNameProblem } from "../api/validate.js";
import { checkName, clientFor, durationArg, intArg, replArg } from "./args.js";
import type { ApiClient } from "../api/client.js";
import { waitForReplicas } from "./progress.js";
import { volumeSnapshotsMax } from "../constants.js";
import { timedSnapshotName } from "../cluster/control.js";
import { UsageError } from "./errors.js";
import { fields, formatDuration, json, table } from "./format.js";

interface JsonFlag {
  json?: boolean;
}

/** A rollback proposes what changed since the snapshot: it may take minutes on a large volume. */
const rollbackTimeoutMs = 30 * 60 * 1000;

/** "VOLUME@SNAPSHOT", as the NBD export is named, checked. */
function snapshotRef(ref: string): { volume: string; snapshot: string } {
  const r = parseSnapshotRef(ref);
  if ("problem" in r) throw new UsageError(r.problem);
  return r;
}

function checkSnapshotName(name: string): string {
  const problem = snapshotNameProblem(name);
  if (problem !== null) throw new UsageError(problem);
  return name;
}


/**
 * `pxd volume clone VOL@SNAP NEW`: the cluster makes the clone (its replicas
 * on nodes holding the snapshot start from it, sharing its extents); the
 * CLI then waits, with progress on stderr, until replicas elsewhere have
 * their copy, unless --no-wait.
 */
async function cloneVolume(api: ApiClient, volume: string, snapshot: string, name: string, o: { repl?: number; nodes?: string[] | undefined; wait: boolean; json?: boolean }): Promise<void> {
  const started = Date.now();
  const snap = await api.inspectSnapshot(volume, snapshot);
  const source = `${volume}@${snapshot}`;
  const made = await api.createVolume({ name, sizeBytes: snap.sizeBytes, clone: { volume, snapshot }, ...(o.repl !== undefined ? { repl: o.repl } : {}), ...(o.nodes !== undefined ? { nodes: o.nodes } : {}) });
  const v = o.wait ? await waitForReplicas(api, name, process.stderr) : made;
  const seconds = (Date.now() - started) / 1000;
  const holders = new Set(snap.holders ?? []);
  const shared = v.replicas.filter((r) => holders.has(r.node)).map((r) => r.node);
  const copied = v.replicas.filter((r) => !holders.has(r.node)).map((r) => r.node);
  if (o.json) return console.log(json({ volume: name, source, sizeBytes: v.sizeBytes, sharedOn: shared, copiedTo: copied, inSync: v.replicas.every((r) => r.state === "in-sync"), seconds }));
  const rest = copied.length === 0 ? "" : o.wait ? `; copied to ${copied.join(", ")}` : `; being copied to ${copied.join(", ")} ("pxd volume inspect ${name}" shows the copy)`;
  console.log(`volume ${name} cloned from ${source}: ${formatSize(v.sizeBytes)}, sharing the snapshot's data on ${shared.join(", ") || "no node"}${rest}; ${seconds.toFixed(1)} s`);
}

export function snapshotTable(list: SnapshotInfo[]): string {
  return table(
    ["VOLUME", "SNAPSHOT", "SIZE", "CREATED", "NBD-URI"],
    list.map((s) => [s.volume, s.name, formatSize(s.sizeBytes), s.createdAt, s.nbdUri]),
  );
}

export function snapshotDetails(s: SnapshotInfo): string {
  return fields([
    ["snapshot", `${s.volume}@${s.name}`],
    ["id", String(s.id)],
    ["size", formatSize(s.sizeBytes)],
    ["created", s.createdAt],
    ["held on", s.holders === undefined ? "-" : s.holders.length === 0 ? "no node answered that it holds it" : s.holders.join(", ")],
    ["data", s.allocatedBytes === undefined ? "-" : formatSize(s.allocatedBytes)],
    ["only here", s.exclusiveBytes === undefined ? "-" : `${formatSize(s.exclusiveBytes)} (what deleting it frees)`],
    ["nbd uri", `${s.nbdUri} (read-only)`],
  ]);
}

export function registerSnapshot(program: Command, volume: Command): void {
  const snapshot = program.command("snapshot").description("take, list, inspect and delete volume snapshots (read-only, exported over NBD as VOLUME@SNAPSHOT)");

  snapshot
    .command("create")
    .description("take a crash-consistent snapshot of a volume: every replica takes it at the same point of the volume's log; no data is copied")
    .argument("<volume>", "volume name")
    .argument("[name]", "snapshot name (default: snap-YYYYMMDD-HHMMSS, UTC)")
    .option("--json", "print the API's JSON")
    .action(async (volumeName: string, name: string | undefined, options: JsonFlag, command: Command) => {
      const s = await clientFor(command).createSnapshot(checkName(volumeName), { name: checkSnapshotName(name ?? timedSnapshotName("snap-", Date.now())) });
      if (options.json) return console.log(json(s));
      console.log(`snapshot "${s.volume}@${s.name}" taken: ${formatSize(s.sizeBytes)}, read-only at ${s.nbdUri}`);
    });

  snapshot
    .command("list")
    .alias("ls")
    .description("list snapshots, of one volume or of all")
    .argument("[volume]", "volume name")
    .option("--json", "print the API's JSON: { snapshots: [...] }")
    .action(async (volumeName: string | undefined, options: JsonFlag, command: Command) => {
      const list = await clientFor(command).listSnapshots(volumeName === undefined ? undefined : checkName(volumeName));
      if (options.json) return console.log(json({ snapshots: list }));
      if (list.length === 0) return console.log(`no snapshots${volumeName ? ` of ${volumeName}` : ""}; take one with "pxd snapshot create ${volumeName ?? "VOLUME"}"`);
      console.log(snapshotTable(list));
    });

  snapshot
    .command("inspect")
    .description("show one snapshot: the nodes that hold it, its data and the bytes only it holds")
    .argument("<snapshot>", "VOLUME@SNAPSHOT")
    .option("--json", "print the API's JSON")
    .action(async (ref: string, options: JsonFlag, command: Command) => {
      const { volume: v, snapshot: s } = snapshotRef(ref);
      const info = await clientFor(command).inspectSnapshot(v, s);
      console.log(options.json ? json(info) : snapshotDetails(info));
    });

  snapshot
    .command("delete")
    .alias("rm")
    .description("delete a snapshot; the data only it holds is freed by the store's GC")
    .argument("<snapshot>", "VOLUME@SNAPSHOT")
    .action(async (ref: string, _options: unknown, command: Command) => {
      const { volume: v, snapshot: s } = snapshotRef(ref);
      await clientFor(command).deleteSnapshot(v, s);
      console.log(`snapshot "${v}@${s}" deleted`);
    });

  snapshot
    .command("schedule")
    .description("take a snapshot of a volume on a schedule and keep the newest ones it took (named auto-YYYYMMDD-HHMMSS; snapshots taken by hand are never dropped)")
    .argument("<volume>", "volume name")
    .option("--every <duration>", "how often: a whole number with m, h or d (at least 1m), e.g. 1h", durationArg)
    .option("--keep <n>", `how many scheduled snapshots to keep (1-${volumeSnapshotsMax})`, intArg(1, volumeSnapshotsMax, `a volume has at most ${volumeSnapshotsMax} snapshots`))
    .option("--off", "stop taking scheduled snapshots (those taken stay)")
    .option("--json", "print the API's JSON (the volume)")
    .action(async (volumeName: string, options: { every?: number; keep?: number; off?: boolean } & JsonFlag, command: Command) => {
      if (options.off !== true && options.every === undefined) throw new UsageError("give --every DURATION (and --keep N), or --off");
      if (options.off === true && (options.every !== undefined || options.keep !== undefined)) throw new UsageError("--off takes no --every or --keep");
      const everySec = options.off === true ? 0 : Math.floor(options.every! / 1000);
      const request = { everySec, keep: options.off === true ? 0 : (options.keep ?? 7) };
      const v = await clientFor(command).setSnapshotSchedule(checkName(volumeName), request);
      if (options.json) return console.log(json(v));
      console.log(v.snapshotSchedule === undefined ? `volume "${v.name}": no scheduled snapshots` : `volume "${v.name}": a snapshot every ${formatDuration(v.snapshotSchedule.everySec)}, the newest ${v.snapshotSchedule.keep} kept`);
    });

  volume
    .command("clone")
    .description("make a new volume from a snapshot: its replicas on nodes that hold the snapshot share its data (nothing is copied), others are filled by a copy, with progress")
    .argument("<snapshot>", "VOLUME@SNAPSHOT")
    .argument("<name>", "the new volume's name")
    .option("-r, --repl <n>", "number of replicas (default: the setting defaultRepl)", replArg)
    .option("--nodes <list>", "put the replicas on exactly these nodes: names or ids, comma-separated; at least one must hold the snapshot")
    .option("--no-wait", "return once the clone is made, without waiting for copies to other nodes")
    .option("--json", "print the result as JSON")
    .action(async (ref: string, name: string, options: { repl?: number; nodes?: string; wait: boolean } & JsonFlag, command: Command) => {
      const { volume: v, snapshot: s } = snapshotRef(ref);
      const nodes = options.nodes?.split(",").map((x) => x.trim()).filter((x) => x !== "");
      await cloneVolume(clientFor(command), v, s, checkName(name), { ...options, nodes });
    });

  volume
    .command("rollback")
    .description("make a volume hold what one of its snapshots holds; refused while the volume is attached or served to an NBD client")
    .argument("<volume>", "volume name")
    .argument("<snapshot>", "snapshot name (pxd snapshot list VOLUME)")
    .option("--json", "print the API's JSON")
    .action(async (volumeName: string, snapshotName: string, options: JsonFlag, command: Command) => {
      const r = await clientFor(command, rollbackTimeoutMs).rollbackVolume(checkName(volumeName), { snapshot: checkSnapshotName(snapshotName) });
      if (options.json) return console.log(json(r));
      console.log(`volume "${r.volume}" rolled back to snapshot "${r.snapshot}": ${formatSize(r.writtenBytes)} rewritten, ${formatSize(r.trimmedBytes)} trimmed`);
    });
}
