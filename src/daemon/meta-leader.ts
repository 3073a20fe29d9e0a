// The catalog's leader as seen from one node: a catalog change is made on
// the leader, forwarded there from any other node with its caller's token
// (onMetaLeader), and answered once this node's catalog has it too; a
// command is checked before it is proposed; a node that does not know a
// volume's name catches its catalog up with the leader before it says 404.

import { ApiClient, hostPort } from "../api/client.js";
import { ApiError, type Caller, type DebugProposeRequest, type DebugProposeResponse } from "../api/types.js";
import { CatalogCommandError, encodeCommand, encodeCommandUnchecked, type ApplyResult, type CatalogCommand, type CatalogNode, type CatalogState, type CatalogVolume } from "../cluster/index.js";
import { NotLeaderError, ProposalDroppedError } from "../replication/driver.js";

/** How long an API write waits for the catalog's group to elect a leader before answering 503. */
const metaLeaderWaitMs = 5000;
/**
 * An NBD client naming a volume this node's catalog does not know waits at
 * most this long for the catalog to catch up with the meta leader (a node
 * just restarted, or a volume just created through another node). Below the
 * NBD handshake timeout, so the client gets an answer, not a closed socket.
 */
const catalogCatchUpMs = 6000;

/** What the meta-leader plumbing needs of its node. */
export interface MetaLeaderContext {
  readonly nodeId: number;
  /** The catalog as this node has applied it now. */
  catalog(): CatalogState;
  /** The catalog group's leader as this node knows it (0: none known). */
  leader(): number;
  /** The catalog group's commit index as this node knows it. */
  commitIndex(): number;
  /** The last meta entry applied to the catalog. */
  catalogIndex(): number;
  /** Proposes an encoded catalog entry here; rejects with NotLeaderError or ProposalDroppedError when the catalog did not take it. */
  proposeCommand(data: Uint8Array): Promise<ApplyResult>;
  /** Resolves true once the catalog satisfies `ready`, or false after `timeoutMs`. */
  whenCatalog(ready: (c: CatalogState) => boolean, timeoutMs: number): Promise<boolean>;
  /** The token this node calls other nodes' APIs with. */
  nodeToken(): string;
  /** The cluster CA's certificate the API clients trust (undefined with --api-plain-http). */
  apiCa(): string | undefined;
  log: { info(line: string): void; warn(line: string): void };
}

export class MetaLeader {
  constructor(private readonly c: MetaLeaderContext) {}

  /**
   * Proposes a catalog command on the meta leader (this node) and returns how
   * it applied. A command the catalog would refuse as invalid is refused here,
   * before it reaches the log: 400 with the catalog's sentence.
   */
  async metaCommand(command: CatalogCommand): Promise<ApplyResult> {
    let data: Uint8Array;
    try {
      data = encodeCommand(command);
    } catch (e) {
      if (e instanceof CatalogCommandError) throw new ApiError(400, "invalid", e.message);
      throw e;
    }
    return this.proposeMeta(data);
  }

  /** Proposes an encoded catalog entry; a leadership lost or a catalog group stopped meanwhile is a 503 that says to retry. */
  private async proposeMeta(data: Uint8Array): Promise<ApplyResult> {
    try {
      return await this.c.proposeCommand(data);
    } catch (e) {
      if (!(e instanceof NotLeaderError || e instanceof ProposalDroppedError)) throw e;
      throw new ApiError(503, "unavailable", `the catalog did not take the change (${e.message}); retry in a few seconds, and see "pxd status" if it keeps failing`);
    }
  }

  /** The fault-injection hook: an entry committed as given, unvalidated, on the catalog's leader. */
  async debugCatalogPropose(request: DebugProposeRequest): Promise<DebugProposeResponse> {
    return this.onMetaLeader(undefined, (api) => api.debugCatalogPropose(request), async () => {
      const data = request.hex !== undefined ? Buffer.from(request.hex, "hex") : encodeCommandUnchecked(request.command);
      const r = await this.proposeMeta(data);
      this.c.log.warn(`unsafe debug API: catalog entry ${r.index} committed without validation; ${r.ok ? "it applied" : `refused (${r.code}): ${r.error}`}`);
      return r.ok ? { index: r.index, ok: true } : { index: r.index, ok: false, code: r.code, error: r.error };
    });
  }

  /**
   * The meta leader's API client, or undefined when this node leads. During an
   * election there is briefly no leader: wait for one (bounded) before
   * answering 503.
   */
  async metaLeaderApi(caller: Caller | undefined, timeoutMs = 20000): Promise<ApiClient | undefined> {
    for (let waited = 0; this.c.leader() === 0 && waited < metaLeaderWaitMs; waited += 50) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const leader = this.c.leader();
    if (leader === this.c.nodeId) return undefined;
    const n = this.c.catalog().nodes.get(leader);
    if (leader === 0 || n === undefined) {
      throw new ApiError(503, "unavailable", "the cluster's catalog has no leader right now (is a majority of its nodes down?); retry in a few seconds");
    }
    // A forwarded request carries its caller's own token, so the leader checks the same caller; the node's own requests carry the node's.
    return this.nodeApi(n, timeoutMs, caller?.token);
  }

  /** The control API of another node of the cluster, with the caller's token, else this node's own. */
  nodeApi(n: CatalogNode, timeoutMs: number, token?: string): ApiClient {
    const ca = this.c.apiCa();
    return new ApiClient(hostPort(n.address, n.apiPort), { timeoutMs, token: token ?? this.c.nodeToken(), ...(ca !== undefined ? { ca } : {}) });
  }

  /**
   * A catalog change forwarded to the catalog's leader, answered once this
   * node's catalog has it too: the caller's next request here sees its own
   * change (a volume it deleted is not listed).
   */
  async forwarded<T>(change: Promise<T>): Promise<T> {
    const result = await change;
    await this.catalogCatchUp();
    return result;
  }

  /**
   * A request the catalog's leader serves: forwarded there with the caller's
   * token (`remote`, answered as forwarded() does) when another node leads,
   * else served here (`local`).
   */
  async onMetaLeader<T>(caller: Caller | undefined, remote: (api: ApiClient) => Promise<T>, local: () => Promise<T>): Promise<T> {
    const leaderApi = await this.metaLeaderApi(caller);
    return leaderApi ? this.forwarded(remote(leaderApi)) : local();
  }

  /**
   * Brings this node's catalog up to the meta leader's commit index as it is
   * now, so a lookup after it sees every volume created before it began. A
   * follower applies committed entries only once the leader tells it the
   * commit index, and a restarted node replays only up to the commit index it
   * had on disk. Bounded by catalogCatchUpMs; never rejects (a node cut off
   * from the leader answers from what it has).
   */
  async catalogCatchUp(): Promise<void> {
    const deadline = Date.now() + catalogCatchUpMs;
    try {
      const api = await this.metaLeaderApi(undefined, 1000);
      const target = api === undefined ? this.c.commitIndex() : (await api.status()).catalog.commitIndex;
      await this.c.whenCatalog(() => this.c.catalogIndex() >= target, Math.max(0, deadline - Date.now()));
    } catch (e) {
      this.c.log.info(`catalog catch-up failed, answering from this node's copy: ${(e as Error).message}`);
    }
  }

  /** The volume, after catching this node's catalog up with the leader if it does not know the name (a volume just created elsewhere). */
  async knownVolume(name: string): Promise<CatalogVolume> {
    if (!this.c.catalog().volumes.has(name)) await this.catalogCatchUp();
    return this.mustGet(name);
  }

  mustGet(name: string): CatalogVolume {
    const v = this.c.catalog().volumes.get(name);
    if (v === undefined) throw new ApiError(404, "not_found", `no volume named "${name}"; see "pxd volume list"`);
    return v;
  }
}

/** A catalog's refusal as the API answers it: 404 for a name it does not know, 409 for a conflict or a limit, else 400. */
export function catalogError(r: Pick<Extract<ApplyResult, { ok: false }>, "code" | "error">): ApiError {
  const status = r.code === "not_found" ? 404 : r.code === "exists" || r.code === "conflict" || r.code === "limit" ? 409 : 400;
  return new ApiError(status, r.code, r.error);
}
