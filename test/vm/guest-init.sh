#!/bin/sh
# /init of the pxd test guest (test/vm/build-guest.sh puts it into the
# initramfs; docs/testing-vm.md). It mounts the pseudo filesystems, loads the
# modules in /lib/modules/$(uname -r)/load-order (dependencies first), brings
# up eth0 with qemu user-net's static address, relays kernel messages to the
# console as whole lines, runs /test.sh (added per run by test/helpers/vm.ts)
# and powers off. Console protocol, one line each:
#   PXD-GUEST-READY             modules loaded, network up, /test.sh starts
#   kernel: [  12.345678] ...   a kernel message (levels 0-6) from after boot
#   PXD-GUEST-EXIT=<code>       /test.sh ended with <code>; power-off follows
# Without /test.sh it starts a shell on the console (for use by hand).

export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null # CONFIG_DEVTMPFS_MOUNT may have done it
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1
hostname pxd-guest

finish() { # finish CODE: the end marker, then power off (never returns)
  kmsg-sync
  echo "PXD-GUEST-EXIT=$1"
  sync
  poweroff -f
  sleep 5 # poweroff -f does not return; panic=-1 and qemu -no-reboot are the backstop
  exit "$1"
}

# Kernel messages: straight to the console only at levels 0-1 (emergencies,
# so a panic still shows); everything else at levels 0-6 through this relay,
# which writes each message as one line with one write(2), so it never splits
# a line the test script is writing. Messages from boot (before /init) were
# shown by `quiet` at levels 0-3 already; the relay starts after them.
echo 2 >/proc/sys/kernel/printk
start_us=$(awk '{ printf "%d", $1 * 1000000 }' /proc/uptime)
cat > /usr/bin/kmsg-sync <<'EOF'
#!/bin/sh
# kmsg-sync: returns once every kernel message logged before it is on the console.
n=$$.$(awk '{ print $1 }' /proc/uptime)
echo "pxd-kmsg-sync $n" >/dev/kmsg
i=0
while [ ! -e "/run/kmsg-sync.$n" ] && [ $i -lt 100 ]; do usleep 20000; i=$((i + 1)); done
rm -f "/run/kmsg-sync.$n"
EOF
chmod 755 /usr/bin/kmsg-sync
cat /dev/kmsg | awk -v start="$start_us" '
  /^ / { next }                                   # KEY=value continuation lines of a record
  {
    semi = index($0, ";"); if (semi == 0) next
    split(substr($0, 1, semi - 1), h, ",")
    msg = substr($0, semi + 1)
    if (msg ~ /^pxd-kmsg-sync /) { split(msg, w, " "); printf "" > ("/run/kmsg-sync." w[2]); close("/run/kmsg-sync." w[2]); next }
    if (h[3] + 0 < start || h[1] % 8 > 6) next
    printf "kernel: [%12.6f] %s\n", h[3] / 1000000, msg
    fflush()
  }' &

kver=$(uname -r)
for m in $(cat "/lib/modules/$kver/load-order"); do
  insmod "/lib/modules/$kver/$m.ko" || { echo "pxd-guest: insmod $m failed"; finish 254; }
done

ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 250 ]; do usleep 20000; i=$((i + 1)); done
if [ ! -e /sys/class/net/eth0 ]; then echo "pxd-guest: no eth0 (ip link: $(ip -o link | tr '\n' ' '))"; finish 254; fi
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

cd /root
if [ -f /test.sh ]; then
  # send() lines from the host arrive on the console; no echo, so they never
  # show up as guest output. Canonical mode: the script reads whole lines.
  stty -echo 2>/dev/null
  echo "PXD-GUEST-READY"
  sh /test.sh
  finish $?
fi
echo "PXD-GUEST-READY (no /test.sh: a shell; leave it to power off)"
setsid cttyhack sh -l
finish $?
