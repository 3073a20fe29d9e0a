// A quick throughput figure between two transports on loopback (not a
// benchmark: one run, printed, checked only against a floor far below it).
// 4 KiB messages one way, the sender keeping the queue full; then 1 MiB ones.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { addressOf, sleep, startNode, waitFor, type TestNode } from "./transport-helpers.js";

const KiB = 1024;

async function measure(a: TestNode, b: TestNode, messageBytes: number, durationMs: number): Promise<{ mbPerS: number; msgsPerS: number }> {
  const data = new Uint8Array(messageBytes).fill(7);
  const t = a.listener.transport;
  let sent = 0;
  const started = performance.now();
  while (performance.now() - started < durationMs) {
    // Fill up to the queue bound each turn, then let the event loop write and read.
    for (let i = 0; i < 4096 && t.send(b.id, { seq: sent, data }); i++) sent++;
    await new Promise((r) => setImmediate(r));
  }
  await waitFor(() => (b.got.get(a.id)?.length ?? 0) >= sent, 10_000, "the receiver to catch up");
  const s = (performance.now() - started) / 1000;
  b.got.clear();
  return { mbPerS: (sent * messageBytes) / s / 1e6, msgsPerS: sent / s };
}

test("4 KiB and 1 MiB messages between two transports on loopback", async () => {
  const a = await startNode(21);
  const b = await startNode(22);
  try {
    a.listener.transport.setPeers([addressOf(22)]);
    b.listener.transport.setPeers([addressOf(21)]);
    await waitFor(() => a.listener.transport.isConnected(22) && b.listener.transport.isConnected(21), 3_000, "connect");
    await sleep(50);
    const small = await measure(a, b, 4 * KiB, 1500);
    const large = await measure(a, b, 1024 * KiB, 1500);
    console.log(`\n  4 KiB: ${small.mbPerS.toFixed(0)} MB/s, ${small.msgsPerS.toFixed(0)} messages/s; 1 MiB: ${large.mbPerS.toFixed(0)} MB/s, ${large.msgsPerS.toFixed(0)} messages/s`);
    assert.ok(small.msgsPerS > 5_000, "well above what a Raft driver needs from one peer link");
    assert.ok(large.mbPerS > 100);
  } finally {
    await a.close();
    await b.close();
  }
});

test.run();
