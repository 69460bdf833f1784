#!/usr/bin/env bash
# Builds glance for Raspberry Pi class ARM boards on an x86-64 Debian/Ubuntu host and runs its
# test suite (parity tests included) under qemu user mode, emulating the boards' CPUs:
#   aarch64-unknown-linux-gnu      QEMU_CPU=cortex-a72 (Raspberry Pi 4, 64-bit Pi OS)
#   armv7-unknown-linux-gnueabihf  QEMU_CPU=cortex-a7  (32-bit Pi OS)
#
#   scripts/test-arm.sh                  # both targets
#   scripts/test-arm.sh aarch64          # one (aarch64 | armv7 | a full triple)
#   scripts/test-arm.sh --no-install     # do not touch apt or rustup; fail if something is missing
#   scripts/test-arm.sh --quick          # what .ci/run runs: the unit tests, parity, API,
#                                        # preprocessing and C ABI tests, not the CLI, OCR,
#                                        # hostile-input, resolution and concurrency suites
#   QEMU_CPU_AARCH64=cortex-a76 scripts/test-arm.sh aarch64   # emulate a Pi 5 instead
#   GLANCE_ARM_DEADLINE=<epoch seconds>  # skip, saying so, a target that would not finish by then:
#                                        # .ci/run's guard against its 90-minute limit. A target
#                                        # is expected to take GLANCE_ARM_TARGET_SECONDS (see below).
#
# Installs what it needs when it is missing (idempotent; apt needs root or sudo):
#   gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
#   qemu-user, and the rustup targets.
# Linkers and runners come from .cargo/config.toml (runner: scripts/arm-run). Builds use the
# same dev profile as the host `cargo test` ([profile.dev.package."*"] opt-level = 2), in
# CARGO_TARGET_DIR when set, else target/. CARGO_BUILD_JOBS (default 2) bounds the build jobs.
# Without --quick every test binary runs, the CLI tests too: scripts/arm-run sets GLANCE_TEST_RUNNER,
# through which tests/common::glance_command starts the ARM `glance` binary under qemu (no
# binfmt_misc needed). Then, for each target, tests/ffi/run.sh builds the .so and .a and runs the
# C program against them under qemu.
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
tests=() # cargo test's selection: all of it unless --quick
targets=()
for arg in "$@"; do
    case "$arg" in
    --no-install) install=0 ;;
    --quick) tests=(--lib --test parity --test api --test preprocess --test ffi) ;;
    aarch64 | aarch64-unknown-linux-gnu) targets+=(aarch64-unknown-linux-gnu) ;;
    armv7 | armv7-unknown-linux-gnueabihf) targets+=(armv7-unknown-linux-gnueabihf) ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "test-arm.sh: unknown argument $arg (aarch64, armv7, --no-install, --quick)" >&2
        exit 2
        ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
summary=()
t_all=$SECONDS

note() { printf '\n=== test-arm: %s\n' "$*"; }
took() { summary+=("$(printf '%-44s %5ds' "$1" "$2")"); }

case "$(uname -m)" in
x86_64 | amd64) ;;
*) echo "test-arm.sh: this cross path is for x86-64 hosts; on a Pi, run cargo test" >&2 ;;
esac

# --- what each target needs: apt packages (and a file that proves each is there), rustup target
packages_for() {
    case "$1" in
    aarch64-unknown-linux-gnu) echo "gcc-aarch64-linux-gnu:/usr/bin/aarch64-linux-gnu-gcc libc6-dev-arm64-cross:/usr/aarch64-linux-gnu/lib/crt1.o qemu-user:/usr/bin/qemu-aarch64" ;;
    armv7-unknown-linux-gnueabihf) echo "gcc-arm-linux-gnueabihf:/usr/bin/arm-linux-gnueabihf-gcc libc6-dev-armhf-cross:/usr/arm-linux-gnueabihf/lib/crt1.o qemu-user:/usr/bin/qemu-arm" ;;
    esac
}

t0=$SECONDS
missing=()
for target in "${targets[@]}"; do
    for entry in $(packages_for "$target"); do
        [ -e "${entry#*:}" ] || missing+=("${entry%%:*}")
    done
done
if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    [ $install = 1 ] || { echo "test-arm.sh: missing packages: ${missing[*]}" >&2; exit 1; }
    note "installing ${missing[*]}"
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
installed_targets=$(rustup target list --installed)
for target in "${targets[@]}"; do
    if ! grep -qx "$target" <<<"$installed_targets"; then
        [ $install = 1 ] || { echo "test-arm.sh: rustup target $target missing" >&2; exit 1; }
        note "rustup target add $target"
        rustup target add "$target"
    fi
done
took "install (apt, rustup targets)" $((SECONDS - t0))

for target in "${targets[@]}"; do
    if [ -n "${GLANCE_ARM_DEADLINE:-}" ]; then
        # A fresh build and the --quick tests of one target: 26-32 min measured on two shared
        # cores (.ci/run), taken as 35.
        need="${GLANCE_ARM_TARGET_SECONDS:-2100}"
        left=$((GLANCE_ARM_DEADLINE - $(date +%s)))
        if [ "$left" -lt "$need" ]; then
            note "SKIPPED $target: ${left}s left before the deadline, a target needs about ${need}s"
            summary+=("$(printf '%-44s SKIPPED: %ss left, %ss needed' "$target" "$left" "$need")")
            continue
        fi
    fi
    note "$target: build tests (dev profile, $CARGO_BUILD_JOBS jobs)"
    t0=$SECONDS
    cargo test --target "$target" "${tests[@]}" --no-run
    took "$target build" $((SECONDS - t0))

    # The board's CPU, not qemu's `max` (whose SVE etc. would make tract pick other kernels).
    case "$target" in
    aarch64-*) QEMU_CPU="${QEMU_CPU_AARCH64:-cortex-a72}" ;;
    armv7-*) QEMU_CPU="${QEMU_CPU_ARMV7:-cortex-a7}" ;;
    esac
    export QEMU_CPU
    note "$target: run tests under qemu, QEMU_CPU=$QEMU_CPU (parity reports printed)"
    t0=$SECONDS
    log="$target_dir/test-arm-$target.log"
    status=0
    cargo test --target "$target" "${tests[@]}" --no-fail-fast -- --nocapture 2>&1 | tee "$log" || status=$?
    took "$target test" $((SECONDS - t0))
    passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
    failed=$(grep -E 'test result:' "$log" | grep -Eo '[0-9]+ failed' | awk '{s += $1} END {print s + 0}')
    summary+=("$(printf '%-44s %s passed, %s failed' "$target tests" "$passed" "$failed")")
    [ $status = 0 ] || {
        printf '%s\n' "${summary[@]}"
        echo "test-arm.sh: $target tests failed (log: $log)" >&2
        exit $status
    }

    # The C ABI's own check: a C program compiled by the target's gcc against the .so and the .a
    # (on armv7, size_t and pointers are 32-bit: the widths the header promises are tested there).
    note "$target: tests/ffi/run.sh $target"
    t0=$SECONDS
    bash tests/ffi/run.sh "$target"
    took "$target C ABI (tests/ffi/run.sh)" $((SECONDS - t0))
done

note "summary"
printf '%s\n' "${summary[@]}"
printf '%-44s %5ds\n' "total" $((SECONDS - t_all))
