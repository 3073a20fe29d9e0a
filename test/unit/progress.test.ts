// How the CLI tells progress: a copy's line, how far a volume's replicas are,
// and a byte count's bar or JSON lines (pxd backup).

import { test } from "uvu";
import * as assert from "uvu/assert";
import { copyText } from "../../src/cli/format.js";
import { byteProgress, volumeDone } from "../../src/cli/progress.js";
import type { VolumeInfo } from "../../src/api/types.js";
import { CopyRates, type CopyAt } from "../../src/daemon/copy-progress.js";
import { sumSamples, type VolumeSample } from "../../src/daemon/volume-stats.js";

const GiB = 1024 ** 3;

test("a copy shows bytes done of the total, the rate and the time left", () => {
  assert.is(copyText({ doneBytes: 1.5 * GiB, totalBytes: 10 * GiB, bytesPerSec: 96 * 1024 * 1024, etaSec: 90.6, delta: false }), "copy 1.50 GiB of 10.0 GiB (15%), 96.0 MiB/s, 1m31s left");
  assert.is(copyText({ doneBytes: 0, totalBytes: GiB, bytesPerSec: 0, delta: true }), "changes 0 B of 1.00 GiB (0%)");
  assert.is(copyText({ doneBytes: GiB, totalBytes: GiB, bytesPerSec: 1, etaSec: 4000, delta: false }), "copy 1.00 GiB of 1.00 GiB (100%), 1 B/s, 1h06m left");
});

test("a volume is as far as the mean of its replicas: in sync, its copy, or its share of the log", () => {
  const v = {
    repl: 3,
    replicas: [
      { node: "a", nodeId: 1, state: "in-sync", leader: true },
      { node: "b", nodeId: 2, state: "catching-up", leader: false, copy: { doneBytes: 1, totalBytes: 4, bytesPerSec: 0, delta: false } },
      { node: "c", nodeId: 3, state: "catching-up", leader: false, progress: "50/100, learner" },
    ],
  } as unknown as VolumeInfo;
  assert.ok(Math.abs(volumeDone(v) - (1 + 0.25 + 0.5) / 3) < 1e-9);
});

test("a copy's rate counts from where it was first seen; a copy that starts over starts a new count", () => {
  let now = 0;
  let copies: CopyAt[] = [{ to: 2, cursorBytes: 0, sizeBytes: 1000, delta: false }];
  const rates = new CopyRates((group) => (group === 7 ? copies : []), () => now);
  rates.track([7]);
  assert.equal(rates.progress(7, 2), { doneBytes: 0, totalBytes: 1000, bytesPerSec: 0, delta: false }, "no rate yet");
  assert.is(rates.progress(7, 3), undefined, "no copy to node 3");
  now = 2000;
  copies = [{ to: 2, cursorBytes: 400, sizeBytes: 1000, delta: false }];
  rates.track([7]);
  assert.equal(rates.progress(7, 2), { doneBytes: 400, totalBytes: 1000, bytesPerSec: 200, etaSec: 3, delta: false });
  copies = [{ to: 2, cursorBytes: 100, sizeBytes: 1000, delta: true }];
  assert.is(rates.progress(7, 2)!.bytesPerSec, 0, "started over");
  copies = [];
  rates.track([7]);
  assert.is(rates.progress(7, 2), undefined);
});

test("several nodes' samples of a volume sum second by second, latencies weighted by IOPS", () => {
  const s = (at: number, writeIops: number, writeLatencyMs: number): VolumeSample => ({ at, readIops: 0, writeIops, readBytesPerSec: 0, writeBytesPerSec: writeIops * 4096, readLatencyMs: 0, writeLatencyMs, inFlight: 1 });
  const sum = sumSamples([[s(1000, 100, 1), s(2000, 100, 1)], [s(2100, 300, 3), s(3000, 10, 2)]]);
  assert.equal(sum.map((x) => [x.at, x.writeIops, x.writeLatencyMs, x.inFlight]), [[1000, 100, 1, 1], [2000, 400, 2.5, 2], [3000, 10, 2, 1]]);
  assert.is(sum[1]!.writeBytesPerSec, 400 * 4096);
});

test("a byte count is a JSON line a second off a terminal, a bar redrawn in place on one; the last line once", () => {
  const lines: string[] = [];
  const json = byteProgress({ isTTY: false, write: (t: string) => lines.push(t) }, "backup v");
  json.update(1, 4);
  json.update(2, 4); // within the second: not written
  json.end();
  json.end();
  assert.is(lines.length, 2);
  const last = JSON.parse(lines[1]!) as { what: string; doneBytes: number; totalBytes: number; done: number };
  assert.equal([last.what, last.doneBytes, last.totalBytes, last.done], ["backup v", 2, 4, 0.5]);
  const drawn: string[] = [];
  const bar = byteProgress({ isTTY: true, write: (t: string) => drawn.push(t) }, "restore");
  bar.update(3, 4);
  assert.ok(bar.restart());
  bar.update(4, 4);
  bar.end();
  assert.match(drawn[0]!, /^\r\x1b\[2Krestore \[#{23}-{7}\]  75%/);
  assert.is(drawn[1], "\n", "starting over keeps the old bar's line");
  assert.match(drawn.at(-1)!, /100%.*\n$/);
});

test.run();
