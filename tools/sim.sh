#!/usr/bin/env bash
# Runs the deterministic cluster simulator (engine/tests/simulation.rs):
# brokers' shard loops, Raft, the controller, a simulated disk, network and
# clock in one thread, all decided by one seed.
#
# Usage: tools/sim.sh --seed S [options]   replays seed S; prints its trace
#                                          if it fails (all of it with
#                                          --trace), and a summary if not
#        tools/sim.sh --seeds N [options]  runs seeds BASE..BASE+N (what CI
#                                          does with a few hundred)
#        tools/sim.sh --hours H [options]  runs seeds from BASE until H
#                                          hours have passed (or Ctrl-C),
#                                          reporting how many ran
# Options:
#   --steps N        ticks (100 ms simulated) of workload under faults per
#                    run (default 1000)
#   --brokers N      brokers, 1 to 9 (default 3)
#   --partitions N   partitions of the workload's topic, 1 to 64 (default 8)
#   --base S         first seed of --seeds and --hours (default 1)
#   --trace          print every trace line as it happens
#   --fsync-lies     with --seed: the planted bug (fsync that lies)
#   -h, --help       this text
#
# A failing run ends with its seed and the exact command that replays it.
# Runs in cargo's test profile (optimised), so it shares the build of
# `cargo test -p shardmq-engine`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    sed -n '6,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then
        echo "sim.sh: $1 needs a value" >&2
        exit 2
    fi
}

need_number() {
    if ! [[ "$2" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
        echo "sim.sh: $1 wants a number, got '$2'" >&2
        exit 2
    fi
}

mode=""
env_args=()
while [ $# -gt 0 ]; do
    case "$1" in
    --seed)
        need_value "$@"; need_number "$1" "$2"
        mode="seed"; env_args+=("SHARDMQ_SEED=$2"); shift 2 ;;
    --seeds)
        need_value "$@"; need_number "$1" "$2"
        mode="seeds"; env_args+=("SHARDMQ_SIM_SEEDS=$2"); shift 2 ;;
    --hours)
        need_value "$@"; need_number "$1" "$2"
        mode="hours"; env_args+=("SHARDMQ_SIM_HOURS=$2"); shift 2 ;;
    --steps)
        need_value "$@"; need_number "$1" "$2"
        env_args+=("SHARDMQ_SIM_STEPS=$2"); shift 2 ;;
    --brokers)
        need_value "$@"; need_number "$1" "$2"
        env_args+=("SHARDMQ_SIM_BROKERS=$2"); shift 2 ;;
    --partitions)
        need_value "$@"; need_number "$1" "$2"
        env_args+=("SHARDMQ_SIM_PARTITIONS=$2"); shift 2 ;;
    --base)
        need_value "$@"; need_number "$1" "$2"
        env_args+=("SHARDMQ_SIM_SEED_BASE=$2"); shift 2 ;;
    --trace)
        env_args+=("SHARDMQ_SIM_TRACE=1"); shift ;;
    --fsync-lies)
        env_args+=("SHARDMQ_SIM_FSYNC_LIES=1"); shift ;;
    -h | --help)
        usage; exit 0 ;;
    *)
        echo "sim.sh: unknown argument '$1'" >&2
        usage >&2
        exit 2 ;;
    esac
done

if [ -z "$mode" ]; then
    echo "sim.sh: give --seed, --seeds or --hours" >&2
    usage >&2
    exit 2
fi

cd "$repo"
# Build first, quietly, so the run's own output is all that follows.
cargo test --quiet -p shardmq-engine --test simulation --no-run
exec env "${env_args[@]}" cargo test --quiet -p shardmq-engine --test simulation -- \
    --exact seeded_runs_hold_every_invariant --nocapture --test-threads 1
