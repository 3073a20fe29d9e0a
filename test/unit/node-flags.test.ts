// The daemon's Node.js flags: which ones a command line lacks.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { daemonNodeFlags, missingDaemonNodeFlags } from "../../src/os/node-flags.js";

test("a command line without the flags lacks all of them", () => {
  assert.equal(missingDaemonNodeFlags([]), [...daemonNodeFlags]);
  assert.equal(missingDaemonNodeFlags(["--enable-source-maps"]), [...daemonNodeFlags]);
});

test("the flags as given, with V8's underscores, or with a larger size are in force", () => {
  assert.equal(missingDaemonNodeFlags([...daemonNodeFlags]), []);
  assert.equal(missingDaemonNodeFlags(["--initial_old_space_size=64"]), []);
  assert.equal(missingDaemonNodeFlags(["--initial-old-space-size=256"]), []);
});

test("a smaller size or a malformed value does not count", () => {
  assert.equal(missingDaemonNodeFlags(["--initial-old-space-size=32"]), [...daemonNodeFlags]);
  assert.equal(missingDaemonNodeFlags(["--initial-old-space-size=lots"]), [...daemonNodeFlags]);
});

test.run();
