#!/usr/bin/env bash
# The main job: build, start a local broker (2 shards, a temporary data
# directory, ports on 127.0.0.1), run shardmq-bench end to end (producers
# with acks=all and a consumer on an 8-partition topic), print the results
# and the metrics URL, then stop the broker with SIGTERM.
#
# Usage: tools/run.sh
# Environment (optional): RUN_MESSAGES (default 200000), RUN_RATE (messages
# per second, default 20000: a fixed rate, latency measured from each send's
# intended time), RUN_SIZE (bytes, default 1024), RUN_PORT (default 19092).
# The storage engine's own benchmark beside fio: tools/storage-vs-fio.sh DIR.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
port="${RUN_PORT:-19092}"
metrics_port=$((port + 1))
messages="${RUN_MESSAGES:-200000}"
rate="${RUN_RATE:-20000}"
size="${RUN_SIZE:-1024}"

echo "==> building (release)" >&2
cargo build --release --quiet -p shardmq-engine --bin shardmq-broker
cargo build --release --quiet -p shardmq-bench-harness --bin shardmq-bench
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

data="$(mktemp -d "${TMPDIR:-/var/tmp}/shardmq-run.XXXXXX")"
log="$data.log"
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
        kill -TERM "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$data" "$log"
}
trap cleanup EXIT

echo "==> starting shardmq-broker (2 shards, data in $data)" >&2
"$bin/shardmq-broker" --data-dir "$data" --shards 2 \
    --listen "127.0.0.1:$port" --metrics "127.0.0.1:$metrics_port" >"$log" 2>&1 &
broker_pid=$!
for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    if ! kill -0 "$broker_pid" 2>/dev/null; then
        echo "the broker exited during start-up:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "the broker did not start within 60 s" >&2; cat "$log" >&2; exit 1; }

echo "==> shardmq-bench e2e: $messages messages of $size bytes at $rate msg/s, acks=all, 8 partitions" >&2
"$bin/shardmq-bench" e2e --bootstrap "127.0.0.1:$port" --topic "run-$(date +%s)" \
    --partitions 8 --size "$size" --messages "$messages" --rate "$rate" --producers 2 --acks all \
    --linger-ms 0

echo
echo "metrics: http://127.0.0.1:$metrics_port/metrics (while the broker runs)"
echo "==> stopping the broker (SIGTERM)" >&2
kill -TERM "$broker_pid"
wait "$broker_pid" && echo "broker exited 0" >&2
broker_pid=""
