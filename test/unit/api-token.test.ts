// API tokens (src/api/token.ts, docs/formats/api-token.md): what verifies,
// and the sentence for each thing that does not.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { apiTokenCharsMax, parseTtl, readClaims, signToken, tokenKey, verifyToken, type TokenClaims } from "../../src/api/token.js";
import { apiTokenTtlMsMax } from "../../src/constants.js";

const key = tokenKey(Buffer.from("a-cluster-secret-of-enough-bytes"));
const claims: TokenClaims = { id: "0123456789abcdef", name: "alice", role: "user", iat: 1_000, exp: 61_000 };

test("a signed token verifies until it expires, and reads back its claims", () => {
  const t = signToken(key, claims);
  assert.match(t, /^pxd1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$/);
  assert.equal(verifyToken(key, t, 60_999), { ok: true, claims });
  const late = verifyToken(key, t, 61_000);
  assert.ok(!late.ok && /expired at 1970-01-01T00:01:01.000Z/.test(late.why));
  assert.equal(readClaims(t), claims);
});

test("another key, a changed payload or signature, another prefix, a long token: refused with the reason", () => {
  const t = signToken(key, claims);
  const why = (text: string, k = key): string => {
    const v = verifyToken(k, text, 2_000);
    if (v.ok) throw new Error("verified");
    return v.why;
  };
  assert.match(why(t, tokenKey(Buffer.from("another-secret-of-enough-bytes!!"))), /does not match this cluster's key/);
  const [p, body, mac] = t.split(".");
  const admin = Buffer.from(JSON.stringify({ ...claims, role: "admin" })).toString("base64url");
  assert.match(why(`${p}.${admin}.${mac}`), /does not match/, "a role raised in the payload breaks the signature");
  assert.match(why(`${p}.${body}.${mac!.slice(0, -2)}AA`), /does not match/);
  assert.match(why(`pxd2.${body}.${mac}`), /does not start with "pxd1."/);
  assert.match(why("x".repeat(apiTokenCharsMax + 1)), /longer than 1024 characters/);
  assert.match(why(""), /not a pxd token/);
});

test("claims a server would refuse cannot be signed", () => {
  assert.throws(() => signToken(key, { ...claims, role: "root" as never }), /role must be one of admin, user, read-only/);
  assert.throws(() => signToken(key, { ...claims, name: "a b" }), /name must be/);
  assert.throws(() => signToken(key, { ...claims, id: "XYZ" }), /id must be 16 lower-case hex digits/);
  assert.throws(() => signToken(key, { ...claims, exp: claims.iat + apiTokenTtlMsMax + 1 }), /at most 366 days/);
  assert.throws(() => signToken(key, { ...claims, exp: claims.iat }), /exp must be after iat/);
});

test("token lifetimes: s, m, h, d, bounded by the longest a token has", () => {
  assert.is(parseTtl("24h"), 86_400_000);
  assert.is(parseTtl("30m"), 1_800_000);
  assert.is(parseTtl("90d"), 90 * 86_400_000);
  assert.is(parseTtl("3600"), 3_600_000);
  assert.throws(() => parseTtl("367d"), /from 1s to 366d/);
  assert.throws(() => parseTtl("1w"), /not a token lifetime/);
  assert.throws(() => parseTtl("0s"), /not a token lifetime/);
});

test.run();
