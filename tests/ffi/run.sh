#!/usr/bin/env bash
# The C interface from C: builds libglance (.so and .a), compiles tests/ffi/glance_test.c against
# include/glance.h, links it both ways, runs it on the fixture models, and compares what it prints
# with tests/ffi/expected.txt (written from the Rust API by tests/ffi.rs).
#
#   tests/ffi/run.sh                             # this machine, with ${CC:-cc}
#   tests/ffi/run.sh aarch64-unknown-linux-gnu   # cross: aarch64-linux-gnu-gcc, run under
#                                                # qemu-aarch64 -L /usr/aarch64-linux-gnu
#                                                # (QEMU_CPU is honoured), natively on an ARM host
#
# Environment: CC (the C compiler; for a target, default <gnu-triple>-gcc), QEMU (the emulator,
# default qemu-<arch>), QEMU_LD_PREFIX (default /usr/<gnu-triple>), GLANCE_PROFILE (cargo profile,
# default dev), GLANCE_LINK (both, shared or static; default both), CARGO_TARGET_DIR, GLANCE_LIB_DIR
# (where libglance.so and libglance.a are, built already: no cargo build then).
# Exit status 0 when every check in the C program passed and both links printed expected.txt.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
triple="${1:-}"
profile="${GLANCE_PROFILE:-dev}"
link="${GLANCE_LINK:-both}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$profile" in dev | test) profile_dir=debug ;; *) profile_dir="$profile" ;; esac

cargo_args=(build --lib --profile "$profile" --manifest-path "$root/Cargo.toml")
run=()
if [[ -n "$triple" ]]; then
    cargo_args+=(--target "$triple")
    lib_dir="$target_dir/$triple/$profile_dir"
    out_dir="$target_dir/ffi-test/$triple"
    arch="${triple%%-*}"
    case "$triple" in
        aarch64-*-linux-gnu) gnu=aarch64-linux-gnu qemu_arch=aarch64 ;;
        armv7-*-linux-gnueabihf | arm-*-linux-gnueabihf) gnu=arm-linux-gnueabihf qemu_arch=arm ;;
        x86_64-*-linux-gnu) gnu=x86_64-linux-gnu qemu_arch=x86_64 ;;
        *) gnu="${triple/-unknown/}" qemu_arch="$arch" ;;
    esac
    cc="${CC:-$gnu-gcc}"
    host_arch="$(uname -m)"
    if [[ "$host_arch" != "$qemu_arch" && ! ("$qemu_arch" == arm && "$host_arch" == armv7l) ]]; then
        run=("${QEMU:-qemu-$qemu_arch}" -L "${QEMU_LD_PREFIX:-/usr/$gnu}")
    fi
else
    lib_dir="$target_dir/$profile_dir"
    out_dir="$target_dir/ffi-test/host"
    cc="${CC:-cc}"
fi

command -v "$cc" >/dev/null || { echo "run.sh: no C compiler '$cc'" >&2; exit 3; }
if [[ ${#run[@]} -gt 0 ]]; then
    command -v "${run[0]}" >/dev/null || { echo "run.sh: no emulator '${run[0]}'" >&2; exit 3; }
fi

if [[ -n "${GLANCE_LIB_DIR:-}" ]]; then
    lib_dir="$GLANCE_LIB_DIR" # built already (tests/ffi.rs, inside `cargo test`)
else
    cargo "${cargo_args[@]}"
fi
mkdir -p "$out_dir"

cflags=(-std=c11 -O1 -g -Wall -Wextra -Werror -I "$root/include")
# What rustc lists as the native libraries of a static Rust library on Linux.
static_libs=(-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)

status=0
check() { # NAME BINARY
    local name="$1" bin="$2" out="$out_dir/$1.txt"
    echo "run.sh: running the $name build${run[*]:+ under ${run[*]}}" >&2
    # The library dir first: `cargo test` puts older copies of libglance.so on LD_LIBRARY_PATH,
    # which goes before the binary's RUNPATH.
    if ! LD_LIBRARY_PATH="$lib_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        "${run[@]}" "$bin" "$root/tests/fixtures" >"$out"; then
        echo "run.sh: $name: the C program failed (see its FAIL lines above)" >&2
        status=1
    fi
    if ! diff -u "$here/expected.txt" "$out" >&2; then
        echo "run.sh: $name: output differs from tests/ffi/expected.txt (above: - expected, + got)" >&2
        status=1
    fi
}

if [[ "$link" == both || "$link" == shared ]]; then
    "$cc" "${cflags[@]}" "$here/glance_test.c" -o "$out_dir/glance_test_shared" \
        -L "$lib_dir" -Wl,-rpath,"$lib_dir" -lglance -lpthread
    check shared "$out_dir/glance_test_shared"
fi
if [[ "$link" == both || "$link" == static ]]; then
    # Without the debug info of a debug libglance.a (1.5 GB) the link takes 9 s instead of 30.
    "$cc" "${cflags[@]}" "$here/glance_test.c" -o "$out_dir/glance_test_static" \
        "$lib_dir/libglance.a" -Wl,--strip-debug -Wl,-z,noexecstack "${static_libs[@]}"
    check static "$out_dir/glance_test_static"
fi
[[ $status == 0 ]] && echo "run.sh: the C test passed ($link)" >&2
exit $status
