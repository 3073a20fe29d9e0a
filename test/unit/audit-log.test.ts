// The audit log's file side (src/daemon/audit-log.ts, docs/formats/audit-log.md):
// the chain verifies across restarts and a rotation, a changed or removed
// line breaks it where it happened, a torn last line is dropped at start,
// and the files stay within twice auditFileBytesMax.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { appendFileSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AuditLog, auditFile } from "../../src/daemon/audit-log.js";
import { auditFileBytesMax } from "../../src/constants.js";
import type { AuditEvent } from "../../src/api/types.js";
import { tempDir } from "../helpers/tmp.js";

const secret = Buffer.from("a-cluster-secret-of-enough-bytes");
const event = (i: number): AuditEvent => ({ who: "alice", tokenId: "0123456789abcdef", role: "user", from: "127.0.0.1:5000", method: "POST", path: `/v1/volumes/v${i}`, status: 201 });

test("records chain across a restart; a changed or removed line is found where it is", () => {
  const t = tempDir("audit");
  try {
    const logged: string[] = [];
    const a = new AuditLog(t.dir, secret, "n1", (l) => logged.push(l));
    for (let i = 1; i <= 3; i++) a.append(event(i), 1_000 * i);
    const b = new AuditLog(t.dir, secret, "n1", (l) => logged.push(l)); // a restart continues the chain
    b.append({ ...event(4), status: 403, error: "no" }, 4_000);
    const all = b.read(0);
    assert.equal(all.records.map((r) => r.seq), [1, 2, 3, 4]);
    assert.is(all.chainBroken, undefined);
    assert.equal(b.read(2_500).records.map((r) => r.seq), [3, 4], "since filters by time");
    const path = join(t.dir, auditFile);
    const lines = readFileSync(path, "utf8").split("\n");
    writeFileSync(path, lines.map((l, i) => (i === 1 ? l.replace('"alice"', '"mallory"') : l)).join("\n"));
    assert.match(b.read(0).chainBroken ?? "", /^record 2: its MAC does not follow/);
    writeFileSync(path, lines.filter((_, i) => i !== 2).join("\n"));
    assert.match(b.read(0).chainBroken ?? "", /^record 4: its MAC does not follow/, "a removed record breaks the next one's link");
    assert.is(new AuditLog(t.dir, Buffer.from("another-secret-of-enough-bytes!!"), "n1", () => {}).read(0).chainBroken?.startsWith("record 2"), true, "another key verifies nothing");
    assert.equal(logged, []);
  } finally {
    t.remove();
  }
});

test("a torn last line is dropped at start and the chain goes on", () => {
  const t = tempDir("audit");
  try {
    const logged: string[] = [];
    new AuditLog(t.dir, secret, "n1", () => {}).append(event(1), 1_000);
    const torn = '{"seq":2,"at":"19';
    appendFileSync(join(t.dir, auditFile), torn);
    const a = new AuditLog(t.dir, secret, "n1", (l) => logged.push(l));
    a.append(event(2), 2_000);
    assert.equal(a.read(0).records.map((r) => r.seq), [1, 2]);
    assert.is(a.read(0).chainBroken, undefined);
    assert.match(logged.join("\n"), new RegExp(`dropped ${torn.length} bytes of a record a crash cut short`));
  } finally {
    t.remove();
  }
});

test("past auditFileBytesMax the log rotates to audit.log.1; the chain runs on across it and the files stay bounded", () => {
  const t = tempDir("audit");
  try {
    const a = new AuditLog(t.dir, secret, "n1", () => {});
    const lineBytes = JSON.stringify({ ...event(1), seq: 1, at: new Date(0).toISOString(), node: "n1", mac: "0".repeat(64) }).length;
    const count = Math.ceil((2.5 * auditFileBytesMax) / lineBytes);
    for (let i = 1; i <= count; i++) a.append(event(i), i);
    const current = statSync(join(t.dir, auditFile)).size;
    const older = statSync(join(t.dir, `${auditFile}.1`)).size;
    assert.ok(current <= auditFileBytesMax && older <= auditFileBytesMax, `${current} and ${older} bytes`);
    const r = a.read(0);
    assert.is(r.chainBroken, undefined);
    assert.is(r.records.at(-1)?.seq, count);
  } finally {
    t.remove();
  }
});

test.run();
