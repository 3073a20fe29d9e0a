// pxd status, pxd node list|drain|remove, pxd settings, pxd volume create|list|inspect|update|ha-update|delete:
// thin wrappers over ApiClient.

import type { Command } from "commander";
import { formatSize } from "../base/sizes.js";
import { apiScrubTimeoutMs } from "../api/limits.js";
import { qosBurstSecMax, volumeSnapshotsMax } from "../constants.js";
import type { UpdateVolumeRequest } from "../api/types.js";
import { bandwidthArg, checkName, clientFor, durationArg, intArg, iopsLimitArg, rateLimitArg, replArg, sizeArg } from "./args.js";
import { CliError, UsageError } from "./errors.js";
import { registerAttach } from "./attach.js";
import { registerSnapshot } from "./snapshot.js";
import { askAgentToResize } from "../os/attachments.js";
import { waitForReplicas } from "./progress.js";
import { formatDuration, json, nodeTable, qosText, scrubTable, settingsTable, statusDetails, volumeDetails, volumeTable } from "./format.js";

interface JsonFlag {
  json?: boolean;
}

/** The QoS flags of volume create and volume update (docs/architecture.md, "QoS and rebuild limits"). */
interface QosFlags {
  maxIops?: number;
  maxBandwidth?: number;
  burstSeconds?: number;
}

function qosOptions(c: Command): Command {
  return c
    .option("--max-iops <n>", "at most this many requests a second, reads and writes together, on each node the volume's clients use (0 or none: no limit)", iopsLimitArg)
    .option("--max-bandwidth <size>", "at most this many bytes a second, read and written together, e.g. 100M (0 or none: no limit)", rateLimitArg)
    .option("--burst-seconds <s>", "seconds of the limits an idle volume saves up and may then spend at once (default 1)", intArg(1, qosBurstSecMax));
}

function qosRequest(o: QosFlags): Pick<UpdateVolumeRequest, "maxIops" | "maxBandwidthBytesPerSec" | "burstSec"> {
  return {
    ...(o.maxIops !== undefined ? { maxIops: o.maxIops } : {}),
    ...(o.maxBandwidth !== undefined ? { maxBandwidthBytesPerSec: o.maxBandwidth } : {}),
    ...(o.burstSeconds !== undefined ? { burstSec: o.burstSeconds } : {}),
  };
}

export function registerNode(program: Command): void {
  const node = program.command("node").description("the cluster's nodes");
  node
    .command("list")
    .alias("ls")
    .description("list the nodes: health, capacity, role in the catalog's group")
    .option("--json", "print the API's JSON")
    .action(async (options: { json?: boolean }, command: Command) => {
      const nodes = await clientFor(command).listNodes();
      console.log(options.json ? json({ nodes }) : nodeTable(nodes));
    });
  node
    .command("drain")
    .description("move every replica off a node, one volume at a time (placement then skips it); --undo stops draining")
    .argument("<node>", "node name or id")
    .option("--undo", "stop draining: placement may use the node again (replicas already moved stay where they are)")
    .option("--json", "print the API's JSON")
    .action(async (ref: string, options: { undo?: boolean } & JsonFlag, command: Command) => {
      const n = await clientFor(command).drainNode(ref, { draining: options.undo !== true });
      if (options.json) return console.log(json(n));
      console.log(n.draining ? `node ${n.name} is draining; "pxd volume list" shows its replicas moving to other nodes` : `node ${n.name} is no longer draining`);
    });
  node
    .command("remove")
    .alias("rm")
    .description("remove a node that is down from the cluster (stop its daemon first); refused while it holds replicas, unless --force")
    .argument("<node>", "node name or id")
    .option("--force", "remove it even though it holds replicas: they are dropped and placed again on other nodes")
    .action(async (ref: string, options: { force?: boolean }, command: Command) => {
      await clientFor(command).removeNode(ref, { force: options.force === true });
      console.log(`node ${ref} removed from the cluster; do not start it again with its data dir (a fresh one can join as a new node)`);
    });
}

/** Parses a setting's value as typed: true/false, an integer, else the text. The catalog checks it against the setting. */
function settingValueArg(text: string): number | string | boolean {
  if (text === "true" || text === "false") return text === "true";
  return /^-?\d{1,15}$/.test(text) ? Number(text) : text;
}

export function registerSettings(program: Command): void {
  const settings = program.command("settings").description("cluster-wide settings, kept in the catalog");
  settings
    .command("list")
    .alias("ls")
    .description("list the settings, their values and defaults")
    .option("--json", "print the API's JSON")
    .action(async (options: JsonFlag, command: Command) => {
      const list = await clientFor(command).listSettings();
      console.log(options.json ? json({ settings: list }) : settingsTable(list));
    });
  settings
    .command("set")
    .description("set a setting for the whole cluster")
    .argument("<key>", "setting name (pxd settings list shows them)")
    .argument("<value>", "the value: a number, true, false, or text")
    .action(async (key: string, value: string, _options: unknown, command: Command) => {
      const s = await clientFor(command).setSetting(key, settingValueArg(value));
      console.log(`${s.key} = ${JSON.stringify(s.value)}`);
    });
  settings
    .command("reset")
    .description("return a setting to its default")
    .argument("<key>", "setting name")
    .action(async (key: string, _options: unknown, command: Command) => {
      const s = await clientFor(command).setSetting(key, null);
      console.log(`${s.key} = ${JSON.stringify(s.value)} (the default)`);
    });
}

export function registerScrub(program: Command): void {
  program
    .command("scrub")
    .description("read and check data now against its checksums, repairing damaged blocks from other replicas; waits until done")
    .argument("[volume]", "only this volume (its replica on every node that holds one); default: every volume on every node")
    .option("--bandwidth <size>", "bytes a second each node reads at most, e.g. 256M (default: each node's --scrub-bandwidth)", bandwidthArg)
    .option("--json", "print the API's JSON")
    .action(async (volume: string | undefined, options: { bandwidth?: number } & JsonFlag, command: Command) => {
      const r = await clientFor(command, apiScrubTimeoutMs).scrub({ ...(volume !== undefined ? { volume: checkName(volume) } : {}), ...(options.bandwidth !== undefined ? { bandwidthBytesPerSec: options.bandwidth } : {}) });
      console.log(options.json ? json(r) : scrubTable(r));
      const unrepaired = r.nodes.reduce((a, n) => a + n.volumes.reduce((b, v) => b + v.blocksUnrepaired, 0), 0);
      const failed = r.nodes.filter((n) => n.error !== undefined);
      if (unrepaired > 0) throw new CliError(`${unrepaired} damaged block(s) could not be repaired; reads of them fail with EIO (the daemons' logs name the volumes and offsets)`);
      if (failed.length > 0) throw new CliError(`not scrubbed on ${failed.map((n) => n.node).join(", ")}: ${failed[0]!.error}`);
    });
}

export function registerStatus(program: Command): void {
  program
    .command("status")
    .description("show the node's health, addresses, capacity and store counters")
    .option("--json", "print the API's JSON")
    .action(async (options: JsonFlag, command: Command) => {
      const status = await clientFor(command).status();
      console.log(options.json ? json(status) : statusDetails(status));
    });
}

export function registerVolume(program: Command): void {
  const volume = program.command("volume").description("create, list, inspect, update, ha-update and delete volumes");

  qosOptions(volume
    .command("create")
    .description("create a volume, exported over NBD under its name")
    .argument("<name>", "volume name: letters, digits, '.', '_', '-'; at most 63")
    .requiredOption("-s, --size <size>", "size with K/M/G/T suffix (powers of 1024), e.g. 10G", sizeArg)
    .option("-r, --repl <n>", "number of replicas (default 1, or as many as --nodes names)", replArg)
    .option("--nodes <list>", "put the replicas on exactly these nodes: names or ids, comma-separated (pxd node list)")
    .option("--zones", "require the replicas to sit in distinct zones (pxd daemon --zone); without it distinct zones are only preferred")
    .option("--shared", "let several hosts attach it read-write at once (only for a filesystem made for that, e.g. a cluster filesystem)")
    .option("--encrypted", "encrypt its data at rest (AES-256-XTS) with a key of its own, wrapped by the cluster key: every node needs --cluster-key-file or PXD_CLUSTER_KEY; the size must be a multiple of 4K"))
    .option("--json", "print the API's JSON")
    .action(async (name: string, options: { size: number; repl?: number; nodes?: string; zones?: boolean; shared?: boolean; encrypted?: boolean } & QosFlags & JsonFlag, command: Command) => {
      const nodes = options.nodes?.split(",").map((s) => s.trim()).filter((s) => s !== "");
      const v = await clientFor(command).createVolume({
        name: checkName(name),
        sizeBytes: options.size,
        ...(options.repl !== undefined ? { repl: options.repl } : {}),
        ...(nodes !== undefined ? { nodes } : {}),
        ...(options.zones ? { zones: true } : {}),
        ...(options.shared ? { shared: true } : {}),
        ...(options.encrypted ? { encrypted: true } : {}),
        ...qosRequest(options),
      });
      if (options.json) return console.log(json(v));
      console.log(`volume "${v.name}" created: ${formatSize(v.sizeBytes)}, ${v.repl} ${v.repl === 1 ? "replica" : "replicas"}${v.encrypted ? ", encrypted" : ""}, exported at ${v.nbdUri}`);
    });

  registerAttach(volume, program);
  registerSnapshot(program, volume);

  volume
    .command("list")
    .alias("ls")
    .description("list volumes")
    .option("--json", "print the API's JSON: { volumes: [...] }")
    .action(async (options: JsonFlag, command: Command) => {
      const volumes = await clientFor(command).listVolumes();
      if (options.json) return console.log(json({ volumes }));
      if (volumes.length === 0) return console.log('no volumes; create one with "pxd volume create NAME --size 1G"');
      console.log(volumeTable(volumes));
    });

  volume
    .command("inspect")
    .description("show one volume")
    .argument("<name>", "volume name")
    .option("--json", "print the API's JSON")
    .action(async (name: string, options: JsonFlag, command: Command) => {
      const v = await clientFor(command).inspectVolume(checkName(name));
      console.log(options.json ? json(v) : volumeDetails(v));
    });

  qosOptions(volume
    .command("update")
    .description("change a volume's settings online: its size, its QoS limits, its snapshot schedule; at least one option")
    .argument("<name>", "volume name"))
    .option("-s, --size <size>", "grow the volume to this size, K/M/G/T suffix (powers of 1024), e.g. 20G; shrinking is refused. NBD clients see it on their next handshake", sizeArg)
    .option("--snapshot-every <duration>", "take a snapshot this often (at least 1m, e.g. 1h; 0: stop), as pxd snapshot schedule does", durationArg)
    .option("--snapshot-keep <n>", `keep this many scheduled snapshots (1-${volumeSnapshotsMax}, default 7)`, intArg(1, volumeSnapshotsMax, `a volume has at most ${volumeSnapshotsMax} snapshots`))
    .option("--json", "print the API's JSON")
    .action(async (name: string, options: { size?: number; snapshotEvery?: number; snapshotKeep?: number } & QosFlags & JsonFlag, command: Command) => {
      const request: UpdateVolumeRequest = {
        ...(options.size !== undefined ? { sizeBytes: options.size } : {}),
        ...qosRequest(options),
      };
      const schedule = options.snapshotEvery !== undefined || options.snapshotKeep !== undefined;
      if (Object.keys(request).length === 0 && !schedule) throw new UsageError(`nothing to change; give --size, --max-iops, --max-bandwidth, --burst-seconds or --snapshot-every (e.g. pxd volume update ${name} --size 20G)`);
      if (options.snapshotKeep !== undefined && options.snapshotEvery === undefined) throw new UsageError("--snapshot-keep needs --snapshot-every (the schedule it keeps snapshots of)");
      const api = clientFor(command);
      let v = Object.keys(request).length > 0 ? await api.updateVolume(checkName(name), request) : undefined;
      if (schedule) {
        const everySec = Math.floor(options.snapshotEvery! / 1000);
        v = await api.setSnapshotSchedule(checkName(name), { everySec, keep: everySec === 0 ? 0 : (options.snapshotKeep ?? 7) });
      }
      const device = request.sizeBytes !== undefined ? askAgentToResize(v!.name) : undefined;
      if (options.json) return console.log(json(v));
      const seen = device !== undefined ? `${device} here grows in place` : "new NBD connections see it, and a kernel device attached with pxd volume attach within 10 s";
      const changes = [
        ...(request.sizeBytes !== undefined ? [`size ${formatSize(v!.sizeBytes)} (${seen}; then grow the filesystem on it, e.g. resize2fs)`] : []),
        ...(Object.keys(qosRequest(options)).length > 0 ? [qosText(v!.qos)] : []),
        ...(schedule ? [v!.snapshotSchedule === undefined ? "no scheduled snapshots" : `a snapshot every ${formatDuration(v!.snapshotSchedule.everySec)}, the newest ${v!.snapshotSchedule.keep} kept`] : []),
      ];
      console.log(`volume "${v!.name}" updated: ${changes.join("; ")}`);
    });

  volume
    .command("ha-update")
    .description("change the number of replicas; the volume's leader adds (with a full copy) or removes them in the background")
    .argument("<name>", "volume name")
    .requiredOption("-r, --repl <n>", "the new number of replicas", replArg)
    .option("--json", "print the API's JSON")
    .option("--wait", "wait until every replica is in sync: a progress bar on a terminal, else one JSON line a second")
    .action(async (name: string, options: { repl: number; wait?: boolean } & JsonFlag, command: Command) => {
      const api = clientFor(command);
      const v = await api.updateVolume(checkName(name), { repl: options.repl });
      if (options.wait === true) {
        const done = await waitForReplicas(api, v.name, process.stdout);
        if (options.json) console.log(json(done));
        else if (process.stdout.isTTY === true) console.log(`volume "${done.name}": ${done.repl} ${done.repl === 1 ? "replica" : "replicas"} in sync on ${done.replicas.map((r) => r.node).join(", ")}`);
        return;
      }
      if (options.json) return console.log(json(v));
      console.log(
        `volume "${v.name}": ${v.repl} ${v.repl === 1 ? "replica" : "replicas"} wanted on ${v.replicas.map((r) => r.node).join(", ")}; ` +
          `"pxd volume inspect ${v.name}" shows them catching up and in sync`,
      );
    });

  volume
    .command("delete")
    .alias("rm")
    .description("delete a volume and its data; refused while it is attached to a host or a node serves it to an NBD client, unless --force")
    .argument("<name>", "volume name")
    .option("--force", "delete even while attached or in use: every node disconnects its NBD clients first")
    .action(async (name: string, options: { force?: boolean }, command: Command) => {
      await clientFor(command).deleteVolume(checkName(name), { force: options.force === true });
      console.log(`volume "${name}" deleted${options.force === true ? " (its NBD clients were disconnected)" : ""}`);
    });
}
