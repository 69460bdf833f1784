#!/usr/bin/env bash
# Regenerates include/glance.h from src/ffi.rs with cbindgen (configured by cbindgen.toml).
# The build never runs cbindgen: the header is committed; run this after changing src/ffi.rs
# (tests/ffi.rs fails when an exported function is missing from the header).
#   scripts/gen-header.sh          # rewrite include/glance.h
#   scripts/gen-header.sh --check  # exit 1 if include/glance.h is not what cbindgen writes
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cbindgen >/dev/null; then
    echo "gen-header.sh: installing cbindgen (cargo install cbindgen --locked)" >&2
    cargo install cbindgen --locked
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

if [[ "${1:-}" == --check ]]; then
    tmp="$(mktemp)"
    trap 'rm -f "$tmp"' EXIT
    cbindgen --quiet --config cbindgen.toml --output "$tmp" src/ffi.rs
    diff -u include/glance.h "$tmp" || {
        echo "gen-header.sh: include/glance.h is out of date; run scripts/gen-header.sh" >&2
        exit 1
    }
else
    cbindgen --quiet --config cbindgen.toml --output include/glance.h src/ffi.rs
    echo "gen-header.sh: wrote include/glance.h" >&2
fi
