#!/usr/bin/env bash
# CI smoke run of the whole-system benchmark: builds the release binaries
# (when out of date), runs `shardmq-bench run` with the few-seconds smoke
# workload against a broker it starts itself, and against a nats-server it
# starts too when nats-server is installed, then checks that the report
# directory holds report.json and report.md.
#
# Usage: tools/bench-smoke.sh
# Environment (optional):
#   BENCH_SMOKE_PEER  auto (default: --peer nats when nats-server is
#                     installed), nats (require it) or none (shardmq only)
#   BENCH_SMOKE_OUT   reports directory to keep (default: a temporary one,
#                     removed at the end)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
workload="bench-harness/workloads/smoke.toml"

echo "==> building (release)" >&2
cargo build --release --quiet -p shardmq-engine --bin shardmq-broker
cargo build --release --quiet -p shardmq-bench-harness --bin shardmq-bench
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

have_nats=false
if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
    have_nats=true
fi
peer=()
case "${BENCH_SMOKE_PEER:-auto}" in
    auto) if $have_nats; then peer=(--peer nats); fi ;;
    nats)
        if ! $have_nats; then
            echo "BENCH_SMOKE_PEER=nats but nats-server is not installed (apt-get install -y nats-server)" >&2
            exit 1
        fi
        peer=(--peer nats)
        ;;
    none) ;;
    *) echo "BENCH_SMOKE_PEER must be auto, nats or none" >&2; exit 2 ;;
esac

if [ -n "${BENCH_SMOKE_OUT:-}" ]; then
    out="$BENCH_SMOKE_OUT"
    mkdir -p "$out"
else
    out="$(mktemp -d "${TMPDIR:-/var/tmp}/shardmq-bench-smoke.XXXXXX")"
    trap 'rm -rf "$out"' EXIT
fi

if [ ${#peer[@]} -eq 0 ]; then
    echo "==> shardmq-bench run $workload (shardmq only)" >&2
else
    echo "==> shardmq-bench run $workload --peer nats" >&2
fi
"$bin/shardmq-bench" run --workload "$workload" ${peer[@]+"${peer[@]}"} --out "$out"

dir="$(find "$out" -mindepth 1 -maxdepth 1 -type d -name '*-smoke' | sort | tail -n 1)"
fail() { echo "bench smoke: $*" >&2; exit 1; }
[ -n "$dir" ] || fail "no report directory in $out"
[ -s "$dir/report.json" ] || fail "$dir/report.json is missing or empty"
[ -s "$dir/report.md" ] || fail "$dir/report.md is missing or empty"
grep -q '"driver": "shardmq"' "$dir/report.json" || fail "report.json has no shardmq run"
if [ ${#peer[@]} -gt 0 ]; then
    grep -q '"driver": "nats-jetstream"' "$dir/report.json" || fail "report.json has no nats-jetstream run"
    grep -q '"headline"' "$dir/report.json" || fail "report.json has no comparison"
fi
echo "bench smoke: ok ($dir: report.json, report.md)" >&2
