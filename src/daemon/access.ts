// Who may do what on this node's API (docs/security.md): token checks against
// the cluster's key and the catalog's revocations, the node's own token for
// the requests it makes to other nodes, and the ownership rule of the `user`
// role. The API server checks the role a route needs (src/api/server.ts);
// what depends on a volume's owner is checked here, where the catalog is.

import { ApiError, type Authenticator, type Caller, type CreateTokenRequest, type TokenInfo } from "../api/types.js";
import { newTokenId, signToken, tokenKey, verifyToken, type TokenClaims } from "../api/token.js";
import type { CatalogVolume } from "../cluster/index.js";

/** The default lifetime of a token pxd auth token create makes. */
export const tokenTtlMsDefault = 24 * 3600 * 1000;
/** The lifetime of the token a node signs for its own requests to other nodes; a new one is signed once less than half is left. */
const nodeTokenTtlMs = 10 * 60 * 1000;

export class Access implements Authenticator {
  private readonly key: Buffer;
  private own: { token: string; exp: number } | undefined;

  constructor(
    clusterSecret: Buffer,
    private readonly nodeName: () => string,
    /** The catalog's revoked token ids (on this node: a revocation reaches it when its catalog applies it). */
    private readonly revoked: () => ReadonlyMap<string, number>,
    private readonly wallMs: () => number,
  ) {
    this.key = tokenKey(clusterSecret);
  }

  verify(token: string): ReturnType<Authenticator["verify"]> {
    const v = verifyToken(this.key, token, this.wallMs());
    if (!v.ok) return v;
    if (this.revoked().has(v.claims.id)) return { ok: false, why: `the token ${v.claims.id} of "${v.claims.name}" was revoked` };
    return v;
  }

  /** Signs a token; `name` defaults to the role. */
  mint(role: TokenClaims["role"], name: string, ttlMs: number): TokenInfo {
    const iat = this.wallMs();
    const claims: TokenClaims = { id: newTokenId(), name, role, iat, exp: iat + ttlMs };
    return { token: signToken(this.key, claims), id: claims.id, name, role, expiresAt: new Date(claims.exp).toISOString() };
  }

  create(request: CreateTokenRequest): TokenInfo {
    return this.mint(request.role, request.name ?? request.role, request.ttlSec !== undefined ? request.ttlSec * 1000 : tokenTtlMsDefault);
  }

  /** This node's admin token for its requests to other nodes (asking every node about a volume, scrubs, catalog catch-up). */
  nodeToken(): string {
    const now = this.wallMs();
    if (this.own === undefined || this.own.exp - now < nodeTokenTtlMs / 2) {
      const t = this.mint("admin", this.nodeName(), nodeTokenTtlMs);
      this.own = { token: t.token, exp: Date.parse(t.expiresAt) };
    }
    return this.own.token;
  }

  /** This node as the caller of a request it makes itself (an attach agent's failover it records). */
  nodeCaller(): Caller {
    return { tokenId: "", name: this.nodeName(), role: "admin", token: this.nodeToken(), address: "" };
  }
}

/**
 * Checks and signs tokens with the cluster secret alone, outside a running
 * node (no revocations known, wall clock): the first admin token, pxd up's,
 * pxd auth token create --data-dir, tests.
 */
export function offlineAccess(clusterSecret: Buffer | string): Access {
  return new Access(Buffer.from(clusterSecret), () => "", () => new Map(), () => Date.now());
}

/** A user reaches only the volumes its token's name owns; admins and read-only callers reach every volume (read-only only to read: the server checks the method). */
export function mayReach(caller: Caller, v: CatalogVolume): boolean {
  return caller.role !== "user" || v.owner === caller.name;
}

/** Throws the 403 for a user's request on another's volume. */
export function checkReach(caller: Caller, v: CatalogVolume): void {
  if (mayReach(caller, v)) return;
  throw new ApiError(403, "forbidden", `volume "${v.name}" belongs to ${v.owner === "" ? "no user (it was made before volumes had owners)" : `"${v.owner}"`}, not to "${caller.name}"; use a volume of your own, or ask an admin`);
}

/** The owner a create asks for: the caller's name, or (admins only) the one it names. */
export function ownerFor(caller: Caller, asked: string | undefined): string {
  if (asked === undefined || asked === caller.name) return caller.name;
  if (caller.role !== "admin") throw new ApiError(403, "forbidden", `the token of "${caller.name}" may create volumes only for itself, not for "${asked}"; leave out --owner, or ask an admin`);
  return asked;
}
