// Why a node is degraded (src/daemon/health.ts): each rule on its own, the
// sentences say what to do, and a healthy node has no reason at all.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { diskLowBytes, healthReasons, type HealthFacts } from "../../src/daemon/health.js";
import { diskFreeBytesMin, segmentBytes } from "../../src/constants.js";

const GiB = 1024 ** 3;
const healthy: HealthFacts = {
  nodesDown: [],
  catalogStopped: undefined,
  volumesStopped: [],
  storeFailure: undefined,
  disk: { totalBytes: 100 * GiB, freeBytes: 50 * GiB },
  volumesDamaged: [],
  volumesRecovering: [],
};

test("a healthy node has no reasons", () => {
  assert.equal(healthReasons(healthy), []);
});

test("a disk is nearly full under 5% free, or under two segments on a small one", () => {
  assert.is(diskFreeBytesMin, 2 * segmentBytes);
  assert.is(diskLowBytes(100 * GiB), 5 * GiB);
  assert.is(diskLowBytes(GiB), 2 * segmentBytes);
  assert.equal(healthReasons({ ...healthy, disk: { totalBytes: 100 * GiB, freeBytes: 5 * GiB } }), []);
  assert.equal(healthReasons({ ...healthy, disk: { totalBytes: 100 * GiB, freeBytes: 5 * GiB - 1 } }), [
    "the data dir's filesystem is nearly full: 5.00 GiB free of 100 GiB, under 5.00 GiB; the store needs room for new log segments: free space or move the data dir to a larger disk",
  ]);
});

test("a stopped store, catalog group and volume groups each say what happened and what to do", () => {
  const r = healthReasons({
    ...healthy,
    storeFailure: "cannot start log segment 3: ENOSPC; free disk space, then restart the daemon",
    catalogStopped: "cannot start log segment 3: ENOSPC; free disk space, then restart the daemon",
    volumesStopped: [{ name: "db", why: "ENOSPC" }],
  });
  assert.equal(r, [
    "the store stopped taking writes (cannot start log segment 3: ENOSPC; free disk space, then restart the daemon); nothing more is written on this node until the daemon restarts: free space or fix the disk, then restart it",
    "the catalog's Raft group stopped on this node (its log could not be written: the store stopped); this node no longer follows catalog changes: restart the daemon once the store takes writes",
    "the replica of volume db stopped on this node (ENOSPC); other replicas serve it: restart the daemon once the store takes writes",
  ]);
  const many = healthReasons({ ...healthy, volumesStopped: "abcdefg".split("").map((name) => ({ name, why: "EIO" })) });
  assert.equal(many, ["the replica of 7 volumes (a, b, c, d, e and 2 more) stopped on this node (EIO); other replicas serve it: restart the daemon once the store takes writes"]);
});

test("damaged data with no good copy, and a replica getting back lost log entries, each say what it means", () => {
  assert.equal(healthReasons({ ...healthy, volumesDamaged: [{ name: "db", blocks: 2 }, { name: "logs", blocks: 1 }] }), [
    "3 block(s) of db, logs failed their checksum here and no replica had a good copy: reads of them fail with EIO (the log names the offsets); rewrite them or restore the volume from a backup",
  ]);
  assert.equal(healthReasons({ ...healthy, volumesRecovering: ["db"] }), [
    "the replica of db here lost Raft log entries to damage on disk and is getting them back from its leader; it does not vote until then, so its group tolerates one failure less",
  ]);
});

test("nodes down are named", () => {
  assert.equal(healthReasons({ ...healthy, nodesDown: ["node3"] }), [
    "node node3 is down: this node has no connection to it; start it again (the catalog's leader moves its replicas elsewhere after --replace-down-after)",
  ]);
  assert.match(healthReasons({ ...healthy, nodesDown: ["a", "b"] })[0] ?? "", /^2 nodes \(a, b\) are down: this node has no connection to them; start them again/);
});

test.run();
