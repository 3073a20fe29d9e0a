// API tokens (docs/security.md, docs/formats/api-token.md): a small JSON
// payload and its HMAC-SHA256, both base64url, under the prefix "pxd1.":
//
//   pxd1.<base64url(payload)>.<base64url(HMAC-SHA256(key, "pxd1." + base64url(payload)))>
//
// payload: {"id":"<16 hex>","name":"<holder>","role":"admin|user|read-only","iat":<ms>,"exp":<ms>}
//
// The key is derived from the cluster secret, which every node holds, so any
// node checks any token without asking another; revocations live in the
// catalog. Layering: node:crypto is allowed in src/api (it touches the OS).

import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { apiTokenIdChars, apiTokenTtlMsMax, catalogNameCharsMax } from "../constants.js";
import { tokenIdPattern as idPattern } from "../cluster/rules.js";
import { roles, type Role } from "./types.js";

/** The longest token text a server reads (a payload of bounded fields and a 43-character MAC fit in far less). */
export const apiTokenCharsMax = 1024;
const prefix = "pxd1.";
const namePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export interface TokenClaims {
  /** Random id: what pxd auth token revoke names. */
  id: string;
  /** Who holds it: a volume created with it is owned by this name. */
  name: string;
  role: Role;
  /** Issued and expires, ms since the epoch. */
  iat: number;
  exp: number;
}

/** The token-signing key: an HMAC of a fixed label under the cluster secret (never the secret itself, which also proves joins). */
export function tokenKey(clusterSecret: Buffer): Buffer {
  return createHmac("sha256", clusterSecret).update("pxd-api-token-key-v1").digest();
}

export function newTokenId(): string {
  return randomBytes(apiTokenIdChars / 2).toString("hex");
}

/** Signs claims into a token; throws for claims a server would refuse. */
export function signToken(key: Buffer, claims: TokenClaims): string {
  const problem = claimsProblem(claims);
  if (problem !== null) throw new Error(`cannot make that token: ${problem}`);
  const body = prefix + Buffer.from(JSON.stringify({ id: claims.id, name: claims.name, role: claims.role, iat: claims.iat, exp: claims.exp })).toString("base64url");
  return `${body}.${mac(key, body).toString("base64url")}`;
}

export type Verified = { ok: true; claims: TokenClaims } | { ok: false; why: string };

/** Checks a token's form, MAC and expiry at `nowMs`; the why is a sentence a caller can act on. */
export function verifyToken(key: Buffer, token: string, nowMs: number): Verified {
  if (token.length > apiTokenCharsMax) return { ok: false, why: `the token is longer than ${apiTokenCharsMax} characters, so it is not a pxd token` };
  const dot = token.lastIndexOf(".");
  if (!token.startsWith(prefix) || dot <= prefix.length) return { ok: false, why: `the token does not start with "${prefix}", so it is not a pxd token` };
  const body = token.slice(0, dot);
  const given = Buffer.from(token.slice(dot + 1), "base64url");
  const expected = mac(key, body);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    return { ok: false, why: "the token's signature does not match this cluster's key (a token of another cluster, or altered)" };
  }
  let claims: TokenClaims;
  try {
    claims = JSON.parse(Buffer.from(body.slice(prefix.length), "base64url").toString("utf8")) as TokenClaims;
  } catch {
    return { ok: false, why: "the token's payload is not JSON" };
  }
  const problem = claimsProblem(claims);
  if (problem !== null) return { ok: false, why: `the token's payload is not valid: ${problem}` };
  if (claims.exp <= nowMs) return { ok: false, why: `the token ${claims.id} expired at ${new Date(claims.exp).toISOString()}` };
  return { ok: true, claims };
}

/** A token's claims without checking its signature: what the CLI shows of its own token, and what a revoke reads the expiry from. */
export function readClaims(token: string): TokenClaims | undefined {
  const parts = token.split(".");
  if (token.length > apiTokenCharsMax || parts.length !== 3 || `${parts[0]}.` !== prefix) return undefined;
  try {
    const claims = JSON.parse(Buffer.from(parts[1] ?? "", "base64url").toString("utf8")) as TokenClaims;
    return claimsProblem(claims) === null ? claims : undefined;
  } catch {
    return undefined;
  }
}

function claimsProblem(c: unknown): string | null {
  if (typeof c !== "object" || c === null || Array.isArray(c)) return "it is not an object";
  const o = c as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.length !== 5) return `it has the fields ${keys.slice(0, 8).join(", ")}; a token has id, name, role, iat and exp`;
  if (typeof o["id"] !== "string" || !idPattern.test(o["id"])) return `id must be ${apiTokenIdChars} lower-case hex digits`;
  if (typeof o["name"] !== "string" || !namePattern.test(o["name"])) return `name must be 1-${catalogNameCharsMax} letters, digits, ".", "_" or "-", starting with a letter or digit`;
  if (!roles.some((r) => r === o["role"])) return `role must be one of ${roles.join(", ")}`;
  const iat = o["iat"];
  const exp = o["exp"];
  if (typeof iat !== "number" || !Number.isSafeInteger(iat) || iat < 0) return "iat must be a time in ms since the epoch";
  if (typeof exp !== "number" || !Number.isSafeInteger(exp) || exp <= iat || exp - iat > apiTokenTtlMsMax) {
    return `exp must be after iat by at most ${apiTokenTtlMsMax / 86_400_000} days`;
  }
  return null;
}

function mac(key: Buffer, body: string): Buffer {
  return createHmac("sha256", key).update(body).digest();
}

/** Parses a lifetime such as "24h", "30m", "90d", "3600s" (or bare seconds) into ms; throws a sentence for anything else. */
export function parseTtl(text: string): number {
  const m = /^(\d{1,9})([smhd]?)$/.exec(text.trim());
  const unit = { "": 1000, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m?.[2] ?? ""] ?? 1000;
  const ms = m === null ? NaN : Number(m[1]) * unit;
  if (!(ms >= 1000 && ms <= apiTokenTtlMsMax)) {
    throw new Error(`"${text}" is not a token lifetime; use a number with s, m, h or d, from 1s to ${apiTokenTtlMsMax / 86_400_000}d, e.g. 24h`);
  }
  return ms;
}
