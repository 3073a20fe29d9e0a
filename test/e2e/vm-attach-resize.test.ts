// A volume grown online grows its kernel device in place (native/pxd-attach:
// on SIGHUP, and every 10 s, it asks its server the export's size and sets a
// larger one with NBD_CMD_RECONFIGURE and NBD_ATTR_SIZE_BYTES), in a qemu
// guest with Debian's kernel (test/helpers/vm.ts). The guest writes past the
// old end through the same device, and the host reads those bytes back over
// NBD. Then the ext4 mounted on the device all along is grown online
// (resize2fs while mounted), takes a file larger than the old volume, and
// checks clean.

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
# An ext4 of the first 32 MiB, mounted all along: block 1600 (100 MiB) is past its end now and after its growth.
mkfs.ext4 -q -F -b 4096 $DEV 8192 </dev/null
mkdir -p /mnt/v && mount -t ext4 $DEV /mnt/v
echo keep > /mnt/v/keep
echo "FS-KIB $(df -k /mnt/v | awk 'NR==2 {print $2}')"
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
read -r cmd; echo "HOST-SAID $cmd"
resize2fs $DEV 24576 >/tmp/resize.out 2>&1 && echo "RESIZE2FS ok" || echo "RESIZE2FS failed $(cat /tmp/resize.out)"
echo "FS-KIB $(df -k /mnt/v | awk 'NR==2 {print $2}')"
dd if=/dev/zero of=/mnt/v/big bs=1M count=48 conv=fsync 2>/dev/null && echo "BIG wrote" || echo "BIG failed"
cat /mnt/v/keep
umount /mnt/v
e2fsck -fn $DEV >/tmp/fsck.out 2>&1 && echo "FSCK clean" || echo "FSCK $(cat /tmp/fsck.out)"
kill $AGENT; wait $AGENT || true
echo "DONE"
`;

test("kernel attach in a qemu guest: a volume grown online grows /dev/nbd0 in place; the guest writes past the old end; the mounted ext4 grows online", async () => {
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
    const fsBefore = Number((await guest.waitFor(/^FS-KIB (\d+)$/, 60_000))[1]);
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
    const t = new NbdTarget(node.host, node.nbdPort, "vm", 64 * 1024, 30000);
    try {
      assert.is(createHash("sha256").update(await t.read(1600)).digest("hex"), block, "the host reads what the guest wrote past the old end");
    } finally {
      t.close();
    }
    // The ext4 (32 MiB, mounted all along) grows online to 96 MiB, inside the grown device, and takes a 48 MiB file.
    guest.send("grow-fs");
    assert.is((await guest.waitFor(/^RESIZE2FS (.*)$/, 60_000))[1], "ok", guest.output());
    const fsAfter = Number((await guest.waitFor(/^FS-KIB (\d+)$/, 30_000))[1]);
    assert.ok(fsAfter > fsBefore * 2.5, `the mounted ext4 grew from ${fsBefore} KiB to ${fsAfter} KiB`);
    assert.is((await guest.waitFor(/^BIG (\w+)$/, 120_000))[1], "wrote", "a file larger than the old filesystem fits");
    await guest.waitFor(/^keep$/, 30_000);
    assert.is((await guest.waitFor(/^FSCK (.*)$/, 60_000))[1], "clean", guest.output());
    await guest.waitFor(/^DONE$/, 30_000);
    assert.is(await guest.exit, 0, guest.output());
    console.log(`# the device grew ${grown[2]} s after SIGHUP; ext4 grew online from ${fsBefore} to ${fsAfter} KiB`);
  } finally {
    await g?.kill();
    await c?.dispose();
  }
});

test.run();
