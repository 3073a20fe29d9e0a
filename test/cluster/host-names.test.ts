// --listen and --join take host names: a node listening on "localhost" and a
// node joining it through "localhost:PORT" form a cluster that replicates a
// volume; a name that does not resolve stops the start with a sentence.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { join } from "node:path";
import { DaemonProcess, freePort } from "../helpers/daemon.js";
import { waitUntil } from "../helpers/cluster.js";
import { runOk } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";

const t = tempDir("host-names");
const nodes: DaemonProcess[] = [];

test.after(async () => {
  for (const n of nodes) await n.dispose().catch(() => {});
  t.remove();
});

async function node(name: string, host: string, extra: string[]): Promise<DaemonProcess> {
  const d = new DaemonProcess(join(t.dir, name), host, await freePort(), await freePort(), () => {}, await freePort());
  d.extraArgs = ["--name", name, ...extra];
  nodes.push(d);
  return d;
}

test("a node on --listen localhost and one that --join localhost:PORT replicate a volume", async () => {
  // Both nodes take the test process's cluster secret from the environment (test/helpers/daemon.ts), so the helpers' admin token works on them.
  const first = await node("n1", "localhost", []);
  await first.start();
  assert.match(first.output, /--listen localhost resolves to (127\.0\.0\.1|::1)/);
  const second = await node("n2", "127.0.0.1", ["--join", `localhost:${first.apiPort}`]);
  await second.start();
  await waitUntil("both nodes up on both", async () => {
    for (const n of nodes) if ((await n.api.listNodes()).filter((x) => x.health === "up").length !== 2) return false;
    return true;
  });
  assert.is((await first.api.listNodes()).find((x) => x.name === "n1")?.address, "localhost", "the catalog keeps the name");
  await second.api.createVolume({ name: "named", sizeBytes: 16 * 1024 * 1024, repl: 2 });
  await runOk("qemu-io", ["-f", "raw", second.uri("named"), "-c", "write -P 0x66 0 1M"]);
  const read = await runOk("qemu-io", ["-f", "raw", first.uri("named"), "-c", "read -P 0x66 0 1M"]);
  assert.not.match(read, /fail/i);
});

test("a --listen name that does not resolve stops the start, saying so", async () => {
  const d = await node("n3", "no-such-host.invalid", []);
  const e = await d.start().then(() => undefined, (x: Error) => x);
  assert.ok(e !== undefined, "the daemon did not start");
  assert.match(d.output, /--listen "no-such-host\.invalid" does not resolve on this host \([A-Z_]+\); give an IP address, or a name that \/etc\/hosts or DNS knows/);
});

test.run();
