#!/bin/bash
# Touches the machine's free memory once, through the page cache, before a
# benchmark on a freshly booted VM.
#
#   bash bench/warm-memory.sh [DIR]
#
# On a fresh VM the first write into a page of guest memory that was never
# used costs far more than later ones (the hypervisor maps it in): a new
# 64 MiB file written with 4 MiB pwrites and fdatasynced took 140-180 ms of
# CPU there, against 12-14 ms once the pages had been used and freed
# (docs/bench.md, "Running it"). Every byte pxd appends to its log lands in
# fresh page-cache pages, so the write benchmarks measure the VM's age unless
# its memory was touched first. This writes a file the size of the memory
# available (less 1 GiB) into DIR (default /tmp) and deletes it, which leaves
# those pages touched and free. About 45 s for 20 GiB.
set -euo pipefail
DIR=${1:-/tmp}
avail_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
mib=$(( avail_kib / 1024 - 1024 ))
if [ "$mib" -le 0 ]; then echo "warm-memory: less than 1 GiB available, nothing to do"; exit 0; fi
free_mib=$(df -Pm "$DIR" | awk 'NR == 2 {print $4}')
if [ "$free_mib" -le $(( mib + 1024 )) ]; then
  mib=$(( free_mib - 1024 ))
  if [ "$mib" -le 0 ]; then echo "warm-memory: no room in $DIR"; exit 1; fi
fi
f=$(mktemp "$DIR/pxd-warm-XXXXXX")
trap 'rm -f "$f"' EXIT
start=$(date +%s)
dd if=/dev/zero of="$f" bs=4M count=$(( mib / 4 )) status=none
rm -f "$f"
echo "warm-memory: wrote and deleted $mib MiB in $(( $(date +%s) - start )) s; free memory has been touched once"
