// The kernel path of attach, end to end, in a qemu guest with Debian's kernel
// and nbd.ko (test/helpers/vm.ts): the pxd attach agent (native/pxd-attach,
// built static) connects /dev/nbd0 to a three-node cluster on the host, one
// forwarded guest address per node. The guest makes ext4, mounts it and
// writes files with fsync while the host SIGKILLs the node serving the
// connection: the agent moves the device to another node and the writes go
// on with no I/O error. Then every node is paused for longer than the
// dead-connection timeout: a read fails with EIO instead of hanging; once the
// nodes resume, the device serves again (through a second agent that adopted
// the device after the first was SIGKILLed). e2fsck -fn is clean, every
// fsynced file has its checksum, and the agent's exit leaves the device
// disconnected.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { startCluster, type Cluster } from "../helpers/cluster.js";
import { runOk } from "../helpers/run.js";
import { bootGuest, vmAvailable, type Guest } from "../helpers/vm.js";

const MiB = 1024 * 1024;
const nativeDir = fileURLToPath(new URL("../../../native/", import.meta.url));
/** Seconds a request waits for a live node before EIO (the agent's --timeout). */
const deadTimeoutS = 20;

// The guest's side. The agent's log goes to the console (stderr), so its
// "reconnected" line is seen by the host as it happens.
const script = String.raw`
set -e
pxd-attach connect --export vm --server 10.0.2.101:10809 --server 10.0.2.102:10809 --server 10.0.2.103:10809 \
  --connections 2 --timeout ${deadTimeoutS} --io-timeout 5 >/tmp/attached </dev/null &
AGENT=$!
n=0; while [ ! -s /tmp/attached ]; do n=$((n+1)); [ $n -lt 120 ] || { echo "NO-DEVICE"; exit 2; }; sleep 1; done
set -- $(cat /tmp/attached); DEV=$1
echo "ATTACHED $DEV $2"; cat /sys/block/nbd0/pid >/dev/null && echo "SYSFS-PID present"
mkfs.ext4 -q -F $DEV </dev/null
mkdir -p /mnt/v
mount -t ext4 $DEV /mnt/v
: >/tmp/files
( i=0
  while [ ! -e /tmp/stop ]; do
    if dd if=/dev/urandom of=/mnt/v/f$i bs=64k count=4 conv=fsync 2>/tmp/dd.err; then
      s=$(sha256sum /mnt/v/f$i | cut -d' ' -f1); echo "f$i $s" >>/tmp/files; echo "FILE f$i $s"
    else
      echo "WRITE-ERROR f$i $(cat /tmp/dd.err)"
    fi
    i=$((i+1))
  done ) </dev/null &
WRITER=$!
echo "WRITING"
read -r cmd; echo "HOST-SAID $cmd"
touch /tmp/stop; wait $WRITER
sync
echo 3 >/proc/sys/vm/drop_caches
bad=0; while read -r f s; do t=$(sha256sum /mnt/v/$f | cut -d' ' -f1); [ "$t" = "$s" ] || { echo "MISMATCH $f"; bad=1; }; done </tmp/files
echo "VERIFIED files=$(wc -l </tmp/files) bad=$bad"
umount /mnt/v
e2fsck -fn $DEV >/tmp/fsck.out 2>&1 </dev/null && echo "E2FSCK-CLEAN" || { cat /tmp/fsck.out; echo "E2FSCK-DIRTY"; }
kill -9 $AGENT; wait $AGENT 2>/dev/null || true
N=$(echo $DEV | tr -dc 0-9)
pxd-attach adopt $N --export vm --server 10.0.2.101:10809 --server 10.0.2.102:10809 --server 10.0.2.103:10809 \
  --connections 2 --timeout ${deadTimeoutS} --io-timeout 5 >/tmp/adopted </dev/null &
AGENT=$!
n=0; while [ ! -s /tmp/adopted ]; do n=$((n+1)); [ $n -lt 120 ] || { echo "NOT-ADOPTED"; exit 2; }; sleep 1; done
echo "ADOPTED $(cat /tmp/adopted)"
echo "READY-FOR-PAUSE"
read -r cmd; echo "HOST-SAID $cmd"
echo 3 >/proc/sys/vm/drop_caches
start=$(date +%s)
if dd if=$DEV of=/dev/null bs=4096 count=1 skip=1000 2>/tmp/dd.err </dev/null; then r=ok; else r="failed: $(tail -n1 /tmp/dd.err)"; fi
echo "PAUSED-READ $r after $(( $(date +%s) - start ))s"
read -r cmd; echo "HOST-SAID $cmd"
n=0; until dd if=$DEV of=/dev/null bs=4096 count=1 skip=2000 2>/dev/null </dev/null; do n=$((n+1)); [ $n -lt 60 ] || break; sleep 1; done
echo "RESUMED-READ tries=$n"
mount -t ext4 -o ro $DEV /mnt/v
bad=0; while read -r f s; do t=$(sha256sum /mnt/v/$f | cut -d' ' -f1); [ "$t" = "$s" ] || { echo "MISMATCH $f"; bad=1; }; done </tmp/files
echo "VERIFIED-AGAIN bad=$bad"
umount /mnt/v
kill $AGENT; wait $AGENT || true
pxd-attach status 0 | sed 's/^/STATUS /'
echo "DONE"
`;

test("kernel attach in a qemu guest: failover when the serving node dies, EIO (not a hang) when every node is paused, clean ext4", async () => {
  const vm = vmAvailable();
  assert.ok(vm.ok, vm.ok ? "" : `the VM harness cannot run here: ${vm.why}`);
  await runOk("make", ["-C", nativeDir, "-s", "static"]);
  assert.ok(existsSync(`${nativeDir}pxd-attach.static`));
  let c: Cluster | undefined;
  let g: Guest | undefined;
  try {
    c = await startCluster(3);
    await c.healthy();
    await c.nodes[0]!.api.createVolume({ name: "vm", sizeBytes: 128 * MiB, repl: 3 });
    await c.leaderOf("vm");
    g = await bootGuest({
      script,
      files: { "/bin/pxd-attach": `${nativeDir}pxd-attach.static` },
      forwards: c.nodes.map((n, i) => ({ guest: `10.0.2.10${i + 1}:10809`, host: `${n.host}:${n.nbdPort}` })),
      memMiB: 256,
      timeoutMs: 400_000,
    });
    const guest = g;
    const attached = await guest.waitFor(/^ATTACHED (\/dev\/nbd\d+) 10\.0\.2\.10(\d):10809$/, 120_000);
    const serving = Number(attached[2]) - 1;
    // The daemon's supervisor reads a connected device from /sys/block/nbdN/pid (src/os/attachments.ts).
    await guest.waitFor(/^SYSFS-PID present$/, 10_000);
    await guest.waitFor(/^WRITING$/, 120_000);
    const files = (): number => guest.lines.filter((l) => l.startsWith("FILE ")).length;
    const fileLines = async (n: number, what: string): Promise<void> => {
      const deadline = Date.now() + 120_000;
      while (files() < n) {
        if (Date.now() > deadline) throw new Error(`${what}: only ${files()} files written\n${guest.output()}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    await fileLines(3, "before the kill");

    // The node serving the guest's connection dies.
    await c.nodes[serving]!.kill();
    const before = files();
    const reconnected = await guest.waitFor(/(\d\d):(\d\d):(\d\d)\.(\d{3}) pxd-attach: nbd0: reconnected to 10\.0\.2\.10\d:10809 \(2 connections\)$/, 90_000);
    const deadAt = guest.lines.map((l) => /(\d\d):(\d\d):(\d\d)\.(\d{3}) pxd-attach: nbd0: the kernel reports a dead connection/.exec(l)).find((m) => m !== null);
    const ms = (m: RegExpMatchArray): number => ((Number(m[1]) * 60 + Number(m[2])) * 60 + Number(m[3])) * 1000 + Number(m[4]);
    const failoverMs = deadAt ? ms(reconnected) - ms(deadAt) : NaN;
    await fileLines(before + 3, "after the failover");
    guest.send("stop-writing");
    const verified = await guest.waitFor(/^VERIFIED files=(\d+) bad=(\d)$/, 120_000);
    assert.is(verified[2], "0", `every fsynced file reads back its checksum\n${guest.output()}`);
    assert.ok(Number(verified[1]) >= 6);
    assert.not.ok(guest.lines.some((l) => l.startsWith("WRITE-ERROR")), `no write failed across the failover\n${guest.output()}`);
    await guest.waitFor(/^E2FSCK-CLEAN$/, 120_000);

    // The agent dies (SIGKILL) and a new one adopts the device: it serves the rest of the test.
    await guest.waitFor(/^ADOPTED \/dev\/nbd\d+ adopting$/, 60_000);
    // Its probe (logged before or after the script's line, whichever comes first).
    const offered = /pxd-attach: nbd0: offered the kernel a connection to 10\.0\.2\.10\d:10809 in place of any dead one$/;
    for (const deadline = Date.now() + 60_000; !guest.lines.some((l) => offered.test(l)); ) {
      if (Date.now() > deadline) throw new Error(`the adopting agent made no probe\n${guest.output()}`);
      await new Promise((r) => setTimeout(r, 200));
    }

    // Every node paused for longer than the dead-connection timeout: EIO, not a hang.
    await guest.waitFor(/^READY-FOR-PAUSE$/);
    const alive = c.others(serving);
    for (const i of alive) c.nodes[i]!.pause();
    guest.send("read-while-paused");
    const paused = await guest.waitFor(/^PAUSED-READ (.*) after (\d+)s$/, (deadTimeoutS + 90) * 1000);
    for (const i of alive) c.nodes[i]!.resume();
    assert.match(paused[1]!, /^failed: .*(I\/O error|Input\/output error)/, `the read fails with EIO\n${guest.output()}`);
    assert.ok(Number(paused[2]) >= deadTimeoutS - 1, `it failed only after the timeout (${paused[2]} s)`);
    guest.send("nodes-resumed");
    const resumed = await guest.waitFor(/^RESUMED-READ tries=(\d+)$/, 120_000);
    assert.ok(Number(resumed[1]) < 60, `the device serves again once the nodes are back\n${guest.output()}`);
    assert.is((await guest.waitFor(/^VERIFIED-AGAIN bad=(\d)$/, 120_000))[1], "0");
    const status = await guest.waitFor(/^STATUS nbd0 (\w+)$/, 60_000);
    assert.is(status[1], "idle", "the agent's exit disconnected the device");
    await guest.waitFor(/^DONE$/, 30_000);
    assert.is(await guest.exit, 0, guest.output());
    console.log(`# failover: the kernel's dead-connection report to the new connection in ${failoverMs} ms (the agent's clock); with every node paused a read failed with EIO after ${paused[2]} s (--io-timeout 5 + --timeout ${deadTimeoutS})`);
  } finally {
    await g?.kill();
    await c?.dispose();
  }
});

test.run();
