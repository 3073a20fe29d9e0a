// Who serves a volume over NBD, across the cluster: each node answers for
// its own connections (NbdExports counts them), and a change that may not
// happen under a volume's clients (a delete, a rollback) asks every node
// first, naming the nodes that serve it and those that did not answer.

import { DaemonUnreachableError, type ApiClient } from "../api/client.js";
import { ApiError, type Caller, type NodeConnections } from "../api/types.js";
import { attachedProblem, listNames, type CatalogState, type CatalogVolume } from "../cluster/index.js";
import { checkReach } from "./access.js";
import type { MetaLeader } from "./meta-leader.js";
import type { NbdExports } from "./nbd-exports.js";

/** A delete asks every node for its NBD connections to the volume; one that has not answered within this is named in the refusal. */
const deleteAskTimeoutMs = 2000;

/** One node's answer: its connections to the volume, or `error` when it did not answer in time. */
export type NodeAnswer = { node: string; connections?: number; error?: string };

/** What the connections need of their node. */
export interface ConnectionsContext {
  readonly nodeId: number;
  /** The catalog as this node has applied it now. */
  catalog(): CatalogState;
  /** This node's name in the catalog. */
  selfName(): string;
  /** The volume as the catalog knows it, and the other nodes' APIs. */
  readonly meta: Pick<MetaLeader, "knownVolume" | "nodeApi">;
  readonly exports: Pick<NbdExports, "connections" | "disconnect">;
}

export class VolumeConnections {
  constructor(private readonly c: ConnectionsContext) {}

  /** Why the volume may not change under its clients now: attached to a host, or served over NBD by a node (or a node did not answer). */
  async inUse(v: CatalogVolume): Promise<string | undefined> {
    const attached = attachedProblem(v);
    if (attached !== undefined) return attached;
    const answers = await this.askEveryNode(
      (api) => api.volumeConnections(v.name),
      () => this.here(v.name),
    );
    return busyProblem(v.name, answers, false);
  }

  async volumeConnections(name: string, caller: Caller): Promise<NodeConnections> {
    const v = this.c.catalog().volumes.get(name);
    if (v !== undefined) checkReach(caller, v);
    return this.here(name);
  }

  async disconnectVolume(name: string, caller: Caller): Promise<NodeConnections> {
    const v = await this.c.meta.knownVolume(name).catch(() => undefined); // a name this node does not know has no connections and needs no fence
    if (v !== undefined) checkReach(caller, v);
    return this.disconnectHere(name);
  }

  here(name: string): NodeConnections {
    return { nodeId: this.c.nodeId, node: this.c.selfName(), connections: this.c.exports.connections(name) };
  }

  /** Closes this node's NBD connections to the volume, and fences it until the delete applies (NbdExports.disconnect). */
  disconnectHere(name: string): NodeConnections {
    const closed = this.c.exports.disconnect(name);
    return { ...this.here(name), connections: closed };
  }

  /** Asks every node of the catalog (this one without the network); a node that does not answer in time has `connections` undefined and `error` set. */
  askEveryNode(remote: (api: ApiClient) => Promise<NodeConnections>, local: () => NodeConnections): Promise<NodeAnswer[]> {
    return Promise.all(
      [...this.c.catalog().nodes.values()].map(async (n) => {
        if (n.id === this.c.nodeId) return { node: n.name, connections: local().connections };
        try {
          return { node: n.name, connections: (await remote(this.c.meta.nodeApi(n, deleteAskTimeoutMs))).connections };
        } catch (e) {
          const why = e instanceof DaemonUnreachableError ? e.code : e instanceof ApiError ? `${e.status} ${e.code}` : (e as Error).message;
          return { node: n.name, error: why };
        }
      }),
    );
  }
}

/** Why a volume may not be deleted now, or undefined: a node serves it (unless forced) or did not answer (unless forced). */
export function busyProblem(name: string, answers: readonly NodeAnswer[], force: boolean): string | undefined {
  if (force) return undefined;
  const serving = answers.filter((a) => (a.connections ?? 0) > 0).map((a) => `${a.node} (${a.connections})`);
  const silent = answers.filter((a) => a.connections === undefined).map((a) => `${a.node} (${a.error ?? "no answer"})`);
  if (serving.length === 0 && silent.length === 0) return undefined;
  const what = [
    ...(serving.length > 0 ? [`NBD clients are connected to it on ${listNames(serving)}`] : []),
    ...(silent.length > 0 ? [`${listNames(silent)} did not answer, so it may be served there`] : []),
  ].join("; ");
  return `volume "${name}" is in use: ${what}; disconnect the clients (nbd-client -d, or stop nbdfuse/qemu) and try again, or delete it with --force, which disconnects them`;
}
