// This host's attachment records (src/os/attachments.ts) in a real run dir:
// the server an agent's log says it uses, the cluster in its backend
// identifier, and the daemon's supervisor turn: a failover the agent logged
// updates the record, a dead agent of a device the kernel no longer has is
// left for detach, one daemon per host holds the supervisor lock, and a
// record pxd did not write is not trusted.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { agentCluster, agentServer, readRecord, releaseSupervisorLock, superviseAgents, writeRecord, type AttachRecord } from "../../src/os/attachments.js";
import { tempDir } from "../helpers/tmp.js";

const t = tempDir("attach-records");
process.env["PXD_RUN_DIR"] = t.dir;

/** A pid no process has: one that just ended. */
const deadPid = ((): number => spawnSync("true").pid!)();

function record(volume: string, pid: number, server = "10.0.0.1:10809"): AttachRecord {
  return {
    volume,
    host: "h1",
    via: "kernel",
    device: "/dev/nbd9",
    pid,
    readOnly: false,
    server,
    agentOptions: ["--export", volume, "--server", server, "--backend", "pxd:c0ffee:7"],
    api: "10.0.0.1:9001",
  };
}

test("the agent's server is its log's last connected or reconnected line; a probe's offer does not count", () => {
  writeFileSync(
    join(t.dir, "db.log"),
    [
      "14:28:13.086 pxd-attach: nbd0: connected to 10.0.2.101:10809, export \"db\", 134217728 bytes, 1 connection(s), timeout 20s",
      "14:28:19.957 pxd-attach: nbd0: the kernel reports a dead connection to 10.0.2.101:10809",
      "14:28:19.998 pxd-attach: nbd0: reconnected to 10.0.2.102:10809 (1 connection)",
      "14:28:25.938 pxd-attach: nbd0: offered the kernel a connection to 10.0.2.103:10809 in place of any dead one",
      "",
    ].join("\n"),
  );
  assert.is(agentServer("db"), "10.0.2.102:10809");
  assert.is(agentServer("nolog"), undefined);
  assert.is(agentCluster(record("db", 1)), "c0ffee");
  assert.is(agentCluster({ ...record("db", 1), agentOptions: ["--export", "db"] }), undefined);
});

test("a supervisor turn: a live agent that failed over updates its record; a dead agent whose device is gone is left for detach", async () => {
  writeRecord(record("db", process.pid, "10.0.2.101:10809"));
  writeRecord(record("gone", deadPid));
  writeFileSync(join(t.dir, "gone.log"), "");
  const turn = await superviseAgents();
  assert.equal(turn.said, []);
  assert.equal(turn.moved.map((r) => [r.volume, r.server]), [["db", "10.0.2.102:10809"]]);
  assert.is(readRecord("db")?.server, "10.0.2.102:10809");
  assert.is(readRecord("gone")?.pid, deadPid, "nothing restarted: the kernel has no /dev/nbd9 connected");
  assert.equal((await superviseAgents()).moved, [], "the record says it now: not reported again");
});

test("one supervisor per host: while this process holds the lock another cannot bind it; release lets it", async () => {
  await superviseAgents();
  const name = `\\0pxd-attach-supervisor:${t.dir}`;
  const tryBind = (): string =>
    spawnSync(process.execPath, ["-e", `require("net").createServer().once("error",e=>{console.log(e.code);process.exit(0)}).listen({path:"${name}"},()=>{console.log("bound");process.exit(0)})`], { encoding: "utf8" }).stdout.trim();
  assert.is(tryBind(), "EADDRINUSE");
  releaseSupervisorLock();
  await new Promise((r) => setTimeout(r, 50));
  assert.is(tryBind(), "bound");
});

test("a record that is not one pxd wrote is ignored: a pid of 0 or 1, another device, a fuseDir outside the run dir", () => {
  for (const bad of [{ pid: 0 }, { pid: 1 }, { pid: -1 }, { device: "/etc/passwd" }, { fuseDir: "/" }, { volume: "other" }]) {
    writeFileSync(join(t.dir, "bad.json"), JSON.stringify({ ...record("bad", process.pid), ...bad }));
    assert.is(readRecord("bad"), undefined, JSON.stringify(bad));
  }
  writeFileSync(join(t.dir, "bad.json"), JSON.stringify(record("bad", process.pid)));
  assert.ok(readRecord("bad") !== undefined);
});

test.after(() => t.remove());
test.run();
