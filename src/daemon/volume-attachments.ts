// Hosts' attachments of volumes as block devices (pxd volume attach;
// docs/architecture.md, "Attaching a volume to a host"): the catalog's
// record of each host's attachment, changed on the catalog's leader; the
// order in which an attach agent should try the nodes; and, on each node,
// the supervision of this host's attach agents (src/os/attachments.ts),
// whose failovers the catalog then records so that the volume's leadership
// follows the host.

import { hostPort } from "../api/client.js";
import type { AttachmentInfo, AttachRequest, Caller, VolumeInfo } from "../api/types.js";
import type { CatalogState, CatalogVolume } from "../cluster/index.js";
import { agentCluster, superviseAgents, type AttachRecord } from "../os/attachments.js";
import { checkReach, mayReach } from "./access.js";
import { catalogError, type MetaLeader } from "./meta-leader.js";

export interface AttachmentsContext {
  readonly nodeId: number;
  /** The catalog as this node has applied it now. */
  catalog(): CatalogState;
  /** The cluster this node belongs to (an agent of another cluster's is not this node's business). */
  clusterId(): string;
  /** The volume as the catalog knows it, and changes made on the catalog's leader. */
  readonly meta: Pick<MetaLeader, "knownVolume" | "mustGet" | "onMetaLeader" | "metaCommand">;
  /** The volume's leader as this node knows it (0: none known). */
  leaderOf(groupId: number): number;
  info(v: CatalogVolume): VolumeInfo;
  /** Who this node is when it calls the API itself. */
  nodeCaller(): Caller;
  log: { info(line: string): void; warn(line: string): void };
}

export class VolumeAttachments {
  /** A turn of supervise is running. */
  private supervising = false;

  constructor(private readonly c: AttachmentsContext) {}

  /** On the meta leader: records a host's attachment; the catalog refuses a second read-write host of a volume that is not shared (409). */
  async attach(name: string, request: AttachRequest, caller: Caller): Promise<VolumeInfo> {
    checkReach(caller, await this.c.meta.knownVolume(name));
    return this.c.meta.onMetaLeader(caller, (api) => api.attachVolume(name, request), async () => {
      const result = await this.c.meta.metaCommand({
        kind: "attachVolume",
        name,
        host: request.host,
        ...(request.device !== undefined ? { device: request.device } : {}),
        via: request.via,
        readOnly: request.readOnly,
        ...(request.node !== undefined ? { node: request.node } : {}),
        at: Date.now(),
      });
      if (!result.ok) throw catalogError(result);
      const a = this.c.meta.mustGet(name).attachments.find((x) => x.host === request.host);
      this.c.log.info(`volume ${name} attached on host ${request.host}${a?.device ? ` as ${a.device}` : " (attach under way)"} via ${request.via}${request.readOnly ? ", read-only" : ""}`);
      return this.c.info(this.c.meta.mustGet(name));
    });
  }

  async detach(name: string, host: string, caller: Caller): Promise<void> {
    checkReach(caller, await this.c.meta.knownVolume(name));
    return this.c.meta.onMetaLeader(caller, (api) => api.detachVolume(name, host), async () => {
      const result = await this.c.meta.metaCommand({ kind: "detachVolume", name, host });
      if (!result.ok) throw catalogError(result);
      if (result.changed) this.c.log.info(`volume ${name} detached from host ${host}`);
    });
  }

  list(caller: Caller): AttachmentInfo[] {
    return [...this.c.catalog().volumes.values()].filter((v) => mayReach(caller, v)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).flatMap((v) => attachmentInfos(v));
  }

  /**
   * Nodes that are up, in the order an attach agent should try them: this
   * node (the one the attaching host asked, its own daemon when it runs one),
   * then the volume's leader, its other replicas, and the rest. When this
   * node holds a replica, the volume's leadership then moves here
   * (attachmentLeader), so the host's reads are served on its own node.
   */
  async servers(name: string): Promise<string[]> {
    const v = await this.c.meta.knownVolume(name);
    const leader = this.c.leaderOf(v.id);
    const rank = (id: number): number => (id === this.c.nodeId ? 0 : id === leader ? 1 : v.nodes.includes(id) ? 2 : 3);
    return [...this.c.catalog().nodes.values()]
      .filter((n) => n.health === "up")
      .sort((a, b) => rank(a.id) - rank(b.id) || a.id - b.id)
      .map((n) => hostPort(n.address, n.nbdPort));
  }

  /** Starts a new attach agent for each of this host's kernel devices whose agent died (one turn at a time). */
  supervise(): void {
    if (this.supervising) return;
    this.supervising = true;
    superviseAgents()
      .then(async (turn) => {
        for (const line of turn.said) this.c.log.warn(line);
        for (const r of turn.moved) await this.moved(r);
      })
      .catch((e: unknown) => this.c.log.warn(`supervising this host's attach agents failed this turn (the next tries again): ${(e as Error).message}`))
      .finally(() => (this.supervising = false));
  }

  /** An agent of this host failed over to another node: the catalog's attachment says so, and leadership follows it. */
  private async moved(r: AttachRecord): Promise<void> {
    const catalog = this.c.catalog();
    if (agentCluster(r) !== this.c.clusterId() || !catalog.volumes.has(r.volume)) return;
    const node = [...catalog.nodes.values()].find((n) => hostPort(n.address, n.nbdPort) === r.server);
    if (node === undefined) return;
    try {
      await this.attach(r.volume, { host: r.host, via: "kernel", readOnly: r.readOnly, device: r.device, node: node.name }, this.c.nodeCaller());
      this.c.log.info(`volume ${r.volume}: ${r.device} on host ${r.host} is served by ${node.name} now (its attach agent failed over)`);
    } catch (e) {
      this.c.log.info(`volume ${r.volume}: could not record that ${node.name} serves ${r.device} on host ${r.host} now: ${(e as Error).message}`);
    }
  }
}

/** A volume's attachments as the API shows them. */
export function attachmentInfos(v: CatalogVolume): AttachmentInfo[] {
  return v.attachments.map((a) => ({ volume: v.name, host: a.host, device: a.device, via: a.via, readOnly: a.readOnly, node: a.node, since: new Date(a.at).toISOString() }));
}
