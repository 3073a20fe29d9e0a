// The cost of TLS on NBD: the same fio jobs (fio's nbd engine, libnbd with
// gnutls) against one pxd daemon, over nbd:// and over nbds:// with an X.509
// server certificate (--nbd-tls on; fio does not check it), in one run, alternating plain and TLS
// in each round. Prints IOPS per job and the TLS/plain ratio (median of the
// rounds).
//
//   node dist/bench/nbd-tls-bench.js [--runtime 10] [--rounds 3]

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startDaemon } from "../test/helpers/daemon.js";
import { tempDir } from "../test/helpers/tmp.js";
import { fioVersion, runFio, type FioSpec } from "./lib/fio.js";
import { captureOk, log, onCleanup, positiveOption, runBench } from "./lib/proc.js";

const jobs: { name: string; spec: Pick<FioSpec, "rw" | "bs" | "iodepth"> }[] = [
  { name: "4k-randwrite-qd32", spec: { rw: "randwrite", bs: "4k", iodepth: 32 } },
  { name: "4k-randread-qd32", spec: { rw: "randread", bs: "4k", iodepth: 32 } },
  { name: "1m-seqread-qd8", spec: { rw: "read", bs: "1M", iodepth: 8 } },
];

async function certificates(dir: string): Promise<{ server: string }> {
  const at = (f: string): string => join(dir, f);
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await captureOk("openssl", ["req", "-x509", ...ec, "-keyout", at("ca-key.pem"), "-out", at("ca-cert.pem"), "-days", "2", "-subj", "/CN=bench CA"], 30_000);
  mkdirSync(at("server"));
  await captureOk("openssl", ["req", ...ec, "-keyout", at("server/server-key.pem"), "-out", at("server.csr"), "-subj", "/CN=127.0.0.1"], 30_000);
  writeFileSync(at("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  await captureOk("openssl", ["x509", "-req", "-in", at("server.csr"), "-CA", at("ca-cert.pem"), "-CAkey", at("ca-key.pem"), "-CAcreateserial", "-out", at("server/server-cert.pem"), "-days", "2", "-extfile", at("server.ext")], 30_000);
  return { server: at("server") };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runtime: { type: "string", default: "10" }, rounds: { type: "string", default: "3" } } });
  const runtimeSec = positiveOption("--runtime", values.runtime);
  const rounds = positiveOption("--rounds", values.rounds);
  const t = tempDir("nbd-tls-bench");
  onCleanup("cert dir", () => t.remove());
  const certs = await certificates(t.dir);
  const d = await startDaemon("127.0.0.1", ["--nbd-tls", "on", "--nbd-tls-dir", certs.server]);
  onCleanup("pxd daemon", () => d.dispose());
  await d.api.createVolume({ name: "bench", sizeBytes: 1 << 30 });
  const plain = d.uri("bench");
  // fio's nbd engine refuses URIs that name local files (tls-certificates), so the bench does not check the server's certificate: the encryption costs the same.
  const tls = `nbds://127.0.0.1:${d.nbdPort}/bench?tls-verify-peer=false`;
  log(`fio ${await fioVersion()}; pxd at ${plain}, and ${tls}`);
  await runFio({ name: "prefill", rw: "write", bs: "1M", iodepth: 8, size: "1G" }, plain, 15 * 60 * 1000);
  const rows: string[][] = [["job", "plain IOPS", "TLS IOPS", "TLS/plain"]];
  for (const job of jobs) {
    const iops: Record<"plain" | "tls", number[]> = { plain: [], tls: [] };
    for (let r = 0; r < rounds; r++) {
      const order: ("plain" | "tls")[] = r % 2 === 0 ? ["plain", "tls"] : ["tls", "plain"];
      for (const which of order) {
        const res = await runFio({ name: job.name, ...job.spec, size: "1G", runtimeSec }, which === "plain" ? plain : tls, (runtimeSec + 120) * 1000);
        iops[which].push(res.iops);
        log(`${job.name} ${which}: ${Math.round(res.iops)} IOPS`);
      }
    }
    const p = median(iops.plain);
    const s = median(iops.tls);
    rows.push([job.name, String(Math.round(p)), String(Math.round(s)), (s / p).toFixed(2)]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  console.log(rows.map((r) => r.map((x, c) => x.padEnd(widths[c]!)).join("  ")).join("\n"));
}

runBench(main);
