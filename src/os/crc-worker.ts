// The checksum thread (src/os/crc-verifier.ts runs it): checks the blocks of
// large reads, whose buffers are SharedArrayBuffers the event loop filled.

import { parentPort } from "node:worker_threads";
import { failedBlocks, type BlockChecks } from "../store/block-checks.js";

interface CheckRequest extends BlockChecks {
  id: number;
  buf: Uint8Array;
}

const port = parentPort;
if (port === null) throw new Error("crc-worker.js runs as a worker thread (src/os/crc-verifier.ts starts it)");
port.on("message", (m: CheckRequest) => {
  port.postMessage({ id: m.id, bad: failedBlocks(m.buf, m) });
});
