// The Raft core's boundary: code outside src/raft uses RaftNode's API
// (status, progress, commitFromLeaderBase, ...), never the protocol state
// under it. TypeScript keeps RaftNode.raft private; the one way in,
// inspectCore(), is for the core's own tests and simulator.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../../", import.meta.url));

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sources(p));
    else if (name.endsWith(".ts")) out.push(p);
  }
  return out;
}

test("no code outside src/raft (and the tests) looks inside the Raft core", () => {
  const files = [...sources(join(root, "src")), ...sources(join(root, "bench"))].filter((f) => !relative(root, f).startsWith(join("src", "raft")));
  assert.ok(files.length > 20, `found ${files.length} source files under ${root}`);
  const offenders: string[] = [];
  for (const f of files) {
    const text = readFileSync(f, "utf8");
    if (/\binspectCore\b/.test(text)) offenders.push(relative(root, f));
  }
  assert.equal(offenders, [], "these reach past RaftNode's API");
});

test.run();
