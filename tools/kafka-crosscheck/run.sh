#!/usr/bin/env bash
# Cross-check of the record batch encoder against kafka-python.
#
# Builds record batches with shardmq's encoder (the encode_fixtures example
# of the shardmq-schema crate) into a temporary directory, then reads every
# one back with kafka-python, an independent implementation of Kafka's
# RecordBatch v2: crc, header fields, records and framing must all match what
# the encoder was given. Exits non-zero on any mismatch.
#
# The other direction, our decoder reading batches kafka-python wrote, runs
# in `cargo test -p shardmq-schema` against the committed fixtures in
# schema/tests/fixtures/kafka-python/ (regenerate them with
# make_fixtures.py in this directory).
#
# Usage: bash tools/kafka-crosscheck/run.sh   (from anywhere in the repo)
# Needs cargo and python3; installs kafka-python with pip if it is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

if ! "$python" -c 'import kafka' 2>/dev/null; then
    # A virtualenv of our own: system Pythons (Debian's among them) refuse
    # pip installs into themselves.
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/shardmq/kafka-python"
    if ! "$venv/bin/python" -c 'import kafka' 2>/dev/null; then
        echo "kafka-python not found; installing it into $venv"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check kafka-python
    fi
    python="$venv/bin/python"
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cd "$repo"
cargo run --quiet -p shardmq-schema --example encode_fixtures -- "$out"
"$python" "$here/verify_ours.py" "$out"
