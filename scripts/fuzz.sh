#!/usr/bin/env bash
# Runs glance's fuzz targets (fuzz/, bodies in src/fuzz.rs) with libFuzzer for a bounded time
# each, and keeps every input that crashed one as a regression test.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 600 s, every target)
#   JOBS=2 scripts/fuzz.sh 600                           (targets run JOBS at a time)
#
# Installs what it needs when missing (idempotent): the nightly toolchain and cargo-fuzz.
# Seeds come from tests/fixtures (configs, tokenizer, images, graphs); the growing corpus stays
# in fuzz/corpus/ (ignored). A crash lands in fuzz/artifacts/TARGET/ and is copied to
# fuzz/regressions/TARGET/ (commit it: tests/fuzz_regressions.rs replays those files).
# Prints executions and crashes per target; exits nonzero if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-600}
shift || true
TARGETS=${*:-config tokenizer model_dir image frames ffi_options}
JOBS=${JOBS:-1}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

FIX=tests/fixtures
M=$FIX/models/trocr
C=fuzz/corpus
mkdir -p $C/config $C/tokenizer $C/model_dir $C/image $C/frames $C/ffi_options fuzz/logs
for arch in trocr vitgpt2 donut; do
    for f in config generation_config preprocessor_config; do
        if [ -f "$FIX/models/$arch/$f.json" ]; then cp "$FIX/models/$arch/$f.json" "$C/config/$arch-$f.json"; fi
    done
done
cp "$M/tokenizer.json" "$C/tokenizer/trocr-tokenizer.json"
cp "$FIX"/images/*.png "$FIX"/images/*.jpg "$FIX"/images/*.gif "$C/image/"
cp "$FIX"/images/*.png "$FIX"/images/*.jpg "$C/frames/"
printf '{"threads": 1, "dtype": "fp32"}\0{"max_new_tokens": 4, "num_beams": 2}' > "$C/ffi_options/seed"
# model_dir: the first byte picks the graph (even: encoder, odd: merged decoder).
{ printf '\0'; cat "$M/encoder_model.onnx"; } > "$C/model_dir/encoder"
{ printf '\1'; cat "$M/decoder_model_merged.onnx"; } > "$C/model_dir/decoder"

# One build for every target (ASan, release with debug assertions).
cargo +nightly fuzz build

# Artifacts of earlier runs (already copied to fuzz/regressions/) are not this run's crashes.
started=fuzz/logs/.started
touch "$started"

run_one() {
    local t=$1
    cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
        > "fuzz/logs/$t.log" 2>&1 || true
}
running=0
for t in $TARGETS; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
done
wait

status=0
printf '%-12s %10s %12s %8s\n' target seconds executions crashes
for t in $TARGETS; do
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    crashes=0
    if [ -d "fuzz/artifacts/$t" ]; then
        mkdir -p "fuzz/regressions/$t"
        # slow-unit-* files are inputs over libFuzzer's slowness report, not failures.
        for a in fuzz/artifacts/"$t"/crash-* fuzz/artifacts/"$t"/oom-* fuzz/artifacts/"$t"/timeout-* fuzz/artifacts/"$t"/leak-*; do
            [ -e "$a" ] && [ "$a" -nt "$started" ] || continue
            cp "$a" "fuzz/regressions/$t/"
            crashes=$((crashes + 1))
        done
    fi
    [ "$crashes" -eq 0 ] || status=1
    printf '%-12s %10s %12s %8s\n' "$t" "$SECONDS_EACH" "${execs:-?}" "$crashes"
done
exit $status
