// A volume grown online grows its kernel device in place (native/pxd-attach:
// on SIGHUP, and every 10 s, it asks its server the export's size and sets a
// larger one with NBD_CMD_RECONFIGURE and NBD_ATTR_SIZE_BYTES), in a qemu
// guest with Debian's kernel (test/helpers/vm.ts). The guest writes past the
// old end through the same device, and the host reads those bytes back over
// NBD.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { startCluster, type Cluster } from "../helpers/cluster.js";
import { NbdTarget } from "../helpers/checker.js";
import { runOk } from "../helpers/run.js";
import { bootGuest, vmAvailable, type Guest } from "../helpers/vm.js";

const MiB = 1024 * 1024;
const nativeDir = fileURLToPath(new URL("../../../native/", import.meta.url));

// 64 KiB blocks: block 1600 is at 100 MiB, past the old end (64 MiB), inside the new one (128 MiB).
const script = String.raw`
set -e
pxd-attach connect --export vm --server 10.0.2.101:10809 --timeout 20 --io-timeout 5 >/tmp/attached </dev/null &
AGENT=$!
n=0; while [ ! -s /tmp/attached ]; do n=$((n+1)); [ $n -lt 120 ] || { echo "NO-DEVICE"; exit 2; }; sleep 1; done
set -- $(cat /tmp/attached); DEV=$1
OLD=$(cat /sys/block/nbd0/size)
echo "SIZE $OLD"
dd if=/dev/urandom of=/tmp/blk bs=64k count=1 2>/dev/null
echo "BLOCK $(sha256sum /tmp/blk | cut -d' ' -f1)"
if dd if=/tmp/blk of=$DEV bs=64k seek=1600 count=1 conv=fsync 2>/dev/null; then echo "PAST-END wrote"; else echo "PAST-END refused"; fi
echo "READY"
read -r cmd; echo "HOST-SAID $cmd"
kill -HUP $AGENT
n=0; while [ "$(cat /sys/block/nbd0/size)" = "$OLD" ]; do n=$((n+1)); [ $n -lt 30 ] || break; sleep 1; done
echo "SIZE $(cat /sys/block/nbd0/size) after $n s"
dd if=/tmp/blk of=$DEV bs=64k seek=1600 count=1 conv=fsync 2>/tmp/dd.err </dev/null && echo "WROTE" || echo "WRITE-ERROR $(cat /tmp/dd.err)"
echo 3 >/proc/sys/vm/drop_caches
dd if=$DEV of=/tmp/back bs=64k skip=1600 count=1 2>/dev/null </dev/null
echo "READBACK $(sha256sum /tmp/back | cut -d' ' -f1)"
kill $AGENT; wait $AGENT || true
echo "DONE"
`;

test("kernel attach in a qemu guest: a volume grown online grows /dev/nbd0 in place; the guest writes past the old end", async () => {
  const vm = vmAvailable();
  assert.ok(vm.ok, vm.ok ? "" : `the VM harness cannot run here: ${vm.why}`);
  await runOk("make", ["-C", nativeDir, "-s", "static"]);
  let c: Cluster | undefined;
  let g: Guest | undefined;
  try {
    c = await startCluster(1);
    const node = c.nodes[0]!;
    await node.api.createVolume({ name: "vm", sizeBytes: 64 * MiB, repl: 1 });
    await c.leaderOf("vm");
    g = await bootGuest({
      script,
      files: { "/bin/pxd-attach": `${nativeDir}pxd-attach.static` },
      forwards: [{ guest: "10.0.2.101:10809", host: `${node.host}:${node.nbdPort}` }],
      memMiB: 256,
      timeoutMs: 240_000,
    });
    const guest = g;
    assert.is((await guest.waitFor(/^SIZE (\d+)$/, 120_000))[1], String((64 * MiB) / 512));
    const block = (await guest.waitFor(/^BLOCK ([0-9a-f]{64})$/))[1]!;
    assert.is((await guest.waitFor(/^PAST-END (\w+)$/))[1], "refused", "past the end before the resize");
    await guest.waitFor(/^READY$/);
    await node.api.updateVolume("vm", { sizeBytes: 128 * MiB });
    guest.send("resized");
    const grown = await guest.waitFor(/^SIZE (\d+) after (\d+) s$/, 60_000);
    assert.is(grown[1], String((128 * MiB) / 512), `the device grew in place\n${guest.output()}`);
    assert.ok(guest.lines.some((l) => /pxd-attach: nbd0: export "vm" grew from 67108864 to 134217728 bytes/.test(l)), guest.output());
    await guest.waitFor(/^WROTE$/, 30_000);
    assert.is((await guest.waitFor(/^READBACK ([0-9a-f]{64})$/, 30_000))[1], block);
    await guest.waitFor(/^DONE$/, 30_000);
    assert.is(await guest.exit, 0, guest.output());
    const t = new NbdTarget(node.host, node.nbdPort, "vm", 64 * 1024, 30000);
    try {
      assert.is(createHash("sha256").update(await t.read(1600)).digest("hex"), block, "the host reads what the guest wrote past the old end");
    } finally {
      t.close();
    }
    console.log(`# the device grew ${grown[2]} s after SIGHUP`);
  } finally {
    await g?.kill();
    await c?.dispose();
  }
});

test.run();
