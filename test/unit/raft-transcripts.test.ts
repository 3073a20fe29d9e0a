// Replays every interaction script in test/raft-scripts/*.txt (format and
// commands: raft-script-env.ts) and compares each command's output with the
// transcript in the file, exactly. With UPDATE_TRANSCRIPTS=1 the files are
// rewritten with the actual output instead: read every diff before committing
// it, a transcript is only worth what the human who checked it.

import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { formatScript, parseScript, ScriptEnv } from "./raft-script-env.js";

// This file runs as dist/test/unit/raft-transcripts.test.js; the scripts stay in the source tree.
const scriptsDir = fileURLToPath(new URL("../../../test/raft-scripts/", import.meta.url));
const update = process.env.UPDATE_TRANSCRIPTS === "1";

const files = readdirSync(scriptsDir).filter((f) => f.endsWith(".txt")).sort();

test("transcripts: the scripts directory holds the scenarios", () => {
  assert.ok(files.length >= 10, `found ${files.length} scripts in ${scriptsDir}`);
});

for (const file of files) {
  test(`transcript ${file}`, () => {
    const path = join(scriptsDir, file);
    const blocks = parseScript(readFileSync(path, "utf8"));
    const env = new ScriptEnv();
    const outputs: string[][] = [];
    for (const b of blocks) {
      let got: string[];
      try {
        got = env.run(b.command);
      } catch (err) {
        throw new Error(`${file}:${b.line}: "${b.command}" failed: ${(err as Error).message}`);
      }
      outputs.push(got);
      if (!update && got.join("\n") !== b.expected.join("\n")) {
        assert.fixture(got.join("\n"), b.expected.join("\n"), `${file}:${b.line}: output of "${b.command}" differs (UPDATE_TRANSCRIPTS=1 rewrites it)`);
      }
    }
    if (update) writeFileSync(path, formatScript(blocks, outputs));
  });
}

test.run();
