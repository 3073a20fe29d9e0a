// Hostile crowds against a real daemon process (docs/formats/nbd.md, "Memory"
// and "Connections"; docs/formats/control-api.md): clients that pipeline
// 32 MiB READs and never read a reply, idle connections that fill every
// slot, and senders of maximum-size nested JSON to the control API. Each
// time the daemon's memory stays bounded, a fresh client still connects and
// reads the right bytes, and the daemon says what it did in its log.

import { readFileSync } from "node:fs";
import { testAdminToken } from "../helpers/auth.js";
import { request } from "node:https";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { apiBodyBytesMax, nbdConnectionsMax, nbdConnectionsPerAddressMax, nbdNodeBytesInFlightMax } from "../../src/constants.js";
import { waitUntil } from "../helpers/cluster.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { CMD, RawClient, pattern } from "../helpers/nbd-raw-client.js";

const MiB = 1024 * 1024;
const data = pattern(4096, 13);
let daemon: DaemonProcess;

test.before(async () => {
  daemon = await startDaemon("127.0.0.1", ["--nbd-idle-timeout", "1"]);
  await daemon.api.createVolume({ name: "disk", sizeBytes: 128 * MiB });
  const c = await RawClient.connect(daemon.nbdPort);
  await c.go("disk");
  assert.is(await c.writeAt(4 * MiB, data), 0);
  c.destroy();
});

test.after(async () => {
  await daemon.dispose();
});

async function nbdGauge(name: string): Promise<number> {
  const m = new RegExp(`^pxd_nbd_${name} (\\d+)$`, "m").exec(await daemon.api.metrics());
  assert.ok(m, `/metrics has pxd_nbd_${name}`);
  return Number(m[1]);
}

function daemonMiB(field: "VmRSS" | "VmHWM"): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${daemon.pid}/status`, "utf8"));
  return Number(m?.[1]) / 1024;
}

/** A new client (from `localAddress`, if given) reaches transmission and reads what was written before the attack; returned open. */
async function freshClientReads(localAddress?: string): Promise<RawClient> {
  const c = await RawClient.connect(daemon.nbdPort, "127.0.0.1", localAddress);
  await c.go("disk");
  assert.equal(await c.readAt(4 * MiB, data.length), data);
  return c;
}

test("24 clients that pipeline 32 MiB READs and never read hold at most the node budget; a fresh client still reads; the bytes come back", async () => {
  const hogs: RawClient[] = [];
  for (let i = 0; i < 24; i++) {
    const c = await RawClient.connect(daemon.nbdPort);
    await c.go("disk");
    c.socket.pause();
    for (let k = 0; k < 128; k++) c.sendRequest(CMD.READ, 0, BigInt(k), (k % 4) * 32 * MiB, 32 * MiB);
    hogs.push(c);
  }
  await waitUntil("hogs waiting for the node budget", async () => (await nbdGauge("waiting_connections")) > 0);
  (await freshClientReads()).destroy();
  assert.ok((await nbdGauge("held_bytes_peak")) <= nbdNodeBytesInFlightMax, "the accounting never passed the budget");
  // Without the budget these clients took 3.1 GiB (docs/formats/nbd.md); the bound leaves room for the daemon's own 100 MiB or so.
  assert.ok(daemonMiB("VmHWM") < nbdNodeBytesInFlightMax / MiB + 256, `daemon peak RSS ${daemonMiB("VmHWM")} MiB`);
  for (const c of hogs) c.destroy();
  await waitUntil("every byte held given back", async () => (await nbdGauge("held_bytes")) === 0 && (await nbdGauge("connections")) === 0);
  (await freshClientReads()).destroy();
});

test("idle connections filling every slot: one over an address's cap is refused, a fresh client gets the slot of the longest idle one", async () => {
  const busy: RawClient[] = [];
  for (let i = 0; i < nbdConnectionsPerAddressMax; i++) {
    const c = await RawClient.connect(daemon.nbdPort, "127.0.0.1", "127.0.0.2");
    await c.go("disk");
    c.sendRequest(CMD.WRITE, 0, 1n, 8 * MiB, 4096, Buffer.alloc(100)); // a payload still arriving: busy, never idle
    busy.push(c);
  }
  const over = await RawClient.connect(daemon.nbdPort, "127.0.0.1", "127.0.0.2");
  assert.ok(await over.waitClosed(), "the address is at its cap and none of its connections is idle");
  const idle: RawClient[] = [];
  for (const address of ["127.0.0.3", "127.0.0.4", "127.0.0.5"]) {
    for (let i = 0; i < nbdConnectionsPerAddressMax; i++) {
      const c = await RawClient.connect(daemon.nbdPort, "127.0.0.1", address);
      await c.go("disk");
      idle.push(c);
    }
  }
  assert.is(await nbdGauge("connections"), nbdConnectionsMax);
  await new Promise((r) => setTimeout(r, 1200)); // let them pass the idle timeout (--nbd-idle-timeout 1)
  const fresh = [await freshClientReads("127.0.0.9")];
  assert.ok(await idle[0]!.waitClosed(), "the connection idle longest made room");
  const again = await RawClient.connect(daemon.nbdPort, "127.0.0.1", "127.0.0.2");
  assert.ok(await again.waitClosed(), "idle connections of other addresses do not make room over an address's cap");
  fresh.push(await freshClientReads("127.0.0.3")); // the node is full again: the next idle longest makes room
  assert.ok(await idle[1]!.waitClosed());
  assert.not.ok(busy.some((c) => c.closed), "busy connections are never evicted");
  assert.is(await nbdGauge("idle_evictions_total"), 2);
  assert.match(daemon.output, /refused, 64 connections from 127\.0\.0\.2 \(limit 64\)/);
  assert.match(daemon.output, /idle for \d+ ms; closed to make room for 127\.0\.0\.9/);
  for (const c of [...busy, ...idle, ...fresh]) c.destroy();
  await waitUntil("connections closed", async () => (await nbdGauge("connections")) === 0);
});

function post(body: Buffer): Promise<number> {
  return new Promise((resolve) => {
    const headers = { "Content-Type": "application/json", "Content-Length": body.length, Authorization: `Bearer ${testAdminToken}` };
    const req = request({ host: "127.0.0.1", port: daemon.apiPort, method: "POST", path: "/v1/volumes", headers, agent: false, ca: readFileSync(daemon.caFile) }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", () => resolve(-1)); // the server may close before it read a refused body
    req.end(body);
  });
}

test("four senders of maximum-size nested JSON get 400 and 413 while NBD reads go on", async () => {
  const nested = (bytes: number): Buffer => Buffer.concat([Buffer.alloc(bytes / 2, "["), Buffer.alloc(bytes / 2, "]")]);
  const statuses: number[] = [];
  let stop = false;
  const sender = async (body: Buffer): Promise<void> => {
    while (!stop) statuses.push(await post(body));
  };
  const senders = [nested(apiBodyBytesMax), nested(apiBodyBytesMax), nested(MiB), nested(MiB)].map(sender);
  const c = await RawClient.connect(daemon.nbdPort);
  await c.go("disk");
  for (let i = 0; i < 200; i++) assert.equal(await c.readAt(4 * MiB, data.length, BigInt(i)), data);
  c.destroy();
  stop = true;
  await Promise.all(senders);
  assert.ok(statuses.includes(400) && statuses.includes(413), statuses.slice(0, 20).join(","));
  assert.ok(statuses.every((s) => s === 400 || s === 413 || s === -1), "no body reached the controller");
  assert.equal((await daemon.api.listVolumes()).map((v) => v.name), ["disk"]);
});

test("no internal errors", () => {
  assert.not.match(daemon.output, /internal error|uncaught|TypeError|RangeError/i);
});

test.run();
