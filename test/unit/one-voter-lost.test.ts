// A volume whose only replica is this node (a one-voter Raft group) after a
// crash that left one acknowledged entry's record damaged: the driver applies
// the log to its end with that entry as lost, so every later acknowledged
// write is kept and only the lost write's block fails its checksum.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { closeSync, openSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { MultiRaft } from "../../src/replication/driver.js";
import { VolumeReplica, type ReplicaPort } from "../../src/replication/volume-replica.js";
import { ChecksumError } from "../../src/store/errors.js";
import { segmentName } from "../../src/store/segment-names.js";
import { Store } from "../../src/store/store.js";
import { tempDir } from "../helpers/tmp.js";

const volume = { groupId: 3, sizeBytes: 16 * 1024 * 1024 };
const block = (i: number): Buffer => Buffer.alloc(4096, 0x40 + i);

async function start(dir: string, lines: string[]): Promise<{ store: Store; driver: MultiRaft; port: ReplicaPort; replica: VolumeReplica; tick: NodeJS.Timeout }> {
  const store = await Store.open({ disk: new NodeDisk(dir), defer: deferImmediate, log: (l) => lines.push(l) }, [volume]);
  const driver = new MultiRaft({ nodeId: 1, store, send: () => true, defer: deferImmediate, random: { int: () => 0 }, log: (l) => lines.push(l) });
  const replica = new VolumeReplica(store, volume.groupId);
  driver.addGroup(volume.groupId, [1], replica);
  const tick = setInterval(() => driver.tick(), 10);
  tick.unref(); // a failed assertion ends the test instead of leaving the driver ticking
  for (let i = 0; i < 500 && !driver.readsHere(volume.groupId); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(driver.readsHere(volume.groupId), "the only voter leads");
  const port: ReplicaPort = { propose: (c) => driver.propose(volume.groupId, c), readBarrier: () => undefined, read: (o, l) => store.read(volume.groupId, o, l), cipher: () => undefined };
  return { store, driver, port, replica, tick };
}

test("the only voter keeps every acknowledged write after a damaged entry; only that write's block fails", async () => {
  const t = tempDir("one-voter");
  const lines: string[] = [];
  let n = await start(t.dir, lines);
  for (let i = 0; i < 24; i++) await n.replica.write(n.port, i * 4096, [block(i)], 4096);
  clearInterval(n.tick);
  n.driver.close();
  await n.store.closeWithoutCheckpoint(); // a crash: recovery replays these entries
  // Flip a bit in the data of the write of block 7 (entries after it in later commits prove it was acknowledged).
  const file = join(t.dir, segmentName(1));
  const bytes = readFileSync(file);
  const at = bytes.indexOf(block(7));
  assert.ok(at >= 0);
  const fd = openSync(file, "r+");
  writeSync(fd, Buffer.from([bytes[at + 100]! ^ 4]), 0, 1, at + 100);
  closeSync(fd);
  n = await start(t.dir, lines);
  assert.ok(lines.some((l) => /DATA DAMAGED: group 3: this node is the group's only voter and lost entry \d+ \(4096 bytes at volume offset 28672\)/.test(l)), lines.join("\n"));
  for (let i = 0; i < 24; i++) {
    if (i === 7) assert.throws(() => n.store.read(volume.groupId, i * 4096, 4096), (e: Error) => e instanceof ChecksumError);
    else assert.ok(n.store.read(volume.groupId, i * 4096, 4096).equals(block(i)), `block ${i}`);
  }
  assert.is(n.store.raftState(volume.groupId).recoverUntil, 0, "nothing is owed: nothing was cut");
  // A rewrite mends the block, and the group takes new writes after the lost entry.
  await n.replica.write(n.port, 7 * 4096, [block(70)], 4096);
  assert.ok(n.store.read(volume.groupId, 7 * 4096, 4096).equals(block(70)));
  clearInterval(n.tick);
  n.driver.close();
  await n.store.close();
  t.remove();
});

test.run();
