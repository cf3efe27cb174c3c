#!/usr/bin/env bash
# Compares the shard log's synced appends (shardmq-storage-bench) with fio on
# the same filesystem.
#
# usage: tools/storage-vs-fio.sh DIR
#
#   DIR   a directory on the filesystem to measure (not tmpfs). The script
#         works in a fresh subdirectory of it and removes it at the end.
#
# Environment (all optional):
#   SVF_SECS      measured seconds per case (default 6; each case also has a
#                 1 s warm-up that is excluded, for fio as for the bench)
#   SVF_CPU       CPU the bench's executor is pinned to (default 0)
#   SVF_FIO_PIN   1 to pin fio to SVF_CPU as well (default 0: fio unpinned)
#   SVF_RESULTS   file to write every raw result to, as one JSON document
#   SVF_SYNC_MODE the bench's --sync-mode: adaptive (default, the broker's
#                 default), pipelined or write-through
#   SVF_REPEAT    times to run the whole sequence (default 1). The cases of
#                 one pass alternate fio and ours; with several passes every
#                 figure printed is the median over the passes and the
#                 ratios of each pass are printed too (a shared virtual disk
#                 varies by tens of percent from minute to minute).
#   SVF_BENCH     a shardmq-storage-bench binary to run instead of building
#                 this tree's (to measure an earlier commit in the same
#                 session)
#
# (a) Latency/bandwidth at 4 KiB, 64 KiB and 1 MiB: fio writes with
#     io_uring, O_DIRECT, queue depth 1 and an fdatasync after every write
#     (--fdatasync=1), the "append then sync" model; the bench appends one
#     entry of the same size to 1 partition, then syncs, one appender.
#     Bandwidth: the bench at 1 MiB with 32 partitions (32 appenders
#     sharing group-commit rounds) against fio 1 MiB writes at queue depth
#     8, twice: without fdatasync (the ceiling the targets name; on a disk
#     with a volatile write cache it measures the cache) and with an
#     fdatasync after every 16 writes (durable, like our rounds).
# (b) Partition scaling: the bench with 4 KiB appends over 1, 100 and 1,000
#     partitions, one appender task per partition.
#
# The last line printed is
#   ratio_bw_1m=<ours/fio> ratio_p50_4k=<ours/fio> ratio_parts_1000=<ours/ours>
# where ratio_bw_1m compares ours with fio's no-fdatasync ceiling (the lines
# before it also give ratio_bw_1m_durable, against fio with fdatasync, and
# fio_durable_over_raw, fio with fdatasync against fio without: the share of
# the ceiling that a durable writer reached on this disk), ratio_p50_4k our
# 4 KiB append+sync p50 to fio's fdatasync p50 (fio's sync latency alone,
# without the write), and ratio_parts_1000 our appends/s at 1,000
# partitions to ours at 1.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
}

[[ $# -eq 1 && $1 != -h && $1 != --help ]] || usage
DIR=$1
SECS=${SVF_SECS:-6}
CPU=${SVF_CPU:-0}
FIO_PIN=${SVF_FIO_PIN:-0}
SYNC_MODE=${SVF_SYNC_MODE:-adaptive}
REPEAT=${SVF_REPEAT:-1}
case $SYNC_MODE in
    adaptive | pipelined | write-through) ;;
    *) echo "SVF_SYNC_MODE must be adaptive, pipelined or write-through, not '$SYNC_MODE'" >&2; exit 2 ;;
esac
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || { echo "SVF_REPEAT must be a positive count, not '$REPEAT'" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if ! command -v fio >/dev/null 2>&1; then
    echo "fio not found; installing it" >&2
    if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fio >/dev/null
fi
command -v python3 >/dev/null 2>&1 || { echo "python3 is required" >&2; exit 1; }

if [[ -n ${SVF_BENCH:-} ]]; then
    BENCH=$SVF_BENCH
else
    echo "== building shardmq-storage-bench (release)" >&2
    (cd "$ROOT" && cargo build --release --quiet -p shardmq-bench-harness)
    BENCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/shardmq-storage-bench
fi
[[ -x $BENCH ]] || { echo "bench binary not found at $BENCH" >&2; exit 1; }

mkdir -p "$DIR"
WORK=$(mktemp -d "$DIR/storage-vs-fio.XXXXXX")
cleanup() { rm -rf -- "$WORK"; }
trap cleanup EXIT
RES=$WORK/results
mkdir -p "$RES"

FSTYPE=$(df -T "$WORK" | awk 'NR == 2 { print $2 }')
if [[ $FSTYPE == tmpfs ]]; then
    echo "warning: $DIR is on tmpfs; O_DIRECT and fdatasync numbers mean nothing there" >&2
fi
echo "== dir on $FSTYPE, ${SECS} s per case (+1 s warm-up), $REPEAT pass(es)," \
    "bench on CPU $CPU in sync mode $SYNC_MODE," \
    "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

FIO_PIN_ARGS=()
if [[ $FIO_PIN == 1 ]]; then FIO_PIN_ARGS=(--cpus_allowed="$CPU"); fi

# settle: commit the filesystem, so that the work of the case before (the
# discard of a deleted file, on a filesystem mounted with -o discard, runs
# at journal commit) is not charged to the case after.
settle() {
    sync -f "$WORK"
}

# run_fio NAME BS SIZE [fio args...]: one fio job, JSON to $RES/fio-NAME.json.
run_fio() {
    local name=$1 bs=$2 size=$3
    shift 3
    echo "-- fio $name" >&2
    fio --name="$name" --filename="$WORK/fio.dat" --ioengine=io_uring --direct=1 \
        --rw=write --bs="$bs" --size="$size" --ramp_time=1 --runtime="$SECS" \
        --time_based "${FIO_PIN_ARGS[@]}" "$@" \
        --output-format=json --output="$RES/fio-$name.json" >/dev/null
    rm -f -- "$WORK/fio.dat"
    settle
}

# run_bench NAME [bench args...]: one bench run, JSON to $RES/ours-NAME.json.
run_bench() {
    local name=$1
    shift
    echo "-- ours $name" >&2
    if ! "$BENCH" --dir "$WORK" --duration-secs "$SECS" --warmup-secs 1 --cpu "$CPU" \
        --sync-mode "$SYNC_MODE" --json "$@" >"$RES/ours-$name.out" 2>"$RES/ours-$name.log"; then
        cat "$RES/ours-$name.log" >&2
        return 1
    fi
    tail -n 1 "$RES/ours-$name.out" >"$RES/ours-$name.json"
    settle
}

for pass in $(seq 1 "$REPEAT"); do
    [[ $REPEAT -gt 1 ]] && echo "== pass $pass of $REPEAT" >&2
    # (a) size by size: fio (qd 1, fdatasync after each write), then ours.
    for bs in 4096 65536 1048576; do
        # Files no larger than a case writes: fio preallocates them, and
        # deleting a large file costs the next case its discard.
        case $bs in
            4096) size=256m ;;
            65536) size=2g ;;
            *) size=4g ;;
        esac
        run_fio "lat-$bs-p$pass" "$bs" "$size" --iodepth=1 --fdatasync=1
        run_bench "lat-$bs-p$pass" --batch-bytes "$bs" --partitions 1 --concurrency 1
    done
    # Bandwidth: fio qd 8 without and with fdatasync; ours 32 partitions at 1 MiB.
    run_fio "bw-1048576-p$pass" 1048576 8g --iodepth=8
    run_fio "bwsync-1048576-p$pass" 1048576 4g --iodepth=8 --fdatasync=16
    run_bench "bw-1048576-p$pass" --batch-bytes 1048576 --partitions 32 --concurrency 1
    # (b) partition scaling at 4 KiB.
    for p in 1 100 1000; do
        run_bench "parts-$p-p$pass" --batch-bytes 4096 --partitions "$p" --concurrency 1
    done
done

echo "== load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$RES" "${SVF_RESULTS:-}" "$REPEAT" "$SYNC_MODE" <<'PY'
import json, os, statistics, sys

res, out_path, passes, sync_mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def median_tree(items):
    """The median of every number across items of the same shape."""
    first = items[0]
    if isinstance(first, dict):
        return {k: median_tree([i[k] for i in items]) for k in first}
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        return first
    return statistics.median(items)

def load_pass(name, p):
    with open(os.path.join(res, f"{name}-p{p}.json")) as f:
        return json.load(f)

def fio_pass(name, p):
    job = load_pass("fio-" + name, p)["jobs"][0]
    w = job["write"]
    pct = lambda h, p: h.get("percentile", {}).get(p, 0) / 1e3
    clat = w["clat_ns"]
    sync = job.get("sync", {}).get("lat_ns", {})
    return {
        "mb_per_sec": w["bw_bytes"] / 1e6,
        "iops": w["iops"],
        "write_clat_us": {k: pct(clat, p) for k, p in
                          (("p50", "50.000000"), ("p99", "99.000000"), ("p999", "99.900000"))},
        "write_lat_mean_us": w["lat_ns"]["mean"] / 1e3,
        "fdatasync_us": {k: pct(sync, p) for k, p in
                         (("p50", "50.000000"), ("p99", "99.000000"), ("p999", "99.900000"))}
                        if sync else None,
        "fdatasync_mean_us": sync["mean"] / 1e3 if sync else None,
        # One write plus one fdatasync, end to end, on average (fio's own
        # overhead between them included).
        "cycle_mean_us": 1e6 / w["iops"] if w["iops"] else 0.0,
    }

def fio_case(name):
    return median_tree([fio_pass(name, p) for p in range(1, passes + 1)])

def ours_pass(name, p):
    return load_pass("ours-" + name, p)

def ours(name):
    return median_tree([ours_pass(name, p) for p in range(1, passes + 1)])

sizes = [(4096, "4 KiB"), (65536, "64 KiB"), (1048576, "1 MiB")]
all_results = {"sync_mode": sync_mode, "passes": passes, "fio": {}, "ours": {}}
hdr = f"{'case':<40} {'MB/s':>9} {'ops/s':>9} {'p50':>8} {'p99':>8} {'p99.9':>8}   (latency in us)"

print("== (a) append+sync (ours) vs write+fdatasync (fio), queue depth 1, 1 partition")
print(hdr)
for bs, label in sizes:
    f, o = fio_case(f"lat-{bs}"), ours(f"lat-{bs}")
    all_results["fio"][f"lat-{bs}"], all_results["ours"][f"lat-{bs}"] = f, o
    s, c = f["fdatasync_us"], f["write_clat_us"]
    print(f"{label + ' fio fdatasync alone':<40} {'':>9} {'':>9} {s['p50']:>8.0f} {s['p99']:>8.0f} {s['p999']:>8.0f}")
    print(f"{label + ' fio write alone (clat)':<40} {'':>9} {'':>9} {c['p50']:>8.0f} {c['p99']:>8.0f} {c['p999']:>8.0f}")
    print(f"{label + ' fio write+fdatasync (p50 sum)':<40} {f['mb_per_sec']:>9.1f} {f['iops']:>9.0f} {s['p50'] + c['p50']:>8.0f} {'':>8} {'':>8}"
          f"   cycle mean {f['cycle_mean_us']:.0f}")
    l = o["latency_us"]
    print(f"{label + ' ours append+sync':<40} {o['mb_per_sec']:>9.1f} {o['appends_per_sec']:>9.0f} {l['p50']:>8} {l['p99']:>8} {l['p999']:>8}"
          f"   mean {l['mean']:.0f}, fdatasync p50 {o['fdatasync_latency_us']['p50']}")
print()
print("== bandwidth at 1 MiB")
print(hdr)
for name, fio_label, ours_label in (
        ("lat-1048576", "fio qd 1, fdatasync each write", "ours 1 partition, append+sync"),
        ("bw-1048576", "fio qd 8, no fdatasync (ceiling)", "ours 32 partitions, append+sync"),
        ("bwsync-1048576", "fio qd 8, fdatasync every 16 MiB", None)):
    f = fio_case(name)
    all_results["fio"][name] = f
    if ours_label is None:
        c = f["write_clat_us"]
        print(f"{fio_label:<40} {f['mb_per_sec']:>9.1f} {f['iops']:>9.0f} {c['p50']:>8.0f} {c['p99']:>8.0f} {c['p999']:>8.0f}"
              f"   (write clat)")
        continue
    o = ours(name)
    all_results["fio"][name], all_results["ours"][name] = f, o
    c, l = f["write_clat_us"], o["latency_us"]
    print(f"{fio_label:<40} {f['mb_per_sec']:>9.1f} {f['iops']:>9.0f} {c['p50']:>8.0f} {c['p99']:>8.0f} {c['p999']:>8.0f}"
          f"   (write clat)")
    print(f"{ours_label:<40} {o['mb_per_sec']:>9.1f} {o['appends_per_sec']:>9.0f} {l['p50']:>8} {l['p99']:>8} {l['p999']:>8}"
          f"   {o['appends_per_round']:.2f} appends/round")
print()
print("== (b) partition scaling, 4 KiB appends, one appender per partition")
print(f"{'partitions':>10} {'appends/s':>10} {'MB/s':>9} {'p50':>8} {'p99':>8} {'rounds/s':>9} {'fdatasync/round':>16} {'appends/round':>14}")
for p in (1, 100, 1000):
    o = ours(f"parts-{p}")
    all_results["ours"][f"parts-{p}"] = o
    l = o["latency_us"]
    print(f"{p:>10} {o['appends_per_sec']:>10.0f} {o['mb_per_sec']:>9.1f} {l['p50']:>8} {l['p99']:>8} "
          f"{o['sync_rounds'] / o['elapsed_secs']:>9.0f} {o['fdatasync_per_round']:>16.3f} {o['appends_per_round']:>14.2f}")

def div(a, b):
    return a / b if b else float("nan")

def ratios(fio, ours):
    return {
        "ratio_bw_1m": div(ours("bw-1048576")["mb_per_sec"], fio("bw-1048576")["mb_per_sec"]),
        "ratio_bw_1m_durable": div(ours("bw-1048576")["mb_per_sec"], fio("bwsync-1048576")["mb_per_sec"]),
        "fio_durable_over_raw": div(fio("bwsync-1048576")["mb_per_sec"], fio("bw-1048576")["mb_per_sec"]),
        "ratio_p50_4k": div(ours("lat-4096")["latency_us"]["p50"], fio("lat-4096")["fdatasync_us"]["p50"]),
        "ratio_parts_1000": div(ours("parts-1000")["appends_per_sec"], ours("parts-1")["appends_per_sec"]),
    }

per_pass = [ratios(lambda n: fio_pass(n, p), lambda n: ours_pass(n, p)) for p in range(1, passes + 1)]
r = median_tree(per_pass)
all_results["ratios"] = r
all_results["ratios_per_pass"] = per_pass
if out_path:
    with open(out_path, "w") as f:
        json.dump(all_results, f, indent=1)
print()
if passes > 1:
    print(f"== ratios of each pass (the line at the end gives their medians)")
    for i, q in enumerate(per_pass, 1):
        print(f"pass {i}: " + " ".join(f"{k}={v:.3f}" for k, v in q.items()))
print("targets: ratio_bw_1m >= 0.8, ratio_p50_4k <= 1.5, ratio_parts_1000 >= 0.8")
print(f"ratio_bw_1m_durable={r['ratio_bw_1m_durable']:.3f} (ours / fio with fdatasync every 16 MiB)")
print(f"fio_durable_over_raw={r['fio_durable_over_raw']:.3f} (fio with fdatasync every 16 MiB / fio without)")
print(f"ratio_bw_1m={r['ratio_bw_1m']:.3f} ratio_p50_4k={r['ratio_p50_4k']:.3f} ratio_parts_1000={r['ratio_parts_1000']:.3f}")
PY
