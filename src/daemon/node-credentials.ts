// A node's credentials in its data dir (docs/security.md, "The cluster
// secret and a node's credentials"): the cluster secret, which a member keeps
// so a restart needs no secret and which refuses another; the first admin
// token of a bootstrap; the cluster CA made at bootstrap; and the check that
// a restarted member's --join names its own cluster.

import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ApiClient } from "../api/client.js";
import { apiTokenTtlMsMax } from "../constants.js";
import { makeClusterCa } from "../os/cluster-ca.js";
import { adminTokenFile, clusterSecretFile, readCredentialFile, writeCredentialFile } from "../os/credentials.js";
import { privateFileMode } from "../os/private-files.js";
import { offlineAccess } from "./access.js";
import type { DaemonOptions, Logger } from "./daemon-options.js";

/** The first admin token's lifetime: the longest a token may have. */
const firstAdminTokenTtlMs = apiTokenTtlMsMax;

/**
 * The cluster secret: PXD_CLUSTER_SECRET, --cluster-secret-file or
 * --cluster-secret, else the one this data dir keeps. A data dir that is a
 * member of a cluster refuses another secret: it would not prove this node to
 * its cluster, and a node is never moved to another cluster.
 */
export function clusterSecret(options: DaemonOptions, member: boolean, bootstrapping: boolean): Buffer {
  const file = join(options.dataDir, clusterSecretFile);
  const given = givenSecret(options);
  const kept = readCredentialFile(file, "the cluster secret");
  if (given !== undefined) {
    if (Buffer.byteLength(given) < 16) throw new Error("the cluster secret must be at least 16 bytes; pick a longer one");
    if (member && kept !== undefined && kept !== given) {
      throw new Error(`the data dir ${options.dataDir} belongs to a cluster whose secret (in ${file}) is not the one given; start this node without a secret (it keeps its own), or with an empty --data-dir to join another cluster`);
    }
    return Buffer.from(given);
  }
  if (kept !== undefined && kept !== "") return Buffer.from(kept);
  if (!bootstrapping) throw new Error(`no cluster secret: set PXD_CLUSTER_SECRET (or pass --cluster-secret-file FILE) with the secret of the cluster to join`);
  return Buffer.from(randomBytes(24).toString("hex"));
}

function givenSecret(options: DaemonOptions): string | undefined {
  if (options.secretFile !== undefined) {
    const text = readCredentialFile(options.secretFile, "the cluster secret");
    if (text === undefined) throw new Error(`--cluster-secret-file ${options.secretFile} does not exist; give the file that holds the cluster's secret (its first node's DIR/${clusterSecretFile})`);
    return text;
  }
  const given = options.secret ?? process.env["PXD_CLUSTER_SECRET"];
  return given === undefined || given === "" ? undefined : given;
}

/** Writes the secret to the data dir once this node is in its cluster (replacing one a failed join left). */
export function keepClusterSecret(dataDir: string, secret: Buffer): void {
  const file = join(dataDir, clusterSecretFile);
  if (readCredentialFile(file, "the cluster secret") === secret.toString()) return;
  writeFileSync(file, secret.toString() + "\n", { mode: privateFileMode });
}

/** The first admin token, beside the data (0600) and in the log once: the way in to a new cluster's API. */
export function writeFirstAdminToken(dataDir: string, secret: Buffer, log: Logger): void {
  const file = join(dataDir, adminTokenFile);
  const made = offlineAccess(secret).mint("admin", "admin", firstAdminTokenTtlMs);
  if (!writeCredentialFile(file, made.token)) return;
  log.info(`the first admin token (valid until ${made.expiresAt}; also in ${file}, readable only by this user): ${made.token}`);
}

/** Whether the node needs its certificate: the API or the peer transport runs over TLS (the default). */
export function usesTls(options: DaemonOptions): boolean {
  return options.apiPlainHttp !== true || options.peerPlain !== true;
}

/** --join's address; a node that serves HTTPS (the default) expects the member it joins to do the same. */
export function joinAddress(options: DaemonOptions): string {
  const given = options.join ?? "";
  if (/^https?:\/\//.test(given)) return given;
  return `${options.apiPlainHttp === true ? "http" : "https"}://${given}`;
}

/**
 * The cluster CA, made once by the bootstrapping node. Without openssl a node
 * that runs TLS (the default) cannot start; one started with
 * --api-plain-http --peer-plain makes a cluster without a CA, logged.
 */
export async function makeCaAtBootstrap(dataDir: string, clusterId: string, tls: boolean, log: Logger): Promise<void> {
  try {
    await makeClusterCa(dataDir, clusterId);
    log.info(`made the cluster CA in ${join(dataDir, "tls")}; joining nodes get it`);
  } catch (e) {
    const why = (e as Error).message;
    if (tls) throw new Error(`cannot make the cluster CA (${why}); the API and the peer transport run over TLS with its certificates. Fix that and start again with an empty --data-dir, or, for a local trial only, with --api-plain-http --peer-plain`);
    log.warn(`no cluster CA: ${why}; every node of this cluster must run with --api-plain-http --peer-plain`);
  }
}

/** A node restarted with --join: its data dir must belong to the cluster it names (asked without a token, and without checking the member's certificate: only its answer is compared; a member that does not answer is only logged). */
export async function checkSameCluster(options: DaemonOptions, clusterId: string, log: Logger): Promise<void> {
  const join = options.join ?? "";
  let theirs: string;
  try {
    theirs = await new ApiClient(joinAddress(options), { timeoutMs: 5000, insecureTls: true }).clusterId();
  } catch (e) {
    log.warn(`could not ask ${join} for its cluster id (${(e as Error).message}); restarting in this data dir's cluster ${clusterId}`);
    return;
  }
  if (theirs !== clusterId) {
    throw new Error(`the data dir ${options.dataDir} belongs to cluster ${clusterId}, but ${join} is in cluster ${theirs}; to join ${join}'s cluster start this node with an empty --data-dir, or leave out --join to restart it in its own cluster`);
  }
}
