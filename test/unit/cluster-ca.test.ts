// The cluster CA's key in a join answer (src/os/cluster-ca.ts,
// docs/formats/cluster-ca.md): it opens with the cluster secret only, and a
// certificate or key changed on the way does not open.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { sealCa, unsealCa } from "../../src/os/cluster-ca.js";

const secret = Buffer.from("a-cluster-secret-of-enough-bytes");
const ca = { certPem: "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n", keyPem: "-----BEGIN PRIVATE KEY-----\nMIGH...\n-----END PRIVATE KEY-----\n" };

test("the sealed key opens with the cluster secret and gives the CA back", () => {
  const sealed = sealCa(ca, secret);
  assert.not.ok(sealed.sealedKey.includes(Buffer.from("MIGH").toString("hex")), "the key does not travel in clear");
  assert.equal(unsealCa(sealed, secret), ca);
});

test("another secret, a swapped certificate or a changed byte does not open", () => {
  const sealed = sealCa(ca, secret);
  assert.throws(() => unsealCa(sealed, Buffer.from("another-secret-of-enough-bytes!!")), /does not open with this node's cluster secret/);
  assert.throws(() => unsealCa({ ...sealed, certPem: sealed.certPem.replace("MIIB", "MIIC") }, secret), /does not open/);
  const flipped = sealed.sealedKey.slice(0, -2) + (sealed.sealedKey.endsWith("00") ? "01" : "00");
  assert.throws(() => unsealCa({ ...sealed, sealedKey: flipped }, secret), /does not open/);
  assert.throws(() => unsealCa({ ...sealed, sealedKey: "00" }, secret), /too short/);
});

test.run();
