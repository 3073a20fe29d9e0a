// The keys and the cipher of encryption at rest (docs/architecture.md,
// "Encryption at rest"): a wrapped key opens only with the cluster key and
// the additional data it was wrapped with, and not once changed; XTS keeps
// lengths, depends on the unit's place, and an all-zero unit reads as a hole.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { clusterKeySource, KeyUnwrapError, newDataKey, StaticKeySource } from "../../src/os/cluster-key.js";
import { xtsVolumeCipher } from "../../src/os/xts-cipher.js";
import { wrappedVolumeKeyChars } from "../../src/cluster/rules.js";
import { decryptedRead } from "../../src/replication/volume-cipher.js";
import { tempDir } from "../helpers/tmp.js";

const aad = "pxd volume key v1; cluster c1; volume db";

test("a wrapped key unwraps with the same cluster key and additional data, and has the length the catalog checks", () => {
  const source = new StaticKeySource(randomBytes(32), "test key");
  const key = newDataKey(64);
  const wrapped = source.wrap(key, aad);
  assert.is(wrapped.length, wrappedVolumeKeyChars);
  assert.ok(source.unwrap(wrapped, aad).equals(key));
  assert.is.not(source.wrap(key, aad), wrapped, "a new nonce each time");
});

test("a wrapped key does not unwrap with another cluster key, for another volume, or once changed", () => {
  const source = new StaticKeySource(randomBytes(32), "test key");
  const wrapped = source.wrap(newDataKey(64), aad);
  assert.throws(() => new StaticKeySource(randomBytes(32), "other key").unwrap(wrapped, aad), (e: unknown) => e instanceof KeyUnwrapError && /does not open with other key/.test((e as Error).message));
  assert.throws(() => source.unwrap(wrapped, aad.replace("db", "db2")), (e: unknown) => e instanceof KeyUnwrapError);
  for (const at of [2, 40, wrapped.length - 3]) {
    const tampered = wrapped.slice(0, at) + (wrapped[at] === "0" ? "1" : "0") + wrapped.slice(at + 1);
    assert.throws(() => source.unwrap(tampered, aad), (e: unknown) => e instanceof KeyUnwrapError, `a change at hex digit ${at}`);
  }
  assert.throws(() => source.unwrap(wrapped.slice(0, -2), aad), (e: unknown) => e instanceof KeyUnwrapError);
  assert.throws(() => source.unwrap("zz" + wrapped.slice(2), aad), (e: unknown) => e instanceof KeyUnwrapError);
});

test("the cluster key comes from a file (raw or hex) or PXD_CLUSTER_KEY; anything else is refused with what to give", () => {
  const t = tempDir("cluster-key");
  try {
    const key = randomBytes(32);
    const raw = join(t.dir, "raw.key");
    const hex = join(t.dir, "hex.key");
    writeFileSync(raw, key);
    writeFileSync(hex, key.toString("hex") + "\n");
    const wrapped = clusterKeySource(raw, {})!.wrap(Buffer.from("k"), aad);
    assert.ok(clusterKeySource(hex, {})!.unwrap(wrapped, aad).equals(Buffer.from("k")));
    assert.ok(clusterKeySource(undefined, { PXD_CLUSTER_KEY: key.toString("hex") })!.unwrap(wrapped, aad).equals(Buffer.from("k")));
    assert.is(clusterKeySource(undefined, {}), undefined);
    assert.throws(() => clusterKeySource(undefined, { PXD_CLUSTER_KEY: "abc" }), /PXD_CLUSTER_KEY does not hold a cluster key: it must be 32 bytes/);
    assert.throws(() => clusterKeySource(join(t.dir, "none"), {}), /does not exist/);
  } finally {
    t.remove();
  }
});

test("XTS keeps a unit's length, depends on its place, and a zero unit reads as a hole; a read that cuts units reads them whole", async () => {
  const c = xtsVolumeCipher(newDataKey(64));
  const plain = Buffer.alloc(8192, 0x41);
  const ct = c.encrypt(4096, [plain.subarray(0, 100), plain.subarray(100)], 8192);
  assert.is(ct.length, 8192);
  assert.not.ok(ct.subarray(0, 4096).equals(ct.subarray(4096)), "the same plaintext at two units encrypts differently");
  assert.not.ok(ct.includes(Buffer.alloc(16, 0x41)));
  assert.ok(c.decryptInPlace(4096, Buffer.from(ct)).equals(plain));
  assert.not.ok(c.decryptInPlace(0, Buffer.from(ct)).equals(plain), "a unit decrypted at another place is garbage");
  const withHole = Buffer.concat([ct.subarray(0, 4096), Buffer.alloc(4096)]);
  assert.ok(c.decryptInPlace(4096, withHole).equals(Buffer.concat([plain.subarray(0, 4096), Buffer.alloc(4096)])));
  // A read that cuts units reads the covering ones, into the caller's buffer.
  const into = Buffer.alloc(300);
  const got = decryptedRead(c, 4096 + 4000, 300, into, (o, n) => {
    assert.equal([o, n], [4096, 8192]);
    return Buffer.from(ct);
  });
  assert.is(got, into);
  assert.ok(into.equals(Buffer.alloc(300, 0x41)));
  // Served later (a repair), the answer is a buffer of its own: the caller took `into` back meanwhile.
  const later = Buffer.alloc(300, 0xee);
  const answer = await decryptedRead(c, 4096 + 4000, 300, later, () => Promise.resolve(Buffer.from(ct)));
  assert.is.not(answer, later);
  assert.ok(answer.equals(Buffer.alloc(300, 0x41)) && later.equals(Buffer.alloc(300, 0xee)));
  const whole = await decryptedRead(c, 4096, 8192, later, () => Promise.resolve(Buffer.from(ct)));
  assert.ok(whole.equals(plain));
  // Read into `into` and checked on another thread (Store.readOffThread): it resolves to `into` itself, decrypted in place,
  // so the read pool keeps the buffer with the answer instead of taking it back while it is sent.
  const pooled = Buffer.alloc(8192);
  const inPlace = await decryptedRead(c, 4096, 8192, pooled, (_o, _n, i) => {
    i!.set(ct);
    return Promise.resolve(i!);
  });
  assert.is(inPlace, pooled);
  assert.ok(pooled.equals(plain));
});

test.run();
