#!/bin/bash
# One pxd daemon's 4 KiB random writes over NBD at a queue depth, with its
# group commits per write: what a repl-1 volume's write path sustains.
#
#   QD=32 bash bench/group-commits.sh [REPO]
#
# Starts a daemon from REPO (default: this checkout, built) on a fresh data
# dir, fills 256 MiB of a 1 GiB volume with 1 MiB writes, then runs fio's
# nbd engine for 6 s of 4 KiB random writes at QD (default 32) and prints
# IOPS, mean completion latency, and the store's group commits (fdatasyncs)
# and records per write from /metrics. Compare two checkouts by running it
# alternately for each, several times.
set -euo pipefail
ROOT=$(cd "${1:-$(dirname "$0")/..}" && pwd)
D=$(mktemp -d /tmp/pxd-c-XXXX)
node "$ROOT/dist/bin/pxd.js" daemon --data-dir "$D/data" --listen 127.0.0.1 --nbd-port 20809 --api-port 20001 --peer-port 20002 > "$D/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 100); do curl -s --cacert "$D/data/tls/ca-cert.pem" -o /dev/null -w "%{http_code}" https://127.0.0.1:20001/v1/status 2>/dev/null | grep -q "200\|401" && break; sleep 0.2; done
AUTH=(); [ -f "$D/data/admin.token" ] && AUTH=(-H "Authorization: Bearer $(cat $D/data/admin.token)")
curl -sf --cacert "$D/data/tls/ca-cert.pem" "${AUTH[@]}" -XPOST https://127.0.0.1:20001/v1/volumes -d '{"name":"v","sizeBytes":1073741824}' >/dev/null
URI=nbd://127.0.0.1:20809/v
fio --name=fill --ioengine=nbd --uri=$URI --rw=write --bs=1M --iodepth=8 --size=256M --output-format=terse >/dev/null
m() { curl -s --cacert "$D/data/tls/ca-cert.pem" "${AUTH[@]}" https://127.0.0.1:20001/metrics | grep -E "^pxd_store_(commits|records_committed|group_commits)(_total)? " ; }
m > $D/m0
fio --name=t --ioengine=nbd --uri=$URI --rw=randwrite --bs=4k --iodepth=${QD:-32} --size=1G --time_based --runtime=6 --output-format=json --output="$D/out.json" >/dev/null
m > $D/m1
node -e '
const fs=require("fs");const [f,a,b]=process.argv.slice(1);
const x=JSON.parse(fs.readFileSync(f,"utf8")).jobs[0];const ops=x.write.total_ios;
const p=t=>Object.fromEntries(fs.readFileSync(t,"utf8").trim().split("\n").map(l=>l.split(" ")).map(([k,v])=>[k,+v]));
const A=p(a),B=p(b);
console.log(`iops=${Math.round(x.write.iops)} lat_us=${Math.round(x.write.clat_ns.mean/1000)}`, Object.keys(B).map(k=>`${k}/op=${((B[k]-A[k])/ops).toFixed(3)}`).join(" "));
' "$D/out.json" "$D/m0" "$D/m1"
