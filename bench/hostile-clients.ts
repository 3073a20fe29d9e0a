// What hostile clients cost a pxd daemon (issue 13, item 4), measured from
// outside on a real daemon process:
//
//   memory: N NBD clients each pipeline 32 MiB READs and never read a reply.
//     Reports the daemon's RSS before, at its peak while they hold on, and
//     after they disconnect; and whether a fresh client still connects and
//     gets a 4 KiB read served meanwhile.
//   api: S senders (in a child process, so that their work does not delay
//     the reads' own clock) POST deeply nested JSON bodies of a given size
//     to the control API in a loop while one NBD client does QD1 4 KiB
//     reads. Reports the reads' latency without and with the senders.
//
//   buffers: what Node holds for one small reply buffer queued on a socket
//     whose peer does not read (nbdQueuedBufferOverheadBytes).
//   parse: JSON.parse of a nested body against the depth scan the API runs
//     first (apiBodyDepthMax).
//
//   node dist/bench/hostile-clients.js memory [--clients 24] [--read-mib 32] [--hold 10] [--after 20]
//   node --experimental-websocket dist/bench/hostile-clients.js memory --gc
//       (then asks the daemon's V8 for a full GC through the inspector, SIGUSR1,
//       to tell garbage not yet collected from memory still held)
//   node dist/bench/hostile-clients.js api [--senders 4] [--body-kib 1024] [--seconds 10]
//   node --expose-gc dist/bench/hostile-clients.js buffers
//   node dist/bench/hostile-clients.js parse [--body-kib 1024]
//
// Progress goes to stderr, results (markdown) to stdout. See docs/formats/nbd.md.

import { request } from "node:https";
import { createServer, connect, type AddressInfo, type Socket } from "node:net";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { jsonNestsDeeper } from "../src/api/validate.js";
import { apiBodyDepthMax } from "../src/constants.js";
import type { DaemonProcess } from "../test/helpers/daemon.js";
import { RawClient } from "../test/helpers/nbd-raw-client.js";
import { capture, log, onCleanup, positiveOption, procStatusKiB, runBench, sleep } from "./lib/proc.js";
import { startBenchDaemon } from "./lib/pxd.js";

const MiB = 1024 * 1024;

const scenarios = ["memory", "api", "api-senders", "buffers", "parse"] as const;

interface Options {
  scenario: (typeof scenarios)[number];
  /** api-senders: the API port to send to. */
  port: number;
  /** memory: ask for a full GC at the end. */
  gc: boolean;
  clients: number;
  readMiB: number;
  holdSec: number;
  afterSec: number;
  senders: number;
  bodyKiB: number;
  seconds: number;
}

function parseOptions(): Options {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      clients: { type: "string", default: "24" },
      "read-mib": { type: "string", default: "32" },
      hold: { type: "string", default: "10" },
      after: { type: "string", default: "20" },
      senders: { type: "string", default: "4" },
      "body-kib": { type: "string", default: "1024" },
      seconds: { type: "string", default: "10" },
      port: { type: "string", default: "1" },
      gc: { type: "boolean", default: false },
    },
  });
  const scenario = scenarios.find((s) => s === positionals[0]);
  if (scenario === undefined) throw new Error("usage: hostile-clients.js memory|api [options] (see the file's header)");
  return {
    scenario,
    port: positiveOption("port", values.port),
    gc: values.gc,
    clients: positiveOption("clients", values.clients),
    readMiB: positiveOption("read-mib", values["read-mib"]),
    holdSec: positiveOption("hold", values.hold),
    afterSec: positiveOption("after", values.after),
    senders: positiveOption("senders", values.senders),
    bodyKiB: positiveOption("body-kib", values["body-kib"]),
    seconds: positiveOption("seconds", values.seconds),
  };
}

async function daemonWithVolume(name: string, sizeBytes: number): Promise<DaemonProcess> {
  const d = await startBenchDaemon();
  onCleanup("daemon", () => d.dispose());
  await d.api.createVolume({ name, sizeBytes });
  return d;
}

function rssMiB(d: DaemonProcess, field = "VmRSS"): number {
  return Math.round(procStatusKiB(d.child!.pid!, field) / 1024);
}

/** The nbd gauges of /metrics, when the daemon has them. */
async function nbdGauges(d: DaemonProcess): Promise<string> {
  const text = await d.api.metrics();
  return [...text.matchAll(/^(pxd_nbd_\w+) (\d+)$/gm)].map((m) => `${m[1]}=${m[2]}`).join(" ") || "(no pxd_nbd_ gauges)";
}

async function timedRead(c: RawClient, at: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  await c.readAt(at, 4096);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

async function memory(o: Options): Promise<void> {
  const readBytes = o.readMiB * MiB;
  const d = await daemonWithVolume("hog", 4 * readBytes);
  const rssBefore = rssMiB(d);
  log(`daemon RSS ${rssBefore} MiB; ${o.clients} clients pipeline ${o.readMiB} MiB READs and never read`);
  const hogs: RawClient[] = [];
  for (let i = 0; i < o.clients; i++) {
    const c = await RawClient.connect(d.nbdPort);
    await c.go("hog");
    c.socket.pause();
    for (let k = 0; k < 128; k++) c.sendRequest(0, 0, BigInt(k), (k % 4) * readBytes, readBytes);
    hogs.push(c);
  }
  let peak = 0;
  for (let t = 0; t < o.holdSec * 5; t++) {
    peak = Math.max(peak, rssMiB(d));
    await sleep(200);
  }
  log(`while held: ${await nbdGauges(d)}`);
  const fresh = await RawClient.connect(d.nbdPort);
  await fresh.go("hog");
  const freshMs = await timedRead(fresh, 4096).catch((e: Error) => `failed: ${e.message}`);
  fresh.destroy();
  for (const c of hogs) c.destroy();
  const after: string[] = [];
  for (let s = 1; s <= o.afterSec; s++) {
    await sleep(1000);
    if (s === 1 || s === 5 || s % 10 === 0) after.push(`${s} s: ${rssMiB(d)}`);
  }
  log(`after: ${await nbdGauges(d)}`);
  if (o.gc) {
    await fullGc(d.child!.pid!);
    after.push(`after a full GC: ${rssMiB(d)}`);
  }
  process.stdout.write(
    [
      `| clients | READ | RSS before | RSS peak (sampled) | VmHWM | fresh 4 KiB read | RSS after disconnect (MiB) |`,
      `|---|---|---|---|---|---|---|`,
      `| ${o.clients} | ${o.readMiB} MiB | ${rssBefore} MiB | ${peak} MiB | ${rssMiB(d, "VmHWM")} MiB | ${typeof freshMs === "number" ? `${freshMs.toFixed(2)} ms` : freshMs} | ${after.join(", ")} |`,
      "",
    ].join("\n"),
  );
}

/** HeapProfiler.collectGarbage over the inspector, which SIGUSR1 opens on 127.0.0.1:9229 (Node 20 needs --experimental-websocket). */
async function fullGc(pid: number): Promise<void> {
  const Ws = (globalThis as { WebSocket?: new (url: string) => WebSocketLike }).WebSocket;
  if (Ws === undefined) throw new Error("--gc needs a WebSocket client: run node with --experimental-websocket");
  process.kill(pid, "SIGUSR1");
  await sleep(500);
  const targets = (await (await fetch("http://127.0.0.1:9229/json/list")).json()) as { webSocketDebuggerUrl: string }[];
  const ws = new Ws(targets[0]!.webSocketDebuggerUrl);
  await new Promise((r) => ws.addEventListener("open", r));
  const done = new Promise((r) => ws.addEventListener("message", r));
  ws.send(JSON.stringify({ id: 1, method: "HeapProfiler.collectGarbage" }));
  await done;
  ws.close();
  await sleep(1000);
}

interface WebSocketLike {
  addEventListener(type: string, fn: (e: unknown) => void): void;
  send(data: string): void;
  close(): void;
}

/** A JSON text of `bytes` bytes: arrays nested as deep as it allows. */
function nestedJson(bytes: number): Buffer {
  const half = Math.floor(bytes / 2);
  return Buffer.concat([Buffer.alloc(half, "["), Buffer.alloc(half, "]")]);
}

function post(port: number, body: Buffer): Promise<number> {
  return new Promise((resolve) => {
    // The API is HTTPS; a hostile sender checks no certificate (the handshake is part of what it costs the node).
    const req = request({ host: "127.0.0.1", port, method: "POST", path: "/v1/volumes", rejectUnauthorized: false, headers: { "Content-Type": "application/json", "Content-Length": body.length } }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
      res.on("error", () => resolve(-1));
    });
    req.on("error", () => resolve(-1));
    req.end(body);
  });
}

async function latencies(c: RawClient, seconds: number): Promise<number[]> {
  const out: number[] = [];
  const end = Date.now() + seconds * 1000;
  for (let i = 0; Date.now() < end; i++) out.push(await timedRead(c, ((i * 7919) % 4096) * 4096));
  return out;
}

function summary(ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number): string => (s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? NaN).toFixed(2);
  return `${s.length} | ${q(0.5)} | ${q(0.99)} | ${(s[s.length - 1] ?? NaN).toFixed(2)}`;
}

/** The child process of `api`: senders until --seconds are over, then the answers' statuses on stdout. */
async function apiSenders(o: Options): Promise<void> {
  const body = nestedJson(o.bodyKiB * 1024);
  const statuses = new Map<number, number>();
  const end = Date.now() + o.seconds * 1000;
  const sender = async (): Promise<void> => {
    while (Date.now() < end) {
      const s = await post(o.port, body);
      statuses.set(s, (statuses.get(s) ?? 0) + 1);
    }
  };
  await Promise.all(Array.from({ length: o.senders }, sender));
  process.stdout.write([...statuses].map(([s, n]) => `${n}x ${s}`).join(", "));
}

async function api(o: Options): Promise<void> {
  const d = await daemonWithVolume("probe", 16 * MiB);
  const c = await RawClient.connect(d.nbdPort);
  await c.go("probe");
  await c.writeAt(0, Buffer.alloc(16 * MiB, 0x5a));
  const quiet = await latencies(c, o.seconds);
  log(`${o.senders} senders of ${o.bodyKiB} KiB nested JSON`);
  const self = fileURLToPath(import.meta.url);
  const args = [self, "api-senders", "--port", String(d.apiPort), "--senders", String(o.senders), "--body-kib", String(o.bodyKiB), "--seconds", String(o.seconds + 1)];
  const senders = capture(process.execPath, args, (o.seconds + 30) * 1000);
  await sleep(500); // the senders are under way
  const loud = await latencies(c, o.seconds);
  const answers = (await senders).stdout;
  c.destroy();
  process.stdout.write(
    [
      `| 4 KiB QD1 reads | count | p50 ms | p99 ms | max ms |`,
      `|---|---|---|---|---|`,
      `| alone | ${summary(quiet)} |`,
      `| ${o.senders} senders of ${o.bodyKiB} KiB nested JSON (answers: ${answers}) | ${summary(loud)} |`,
      "",
    ].join("\n"),
  );
}

async function buffers(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  const server = createServer((s) => s.pause());
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const s: Socket = connect((server.address() as AddressInfo).port, "127.0.0.1");
  await new Promise((r) => s.once("connect", r));
  s.write(Buffer.alloc(64 * MiB)); // fills the kernel's buffers on both sides
  await sleep(500);
  gc?.();
  const before = process.memoryUsage().rss;
  const n = 200_000;
  for (let i = 0; i < n; i += 64) {
    s.cork(); // as NBD replies leave: batches of small buffers, each with a callback on the last
    for (let j = 0; j < 64; j++) s.write(Buffer.allocUnsafe(16), j === 63 ? () => {} : undefined);
    s.uncork();
  }
  gc?.();
  const perBuffer = (process.memoryUsage().rss - before) / n;
  s.destroy();
  server.close();
  process.stdout.write(`| queued 16-byte buffers | RSS per buffer |\n|---|---|\n| ${n} | ${perBuffer.toFixed(0)} bytes${gc ? "" : " (without --expose-gc: garbage counted too)"} |\n`);
}

function parse(o: Options): Promise<void> {
  const body = nestedJson(o.bodyKiB * 1024);
  const time = (fn: () => unknown): number => {
    const t0 = process.hrtime.bigint();
    fn();
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  const text = body.toString("utf8");
  const parseMs = [0, 1, 2].map(() => time(() => JSON.parse(text)));
  const scanMs = [0, 1, 2].map(() => time(() => jsonNestsDeeper(body, apiBodyDepthMax)));
  const row = (ms: number[]): string => ms.map((m) => m.toFixed(3)).join(", ");
  process.stdout.write(`| ${o.bodyKiB} KiB nested | ms, three runs |\n|---|---|\n| JSON.parse | ${row(parseMs)} |\n| depth scan | ${row(scanMs)} |\n`);
  return Promise.resolve();
}

runBench(async () => {
  const o = parseOptions();
  const run = { memory, api, "api-senders": apiSenders, buffers, parse }[o.scenario];
  await run(o);
});
