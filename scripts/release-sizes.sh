#!/usr/bin/env bash
# What glance weighs on a board: builds the `glance` binary and libglance.so with a release
# profile for each target and prints their sizes (bytes and MiB), stripped.
#
#   scripts/release-sizes.sh                                # release-small, aarch64 and armv7
#   PROFILE=release scripts/release-sizes.sh aarch64-unknown-linux-gnu
#
# release-small (Cargo.toml): opt-level 3, fat LTO, codegen-units 1, panic = "unwind" (the C
# ABI catches panics), symbols stripped by rustc. Other profiles are stripped here with the
# target's binutils strip, so every figure is a stripped file. The cross tools are those
# scripts/test-arm.sh installs. CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${PROFILE:-release-small}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
target_dir="${CARGO_TARGET_DIR:-target}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

rows=()
for target in "${targets[@]}"; do
    case "$target" in
    aarch64-unknown-linux-gnu) strip=aarch64-linux-gnu-strip ;;
    armv7-unknown-linux-gnueabihf) strip=arm-linux-gnueabihf-strip ;;
    x86_64-unknown-linux-gnu) strip=strip ;;
    *) echo "release-sizes.sh: no strip known for $target" >&2; exit 2 ;;
    esac
    t0=$SECONDS
    cargo build --profile "$profile" --target "$target" --bin glance --lib
    built=$((SECONDS - t0))
    dir="$target_dir/$target/$profile"
    out="$target_dir/sizes/$target-$profile"
    mkdir -p "$out"
    for file in glance libglance.so; do
        cp "$dir/$file" "$out/$file"
        "$strip" "$out/$file" # a no-op on release-small's already stripped files
        bytes=$(stat -c %s "$out/$file")
        rows+=("$(printf '%-32s %-14s %-14s %10d bytes %7.2f MiB  (build %ds)' \
            "$target" "$profile" "$file" "$bytes" "$(awk "BEGIN {print $bytes / 1048576}")" "$built")")
    done
done
printf '%s\n' "${rows[@]}"
