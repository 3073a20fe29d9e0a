// The Linux kernel's NBD client on a pxd volume, in a qemu guest
// (test/helpers/vm.ts, docs/testing-vm.md): Debian's nbd-client attaches
// /dev/nbd0 over netlink to a pxd daemon on the host, then mkfs.ext4, mount,
// write, umount, e2fsck -fn, detach. It is the VM harness's proof: the
// forward, the host <-> guest signalling, kernel messages on the console, the
// script's exit code. The pxd agent's own tests build on the same harness.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { startDaemon } from "../helpers/daemon.js";
import { runOk } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";
import { bootGuest, guestInfo, vmAvailable, type Guest } from "../helpers/vm.js";

const MiB = 1024 * 1024;

const script = String.raw`
set -e
nbd-client 10.0.2.101 10809 /dev/nbd0 -N kvol -b 4096 </dev/null
echo "ATTACHED size=$(blockdev --getsize64 /dev/nbd0)"
mkfs.ext4 -q -F /dev/nbd0
blkid -o value -s TYPE /dev/nbd0 | sed 's/^/BLKID=/'
mkdir -p /mnt/v
mount -t ext4 /dev/nbd0 /mnt/v
echo "written in the guest through /dev/nbd0" >/mnt/v/hello.txt
dd if=/dev/urandom of=/mnt/v/blob bs=64k count=48 2>/dev/null
echo "BLOB=$(sha256sum /mnt/v/blob | cut -d' ' -f1)"
sync
umount /mnt/v
echo "UNMOUNTED"
read -r reply
echo "HOST-SAID=$reply"
e2fsck -fn /dev/nbd0 >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; exit 3; }
echo "E2FSCK-CLEAN"
mount -o ro -t ext4 /dev/nbd0 /mnt/v
echo "BLOB-AGAIN=$(sha256sum /mnt/v/blob | cut -d' ' -f1)"
umount /mnt/v
echo "DEVICE=$(sha256sum /dev/nbd0 | cut -d' ' -f1)"
nbd-client -d /dev/nbd0
echo "DETACHED"
exit 7
`;

test("kernel NBD client in a qemu guest: ext4 on a pxd volume, host and guest in step", async () => {
  const vm = vmAvailable();
  assert.ok(vm.ok, vm.ok ? "" : `the VM harness cannot run here: ${vm.why}`);
  const started = Date.now();
  const daemon = await startDaemon("127.0.0.11");
  const t = tempDir("vm-nbd");
  let g: Guest | undefined;
  try {
    await daemon.api.createVolume({ name: "kvol", sizeBytes: 64 * MiB });
    g = await bootGuest({
      script,
      binaries: ["/usr/sbin/nbd-client"],
      forwards: [{ guest: "10.0.2.101:10809", host: `127.0.0.11:${daemon.nbdPort}` }],
      timeoutMs: 100_000,
    });
    const readyMs = await g.ready;
    const attached = await g.waitFor(/^ATTACHED size=(\d+)$/, 30_000);
    assert.is(Number(attached[1]), 64 * MiB, "the guest's /dev/nbd0 has the volume's size");
    const blob = (await g.waitFor(/^BLOB=([0-9a-f]{64})$/))[1];
    await g.waitFor(/^UNMOUNTED$/);
    // The guest waits in `read` until the host answers: look at the volume meanwhile.
    const info = await daemon.api.inspectVolume("kvol");
    assert.ok(info.allocatedBytes >= 3 * MiB, `the guest's writes reached the daemon (${info.allocatedBytes} bytes allocated)`);
    g.send(`go ${info.allocatedBytes}`);
    assert.is((await g.waitFor(/^HOST-SAID=(.*)$/))[1], `go ${info.allocatedBytes}`, "the line the host sent is the line the guest read");
    await g.waitFor(/^E2FSCK-CLEAN$/);
    assert.is((await g.waitFor(/^BLOB-AGAIN=(\S+)$/))[1], blob, "the file reads back the same after a remount");
    const device = (await g.waitFor(/^DEVICE=(\S+)$/))[1];
    await g.waitFor(/^DETACHED$/);
    const code = await g.exit;
    const out = g.output();
    assert.is(code, 7, `the script's own exit code comes back:\n${out}`);
    assert.ok(out.includes("BLKID=ext4"), "blkid sees ext4");
    assert.match(out, /^kernel: \[ *\d+\.\d+\] nbd0: detected capacity change/m, "kernel messages reach the console");

    // Every byte the guest's kernel wrote is in pxd: the device's hash from the host.
    const copy = join(t.dir, "kvol.img");
    await runOk("nbdcopy", [daemon.uri("kvol"), copy], { timeoutMs: 60_000 });
    assert.is(createHash("sha256").update(readFileSync(copy)).digest("hex"), device, "the host reads the device the guest wrote");

    const k = guestInfo();
    console.log(`# guest ${k["KERNEL_VERSION"]} (${k["KERNEL_IMAGE"]}): script started ${(readyMs / 1000).toFixed(1)} s after qemu, whole test ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    await g?.kill();
    await daemon.dispose();
    t.remove();
  }
});

test.run();
