#!/usr/bin/env bash
# The main job, until the broker exists: build the storage engine and run
# its benchmark beside fio on this machine's disk (tools/storage-vs-fio.sh),
# printing throughput and latency of both and the ratios last.
#
# Usage: tools/run.sh [DIR]   DIR must be on the disk to measure (not tmpfs);
#                             default: a fresh directory under /var/tmp.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-}"
if [ -z "$dir" ]; then
    dir="$(mktemp -d "${TMPDIR:-/var/tmp}/shardmq-bench.XXXXXX")"
    trap 'rm -rf "$dir"' EXIT
fi
bash "$repo/tools/storage-vs-fio.sh" "$dir"
