#!/usr/bin/env bash
# The main job: build, start the three-broker cluster of configs/cluster-3/
# on this machine (loopback ports, one shard each, static peers, no etcd,
# data in a temporary directory), create a topic replicated on all three
# brokers, run shardmq-bench end to end against it (producers with
# acks=all, so every record is on a majority of the brokers' disks before it
# is acknowledged, and a consumer), print the results, the cluster's
# description and every broker's metrics URL, then stop the cluster with
# SIGTERM.
#
# Usage: tools/run.sh
# Environment (optional): RUN_MESSAGES (default 200000), RUN_RATE (messages
# per second, default 20000: a fixed rate, latency measured from each send's
# intended time), RUN_SIZE (bytes, default 1024), RUN_PARTITIONS (default 8),
# RUN_KEEP=1 keeps the data directory and logs.
# The storage engine's own benchmark beside fio: tools/storage-vs-fio.sh DIR.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
messages="${RUN_MESSAGES:-200000}"
rate="${RUN_RATE:-20000}"
size="${RUN_SIZE:-1024}"
partitions="${RUN_PARTITIONS:-8}"
bootstrap="127.0.0.1:19192,127.0.0.1:19292,127.0.0.1:19392"

echo "==> building (release)" >&2
cargo build --release --quiet -p shardmq-engine --bin shardmq-broker
cargo build --release --quiet -p shardmq-tools --bin shardmqctl
cargo build --release --quiet -p shardmq-bench-harness --bin shardmq-bench
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

data="$(mktemp -d "${TMPDIR:-/var/tmp}/shardmq-run.XXXXXX")"
cleanup() {
    bash "$repo/tools/cluster.sh" stop "$data" || true
    if [ -z "${RUN_KEEP:-}" ]; then
        rm -rf "$data"
    else
        echo "data and logs kept in $data" >&2
    fi
}
trap cleanup EXIT

echo "==> starting the 3-broker cluster (data and logs in $data)" >&2
bash "$repo/tools/cluster.sh" start "$data"

topic="run-$(date +%s)"
echo "==> creating topic $topic: $partitions partitions, replication factor 3" >&2
"$bin/shardmqctl" --bootstrap "$bootstrap" topic create "$topic" \
    --partitions "$partitions" --replication-factor 3

echo "==> shardmq-bench e2e: $messages messages of $size bytes at $rate msg/s, acks=all, RF=3" >&2
"$bin/shardmq-bench" e2e --bootstrap "$bootstrap" --topic "$topic" \
    --partitions "$partitions" --size "$size" --messages "$messages" --rate "$rate" --producers 2 --acks all \
    --linger-ms 0

echo
echo "==> the cluster"
"$bin/shardmqctl" --bootstrap "$bootstrap" cluster describe
echo
"$bin/shardmqctl" --bootstrap "$bootstrap" topic describe "$topic"
echo
for n in 1 2 3; do
    echo "metrics of broker $n: http://127.0.0.1:19${n}94/metrics (while the cluster runs)"
done
echo "==> stopping the cluster (SIGTERM)" >&2
