// The test command: runs every compiled test file (dist/test/**/*.test.js) in
// its own process, so a test that leaves a daemon or socket behind cannot
// poison the next, and prints the one closing line CI reads:
//   N passed, N failed
// Usage: node dist/test/run.js [substring-filter ...]

import { spawn } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const fileTimeoutMs = 10 * 60 * 1000;

function findTests(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...findTests(p));
    else if (name.endsWith(".test.js")) out.push(p);
  }
  return out;
}

interface FileResult { passed: number; failed: number; ms: number }

function runFile(file: string): Promise<FileResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--enable-source-maps", file], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, NO_COLOR: "1", FORCE_COLOR: "0" },
    });
    let out = "";
    const onData = (d: Buffer): void => {
      process.stdout.write(d);
      out += d.toString();
      if (out.length > 1 << 20) out = out.slice(-65536);
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", (d: Buffer) => process.stderr.write(d));
    const timer = setTimeout(() => {
      console.log(`\n# ${file}: timed out after ${fileTimeoutMs / 1000}s, killing it`);
      child.kill("SIGKILL");
    }, fileTimeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      const clean = out.replace(/\x1b\[[0-9;]*m/g, "");
      const total = lastNumber(clean, /Total:\s+(\d+)/g);
      const passed = lastNumber(clean, /Passed:\s+(\d+)/g);
      let failed = Math.max(0, total - passed);
      // A file that crashed or exited non-zero without reporting a failure still failed.
      if (code !== 0 && failed === 0) failed = 1;
      if (total === 0 && code === 0) failed = 1; // ran no test: count it as a failure
      resolve({ passed, failed, ms: Date.now() - started });
    });
  });
}

function lastNumber(text: string, re: RegExp): number {
  let n = 0;
  for (const m of text.matchAll(re)) n = Number(m[1]);
  return n;
}

async function main(): Promise<void> {
  const filters = process.argv.slice(2);
  // Filters match the path under dist/test, not the checkout's own path (which may contain any word).
  const files = findTests(here).filter((f) => filters.length === 0 || filters.some((s) => relative(here, f).includes(s)));
  let passed = 0;
  let failed = 0;
  const summary: string[] = [];
  for (const file of files) {
    const name = relative(here, file);
    console.log(`\n# ${name}`);
    const r = await runFile(file);
    passed += r.passed;
    failed += r.failed;
    summary.push(`${r.failed ? "FAIL" : "ok  "} ${name}  ${r.passed} passed, ${r.failed} failed  (${(r.ms / 1000).toFixed(1)}s)`);
  }
  console.log("\n" + summary.join("\n"));
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed === 0 && files.length > 0 ? 0 : 1;
}

void main();
