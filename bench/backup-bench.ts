// pxd backup's throughput: one daemon, a 256 MiB repl-1 volume filled with
// random bytes (incompressible: the worst case for compression) by nbdcopy,
// then per round, with the real CLI: a first backup to an empty file://
// target (every chunk read, hashed, compressed, written and fsynced), a
// second backup of the unchanged volume (read and hashed only: every chunk is
// there), and a restore into a new volume (fetched, checked, written over
// NBD). MiB/s is the volume's size over the CLI's own wall time for the work
// (its JSON "seconds", from the NBD connection to the manifest). Last, what a
// backup uploads after 5% of the volume changed, contiguous or scattered. First, the
// compressors a chunk could use, in process on 4 MiB chunks: why brotli.
//
//   node dist/bench/backup-bench.js [--rounds 3] [--chunks-in-flight 4]
//
// Progress goes to stderr, the table (markdown) to stdout. See docs/formats/backup.md.

import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { brotliCompressSync, constants as zc, deflateSync } from "node:zlib";
import { startDaemon, pxdEntry } from "../test/helpers/daemon.js";
import { run, runOk } from "../test/helpers/run.js";
import { tempDir } from "../test/helpers/tmp.js";
import { log, runBench } from "./lib/proc.js";
import "../test/helpers/auth.js";

const MiB = 1024 * 1024;
const volumeBytes = 256 * MiB;

/** MiB/s of input and compressed size of deflate level 1 and brotli quality 1 on 4 MiB of random bytes, text, and half random half zeros. */
function codecs(): string {
  const random = randomBytes(4 * MiB);
  const line = Buffer.from("the quick brown fox jumps over 0123456789 lazy dogs\n");
  const text = Buffer.alloc(4 * MiB);
  for (let i = 0; i < text.length; i++) text[i] = line[(i * 7 + (i >> 9)) % line.length]!;
  const half = Buffer.concat([random.subarray(0, 2 * MiB), Buffer.alloc(2 * MiB)]);
  const codec: Record<string, (b: Buffer) => Buffer> = {
    "deflate level 1": (b) => deflateSync(b, { level: 1 }),
    "brotli quality 1": (b) => brotliCompressSync(b, { params: { [zc.BROTLI_PARAM_QUALITY]: 1, [zc.BROTLI_PARAM_SIZE_HINT]: b.length } }),
  };
  const rows = Object.entries({ random, text, "half random, half zeros": half }).map(([name, b]) => {
    const cells = Object.values(codec).map((f) => {
      const started = process.hrtime.bigint();
      let out: Buffer = Buffer.alloc(0);
      for (let i = 0; i < 4; i++) out = f(b);
      const s = Number(process.hrtime.bigint() - started) / 1e9;
      return `${(16 / s).toFixed(0)} (${((out.length / b.length) * 100).toFixed(1)}%)`;
    });
    return `| ${name} | ${cells.join(" | ")} |`;
  });
  return `| data | ${Object.keys(codec).join(" | ")} |\n|---|---|---|\n${rows.join("\n")}`;
}

/**
 * 5% of the volume rewritten two ways, each followed by a backup to the same
 * target: one contiguous run (a file written whole), and 4 KiB blocks
 * scattered at random (the worst case for fixed chunks: most chunks hold one).
 */
async function incremental(cli: (args: string[]) => Promise<{ seconds: number }>, uri: string, dir: string): Promise<string> {
  const target = join(dir, "target-incremental");
  mkdirSync(target);
  const url = `file://${target}`;
  await cli(["backup", "create", "src", "--to", url]);
  const blocks = volumeBytes / 4096;
  const changedBlocks = Math.round(blocks / 20);
  const changedBytes = changedBlocks * 4096;
  const scattered = new Set<number>();
  while (scattered.size < changedBlocks) scattered.add(Math.floor(Math.random() * blocks));
  const run = join(dir, "run.bin");
  await runOk("sh", ["-c", `head -c ${changedBytes} /dev/urandom > ${run}`]);
  const ways: Array<[string, string[]]> = [
    ["one contiguous run of 12.8 MiB (random bytes)", ["-c", `write -s ${run} ${100 * MiB} ${changedBytes}`]],
    [`${changedBlocks} random 4 KiB blocks`, [...scattered].flatMap((b) => ["-c", `write -P 9 ${b * 4096} 4096`])],
  ];
  const rows: string[] = [];
  for (const [name, writes] of ways) {
    await runOk("qemu-io", ["-f", "raw", uri, ...writes], { timeoutMs: 600_000 });
    const s = (await cli(["backup", "create", "src", "--to", url])) as unknown as { uploadedChunks: number; chunks: number; uploadedBytes: number };
    rows.push(`| ${name} | ${s.uploadedChunks} of ${s.chunks} | ${(s.uploadedBytes / MiB).toFixed(1)} MiB (${((100 * s.uploadedBytes) / volumeBytes).toFixed(0)}%) |`);
  }
  return `| 5% changed as | chunks uploaded | bytes uploaded |\n|---|---|---|\n${rows.join("\n")}`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { rounds: { type: "string", default: "3" }, "chunks-in-flight": { type: "string", default: "4" } } });
  const rounds = Number(values.rounds);
  const inFlight = values["chunks-in-flight"]!;
  console.log(`MiB/s of input (compressed size), 4 MiB chunks, 4 rounds each\n\n${codecs()}\n`);
  const t = tempDir("backup-bench");
  const d = await startDaemon();
  try {
    await d.api.createVolume({ name: "src", sizeBytes: volumeBytes });
    const image = join(t.dir, "random.img");
    await runOk("sh", ["-c", `head -c ${volumeBytes} /dev/urandom > ${image}`]);
    await runOk("nbdcopy", ["--", image, d.uri("src")]);
    const cli = async (args: string[]): Promise<{ seconds: number }> => {
      const r = await run(process.execPath, [pxdEntry, ...args, "--json", "--chunks-in-flight", inFlight], { env: { ...process.env, PXD_HOST: `127.0.0.1:${d.apiPort}` }, timeoutMs: 600_000 });
      if (r.code !== 0) throw new Error(`pxd ${args.join(" ")}: ${r.stderr}`);
      return JSON.parse(r.stdout) as { seconds: number };
    };
    const rows: string[] = [];
    for (let round = 1; round <= rounds; round++) {
      const target = join(t.dir, `target-${round}`);
      mkdirSync(target);
      const url = `file://${target}`;
      const full = await cli(["backup", "create", "src", "--to", url]);
      const again = await cli(["backup", "create", "src", "--to", url]);
      const restore = await cli(["backup", "restore", url, "src/latest", `copy-${round}`]);
      await d.api.deleteVolume(`copy-${round}`);
      const rate = (s: { seconds: number }): string => (volumeBytes / MiB / s.seconds).toFixed(0);
      log(`round ${round}: first ${rate(full)}, unchanged ${rate(again)}, restore ${rate(restore)} MiB/s`);
      rows.push(`| ${round} | ${rate(full)} | ${rate(again)} | ${rate(restore)} |`);
    }
    console.log(`256 MiB of random bytes, chunks in flight ${inFlight}, load average at the end ${loadavg()[0]!.toFixed(1)}\n`);
    console.log("| round | first backup MiB/s | unchanged backup MiB/s | restore MiB/s |\n|---|---|---|---|\n" + rows.join("\n"));
    console.log(`\nWhat the next backup uploads after 5% of the volume changed:\n\n${await incremental(cli, d.uri("src"), t.dir)}`);
  } finally {
    await d.dispose();
    t.remove();
  }
}

runBench(main);
