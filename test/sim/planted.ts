// Planting a bug in a copy of the compiled code and asking a simulator to
// find it (test/sim/store-planted.test.ts, cluster-planted.test.ts). The copy
// (dist/src, dist/test/sim and dist/test/helpers, under dist/planted/NAME) is edited as
// JavaScript; an edit that no longer finds its code fails loudly, so the
// planted bug is updated with the code it breaks.

import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { cpSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const dist = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

export interface Edit {
  /** A file under dist/. */
  file: string;
  /** The code to replace; any run of whitespace in it matches any run in the file. */
  find: string;
  replace: string;
}

function planted(name: string, edits: Edit[]): string {
  const root = join(dist, "planted", name);
  rmSync(root, { recursive: true, force: true });
  cpSync(join(dist, "src"), join(root, "src"), { recursive: true });
  cpSync(join(dist, "test", "sim"), join(root, "test", "sim"), { recursive: true });
  cpSync(join(dist, "test", "helpers"), join(root, "test", "helpers"), { recursive: true });
  for (const e of edits) {
    const path = join(root, e.file);
    const text = readFileSync(path, "utf8");
    const pattern = new RegExp(e.find.trim().split(/\s+/).map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("\\s+"), "g");
    const hits = text.match(pattern)?.length ?? 0;
    assert.is(hits, 1, `planting ${name}: ${e.file} must hold the code once (found ${hits}): ${e.find}`);
    writeFileSync(path, text.replace(pattern, () => e.replace));
  }
  return root;
}

/** Plants the edits, runs `script` (a simulator's command line under test/sim) with `args` and --first-failure, and expects a FAIL line. */
export function expectCaught(name: string, edits: Edit[], script: string, args: string[]): void {
  const root = planted(name, edits);
  const r = spawnSync(process.execPath, [join(root, "test/sim", script), ...args, "--first-failure"], { encoding: "utf8", timeout: 600_000 });
  rmSync(root, { recursive: true, force: true });
  const out = `${r.stdout}${r.stderr}`;
  const fail = out.split("\n").find((l) => l.startsWith("FAIL "));
  assert.ok(fail !== undefined, `the simulator let "${name}" through (${args.join(" ")}):\n${out.slice(-2000)}`);
  console.log(`  ${name}: ${fail.slice(0, 300)}`);
}
