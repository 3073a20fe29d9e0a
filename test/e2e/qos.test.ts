// A volume's QoS limits on a real daemon, against fio's NBD engine: a limit
// holds requests back (the daemon's counters say so, and the run takes at
// least as long as the limit allows; the rate itself is measured in
// bench/qos.sh, not here), `pxd volume update --max-iops none` removes it, and
// limits survive a restart (the catalog keeps them), and a snapshot's reads
// count against its volume's limits.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startDaemon, pxdEntry, type DaemonProcess } from "../helpers/daemon.js";
import { parsePrometheus } from "../helpers/prometheus.js";
import { runOk } from "../helpers/run.js";

const MiB = 1024 * 1024;
let daemon: DaemonProcess;

test.before(async () => {
  daemon = await startDaemon();
});

test.after(async () => {
  await daemon.dispose();
});

/** fio: `ios` random 4 KiB writes at QD16 through the daemon's NBD server; the seconds the run took, as this process saw it. */
async function fio(volume: string, ios: number, bs = "4k"): Promise<{ sec: number; ios: number }> {
  const started = performance.now();
  const out = await runOk("fio", [
    "--name=qos", "--ioengine=nbd", `--uri=${daemon.uri(volume)}`,
    "--rw=randwrite", `--bs=${bs}`, "--size=32M", "--iodepth=16", `--number_ios=${ios}`, "--output-format=json",
  ], { timeoutMs: 60000 });
  const r = JSON.parse(out.slice(out.indexOf("{"))) as { jobs: { error: number; write: { total_ios: number } }[] };
  assert.is(r.jobs[0]!.error, 0);
  return { sec: (performance.now() - started) / 1000, ios: r.jobs[0]!.write.total_ios };
}

/** The volume's throttle counters in /metrics. */
async function throttled(volume: string): Promise<{ requests: number; waitSec: number }> {
  const m = parsePrometheus(await daemon.api.metrics());
  const value = (name: string): number => Number(m.get(name)?.metrics.find((s) => s.labels?.["volume"] === volume)?.value ?? 0);
  return { requests: value("pxd_volume_throttled_requests_total"), waitSec: value("pxd_volume_throttle_wait_seconds_total") };
}

function pxd(...args: string[]): Promise<string> {
  return runOk(process.execPath, [pxdEntry, "--host", `${daemon.host}:${daemon.apiPort}`, ...args]);
}

test("a volume limited to 200 IOPS holds fio back: counted as throttled, and no faster than the limit allows", async () => {
  const v = await daemon.api.createVolume({ name: "lim", sizeBytes: 64 * MiB, maxIops: 200 });
  assert.equal(v.qos, { maxIops: 200, maxBandwidthBytesPerSec: 0, burstSec: 1 });
  const run = await fio("lim", 600);
  assert.is(run.ios, 600);
  // 200 saved up (a burst of 1 s) go at once, the other 400 at 200 a second: at least 2 s.
  assert.ok(run.sec >= 1.9, `600 writes at 200 IOPS took ${run.sec.toFixed(2)} s`);
  assert.ok(run.sec < 20, `600 writes took ${run.sec.toFixed(2)} s`);
  const t = await throttled("lim");
  assert.ok(t.requests >= 300 && t.requests <= 600, `throttled ${t.requests}`);
  assert.ok(t.waitSec > 1, `waited ${t.waitSec} s`);
  const inspect = await pxd("volume", "inspect", "lim");
  assert.match(inspect, /qos\s+at most 200 IOPS \(bursts of 1 s\) on each node its clients use/);
  assert.match(inspect, /waited\s+on \S+: \d+ requests held by the limits/);
  const json = JSON.parse(await pxd("volume", "inspect", "lim", "--json")) as { throttle: { throttledRequests: number } };
  assert.ok(json.throttle.throttledRequests >= 300);
});

test("pxd volume update --max-iops none removes the limit: nothing more is held", async () => {
  assert.match(await pxd("volume", "update", "lim", "--max-iops", "none"), /volume "lim" updated: no limits/);
  const before = await throttled("lim");
  await fio("lim", 600);
  assert.equal(await throttled("lim"), before);
});

test("a bandwidth limit set by volume update survives a restart of the daemon", async () => {
  assert.match(await pxd("volume", "update", "lim", "--max-bandwidth", "1M", "--burst-seconds", "1"), /at most 1\.00 MiB\/s/);
  await daemon.restart();
  assert.equal((await daemon.api.inspectVolume("lim")).qos, { maxIops: 0, maxBandwidthBytesPerSec: MiB, burstSec: 1 });
  // 3 MiB at 1 MiB/s with 1 MiB saved: at least 2 s.
  const run = await fio("lim", 48, "64k");
  assert.ok(run.sec >= 1.9, `3 MiB at 1 MiB/s took ${run.sec.toFixed(2)} s`);
  assert.ok((await throttled("lim")).requests > 0);
  // Bad input: a clear error, nothing changed.
  const bad = await pxd("volume", "update", "lim", "--max-bandwidth", "10").then(() => "", (e: Error) => e.message);
  assert.match(bad, /a limit is from 4\.00 KiB to 1\.00 TiB a second/);
  const none = await pxd("volume", "update", "lim").then(() => "", (e: Error) => e.message);
  assert.match(none, /nothing to change; give --size, --max-iops, --max-bandwidth, --burst-seconds or --snapshot-every/);
});

test("a snapshot's reads count against its volume's limits", async () => {
  await daemon.api.createSnapshot("lim", { name: "s" });
  const before = await throttled("lim");
  const started = performance.now();
  const out = await runOk("fio", [
    "--name=snap", "--ioengine=nbd", `--uri=${daemon.uri("lim@s")}`, "--readonly",
    "--rw=read", "--bs=64k", "--size=32M", "--iodepth=16", "--number_ios=48", "--output-format=json",
  ], { timeoutMs: 60000 });
  const sec = (performance.now() - started) / 1000;
  assert.is((JSON.parse(out.slice(out.indexOf("{"))) as { jobs: { error: number }[] }).jobs[0]!.error, 0);
  // 3 MiB at 1 MiB/s with at most 1 MiB saved: at least 2 s.
  assert.ok(sec >= 1.9, `3 MiB of the snapshot at 1 MiB/s took ${sec.toFixed(2)} s`);
  assert.ok((await throttled("lim")).requests > before.requests, "held by the volume's limit");
});

test.run();
