// A node entering a cluster (docs/security.md, "The cluster secret and a
// node's credentials"): a new data dir either bootstraps a cluster of one or
// asks a member (--join) to admit it, proving the cluster secret with an HMAC
// of the description the catalog will list; the member answers with the
// cluster's id, the catalog's voters, the peers and the sealed cluster CA.

import { createHmac, randomUUID, timingSafeEqual } from "node:crypto";
import { statfsSync } from "node:fs";
import { join } from "node:path";
import { ApiClient, DaemonUnreachableError } from "../api/client.js";
import { ApiError, type JoinRequest, type JoinResponse } from "../api/types.js";
import { printable } from "../base/printable.js";
import { admitNode, type ApplyResult, type CatalogCommand, type CatalogState } from "../cluster/index.js";
import { logFieldCharsMax, nodeBytesMax } from "../constants.js";
import { keepClusterCa, readClusterCa, sealCa, unsealCa } from "../os/cluster-ca.js";
import { NotLeaderError, ProposalDroppedError } from "../replication/driver.js";
import { clusterSecretFile } from "../os/credentials.js";
import type { DaemonOptions, Logger } from "./daemon-options.js";
import { joinAddress } from "./node-credentials.js";
import type { NodeState } from "./node-state.js";
import { catalogError, type MetaLeader } from "./meta-leader.js";

/** How many times a new node asks the member it joins through (every 500 ms) while that member answers 503 or cannot be reached. */
const joinAttemptsMax = 60;

/** This node as the catalog lists it (addNode), with the ports it bound when they are known. */
export function describeSelf(options: DaemonOptions, nodeId: number, bound?: { nbdPort: number; apiPort: number }): Omit<JoinRequest, "proof"> {
  const fsStat = statfsSync(options.dataDir);
  return {
    id: nodeId,
    name: options.name ?? `node-${nodeId}`,
    address: options.listen,
    nbdPort: bound?.nbdPort ?? options.nbdPort,
    apiPort: bound?.apiPort ?? options.apiPort,
    peerPort: options.peerPort,
    capacityBytes: Math.min(nodeBytesMax, fsStat.blocks * fsStat.bsize),
    labels: options.zone ? { zone: options.zone } : {},
  };
}

/** A join request's proof that its node holds the cluster secret: an HMAC of the fields the catalog will list. */
export function joinProof(secret: Buffer, fields: Omit<JoinRequest, "proof">): Buffer {
  const canonical = JSON.stringify([fields.id, fields.name, fields.address, fields.nbdPort, fields.apiPort, fields.peerPort, fields.capacityBytes, fields.labels]);
  return createHmac("sha256", secret).update("pxd-join\0").update(canonical).digest();
}

/** A new node: bootstrap a cluster of one, or ask a member to let it in. */
export async function enterCluster(options: DaemonOptions, state: NodeState, secret: Buffer, log: Logger): Promise<void> {
  if (options.join === undefined) {
    await state.setCluster(randomUUID(), [state.nodeId]);
    log.info(`bootstrapped a new cluster ${state.clusterId} with node ${state.nodeId}; the cluster secret is in ${join(options.dataDir, clusterSecretFile)}`);
    return;
  }
  const fields = describeSelf(options, state.nodeId);
  // Over HTTPS the joining node has no CA yet to check the member with: the answer's CA is authenticated by its seal under the cluster secret instead.
  const client = new ApiClient(joinAddress(options), { timeoutMs: 30000, insecureTls: true });
  const request = { ...fields, proof: joinProof(secret, fields).toString("hex") };
  let resp: JoinResponse | undefined;
  for (let attempt = 1; resp === undefined; attempt++) {
    try {
      resp = await client.join(request);
    } catch (e) {
      // The member may be starting, or electing its catalog's leader: wait a little, a bounded number of times.
      const retryable = (e instanceof ApiError && e.status === 503) || e instanceof DaemonUnreachableError;
      if (!retryable || attempt >= joinAttemptsMax) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  if (resp.ca !== undefined) keepClusterCa(options.dataDir, unsealCa(resp.ca, secret));
  await state.setPeers(resp.peers);
  await state.setCluster(resp.clusterId, resp.metaVoters);
  log.info(`joined cluster ${resp.clusterId} through ${options.join} as node ${state.nodeId}`);
}

/** What a member needs to answer a new node's join. */
export interface JoinAnswerContext {
  readonly secret: Buffer;
  readonly dataDir: string;
  clusterId(): string;
  metaVoters(): number[];
  /** The catalog as this node has applied it now. */
  catalog(): CatalogState;
  readonly meta: Pick<MetaLeader, "metaLeaderApi">;
  /** Proposes the new node's addNode here, the catalog's leader (ClusterNode.admit). */
  admit(command: Extract<CatalogCommand, { kind: "addNode" }>): Promise<ApplyResult>;
  log: { info(line: string): void; warn(line: string): void };
}

/** A member's answer to a node asking to join: the proof checked, the node added to the catalog on its leader. */
export async function answerJoin(c: JoinAnswerContext, request: JoinRequest): Promise<JoinResponse> {
  const { proof, ...fields } = request;
  const expected = joinProof(c.secret, fields);
  const given = Buffer.from(typeof proof === "string" ? proof : "", "hex");
  const who = `node ${request.id} ("${printable(request.name, logFieldCharsMax)}" at ${printable(request.address, logFieldCharsMax)})`;
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    c.log.warn(`join refused for ${who}: wrong cluster secret`);
    throw new ApiError(403, "forbidden", "the join request does not prove the cluster secret; start the node with the cluster's --cluster-secret");
  }
  const admit = admitNode(fields, Date.now());
  if ("error" in admit) {
    c.log.warn(`join refused for ${who}: ${admit.error}`);
    throw new ApiError(400, "invalid", `the join request is not one the catalog accepts: ${admit.error}; fix the joining node's --name, --zone or --listen`);
  }
  // Not onMetaLeader: the joining node never asks this one again, so the leader's answer goes back without this node's catalog catching up.
  const leaderApi = await c.meta.metaLeaderApi(undefined);
  if (leaderApi) return leaderApi.join(request);
  let added: ApplyResult;
  try {
    added = await c.admit(admit.command);
  } catch (e) {
    if (!(e instanceof NotLeaderError || e instanceof ProposalDroppedError)) throw e;
    throw new ApiError(503, "unavailable", `the catalog did not take the join (${e.message}); retry in a few seconds`);
  }
  if (!added.ok) throw catalogError(added);
  c.log.info(`${who} joined`);
  const ca = readClusterCa(c.dataDir);
  return {
    clusterId: c.clusterId(),
    metaVoters: c.metaVoters(),
    peers: [...c.catalog().nodes.values()].map((n) => ({ id: n.id, host: n.address, port: n.peerPort })),
    ...(ca !== undefined ? { ca: sealCa(ca, c.secret) } : {}),
  };
}
