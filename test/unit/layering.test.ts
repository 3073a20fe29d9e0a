// The layer rules of docs/architecture.md ("Layers"), checked over the
// source: which folder of src/ may import which, and where Node's modules,
// timers and clocks may be used. The pure layers (base, raft, store, nbd,
// replication, cluster) receive the disk, the network, timers and the clock
// as ports, which is what lets a simulation run them; a direct use there
// fails this test, naming the file and line.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const src = join(repo, "src");

/** Each layer of src/ and the layers it may import (itself always). `constants` is src/constants.ts. */
const mayImport: Record<string, readonly string[]> = {
  base: [],
  constants: ["base"],
  raft: ["base"],
  store: ["base", "constants"],
  nbd: ["base", "constants"],
  replication: ["base", "constants", "raft", "store"],
  cluster: ["base", "constants"],
  api: ["base", "constants", "cluster"],
  node: ["base", "constants", "raft", "store", "replication", "cluster"],
  os: ["base", "constants", "raft", "store", "nbd", "replication"],
  daemon: ["base", "constants", "raft", "store", "nbd", "replication", "cluster", "node", "api", "os"],
  backup: ["base", "constants", "api", "nbd", "os"],
  cli: ["base", "constants", "cluster", "api", "os", "daemon", "backup"],
};

/** Layers that may use node:* modules, timers and clocks: the OS adapters, the composition root, the HTTP API, the CLI and the backup engine it runs. */
const touchesTheOs = new Set(["os", "daemon", "api", "cli", "backup"]);

/** Globals that read a clock or schedule on the event loop (method calls on an injected port, `x.setTimeout(`, are fine). */
const clockOrTimer = /(?<![.\w])(setTimeout|setInterval|setImmediate|clearTimeout|clearInterval|Date\.now|performance\.now|process\.hrtime)\b/;

/** A method of a port interface that bears a timer's name (`setTimeout(fn: () => void, ms: number): () => void;`): a declaration, not a use. */
const portMethod = /^\s*\w+\s*\(.*\)\s*:\s*[^=;]+(=>[^;]+)?;\s*$/;

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else if (name.endsWith(".ts")) out.push(p);
  }
  return out;
}

function layerOf(file: string): string {
  const rel = relative(src, file).split(sep);
  return rel.length === 1 ? rel[0]!.replace(/\.ts$/, "") : rel[0]!;
}

/** Source with comments blanked (line numbers kept), so a rule quoted in a comment does not count. */
function code(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, (c) => c.replace(/[^\n]/g, " ")).replace(/(^|[^:"'`\\])\/\/.*$/gm, "$1");
}

interface Import {
  line: number;
  spec: string;
}

function importsOf(text: string): Import[] {
  const out: Import[] = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)["']([^"']+)["']/g;
  for (const m of text.matchAll(re)) out.push({ line: text.slice(0, m.index).split("\n").length, spec: m[1]! });
  return out;
}

function problems(): string[] {
  const found: string[] = [];
  for (const file of sourceFiles(src)) {
    const layer = layerOf(file);
    const allowed = mayImport[layer];
    const where = relative(repo, file);
    if (allowed === undefined) {
      found.push(`${where}: layer "${layer}" has no rule in test/unit/layering.test.ts (add it, with the layers it may import)`);
      continue;
    }
    const text = code(readFileSync(file, "utf8"));
    for (const imp of importsOf(text)) {
      if (imp.spec.startsWith("node:")) {
        if (!touchesTheOs.has(layer)) found.push(`${where}:${imp.line}: ${layer} imports ${imp.spec}; only os, daemon, api, cli and backup touch Node's modules (take a port instead)`);
        continue;
      }
      if (!imp.spec.startsWith(".")) continue; // a package: msgpackr, level, commander, ...
      const target = resolve(dirname(file), imp.spec);
      if (!target.startsWith(src + sep)) {
        found.push(`${where}:${imp.line}: imports ${imp.spec}, outside src/`);
        continue;
      }
      const to = layerOf(target.replace(/\.js$/, ".ts"));
      if (to !== layer && !allowed.includes(to)) found.push(`${where}:${imp.line}: ${layer} imports ${to} (${imp.spec}); ${layer} may import ${allowed.join(", ") || "nothing"}`);
    }
    if (!touchesTheOs.has(layer)) {
      text.split("\n").forEach((l, i) => {
        const m = clockOrTimer.exec(l);
        if (m !== null && !portMethod.test(l)) found.push(`${where}:${i + 1}: ${layer} uses ${m[1]}; timers and clocks reach the pure layers as ports (src/os/timers.ts)`);
      });
    }
  }
  return found;
}

test("every folder of src/ imports only the layers below it, and only os, daemon, api, cli and backup touch Node, timers or clocks", () => {
  const found = problems();
  assert.equal(found, [], `\n${found.join("\n")}\n`);
});

test("the checker sees what it is meant to: imports, dynamic imports and clock calls, not comments or injected ports", () => {
  const sample = code([
    `import { a } from "../store/store.js";`,
    `const m = await import("node:fs");`,
    `// setTimeout(() => {}, 1) in a comment`,
    `this.timers.setTimeout(fn, 5);`,
    `const t = Date.now();`,
    `  setTimeout(fn: () => void, ms: number): () => void;`,
    `  setTimeout(() => go(), 5);`,
  ].join("\n"));
  assert.equal(importsOf(sample).map((i) => i.spec), ["../store/store.js", "node:fs"]);
  const lines = sample.split("\n").map((l) => (portMethod.test(l) ? undefined : clockOrTimer.exec(l)?.[1]));
  assert.equal(lines, [undefined, undefined, undefined, undefined, "Date.now", undefined, "setTimeout"]);
});

test.run();
