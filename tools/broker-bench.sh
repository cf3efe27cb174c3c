#!/usr/bin/env bash
# The single-broker benchmark: one shardmq-broker (2 shards) on DIR's disk,
# loaded by shardmq-bench through the SDK, beside fio's fdatasync latency on
# the same filesystem, all in one run.
#
# usage: tools/broker-bench.sh DIR
#
#   DIR   a directory on the disk to measure (not tmpfs); the broker's data
#         and fio's file live in a fresh subdirectory, removed at the end.
#
# Environment (optional): BB_SECS (seconds per measured case, default 15),
# BB_PORT (client port, default 19292; the metrics port is the next one),
# BB_RESULTS (a file to write every figure to, as one JSON document).
#
# Cases, each on a fresh topic, acks=all:
#   1. max: 2 producers, 8 partitions, 1 KiB records, as fast as the
#      producers go (closed loop): msg/s, MB/s, CPU seconds per GB of the
#      broker and of the bench;
#   2. half: the same at half the rate case 1 reached (open loop, latency
#      from each send's intended time);
#   3. single: one producer, one 100-byte record at a time (each sent once
#      the previous one is acknowledged), 1 partition;
# and fio: 4 KiB writes with an fdatasync after each (its fdatasync latency
# is the floor a durable single record stands on).
# The last line printed is
#   max_mb_s=<MB/s> single_p50_us=<µs> fio_fdatasync_p50_us=<µs> ratio_single_p50=<ours/fio>
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
}
[[ $# -eq 1 && $1 != -h && $1 != --help ]] || usage
DIR=$1
SECS=${BB_SECS:-15}
PORT=${BB_PORT:-19292}
METRICS=$((PORT + 1))
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if ! command -v fio >/dev/null 2>&1; then
    echo "fio not found; installing it" >&2
    if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fio >/dev/null
fi

echo "== building (release)" >&2
(cd "$ROOT" && cargo build --release --quiet -p shardmq-engine --bin shardmq-broker \
    && cargo build --release --quiet -p shardmq-bench-harness --bin shardmq-bench)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

mkdir -p "$DIR"
WORK=$(mktemp -d "$DIR/broker-bench.XXXXXX")
BROKER_PID=""
cleanup() {
    if [[ -n $BROKER_PID ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf -- "$WORK"
}
trap cleanup EXIT

echo "== fio: 4 KiB write + fdatasync, queue depth 1, ${SECS} s" >&2
fio --name=fdatasync --filename="$WORK/fio.dat" --ioengine=io_uring --direct=1 \
    --rw=write --bs=4k --size=256m --iodepth=1 --fdatasync=1 \
    --runtime="$SECS" --time_based --output-format=json --output="$WORK/fio.json" >/dev/null
rm -f -- "$WORK/fio.dat"
FIO_P50=$(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print(round(j["sync"]["lat_ns"]["percentile"]["50.000000"] / 1000))' "$WORK/fio.json")
echo "fio fdatasync p50: $FIO_P50 us" >&2

echo "== starting shardmq-broker (2 shards, data in $WORK/data)" >&2
"$BIN/shardmq-broker" --data-dir "$WORK/data" --shards 2 \
    --listen "127.0.0.1:$PORT" --metrics "127.0.0.1:$METRICS" >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/broker.log" >&2; exit 1; }
    sleep 0.1
done

bench() { "$BIN/shardmq-bench" produce --bootstrap "127.0.0.1:$PORT" --acks all \
    --server-pid "$BROKER_PID" "$@" 2>/dev/null; }

echo "== 1. max: 2 producers, 8 partitions, 1 KiB, ${SECS} s" >&2
MAX_OUT=$(bench --topic max --partitions 8 --size 1024 --producers 2 --linger-ms 0 \
    --duration "$SECS")
echo "$MAX_OUT"
MAX_RATE=$(sed -n 's/^produce: .* \([0-9]*\) msg\/s, \([0-9.]*\) MB\/s$/\1/p' <<<"$MAX_OUT")
MAX_MB=$(sed -n 's/^produce: .* msg\/s, \([0-9.]*\) MB\/s$/\1/p' <<<"$MAX_OUT")

HALF=$((MAX_RATE / 2))
echo "== 2. half: $HALF msg/s, 2 producers, 8 partitions, 1 KiB, ${SECS} s" >&2
HALF_OUT=$(bench --topic half --partitions 8 --size 1024 --producers 2 --linger-ms 0 \
    --rate "$HALF" --duration "$SECS")
echo "$HALF_OUT"

echo "== 3. single: one 100-byte record at a time, 1 partition, ${SECS} s" >&2
SINGLE_OUT=$(bench --topic single --partitions 1 --size 100 --producers 1 --linger-ms 0 \
    --sequential --duration "$SECS")
echo "$SINGLE_OUT"
SINGLE_P50=$(sed -n 's/^publish latency (us): p50 \([0-9]*\) .*/\1/p' <<<"$SINGLE_OUT")

echo "metrics of this run: http://127.0.0.1:$METRICS/metrics" >&2
curl -s "http://127.0.0.1:$METRICS/metrics" 2>/dev/null \
    | grep -E '^shardmq_(raft_commit|storage_fsync)_latency_seconds_(sum|count)' || true

RATIO=$(python3 -c "print(f'{$SINGLE_P50 / max($FIO_P50, 1):.2f}')")
if [[ -n ${BB_RESULTS:-} ]]; then
    python3 - "$BB_RESULTS" "$WORK/fio.json" "$MAX_OUT" "$HALF_OUT" "$SINGLE_OUT" <<'PY'
import json, re, sys

out, fio_path, *cases = sys.argv[1:]

def parse(text):
    """The figures of one shardmq-bench produce summary."""
    m = re.search(r"produce: messages (\d+), elapsed ([\d.]+) s, (\d+) msg/s, ([\d.]+) MB/s", text)
    lat = re.search(r"publish latency \(us\): p50 (\d+) p99 (\d+) p99.9 (\d+) p99.99 (\d+) max (\d+)", text)
    cpu = re.search(r"cpu bench ([\d.]+) s \(([\d.]+) s/GB\) server ([\d.]+) s \(([\d.]+) s/GB\)", text)
    return {
        "messages": int(m[1]), "elapsed_s": float(m[2]), "msg_per_s": int(m[3]), "mb_per_s": float(m[4]),
        "publish_latency_us": dict(zip(("p50", "p99", "p999", "p9999", "max"), map(int, lat.groups()))),
        "cpu_s": {"bench": float(cpu[1]), "broker": float(cpu[3])},
        "cpu_s_per_gb": {"bench": float(cpu[2]), "broker": float(cpu[4])},
    }

sync = json.load(open(fio_path))["jobs"][0]["sync"]["lat_ns"]["percentile"]
result = dict(zip(("max", "half", "single"), map(parse, cases)))
result["fio_fdatasync_us"] = {k: sync[p] / 1000 for k, p in (("p50", "50.000000"), ("p99", "99.000000"))}
result["ratio_single_p50"] = result["single"]["publish_latency_us"]["p50"] / result["fio_fdatasync_us"]["p50"]
json.dump(result, open(out, "w"), indent=1)
PY
fi
echo "max_mb_s=$MAX_MB single_p50_us=$SINGLE_P50 fio_fdatasync_p50_us=$FIO_P50 ratio_single_p50=$RATIO"
