// SIGKILL the daemon in the middle of a write load; after a restart every
// write that had been acknowledged must read back. The test keeps its own
// record of acknowledgements: each write carries (block, sequence) in its
// data, at most one write per block is in flight, and after the crash each
// block must hold its last acknowledged write or the one that was in flight.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { CMD, RawClient } from "../helpers/nbd-raw-client.js";

const blockBytes = 4096;
const blocks = 2048; // an 8 MiB working set inside a 64 MiB volume
const queueDepth = 32;

interface BlockState {
  acked: number; // sequence of the last acknowledged write, 0 = never
  inFlight: number; // sequence in flight, 0 = none
}

function blockData(block: number, seq: number): Buffer {
  const b = Buffer.alloc(blockBytes);
  for (let i = 0; i < blockBytes; i += 16) {
    b.writeUInt32LE(block, i);
    b.writeUInt32LE(seq, i + 4);
    b.writeUInt32LE((block * 2654435761 + seq * 40503 + i) >>> 0, i + 8);
    b.writeUInt32LE(0x70786421, i + 12);
  }
  return b;
}

/**
 * Writes until the connection dies; returns how many writes were acknowledged
 * and how many were refused with ESHUTDOWN (allowed only once `stopping()`).
 */
async function writeLoad(client: RawClient, state: BlockState[], firstSeq: number, stopping = (): boolean => false): Promise<{ acked: number; refused: number; unanswered: number }> {
  let seq = firstSeq;
  let acked = 0;
  let refused = 0;
  const byCookie = new Map<bigint, number>();
  let block = 0;
  const send = (): void => {
    while (state[block]!.inFlight !== 0) block = (block * 7 + 13) % blocks;
    const s = state[block]!;
    s.inFlight = ++seq;
    byCookie.set(BigInt(seq), block);
    client.sendRequest(CMD.WRITE, 0, BigInt(seq), block * blockBytes, blockBytes, blockData(block, seq));
    block = (block * 31 + 17) % blocks;
  };
  for (let i = 0; i < queueDepth; i++) send();
  try {
    for (;;) {
      const r = await client.readReply(0);
      const b = byCookie.get(r.cookie);
      assert.ok(b !== undefined, "reply for a request we sent");
      byCookie.delete(r.cookie);
      const s = state[b]!;
      if (r.errno === 108 && stopping()) {
        refused++; // ESHUTDOWN: the daemon is stopping and did not take it
        s.inFlight = 0;
        continue;
      }
      assert.is(r.errno, 0, "writes succeed until the daemon goes away");
      s.acked = Number(r.cookie);
      s.inFlight = 0;
      acked++;
      if (!stopping()) send();
    }
  } catch (e) {
    if (!client.closed) throw e; // only the daemon going away may end the load
  }
  return { acked, refused, unanswered: byCookie.size };
}

async function verify(daemon: DaemonProcess, state: BlockState[]): Promise<{ inFlightLanded: number }> {
  const client = await RawClient.connect(daemon.nbdPort);
  await client.go("vol");
  let inFlightLanded = 0;
  for (let b = 0; b < blocks; b++) {
    const s = state[b]!;
    const got = await client.readAt(b * blockBytes, blockBytes, BigInt(b + 1));
    if (s.acked === 0 && s.inFlight === 0) {
      assert.ok(got.equals(Buffer.alloc(blockBytes)), `block ${b} was never written and reads as zeroes`);
      continue;
    }
    const seq = got.readUInt32LE(4);
    const ok = got.equals(blockData(b, seq)) && (seq === s.acked || (s.inFlight !== 0 && seq === s.inFlight));
    assert.ok(ok, `block ${b}: acknowledged seq ${s.acked}, in flight ${s.inFlight}, read seq ${seq} (${got.equals(blockData(b, seq)) ? "intact" : "garbled"})`);
    if (seq === s.inFlight && s.inFlight !== 0) inFlightLanded++;
    s.acked = seq;
    s.inFlight = 0;
  }
  client.destroy();
  return { inFlightLanded };
}

test("every acknowledged write survives SIGKILL in the middle of a write load, three times over", async () => {
  const daemon = await startDaemon();
  try {
    await daemon.api.createVolume({ name: "vol", sizeBytes: 64 * 1024 * 1024 });
    const state: BlockState[] = Array.from({ length: blocks }, () => ({ acked: 0, inFlight: 0 }));
    let seq = 0;
    for (let round = 0; round < 3; round++) {
      const client = await RawClient.connect(daemon.nbdPort);
      await client.go("vol");
      const load = writeLoad(client, state, seq);
      await new Promise((r) => setTimeout(r, 700 + round * 300));
      await daemon.kill();
      const { acked } = await load;
      seq += 1_000_000;
      assert.ok(acked > 500, `the load ran before the kill (${acked} writes acknowledged)`);
      await daemon.start();
      const r = await verify(daemon, state);
      console.log(`round ${round}: ${acked} writes acknowledged before SIGKILL, all present; ${r.inFlightLanded} in-flight writes also landed`);
    }
  } finally {
    await daemon.dispose();
  }
});

test("SIGTERM during a write load answers every request, exits 0, and keeps every acknowledged write", async () => {
  const daemon = await startDaemon();
  try {
    await daemon.api.createVolume({ name: "vol", sizeBytes: 64 * 1024 * 1024 });
    const state: BlockState[] = Array.from({ length: blocks }, () => ({ acked: 0, inFlight: 0 }));
    const client = await RawClient.connect(daemon.nbdPort);
    await client.go("vol");
    let stopping = false;
    const load = writeLoad(client, state, 0, () => stopping);
    await new Promise((r) => setTimeout(r, 700));
    stopping = true;
    const code = await daemon.stop();
    const r = await load;
    assert.is(code, 0, `orderly shutdown exits 0:\n${daemon.output.slice(-2000)}`);
    assert.is(r.unanswered, 0, `every request in flight got a reply before the connection closed (${r.acked} acknowledged, ${r.refused} refused with ESHUTDOWN)`);
    await daemon.start();
    await verify(daemon, state);
    assert.match(daemon.output, /0 log records replayed/, "a clean shutdown checkpoints: nothing to replay");
  } finally {
    await daemon.dispose();
  }
});

test.run();
