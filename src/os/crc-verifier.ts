// Checks the blocks of large reads on a worker thread (src/os/crc-worker.ts),
// so the event loop only reads and sends them: the store's BlockVerifier in
// the daemon. The buffers are SharedArrayBuffers, handed over without a copy;
// the caller leaves a buffer alone until its check has answered.

import { Worker } from "node:worker_threads";
import { assert } from "../base/assert.js";
import type { BlockChecks, BlockVerifier } from "../store/block-checks.js";

export class CrcWorker implements BlockVerifier {
  private readonly worker: Worker;
  private nextId = 1;
  /** Checks sent and not answered: at most one per NBD request in flight (ioNodeRequestsInFlightMax), each a read that waits for it. */
  private readonly waiting = new Map<number, (bad: number[]) => void>();
  private closing = false;

  /** `failed`: the thread died or threw, a bug (the daemon stops, DESIGN: fail-stop). */
  constructor(failed: (e: Error) => void) {
    this.worker = new Worker(new URL("./crc-worker.js", import.meta.url));
    this.worker.on("message", (m: { id: number; bad: number[] }) => {
      const answer = this.waiting.get(m.id);
      assert(answer !== undefined, "the checksum thread answers each request once");
      this.waiting.delete(m.id);
      if (this.waiting.size === 0) this.worker.unref();
      answer(m.bad);
    });
    this.worker.on("error", (e) => failed(e));
    this.worker.on("exit", (code) => {
      if (!this.closing) failed(new Error(`the checksum thread exited with code ${code}`));
    });
    // Idle, it keeps the process alive no more than a closed socket does; a check it owes does (check()).
    this.worker.unref();
  }

  check(buf: Uint8Array, checks: BlockChecks): Promise<number[]> {
    assert(buf.buffer instanceof SharedArrayBuffer, "the checksum thread sees only shared buffers");
    const id = this.nextId++;
    if (this.waiting.size === 0) this.worker.ref();
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.worker.postMessage({ id, buf, runs: checks.runs, blocks: checks.blocks });
    });
  }

  /** Stops the thread; checks still waiting never answer (their reads' connections are closed first). */
  async close(): Promise<void> {
    this.closing = true;
    await this.worker.terminate();
  }
}
