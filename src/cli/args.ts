// Argument parsers for commander options, and how a command finds its daemon.

import { InvalidArgumentError, type Command } from "commander";
import { parseSize } from "../base/sizes.js";
import { ApiClient, defaultApiAddress, parseApiAddress } from "../api/client.js";
import { volumeNameProblem } from "../api/validate.js";
import { volumeSizeSectorProblem } from "../cluster/rules.js";
import { qosBandwidthBytesMax, qosBandwidthBytesMin, qosIopsMax, volumeBytesMax, volumeReplicasMax } from "../constants.js";
import { formatSize } from "../base/sizes.js";
import { adminTokenFile, caFileBytesMax, localCaFile, localClusterKeyFile, readCredentialFile, readSmallFile } from "../os/credentials.js";
import { UsageError } from "./errors.js";

/** A volume size: above zero, at most volumeBytesMax, whole 512-byte sectors (what the catalog accepts). */
export function sizeArg(text: string): number {
  const bytes = byteCountArg(text);
  if (bytes <= 0) throw new InvalidArgumentError(`a volume needs a size above zero; use e.g. 1G`);
  if (bytes > volumeBytesMax) throw new InvalidArgumentError(`"${text}" is ${formatSize(bytes)}, larger than the volume limit of ${formatSize(volumeBytesMax)}`);
  const sectors = volumeSizeSectorProblem(bytes);
  if (sectors !== null) throw new InvalidArgumentError(`"${text}" is ${bytes} bytes; a volume size ${sectors}, or a whole number of K, M or G`);
  return bytes;
}



/** A byte count with an optional K/M/G/T suffix; zero allowed. */
export function byteCountArg(text: string): number {
  try {
    return parseSize(text);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

const durationUnitsMs: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A duration as a whole number with a unit: 30s, 15m, 24h, 7d (0 alone is zero); in milliseconds. */
export function durationArg(text: string): number {
  const t = text.trim();
  if (t === "0") return 0;
  const m = /^(\d{1,6})([smhd])$/.exec(t);
  if (m === null) throw new InvalidArgumentError(`"${text}" is not a duration; use a whole number with s, m, h or d, e.g. 7d or 24h (0: never)`);
  return Number(m[1]) * durationUnitsMs[m[2]!]!;
}

/** A rate in bytes a second, at least 1 MiB: 32M, 1G. */
export function bandwidthArg(text: string): number {
  const bytes = byteCountArg(text);
  if (bytes < 1024 * 1024) throw new InvalidArgumentError(`"${text}" is below 1M a second; a scrub that slow would take days`);
  return bytes;
}

/** A requests-a-second limit (--max-iops): a whole number; 0 or "none" removes it. */
export function iopsLimitArg(text: string): number {
  const t = text.trim();
  if (t === "none") return 0;
  const n = /^\d{1,9}$/.test(t) ? Number(t) : NaN;
  if (!(n >= 0 && n <= qosIopsMax)) throw new InvalidArgumentError(`"${text}" is not a whole number of requests a second from 1 to ${qosIopsMax}, or 0 or none for no limit`);
  return n;
}

/** A bytes-a-second limit (--max-bandwidth, --resync-bandwidth) with a K/M/G suffix, e.g. 100M; 0 or "none" removes it. */
export function rateLimitArg(text: string): number {
  if (text.trim() === "none") return 0;
  const bytes = byteCountArg(text);
  if (bytes !== 0 && (bytes < qosBandwidthBytesMin || bytes > qosBandwidthBytesMax)) {
    throw new InvalidArgumentError(`"${text}" is ${bytes} bytes a second; a limit is from ${formatSize(qosBandwidthBytesMin)} to ${formatSize(qosBandwidthBytesMax)} a second (e.g. 100M), or 0 or none for no limit`);
  }
  return bytes;
}

/** `rule`: why the range is what it is, said after it. */
export function intArg(min: number, max: number, rule?: string): (text: string) => number {
  return (text) => {
    const n = /^\d+$/.test(text.trim()) ? Number(text.trim()) : NaN;
    if (!(n >= min && n <= max)) throw new InvalidArgumentError(`"${text}" is not a whole number from ${min} to ${max}${rule === undefined ? "" : `: ${rule}`}`);
    return n;
  };
}

/** A replica count, as the catalog allows it. */
export const replArg = intArg(1, volumeReplicasMax, `a volume has at most ${volumeReplicasMax} replicas`);

export function checkName(name: string): string {
  const problem = volumeNameProblem(name);
  if (problem !== null) throw new UsageError(problem);
  return name;
}

/** The daemon's API address: --host, else PXD_HOST, else 127.0.0.1:9001. */
export function apiAddress(command: Command): string {
  const flag = command.optsWithGlobals<{ host?: string }>().host;
  const env = process.env["PXD_HOST"];
  const [text, from] = flag !== undefined ? [flag, "--host"] : env ? [env, "PXD_HOST"] : [defaultApiAddress, "the default"];
  try {
    return parseApiAddress(text).display;
  } catch (err) {
    throw new UsageError(`${(err as Error).message} (from ${from})`);
  }
}

/** Where `pxd up` puts the first node of its local cluster; the CLI tries it when nothing answers at the default. */
export const localClusterApiAddress = "127.0.0.11:9001";

/** The token file `pxd up` writes (relative to where it ran, like its data dir): the CLI uses it when given no other token. */
export const localClusterTokenFile = `.pxd/${adminTokenFile}`;
/** The local `pxd up` cluster's cluster key, which backups of its encrypted volumes use when run from its directory. */
export const localClusterKeyPath = `.pxd/${localClusterKeyFile}`;

/**
 * Where the API token comes from: --token, else PXD_TOKEN, else the file
 * PXD_TOKEN_FILE names (read again for every request, so a long-running
 * plugin sees a replaced token), else `pxd up`'s token file in the current
 * directory. Undefined: no token (only public routes answer).
 */
export function tokenFor(command: Command): string | (() => string | undefined) | undefined {
  const flag = command.optsWithGlobals<{ token?: string }>().token;
  if (flag !== undefined && flag !== "") return flag;
  const env = process.env["PXD_TOKEN"];
  if (env !== undefined && env !== "") return env;
  const file = process.env["PXD_TOKEN_FILE"];
  if (file !== undefined && file !== "") {
    const read = (): string => {
      const text = readCredentialFile(file, "an API token");
      if (text === undefined) throw new UsageError(`PXD_TOKEN_FILE names ${file}, which does not exist; point it at a file holding a token from "pxd auth token create"`);
      return text;
    };
    read(); // a wrong path is said at once, not at the first request
    return read;
  }
  return readCredentialFile(localClusterTokenFile, "an API token");
}

/** The cluster CA `pxd up` copies beside its token (relative to where it ran): the CLI trusts it when given no other CA. */
export const localClusterCaFile = `.pxd/${localCaFile}`;

/**
 * The CA a daemon's HTTPS certificate must chain to: --ca FILE, else
 * PXD_CA_FILE, else `pxd up`'s copy in the current directory. With one, an
 * address without a scheme is reached over HTTPS; undefined: plain HTTP, or
 * the system's roots for an https:// address.
 */
export function caFor(command: Command): string | undefined {
  const given = command.optsWithGlobals<{ ca?: string }>().ca ?? process.env["PXD_CA_FILE"];
  const file = given === undefined || given === "" ? localClusterCaFile : given;
  let text: string | undefined;
  try {
    text = readSmallFile(file, "a CA certificate", caFileBytesMax);
  } catch (e) {
    throw new UsageError(`${(e as Error).message}; give the cluster's DIR/tls/ca-cert.pem`);
  }
  if (text === undefined && file !== localClusterCaFile) throw new UsageError(`the CA certificate ${file} does not exist; give the cluster's DIR/tls/ca-cert.pem (from a node's data dir)`);
  return text;
}

/** `timeoutMs`: how long to wait for an answer (commands that wait for work, like pxd scrub, give a long one). */
export function clientFor(command: Command, timeoutMs?: number): ApiClient {
  const explicit = command.optsWithGlobals<{ host?: string }>().host !== undefined || !!process.env["PXD_HOST"];
  const token = tokenFor(command);
  const ca = caFor(command);
  return new ApiClient(apiAddress(command), {
    ...(ca !== undefined ? { ca } : {}),
    ...(explicit ? {} : { fallbackAddress: localClusterApiAddress }),
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    ...(token !== undefined ? { token } : {}),
  });
}
