#!/bin/sh
# Every figure of BENCHMARKS.md's speed and limit tables, on this machine (about 25 minutes):
# scripts/bench_vs_ort.py for both bench model shapes, dtypes fp32 and q8, 1 and 2 threads, then
# tract's and onnxruntime's matmul throughput.
#
#   scripts/bench_all.sh [OUT_DIR]      # default scratch/bench_results/latest
#
# Needs: target/release/glance (cargo build --release), the models of
# scripts/make_bench_models.py in scratch/bench_models/, and a Python with onnxruntime,
# transformers and Pillow (PY, default /work/venv/bin/python).
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv/bin/python}
B=scratch/bench_models
O=${1:-scratch/bench_results/latest}
IMG=tests/fixtures/images/rgb.png
G=target/release/glance
mkdir -p "$O"
git rev-parse --short HEAD > "$O/COMMIT"
for dt in fp32 q8; do
  for dec in split merged; do
    $PY scripts/bench_vs_ort.py --model $B/trocr-small-shape --dtype $dt --threads 1 --runs 3 --tokens 32 --beams 1,4 --glance $G --glance-decoder $dec --image $IMG --json "$O/trocr_${dt}_${dec}_t1.json" > "$O/trocr_${dt}_${dec}_t1.md" 2>&1
  done
  $PY scripts/bench_vs_ort.py --model $B/trocr-small-shape --dtype $dt --threads 2 --runs 3 --tokens 32 --beams 1,4 --glance $G --glance-decoder merged --image $IMG --json "$O/trocr_${dt}_merged_t2.json" > "$O/trocr_${dt}_merged_t2.md" 2>&1
done
for dt in fp32 q8; do
  for t in 1 2; do
    $PY scripts/bench_vs_ort.py --model $B/vitgpt2-shape --dtype $dt --threads $t --runs 2 --tokens 32 --beams 1,4 --glance $G --glance-decoder merged --image $IMG --json "$O/vitgpt2_${dt}_merged_t$t.json" > "$O/vitgpt2_${dt}_merged_t$t.md" 2>&1
  done
done
SHAPES=577x384x1536,512x512x512,1x256x1024,1x256x64044,197x768x3072,1x768x3072,1x768x50257
for t in 1 2; do
  $G matmul --threads $t --shapes $SHAPES > "$O/matmul_t$t.md" 2>&1
  $PY scripts/matmul_ort.py --threads $t --shapes $SHAPES > "$O/matmul_ort_t$t.md" 2>&1
done
echo "done: $O"
