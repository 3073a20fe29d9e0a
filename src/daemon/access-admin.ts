// API tokens and the audit trail as the control API serves them: any node
// signs a token (every node holds the key); a revocation is a catalog change
// on the catalog's leader, remembered until the token expires; pxd audit
// reads this node's records or every node's.

import type { AuditQuery, AuditResponse, Caller, CreateTokenRequest, RevokeTokenRequest, TokenInfo } from "../api/types.js";
import type { CatalogState } from "../cluster/index.js";
import { apiTokenTtlMsMax } from "../constants.js";
import type { Access } from "./access.js";
import type { AuditLog } from "./audit-log.js";
import { catalogError, type MetaLeader } from "./meta-leader.js";

/** How long pxd audit waits for each other node's records. */
const auditAskTimeoutMs = 5000;

/** What the token and audit requests need of their node. */
export interface AccessAdminContext {
  readonly nodeId: number;
  /** The catalog as this node has applied it now. */
  catalog(): CatalogState;
  /** This node's name in the catalog. */
  selfName(): string;
  readonly access: Pick<Access, "create">;
  readonly auditLog: Pick<AuditLog, "read">;
  readonly meta: Pick<MetaLeader, "onMetaLeader" | "metaCommand" | "nodeApi">;
  log: { info(line: string): void };
}

export class AccessAdmin {
  constructor(private readonly c: AccessAdminContext) {}

  /** Any node signs: every node holds the key. */
  async createToken(request: CreateTokenRequest, caller: Caller): Promise<TokenInfo> {
    const made = this.c.access.create(request);
    this.c.log.info(`token ${made.id} made for "${made.name}" (${made.role}, until ${made.expiresAt}) by "${caller.name}"`);
    return made;
  }

  /** On the meta leader: the catalog remembers the revocation until the token expires (or the longest token lifetime, when the expiry is not given). */
  async revokeToken(request: RevokeTokenRequest, caller: Caller): Promise<{ id: string; revoked: boolean }> {
    return this.c.meta.onMetaLeader(caller, (api) => api.revokeToken(request), async () => {
      const at = Date.now();
      const result = await this.c.meta.metaCommand({ kind: "revokeToken", id: request.id, expiresAt: request.expiresAt ?? at + apiTokenTtlMsMax, at });
      if (!result.ok) throw catalogError(result);
      this.c.log.info(`token ${request.id} revoked by "${caller.name}"`);
      return { id: request.id, revoked: result.changed };
    });
  }

  /** This node's audit records, or every node's (each asked with this node's token; one that does not answer has `error`). */
  async audit(query: AuditQuery, _caller: Caller): Promise<AuditResponse> {
    const here = (): AuditResponse["nodes"][number] => ({ node: this.c.selfName(), ...this.c.auditLog.read(query.sinceMs) });
    if (query.local) return { nodes: [here()] };
    const nodes = await Promise.all(
      [...this.c.catalog().nodes.values()].map(async (n) => {
        if (n.id === this.c.nodeId) return here();
        try {
          return (await this.c.meta.nodeApi(n, auditAskTimeoutMs).audit(query.sinceMs, { local: true })).nodes[0] ?? { node: n.name, records: [], error: "it sent no records" };
        } catch (e) {
          return { node: n.name, records: [], error: (e as Error).message };
        }
      }),
    );
    return { nodes };
  }
}
