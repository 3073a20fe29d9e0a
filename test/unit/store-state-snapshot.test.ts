// Snapshots of a group without volume data (the meta group, whose state, the
// catalog, lives in memory): its log is compacted only behind a saved
// snapshot; the file and the log after it survive restarts; a leader's
// snapshot is saved, then its install logged, and a crash between the two is
// completed at open; a damaged or missing file stops the open with the reason
// (docs/formats/catalog-snapshot.md).

import { test } from "uvu";
import * as assert from "uvu/assert";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AssertionError } from "../../src/base/assert.js";
import { crc32c } from "../../src/base/crc32c.js";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { StoreRaftStorage } from "../../src/replication/raft-storage.js";
import { decodeStateSnapshot, encodeStateSnapshot, stateSnapshotFileVersion, stateSnapshotName, type StateSnapshot } from "../../src/store/state-snapshot.js";
import { Store, type RaftEntryInput } from "../../src/store/store.js";
import { tempDir } from "../helpers/tmp.js";

const meta = { groupId: 0, sizeBytes: 0 };
const volume = { groupId: 1, sizeBytes: 1024 * 1024 };

function open(dir: string): Promise<Store> {
  return Store.open({ disk: new NodeDisk(dir), defer: deferImmediate }, [meta, volume]);
}

function entries(from: number, to: number, term = 1): RaftEntryInput[] {
  const out: RaftEntryInput[] = [];
  for (let i = from; i <= to; i++) out.push({ index: i, term, type: 0, data: [Buffer.from(`entry ${i}`)] });
  return out;
}

function snap(index: number, term = 1, data = `state at ${index}`): StateSnapshot {
  return { index, term, conf: { voters: [1, 2, 3], learners: [4] }, data: Buffer.from(data) };
}

async function rejects(p: Promise<unknown>, re: RegExp): Promise<void> {
  const e = await p.then(() => undefined, (err: Error) => err);
  assert.ok(e !== undefined && re.test(e.message), `rejected with ${re}: ${e?.message ?? "it resolved"}`);
}

const text = (s: StateSnapshot | undefined): string | undefined => (s === undefined ? undefined : `${s.index}/${s.term}/${s.conf.voters.join(",")}+${s.conf.learners.join(",")}: ${Buffer.from(s.data).toString()}`);

test("the log of a group without data is compacted only behind its saved snapshot, which survives a restart", async () => {
  const t = tempDir("state-snap");
  let store = await open(t.dir);
  await store.appendRaftEntries(0, entries(1, 10), { term: 1, vote: 1, commit: 10 });
  store.markApplied(0, 10);
  assert.throws(() => store.compactRaftLog(0, 5), (e: Error) => e instanceof AssertionError && /only behind its saved snapshot/.test(e.message));
  await store.saveStateSnapshot(0, snap(8));
  store.compactRaftLog(0, 6);
  assert.throws(() => store.compactRaftLog(0, 9), (e: Error) => e instanceof AssertionError);
  assert.is(store.raftFirstIndex(0), 7);
  const storage = new StoreRaftStorage(store, 0, { voters: [1], learners: [] });
  const s = storage.snapshot();
  assert.equal([s.meta.index, s.meta.term, s.meta.conf, Buffer.from(s.data).toString()], [8, 1, { voters: [1, 2, 3], learners: [4] }, "state at 8"], "the core sends the saved snapshot, data and all");
  assert.throws(() => store.saveStateSnapshot(1, snap(3)), /holds volume data/);
  await store.close();
  store = await open(t.dir);
  assert.is(text(store.stateSnapshot(0)), "8/1/1,2,3+4: state at 8");
  assert.equal([store.raftFirstIndex(0), store.raftLastIndex(0)], [7, 10], "the log after the compaction point is there");
  assert.is(store.stateSnapshot(1), undefined);
  await store.close();
  t.remove();
});

test("saves run one at a time and the file only moves forward", async () => {
  const t = tempDir("state-snap");
  let store = await open(t.dir);
  await store.appendRaftEntries(0, entries(1, 30), { term: 1, vote: 1, commit: 30 });
  await Promise.all([store.saveStateSnapshot(0, snap(20)), store.saveStateSnapshot(0, snap(15)), store.saveStateSnapshot(0, snap(25))]);
  assert.is(store.stateSnapshot(0)?.index, 25);
  await store.closeWithoutCheckpoint();
  store = await open(t.dir);
  assert.is(text(store.stateSnapshot(0)), "25/1/1,2,3+4: state at 25");
  await store.close();
  t.remove();
});

test("a leader's snapshot is saved, then its install logged; recovery replays the install without staged data", async () => {
  const t = tempDir("state-snap");
  let store = await open(t.dir);
  await store.appendRaftEntries(0, entries(1, 3), { term: 1, vote: 1, commit: 2 });
  assert.throws(() => store.installSnapshot(0, 60, 5, { voters: [1, 2, 3], learners: [] }), /only after saving it/);
  await store.saveStateSnapshot(0, snap(60, 5));
  await store.installSnapshot(0, 60, 5, { voters: [1, 2, 3], learners: [] });
  await store.appendRaftEntries(0, entries(61, 62, 5), { term: 5, vote: 0, commit: 61 });
  const state = (s: Store): number[] => {
    const r = s.raftState(0);
    return [r.snapshotIndex, r.snapshotTerm, r.lastIndex, r.appliedIndex];
  };
  assert.equal(state(store), [60, 5, 62, 60]);
  await store.closeWithoutCheckpoint();
  store = await open(t.dir);
  assert.equal(state(store), [60, 5, 62, 60], "the install record replays");
  assert.equal(store.raftEntries(0, 61, 63, 1 << 20).map((e) => e.data.toString()), ["entry 61", "entry 62"]);
  await store.close();
  t.remove();
});

test("a node that stopped after saving a leader's snapshot and before logging its install completes the install at open", async () => {
  const t = tempDir("state-snap");
  let store = await open(t.dir);
  await store.appendRaftEntries(0, entries(1, 3), { term: 1, vote: 1, commit: 2 });
  await store.saveStateSnapshot(0, snap(50, 4));
  await store.closeWithoutCheckpoint();
  const lines: string[] = [];
  store = await Store.open({ disk: new NodeDisk(t.dir), defer: deferImmediate, log: (l) => lines.push(l) }, [meta, volume]);
  const r = store.raftState(0);
  assert.equal([r.snapshotIndex, r.snapshotTerm, r.lastIndex, r.appliedIndex, r.hardState.commit], [50, 4, 50, 50, 50]);
  assert.ok(lines.some((l) => /recorded the install of its snapshot at entry 50/.test(l)), lines.join("\n"));
  await store.appendRaftEntries(0, entries(51, 51, 4));
  await store.closeWithoutCheckpoint();
  store = await open(t.dir);
  assert.equal([store.raftState(0).snapshotIndex, store.raftLastIndex(0)], [50, 51], "the completed install is in the log: the entries after it follow it");
  await store.close();
  t.remove();
});

test("a damaged, foreign or missing snapshot file stops the open with the reason", async () => {
  const t = tempDir("state-snap");
  let store = await open(t.dir);
  await store.appendRaftEntries(0, entries(1, 10), { term: 1, vote: 1, commit: 10 });
  store.markApplied(0, 10);
  await store.saveStateSnapshot(0, snap(9));
  store.compactRaftLog(0, 9);
  await store.close();
  const file = join(t.dir, stateSnapshotName(0));
  const good = readFileSync(file);
  const flipped = Buffer.from(good);
  flipped[40]! ^= 0x01;
  writeFileSync(file, flipped);
  await rejects(open(t.dir), /snapshot file snapshot-0000000000: checksum mismatch/);
  rmSync(file);
  await rejects(open(t.dir), /compacted to entry 9, but the snapshot of its state that compaction needs \(the file snapshot-0000000000\) is missing/);
  writeFileSync(file, encodeStateSnapshot(0, snap(5)));
  await rejects(open(t.dir), /compacted to entry 9, past its saved snapshot at entry 5/);
  writeFileSync(file, good);
  store = await open(t.dir);
  assert.is(store.stateSnapshot(0)?.index, 9);
  await store.close();
  t.remove();
});

test("the file codec refuses another version, another group, or a length that does not add up", () => {
  const good = encodeStateSnapshot(0, snap(7, 2, "x".repeat(100)));
  assert.is(text(decodeStateSnapshot(0, good)), `7/2/1,2,3+4: ${"x".repeat(100)}`);
  assert.is(good[4], stateSnapshotFileVersion);
  const reseal = (b: Buffer): Buffer => {
    const c = Buffer.from(b);
    c.writeUInt32LE(crc32c(c.subarray(0, c.length - 4)) >>> 0, c.length - 4);
    return c;
  };
  const v2 = Buffer.from(good);
  v2[4] = 2;
  assert.throws(() => decodeStateSnapshot(0, reseal(v2)), /version 2 is not 1/);
  assert.throws(() => decodeStateSnapshot(3, good), /holds group 0, not 3/);
  const long = Buffer.from(good);
  long.writeUInt32LE(101, 32 + 8 + 8 * 4);
  assert.throws(() => decodeStateSnapshot(0, reseal(long)), /data of 101 bytes does not end where the checksum begins/);
  assert.throws(() => decodeStateSnapshot(0, good.subarray(0, 20)), /is not the size of a snapshot file/);
});

test.run();
