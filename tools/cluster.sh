#!/usr/bin/env bash
# Starts, stops and shows the three-broker cluster of configs/cluster-3/ on
# this machine (loopback ports, one shard per broker, static peers, no
# etcd). Each broker's data directory, log and pid file go under DIR.
#
# Usage: tools/cluster.sh start  [DIR]   build (release) if needed, start the
#                                        three brokers, wait until each is
#                                        healthy and the cluster has a
#                                        controller leader with all three
#                                        brokers registered
#        tools/cluster.sh stop   [DIR]   SIGTERM each broker and wait for it
#                                        to exit (SIGKILL after 60 s)
#        tools/cluster.sh status [DIR]   each broker's process and health,
#                                        then `shardmqctl cluster describe`
#
# DIR defaults to ${TMPDIR:-/var/tmp}/shardmq-cluster-3. Client addresses:
# 127.0.0.1:19192, :19292, :19392; metrics: http://127.0.0.1:19194/metrics,
# :19294, :19394. Environment (optional): CLUSTER_START_TIMEOUT (seconds,
# default 120), CARGO_TARGET_DIR.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmd="${1:-}"
dir="${2:-${TMPDIR:-/var/tmp}/shardmq-cluster-3}"
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
brokers=(1 2 3)
bootstrap="127.0.0.1:19192,127.0.0.1:19292,127.0.0.1:19392"

usage() {
    sed -n '6,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

metrics_port() { echo "19${1}94"; }

# True if the broker's /health answers 200. The connection is opened in a
# subshell: a failed `exec` redirection would end this shell.
healthy() {
    local port status
    port="$(metrics_port "$1")"
    status="$( (exec 3<>"/dev/tcp/127.0.0.1/$port" &&
        printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 &&
        head -n 1 <&3) 2>/dev/null)" || return 1
    [[ "$status" == *" 200 "* ]]
}

pid_of() {
    local f="$dir/broker-$1.pid"
    [ -f "$f" ] && cat "$f"
}

alive() {
    local pid
    pid="$(pid_of "$1")" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

build() {
    if [ ! -x "$bin/shardmq-broker" ] || [ ! -x "$bin/shardmqctl" ] || [ -n "${CLUSTER_REBUILD:-}" ]; then
        echo "==> building shardmq-broker and shardmqctl (release)" >&2
        (cd "$repo" && cargo build --release --quiet -p shardmq-engine --bin shardmq-broker \
            && cargo build --release --quiet -p shardmq-tools --bin shardmqctl)
    fi
}

start() {
    build
    mkdir -p "$dir"
    for n in "${brokers[@]}"; do
        if alive "$n"; then
            echo "broker $n already runs (pid $(pid_of "$n"))" >&2
            continue
        fi
        "$bin/shardmq-broker" --config "$repo/configs/cluster-3/broker-$n.toml" \
            --data-dir "$dir/broker-$n" >>"$dir/broker-$n.log" 2>&1 &
        echo $! >"$dir/broker-$n.pid"
        echo "==> broker $n started (pid $!, data $dir/broker-$n, log $dir/broker-$n.log)" >&2
    done
    local deadline=$((SECONDS + ${CLUSTER_START_TIMEOUT:-120}))
    for n in "${brokers[@]}"; do
        until healthy "$n"; do
            if ! alive "$n"; then
                echo "broker $n exited during start-up; its log:" >&2
                tail -n 40 "$dir/broker-$n.log" >&2
                exit 1
            fi
            if [ "$SECONDS" -ge "$deadline" ]; then
                echo "broker $n not healthy within ${CLUSTER_START_TIMEOUT:-120} s" >&2
                exit 1
            fi
            sleep 0.2
        done
    done
    # Healthy brokers serve; the cluster is ready once the controller has a
    # leader and every broker registered.
    until "$bin/shardmqctl" --bootstrap "$bootstrap" cluster describe --json 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d.get("controller_id",-1)>=0 and len([b for b in d.get("brokers",[]) if b.get("status")=="active"])==3 else 1)' 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "the cluster did not form within ${CLUSTER_START_TIMEOUT:-120} s" >&2
            "$bin/shardmqctl" --bootstrap "$bootstrap" cluster describe >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    echo "==> cluster of 3 brokers up; bootstrap $bootstrap" >&2
}

stop() {
    for n in "${brokers[@]}"; do
        if alive "$n"; then
            kill -TERM "$(pid_of "$n")" 2>/dev/null || true
        fi
    done
    for n in "${brokers[@]}"; do
        local waited=0
        while alive "$n"; do
            if [ "$waited" -ge 600 ]; then
                echo "broker $n did not stop within 60 s; killing it" >&2
                kill -KILL "$(pid_of "$n")" 2>/dev/null || true
                break
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
        if [ -f "$dir/broker-$n.pid" ]; then
            echo "==> broker $n stopped" >&2
            rm -f "$dir/broker-$n.pid"
        fi
    done
}

status() {
    for n in "${brokers[@]}"; do
        if alive "$n"; then
            if healthy "$n"; then h="healthy"; else h="not healthy"; fi
            echo "broker $n: running (pid $(pid_of "$n")), $h, metrics http://127.0.0.1:$(metrics_port "$n")/metrics"
        else
            echo "broker $n: not running"
        fi
    done
    if [ -x "$bin/shardmqctl" ]; then
        "$bin/shardmqctl" --bootstrap "$bootstrap" cluster describe || true
    fi
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    -h | --help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
