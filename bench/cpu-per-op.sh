#!/bin/bash
# A single pxd daemon's CPU time per 4 KiB operation at QD32: what one read or
# one (repl 1) write costs the daemon, independent of how fast the disk is.
#
#   bash bench/cpu-per-op.sh [randread|randwrite] [REPO]
#
# Starts a daemon from REPO (default: this checkout, built) on a fresh data
# dir, fills a 1 GiB volume with 1 MiB writes, scatters it with 4 s of 4 KiB
# random writes (so reads walk a fragmented block map), then runs fio's nbd
# engine for 10 s and divides the daemon's utime + stime (/proc/PID/stat) by
# the operations fio completed. Prints one line: IOPS and µs of CPU per op.
# Compare two checkouts by running it alternately for each, several times:
# the figure moves by a few percent between runs on a shared machine.
set -euo pipefail
RW=${1:-randread}
ROOT=$(cd "${2:-$(dirname "$0")/..}" && pwd)
D=$(mktemp -d /tmp/pxd-cpuop-XXXX)
PORT_NBD=20809 PORT_API=20001 PORT_PEER=20002
node "$ROOT/dist/bin/pxd.js" daemon --data-dir "$D/data" --listen 127.0.0.1 \
  --nbd-port $PORT_NBD --api-port $PORT_API --peer-port $PORT_PEER > "$D/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 100); do curl -s --cacert "$D/data/tls/ca-cert.pem" -o /dev/null -w "%{http_code}" https://127.0.0.1:$PORT_API/v1/status 2>/dev/null | grep -q "200\|401" >/dev/null 2>&1 && break; sleep 0.2; done
curl -sf --cacert "$D/data/tls/ca-cert.pem" -H "Authorization: Bearer $(cat "$D/data/admin.token")" -XPOST https://127.0.0.1:$PORT_API/v1/volumes -d '{"name":"v","sizeBytes":1073741824}' >/dev/null
URI=nbd://127.0.0.1:$PORT_NBD/v
fio --name=fill --ioengine=nbd --uri=$URI --rw=write --bs=1M --iodepth=8 --size=1G --output-format=terse >/dev/null
fio --name=scatter --ioengine=nbd --uri=$URI --rw=randwrite --bs=4k --iodepth=32 --size=1G --time_based --runtime=4 --output-format=terse >/dev/null
jiffies() { awk '{print $14 + $15}' /proc/$PID/stat; }
T0=$(jiffies)
fio --name=t --ioengine=nbd --uri=$URI --rw="$RW" --bs=4k --iodepth=32 --size=1G --time_based --runtime=10 --output-format=json --output="$D/out.json" >/dev/null
T1=$(jiffies)
node -e '
const [file, t0, t1, hz] = process.argv.slice(1);
const x = JSON.parse(require("fs").readFileSync(file, "utf8")).jobs[0];
const ops = x.read.total_ios + x.write.total_ios;
const us = ((t1 - t0) / hz) * 1e6 / ops;
console.log(`${process.argv[5]} iops=${Math.round(x.read.iops + x.write.iops)} cpu_us_per_op=${us.toFixed(2)}`);
' "$D/out.json" "$T0" "$T1" "$(getconf CLK_TCK)" "$RW"
