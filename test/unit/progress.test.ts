// How the CLI tells progress: a copy's line, and how far a volume's replicas are.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { copyText } from "../../src/cli/format.js";
import { volumeDone } from "../../src/cli/progress.js";
import type { VolumeInfo } from "../../src/api/types.js";

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

test.run();
