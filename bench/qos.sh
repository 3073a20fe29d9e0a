#!/bin/bash
# QoS and rebuild limits against real clients (docs/bench.md, "QoS and
# rebuild limits"; docs/architecture.md, "QoS and rebuild limits").
#
#   bash bench/qos.sh [REPO]          # all three parts, about 2 minutes
#   PARTS="limit fair" bash bench/qos.sh
#
# limit:   one daemon; volume "lim" limited to IOPS (default 1000) and an
#          unlimited volume "free" on the same node, fio 4 KiB random writes
#          at QD32 on each: "free" alone, then both at once. Prints each
#          volume's IOPS (fio's ramp_time leaves the burst out).
# fair:    one daemon; volume "big" at QD32 and volume "small" at QD1 (4 KiB
#          random writes): small's mean and p99 completion latency alone, then
#          with big running, then with big on 4 connections at QD64 (256
#          requests, more than the node runs at once: the fair share queues).
# rebuild: two daemons; a client's 4 KiB random writes at QD32 on volume
#          "client" (on node 1) for 5 s without a rebuild, then while node 1
#          copies a 1 GiB volume to node 2 (ha-update 1 -> 2), at
#          --resync-bandwidth RESYNC (default: the daemon's default) and with
#          none.
set -euo pipefail
ROOT=$(cd "${1:-$(dirname "$0")/..}" && pwd)
PARTS=${PARTS:-"limit fair rebuild"}
IOPS=${IOPS:-1000}
SEC=${SEC:-8}
D=$(mktemp -d /tmp/pxd-qos-XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$D"; }
trap cleanup EXIT
PXD="node --initial-old-space-size=64 $ROOT/dist/bin/pxd.js"

# start_node N [daemon args...]: node N on 127.0.0.1, ports 2N809 (NBD), 2N001 (API), 2N002 (peer).
start_node() {
  local n=$1; shift
  $PXD daemon --data-dir "$D/n$n" --listen 127.0.0.1 --name "n$n" --nbd-port "2${n}809" --api-port "2${n}001" --peer-port "2${n}002" "$@" > "$D/log$n" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 150); do curl -s --cacert "$D/n$n/tls/ca-cert.pem" -o /dev/null -w "%{http_code}" "https://127.0.0.1:2${n}001/v1/status" 2>/dev/null | grep -q "200\|401" && return; sleep 0.2; done
  echo "node $n did not start:"; cat "$D/log$n"; exit 1
}
stop_nodes() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PIDS=(); rm -rf "$D"/n* "$D"/log*; }
api() { local n=$1 method=$2 path=$3; shift 3; curl -sf --cacert "$D/n1/tls/ca-cert.pem" -H "Authorization: Bearer $(cat "$D/n1/admin.token")" -X"$method" "https://127.0.0.1:2${n}001$path" "$@"; }
uri() { echo "nbd://127.0.0.1:2${1}809/$2"; }
# volume NAME [JSON FIELDS]: a 1 GiB volume on node 1.
volume() { api 1 POST /v1/volumes -d "{\"name\":\"$1\",\"sizeBytes\":1073741824${2:+,$2}}" >/dev/null; }
# fio_json OUT JOB...: each JOB is "name uri qd [connections]"; random 4 KiB writes, SEC seconds after RAMP (2) s.
fio_json() {
  local out=$1; shift
  local args=()
  for j in "$@"; do set -- $j; args+=(--name="$1" --uri="$2" --iodepth="$3" --numjobs="${4:-1}"); done
  fio --ioengine=nbd --rw=randwrite --bs=4k --size=256M --time_based --ramp_time="${RAMP:-2}" --runtime="$SEC" --output-format=json --output="$out" "${args[@]}" >/dev/null
}
report() {
  node -e '
const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
for (const j of r.jobs) {
  const w = j.write, p = w.clat_ns.percentile || {};
  console.log(`  ${process.argv[2]} ${j.jobname}: ${Math.round(w.iops)} IOPS, mean ${(w.clat_ns.mean / 1000).toFixed(0)} us, p99 ${((p["99.000000"] || 0) / 1000).toFixed(0)} us`);
}' "$1" "$2" | sort | uniq -c | sed 's/^ *1 //'

}

part_limit() {
  echo "limit: volume lim at --max-iops $IOPS, volume free unlimited, 4 KiB random writes at QD32, ${SEC} s each"
  start_node 1
  volume lim "\"maxIops\":$IOPS"; volume free
  fio_json "$D/solo.json" "lim $(uri 1 lim) 32"; report "$D/solo.json" "alone:"
  fio_json "$D/solo.json" "free $(uri 1 free) 32"; report "$D/solo.json" "alone:"
  fio_json "$D/both.json" "lim $(uri 1 lim) 32" "free $(uri 1 free) 32"; report "$D/both.json" "together:"
  api 1 GET /metrics | grep -E '^pxd_volume_throttle' | sed 's/^/  /'
  stop_nodes
}

part_fair() {
  echo "fair: volume small at QD1 alone, then beside volume big at QD32 (4 KiB random writes, ${SEC} s)"
  start_node 1
  volume big; volume small
  fio_json "$D/solo.json" "small $(uri 1 small) 1"; report "$D/solo.json" "alone:"
  fio_json "$D/both.json" "small $(uri 1 small) 1" "big $(uri 1 big) 32"; report "$D/both.json" "together:"
  # Deeper than the node's ioNodeRequestsInFlightMax (64): 4 connections at QD64, so the fair share queues.
  fio_json "$D/deep.json" "small $(uri 1 small) 1" "big $(uri 1 big) 64 4"; report "$D/deep.json" "beside 4 x QD64:"
  api 1 GET /metrics | grep -E '^pxd_node_io_' | sed 's/^/  /'
  stop_nodes
}

rebuild_run() {
  local label=$1; shift
  start_node 1 "$@"
  start_node 2 --join 127.0.0.1:21001 --cluster-secret-file "$D/n1/cluster.secret" "$@"
  volume client '"nodes":["n1"]'; volume copy '"nodes":["n1"]'
  fio --name=fill --ioengine=nbd --uri="$(uri 1 copy)" --rw=write --bs=1M --iodepth=8 --size=1G --output-format=terse >/dev/null
  SEC=5 RAMP=1 fio_json "$D/alone.json" "client $(uri 1 client) 32"; report "$D/alone.json" "no rebuild:"
  api 1 PATCH /v1/volumes/copy -d '{"repl":2}' >/dev/null
  local t0; t0=$(date +%s.%N)
  SEC=5 RAMP=1 fio_json "$D/rebuild.json" "client $(uri 1 client) 32"; report "$D/rebuild.json" "rebuild, $label:"
  until api 1 GET /v1/volumes/copy | node -e 'const v=JSON.parse(require("fs").readFileSync(0,"utf8")); process.exit(v.replicas.length===2&&v.replicas.every(r=>r.state==="in-sync")?0:1)'; do sleep 0.2; done
  echo "  rebuild of 1 GiB done $(node -e "console.log((Date.now()/1000 - $t0).toFixed(1))") s after it began"
  stop_nodes
}

part_rebuild() {
  echo "rebuild: node 1 copies 1 GiB to node 2 while a client writes 4 KiB at QD32 on node 1 (5 s after 1 s)"
  if [ -n "${RESYNC:-}" ]; then rebuild_run "--resync-bandwidth $RESYNC" --resync-bandwidth "$RESYNC"; else rebuild_run "default --resync-bandwidth"; fi
  if [ "${NONE:-1}" = 1 ]; then rebuild_run "--resync-bandwidth none" --resync-bandwidth none; fi
}

for p in $PARTS; do "part_$p"; done
