// A process for the fail-stop tests (test/unit/fail-stop.test.ts): real pxd
// parts (the NBD listener, the peer transport, the API server) with the
// daemon's fail-stop handler installed, and a bug planted where the scenario
// says. The test runs it as a child and checks how it ends.
//
//   node fail-stop-harness.js SCENARIO
//
// nbd-read     an Export's read throws an AssertionError (synchronously)
// nbd-write    an Export's write rejects with a TypeError
// peer         a peer message handler throws an AssertionError
// peer-bad     a handler throws PeerMessageError (a malformed message): the
//              connection closes, the process lives and prints "survived"
// api          an API handler throws an AssertionError
// rejection    a promise rejection nothing handles
//
// NBD and API scenarios print "ready PORT" once listening; the test then sends
// the request that reaches the bug.

import { AssertionError } from "../../src/base/assert.js";
import { printable } from "../../src/base/printable.js";
import { logLineCharsMax } from "../../src/constants.js";
import { installProcessFailStop } from "../../src/daemon/fail-stop.js";
import { listenNbd } from "../../src/os/nbd-listener.js";
import { startApiServer } from "../../src/api/server.js";
import { PeerMessageError } from "../../src/replication/transport.js";
import { MemoryRegistry } from "./memory-export.js";
import { sleep, startNode, waitFor } from "../cluster/transport-helpers.js";
import { FakeController } from "../unit/api-fake-controller.js";

const log = { info: (m: string) => console.log(`info ${m}`), warn: (m: string) => console.log(`warn ${m}`), error: (m: string) => console.error(`error ${m}`) };

async function nbd(fault: (op: string) => unknown): Promise<void> {
  const registry = new MemoryRegistry([{ name: "disk", sizeBytes: 1 << 20, fault }]);
  const listener = await listenNbd({ host: "127.0.0.1", port: 0, registry, log });
  console.log(`ready ${listener.address.port}`);
}

/** Node 2's handler does `onMessage` for what node 1 sends it; node 1 then sends "hello" once both are connected. */
async function peers(onMessage: (m: unknown) => void): Promise<{ send(m: unknown): boolean; got: unknown[]; logs: string[] }> {
  const a = await startNode(1, { peers: [2] });
  const b = await startNode(2, { peers: [1] });
  const got: unknown[] = [];
  b.listener.transport.onMessage((_from, m) => {
    got.push(m);
    onMessage(m);
  });
  await waitFor(() => a.listener.transport.isConnected(2) && b.listener.transport.isConnected(1), 10_000, "nodes 1 and 2 connected");
  return { send: (m) => a.listener.transport.send(2, m), got, logs: b.logs };
}

async function main(scenario: string | undefined): Promise<void> {
  // As src/daemon/main.ts logs: one line, control characters (the stack's newlines) escaped.
  installProcessFailStop((line) => console.error(printable(`error ${line}`, logLineCharsMax)));
  switch (scenario) {
    case "nbd-read":
      return nbd((op) => (op === "read" ? new AssertionError("planted: the read path's invariant") : undefined));
    case "nbd-write":
      return nbd((op) => (op === "write" ? new TypeError("planted: a property of undefined on the write path") : undefined));
    case "peer": {
      const p = await peers((m) => {
        if ((m as { kind?: unknown }).kind === "hello") throw new AssertionError("planted: the message handler's invariant");
      });
      p.send({ kind: "hello" });
      return;
    }
    case "peer-bad": {
      const p = await peers((m) => {
        if ((m as { kind?: unknown }).kind === "bad") throw new PeerMessageError("planted: a field of the wrong type");
      });
      p.send({ kind: "bad" });
      // The connection it came on is closed; the nodes connect again and a later message arrives.
      for (let i = 0; i < 150 && !p.got.some((m) => (m as { kind?: unknown }).kind === "good"); i++) {
        p.send({ kind: "good" });
        await sleep(100);
      }
      if (!p.got.some((m) => (m as { kind?: unknown }).kind === "good")) throw new Error("no message arrived after the malformed one");
      for (const l of p.logs) if (l.includes("malformed")) console.log(`node 2: ${l}`);
      console.log("survived");
      process.exit(0);
      return;
    }
    case "api": {
      const controller = new FakeController();
      controller.failNext = new AssertionError("planted: the API handler's invariant");
      const api = await startApiServer({ host: "127.0.0.1", port: 0, controller, log: (l) => console.log(l) });
      console.log(`ready ${api.port}`);
      return;
    }
    case "rejection":
      void Promise.reject(new AssertionError("planted: a rejection nobody awaits"));
      return;
    default:
      console.error(`unknown scenario ${String(scenario)}`);
      process.exit(2);
  }
}

await main(process.argv[2]);
