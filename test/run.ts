// The test command: runs every compiled test file (dist/test/**/*.test.js) in
// its own process, so a test that leaves a daemon or socket behind cannot
// poison the next, and prints the one closing line CI reads:
//   N passed, N failed
// Usage: node dist/test/run.js [substring-filter ...]
//
// Two lanes run side by side: files that start daemons, clusters, NBD
// servers or a VM on the fixed test addresses and ports (cluster/, e2e/,
// interop/, and the unit files that run the CLI's daemons) one at a time,
// and the in-process ones (the rest of unit/ and sim/) one at a time beside
// them. Each file's output is printed whole when it ends. PXD_TEST_LANES=1
// runs everything in one lane.

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

/** Files that bind the fixed test addresses and ports (daemons, clusters, NBD servers, the VM): never two at once. */
function usesNetwork(name: string): boolean {
  return /^(cluster|e2e|interop)\//.test(name) || name === "unit/cli.test.js" || name === "unit/docker-files.test.js";
}

/** A file's output, kept until it ends (at most this much of it: the tail, where uvu's summary is). */
const fileOutputBytesMax = 4 << 20;

function runFile(file: string, name: string): Promise<FileResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--enable-source-maps", file], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, NO_COLOR: "1", FORCE_COLOR: "0" },
    });
    let out = "";
    let dropped = false;
    const onData = (d: Buffer): void => {
      out += d.toString();
      if (out.length > fileOutputBytesMax) {
        out = out.slice(-fileOutputBytesMax / 2);
        dropped = true;
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    const timer = setTimeout(() => {
      out += `\n# ${file}: timed out after ${fileTimeoutMs / 1000}s, killing it\n`;
      child.kill("SIGKILL");
    }, fileTimeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      process.stdout.write(`\n# ${name}\n${dropped ? "(the start of its output is left out)\n" : ""}${out}`);
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
  const summary = new Map<string, string>();
  const lane = async (list: string[]): Promise<void> => {
    for (const file of list) {
      const name = relative(here, file);
      const r = await runFile(file, name);
      passed += r.passed;
      failed += r.failed;
      summary.set(name, `${r.failed ? "FAIL" : "ok  "} ${name}  ${r.passed} passed, ${r.failed} failed  (${(r.ms / 1000).toFixed(1)}s)`);
    }
  };
  const oneLane = process.env["PXD_TEST_LANES"] === "1";
  const network = files.filter((f) => oneLane || usesNetwork(relative(here, f)));
  const inProcess = files.filter((f) => !network.includes(f));
  const started = Date.now();
  await Promise.all([lane(network), lane(inProcess)]);
  console.log(`\n${files.length} files in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  console.log("\n" + files.map((f) => summary.get(relative(here, f))).join("\n"));
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed === 0 && files.length > 0 ? 0 : 1;
}

void main();
