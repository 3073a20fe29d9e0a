// pxd backup create|list|restore|verify|delete: incremental backups of a
// volume to a directory or an S3 bucket (docs/formats/backup.md). The work
// runs here, in the CLI process, like nbdcopy: the volume is read or written
// over NBD on a node the API names (volumeServers, as attach finds one), the
// chunks go straight between this process and the target.

import { existsSync } from "node:fs";
import type { Command } from "commander";
import type { ApiClient } from "../api/client.js";
import { formatSize } from "../base/sizes.js";
import { chainFor, codecOf, createBackup, deleteBackup, findBackup, listBackups, overConnections, restoreBackup, verifyBackup, type CreateSummary } from "../backup/engine.js";
import type { ChunkCodec } from "../backup/chunk-codec.js";
import { clusterKeySource, type KeySource } from "../os/cluster-key.js";
import type { Manifest } from "../backup/manifest.js";
import { openTarget, TargetUrlError, type BackupTarget } from "../backup/target.js";
import { backupChunksInFlight, backupConnectionAttempts } from "../constants.js";
import { connectNbd, nbdPsk, NbdProtocolError, NbdRefusedError, type NbdClient, type NbdConnectOptions } from "../os/nbd-client-socket.js";
import { packageVersion } from "../os/package-version.js";
import { checkName, clientFor, intArg, localClusterKeyPath, replArg } from "./args.js";
import { CliError, UsageError } from "./errors.js";
import { json, table } from "./format.js";
import { byteProgress } from "./progress.js";

interface TargetFlags {
  s3Endpoint?: string;
  s3Region?: string;
}

export interface IoFlags extends TargetFlags {
  nbdTlsDir?: string;
  nbdTlsPsk?: string;
  nbdTlsUsername?: string;
  clusterKeyFile?: string;
  chunksInFlight?: number;
  json?: boolean;
}

/**
 * The NBD export a backup of `volume` reads: the snapshot's read-only
 * export VOL@SNAP when one is named, else the live volume (consistent only
 * if nothing writes to it meanwhile).
 */
export function backupSource(volume: string, snapshot: string | undefined): string {
  return snapshot === undefined ? volume : `${volume}@${snapshot}`;
}

async function target(url: string, o: TargetFlags): Promise<BackupTarget> {
  try {
    return await openTarget(url, { ...(o.s3Endpoint !== undefined ? { s3Endpoint: o.s3Endpoint } : {}), ...(o.s3Region !== undefined ? { s3Region: o.s3Region } : {}) });
  } catch (e) {
    if (e instanceof TargetUrlError) throw new UsageError(e.message);
    throw e;
  }
}

async function withTarget<T>(url: string, o: TargetFlags, f: (t: BackupTarget) => Promise<T>): Promise<T> {
  const t = await target(url, o);
  try {
    return await f(t);
  } finally {
    t.close();
  }
}

/** The nodes that serve `volume`, asked once: the API's node is first, and it may be the one that dies. */
async function nbdServers(api: ApiClient, volume: string): Promise<string[]> {
  const servers = await api.volumeServers(volume);
  if (servers.length === 0) throw new CliError(`no node is up to serve volume ${volume}; see "pxd node list"`);
  return servers;
}

/**
 * An NBD connection to `exportName` on one of `listed` that takes one: from
 * the first for attempt 1, from the next for attempt 2 (the first may be the
 * node that just died), and so on.
 */
async function connectTo(listed: string[], exportName: string, o: IoFlags, attempt = 1): Promise<NbdClient> {
  const from = (attempt - 1) % listed.length;
  const servers = [...listed.slice(from), ...listed.slice(0, from)];
  const failures: string[] = [];
  const tls = nbdTls(o);
  for (const server of servers) {
    try {
      const { client } = await connectNbd(server, { exportName, ...tls });
      return client;
    } catch (e) {
      if (e instanceof NbdRefusedError) throw new CliError(`NBD at ${server}: ${e.message}`);
      failures.push(`${server}: ${(e as Error).message}`);
    }
  }
  throw new CliError(`no node took an NBD connection for ${exportName}: ${failures.join("; ")}`);
}

/** The NBD TLS material the flags name: a certificate dir, or a PSK (its file read here, so a wrong one is said before any work). */
function nbdTls(o: IoFlags): Pick<NbdConnectOptions, "tlsDir" | "psk"> {
  if (o.nbdTlsDir !== undefined && o.nbdTlsPsk !== undefined) throw new UsageError("give --nbd-tls-dir or --nbd-tls-psk, not both");
  if (o.nbdTlsUsername !== undefined && o.nbdTlsPsk === undefined) throw new UsageError("--nbd-tls-username names an identity of --nbd-tls-psk FILE; give the file too");
  if (o.nbdTlsDir !== undefined) return { tlsDir: o.nbdTlsDir };
  if (o.nbdTlsPsk === undefined) return {};
  try {
    return { psk: nbdPsk(o.nbdTlsPsk, o.nbdTlsUsername) };
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** Says on stderr that the work starts over on another connection. */
function startingOver(what: string, e: Error, attempt: number): true {
  console.error(`${what}: ${e.message}; starting over on ${attempt < backupConnectionAttempts ? "another" : "the last"} connection (${attempt + 1} of ${backupConnectionAttempts})`);
  return true;
}

/**
 * The cluster key from --cluster-key-file or PXD_CLUSTER_KEY, else the local
 * `pxd up` cluster's (.pxd/cluster.key) when run from its directory, for
 * encrypted backups; undefined when there is none.
 */
function clusterKey(o: IoFlags): KeySource | undefined {
  try {
    return clusterKeySource(o.clusterKeyFile) ?? (existsSync(localClusterKeyPath) ? clusterKeySource(localClusterKeyPath) : undefined);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** How the backup's chunks open (codecOf), as a sentence for the user when they cannot. */
function codecFor(m: Manifest, o: IoFlags): ChunkCodec {
  try {
    return codecOf(m, clusterKey(o));
  } catch (e) {
    throw new CliError((e as Error).message);
  }
}

/** Options of the commands that read or write encrypted backups. */
function keyOption(c: Command): Command {
  return c.option("--cluster-key-file <file>", "the cluster key (32 bytes, raw or hex; or set PXD_CLUSTER_KEY): backups of encrypted volumes are encrypted with a key it wraps");
}

function mibPerSec(bytes: number, seconds: number): string {
  return (bytes / 1048576 / Math.max(seconds, 0.001)).toFixed(1);
}

function createdText(s: CreateSummary): string {
  return (
    `backup ${s.backup} made: ${formatSize(s.sizeBytes)} in ${s.chunks} chunks (${s.zeroChunks} zero), ` +
    `${s.uploadedChunks} uploaded (${formatSize(s.uploadedBytes)} compressed), ${s.reusedChunks} already in the target; ` +
    `${s.seconds.toFixed(1)} s, ${mibPerSec(s.sizeBytes, s.seconds)} MiB/s of volume`
  );
}

export function ioOptions(c: Command): Command {
  return c
    .option("--nbd-tls-dir <dir>", "connect to NBD over TLS with DIR/ca-cert.pem (and client-cert.pem, client-key.pem if the daemon checks clients); needed when daemons run --nbd-tls require")
    .option("--nbd-tls-psk <file>", "connect to NBD over TLS with a pre-shared key from FILE (identity:hexkey lines, psktool's format, as the daemon's --nbd-tls-psk)")
    .option("--nbd-tls-username <identity>", "the PSK identity to use from --nbd-tls-psk FILE (default: its only one)")
    .option("--chunks-in-flight <n>", `chunks read, compressed and sent at once (default ${backupChunksInFlight})`, intArg(1, 64));
}

function targetOptions(c: Command): Command {
  return c
    .option("--s3-endpoint <url>", "S3-compatible endpoint, e.g. http://minio:9000 (env PXD_S3_ENDPOINT; default AWS); addressed path-style")
    .option("--s3-region <region>", "S3 region (env AWS_REGION; default us-east-1)")
    .option("--json", "print the result as JSON");
}

/**
 * `pxd backup create`: from the snapshot named, or the live volume with
 * --live, or else from a snapshot taken for it (backup-TIME) and deleted
 * once the backup is made or has failed.
 */
async function create(api: ApiClient, volume: string, url: string, o: IoFlags & { snapshot?: string; live?: boolean }): Promise<void> {
  nbdTls(o); // a wrong TLS flag is said before a snapshot is taken
  if (o.snapshot !== undefined || o.live === true) return createFrom(api, volume, url, o, o.snapshot);
  const temp = `backup-${new Date().toISOString().replace(/[-:]/g, "").replace(".", "").slice(0, 18)}`;
  try {
    await api.createSnapshot(volume, { name: temp });
  } catch (e) {
    throw new CliError(`could not take a snapshot of ${volume} to back up (${(e as Error).message}); name one with --snapshot, or read the live volume with --live`);
  }
  try {
    await createFrom(api, volume, url, o, temp);
  } finally {
    await api.deleteSnapshot(volume, temp).catch((e: Error) => console.error(`the snapshot ${volume}@${temp} taken for the backup was not deleted (${e.message}); delete it with "pxd snapshot delete ${volume}@${temp}"`));
  }
}

async function createFrom(api: ApiClient, volume: string, url: string, o: IoFlags, snapshot: string | undefined): Promise<void> {
  const exportName = backupSource(volume, snapshot);
  if (snapshot === undefined) console.error(`reading the live volume ${volume}: the backup is consistent only if nothing writes to it meanwhile`);
  // An encrypted volume's backup is encrypted too: never plaintext in a target.
  const encrypted = (await api.inspectVolume(volume)).encrypted;
  const keys = encrypted ? clusterKey(o) : undefined;
  if (encrypted && keys === undefined) throw new CliError(`volume ${volume} is encrypted, so its backup is too, with a key the cluster key wraps: set PXD_CLUSTER_KEY or give --cluster-key-file FILE`);
  await withTarget(url, o, async (t) => {
    const chain = keys === undefined ? undefined : await chainFor(t, volume, keys);
    const servers = await nbdServers(api, volume);
    const bar = byteProgress(process.stderr, `backup ${exportName}`);
    try {
      const s = await overConnections(
        backupConnectionAttempts,
        (attempt) => connectTo(servers, exportName, o, attempt),
        (client) => createBackup({ client, target: t, volume, exportName, snapshot, pxdVersion: packageVersion, ...(chain !== undefined ? { chain } : {}), ...(o.chunksInFlight !== undefined ? { chunksInFlight: o.chunksInFlight } : {}), progress: bar.update }),
        (e, attempt) => startingOver(`backup of ${exportName}`, e, attempt) && bar.restart(),
      );
      bar.end();
      console.log(o.json ? json(s) : createdText(s));
    } catch (e) {
      bar.end();
      throw new CliError(`backup of ${exportName} failed: ${(e as Error).message}; no manifest was written, so it is not listed: run it again (the chunks it uploaded are kept and not sent twice)`);
    }
  });
}

async function restore(api: ApiClient, url: string, ref: string, name: string, o: IoFlags & { repl?: number }): Promise<void> {
  nbdTls(o); // before the volume is made
  await withTarget(url, o, async (t) => {
    const m = await findBackup(t, ref);
    const codec = codecFor(m, o);
    let client: NbdClient | undefined;
    // Ctrl-C or a TERM ends the NBD connection, so the restore fails and deletes the volume it made (a second one kills at once).
    let interrupted: string | undefined;
    const interrupt = (signal: NodeJS.Signals): void => {
      interrupted = `interrupted by ${signal}`;
      client?.closed(interrupted);
    };
    process.once("SIGINT", interrupt).once("SIGTERM", interrupt);
    await api.createVolume({ name, sizeBytes: m.sizeBytes, ...(m.encryption !== undefined ? { encrypted: true } : {}), ...(o.repl !== undefined ? { repl: o.repl } : {}) }).catch((e: unknown) => {
      process.off("SIGINT", interrupt).off("SIGTERM", interrupt);
      throw e;
    });
    const bar = byteProgress(process.stderr, `restore ${m.volume}/${m.id} to ${name}`);
    try {
      const servers = await nbdServers(api, name);
      const connect = async (attempt: number): Promise<NbdClient> => {
        client = await connectTo(servers, name, o, attempt);
        if (interrupted !== undefined) throw new CliError(interrupted);
        return client;
      };
      const s = await overConnections(
        backupConnectionAttempts,
        connect,
        (c) => restoreBackup({ client: c, target: t, manifest: m, codec, fresh: true, ...(o.chunksInFlight !== undefined ? { chunksInFlight: o.chunksInFlight } : {}), progress: bar.update }),
        (e, attempt) => interrupted === undefined && startingOver(`restore into ${name}`, e, attempt) && bar.restart(),
      );
      bar.end();
      console.log(o.json ? json({ ...s, volume: name }) : `backup ${s.backup} restored to volume ${name}: ${formatSize(s.sizeBytes)}, ${s.chunks - s.zeroChunks} chunks written and checked, ${s.zeroChunks} zero; ${s.seconds.toFixed(1)} s, ${mibPerSec(s.sizeBytes, s.seconds)} MiB/s`);
    } catch (e) {
      bar.end();
      client?.close();
      client = undefined;
      const gone = await api.deleteVolume(name, { force: true }).then(
        () => `volume ${name} was deleted again`,
        (d: Error) => `deleting volume ${name} failed too (${d.message}); delete it with "pxd volume delete ${name} --force"`,
      );
      throw new CliError(`restore of ${m.volume}/${m.id} failed: ${(e as Error).message}; nothing of it is kept: ${gone}`);
    } finally {
      client?.close();
      process.off("SIGINT", interrupt).off("SIGTERM", interrupt);
    }
  });
}

function manifestRow(m: Manifest): Record<string, unknown> {
  const { chunks, ...rest } = m;
  return { backup: `${m.volume}/${m.id}`, ...rest, chunkCount: chunks.length, dataChunks: chunks.filter((c) => c !== null).length };
}

async function list(url: string, o: TargetFlags & { volume?: string; json?: boolean }): Promise<void> {
  await withTarget(url, o, async (t) => {
    const r = await listBackups(t, o.volume === undefined ? undefined : checkName(o.volume));
    if (o.json) return console.log(json({ backups: r.manifests.map(manifestRow), broken: r.broken }));
    if (r.manifests.length === 0 && r.broken.length === 0) return console.log(`no backups in ${url}${o.volume !== undefined ? ` of volume ${o.volume}` : ""}; make one with "pxd backup create VOLUME --to ${url}"`);
    console.log(table(["BACKUP", "SIZE", "CREATED", "CHUNKS", "DATA", "SNAPSHOT"], r.manifests.map((m) => [`${m.volume}/${m.id}`, formatSize(m.sizeBytes), m.createdAt, String(m.chunks.length), String(m.chunks.filter((c) => c !== null).length), m.source.snapshot ?? "-"])));
    for (const b of r.broken) console.error(`warning: ${b.error}`);
  });
}

async function verify(url: string, ref: string, o: IoFlags): Promise<void> {
  await withTarget(url, o, async (t) => {
    const m = await findBackup(t, ref);
    const bar = byteProgress(process.stderr, `verify ${m.volume}/${m.id}`);
    const s = await verifyBackup(t, m, codecFor(m, o), { ...(o.chunksInFlight !== undefined ? { chunksInFlight: o.chunksInFlight } : {}), progress: bar.update }).finally(() => bar.end());
    if (o.json) console.log(json(s));
    else for (const b of s.bad) console.log(`bad: ${b.error}`);
    if (s.bad.length > 0) throw new CliError(`backup ${s.backup} is damaged: ${s.bad.length} of its ${s.checkedChunks} distinct chunks are missing or corrupt (${s.bad.slice(0, 5).map((b) => b.key).join(", ")}${s.bad.length > 5 ? ", ..." : ""}); restore an older backup, or make a new one`);
    if (!o.json) console.log(`backup ${s.backup} is whole: ${s.checkedChunks} distinct chunks present with the right SHA-256 (${s.chunks} chunks in all)`);
  });
}

async function remove(url: string, ref: string, o: TargetFlags & { json?: boolean }): Promise<void> {
  await withTarget(url, o, async (t) => {
    const s = await deleteBackup(t, await findBackup(t, ref));
    console.log(o.json ? json(s) : `backup ${s.backup} deleted: ${s.deletedChunks} chunks removed, ${s.keptChunks} kept for other backups`);
  });
}

/** NBD failures reach the user as one sentence, never a stack. */
function friendly<A extends unknown[]>(f: (...a: A) => Promise<void>): (...a: A) => Promise<void> {
  return async (...a) => {
    try {
      await f(...a);
    } catch (e) {
      if (e instanceof NbdProtocolError || e instanceof NbdRefusedError) throw new CliError(e.message);
      throw e;
    }
  };
}

export function registerBackup(program: Command): void {
  const backup = program.command("backup").description("incremental backups of volumes to a directory (file:///DIR) or an S3 bucket (s3://BUCKET/PREFIX)");
  keyOption(targetOptions(ioOptions(backup.command("create"))))
    .description("back up a volume from a snapshot (one taken for it and deleted after, unless --snapshot names one): only chunks the target does not hold are uploaded")
    .argument("<volume>", "volume name")
    .requiredOption("--to <url>", "file:///DIR or s3://BUCKET/PREFIX")
    .option("--snapshot <name>", "read the snapshot VOLUME@NAME (pxd snapshot list)")
    .option("--live", "read the live volume instead of a snapshot: consistent only if nothing writes to it meanwhile")
    .action(friendly(async (volume: string, o: IoFlags & { to: string; snapshot?: string; live?: boolean }, command: Command) => {
      if (o.snapshot !== undefined && o.live === true) throw new UsageError("give --snapshot or --live, not both");
      return create(clientFor(command), checkName(volume), o.to, o);
    }));
  targetOptions(backup.command("list").alias("ls"))
    .description("list the backups in a target, oldest first")
    .argument("<url>", "file:///DIR or s3://BUCKET/PREFIX")
    .option("--volume <name>", "only this volume's backups")
    .action(friendly(async (url: string, o: TargetFlags & { volume?: string; json?: boolean }) => list(url, o)));
  keyOption(targetOptions(ioOptions(backup.command("restore"))))
    .description("restore a backup into a new volume of its size; every chunk is checked against its SHA-256 before it is written, and a failed restore deletes the volume it made")
    .argument("<url>", "file:///DIR or s3://BUCKET/PREFIX")
    .argument("<backup>", "VOLUME/ID (pxd backup list), VOLUME/latest, or ID")
    .argument("<newvol>", "name of the volume to create")
    .option("-r, --repl <n>", "replicas of the new volume (default: the cluster's defaultRepl)", replArg)
    .action(friendly(async (url: string, ref: string, name: string, o: IoFlags & { repl?: number }, command: Command) => restore(clientFor(command), url, ref, checkName(name), o)));
  keyOption(targetOptions(ioOptions(backup.command("verify"))))
    .description("check that every chunk of a backup is present and has the right SHA-256; exits 1 naming the bad ones")
    .argument("<url>", "file:///DIR or s3://BUCKET/PREFIX")
    .argument("<backup>", "VOLUME/ID, VOLUME/latest, or ID")
    .action(friendly(async (url: string, ref: string, o: IoFlags) => verify(url, ref, o)));
  targetOptions(backup.command("delete").alias("rm"))
    .description("delete a backup: its manifest, then its chunks that no other backup uses (run no backup to the same target meanwhile)")
    .argument("<url>", "file:///DIR or s3://BUCKET/PREFIX")
    .argument("<backup>", "VOLUME/ID, VOLUME/latest, or ID")
    .action(friendly(async (url: string, ref: string, o: TargetFlags & { json?: boolean }) => remove(url, ref, o)));
}
