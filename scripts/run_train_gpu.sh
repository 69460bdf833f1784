#!/usr/bin/env bash
# One OCR training run on the lent GPU machine (16 CPU cores, one H100/H200, no network;
# python3 there has torch 2.11, transformers 5.x, pillow, numpy — nothing gets installed).
#
# Before: scripts/pack_fonts.sh scratch/ocr_data   (here; ~37 MB, carried along with `carry`)
# Run (device tool): command "bash scripts/run_train_gpu.sh", carry ["scratch/ocr_data"], timeout_s 600
# After:  the files come back from $OUT (5 files, each < 16 MiB):
#           model-0000N-of-0000M.safetensors (fp32 weights, transformers-4 names), train_meta.json, log.txt
#         then here:  /work/venv/bin/python scripts/train_ocr.py --export <that folder> scratch/ocr_hf
#
# Wall time: ~30-60 s start-up (imports, fonts, CUDA, 200 eval lines) + MINUTES of training
# + ~15 s final evaluation and save. Data workers render the lines on the CPU cores; the GPU
# waits on them (log lines show lines/s and "data-wait"). The weights in $OUT are refreshed
# at every checkpoint (CKPT minutes), so a run stopped by the time limit still returns weights.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/ocr_out}
DATA=${DATA:-scratch/ocr_data}
MINUTES=${MINUTES:-6.5}
BATCH=${BATCH:-256}
LR=${LR:-8e-4}
WORKERS=${WORKERS:-15}
CKPT=${CKPT:-2}
RUN=${RUN:-/tmp/ocr_gpu_run}   # checkpoints with optimizer state: stay on the machine
PY=${PY:-python3}

mkdir -p "$OUT"
if [ ! -f "$DATA/fonts_index.json" ]; then
    echo "no $DATA/fonts_index.json: run scripts/pack_fonts.sh $DATA here and carry it along" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import sys, torch, transformers, PIL, numpy; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, "pillow", PIL.__version__, "numpy", numpy.__version__)'
echo "cpus: $(nproc)  /dev/shm: $(df -h /dev/shm 2>/dev/null | awk 'NR==2 {print $4 " free"}')"

exec "$PY" scripts/train_ocr.py \
    --out "$RUN" --final-dir "$OUT" --font-dir "$DATA" \
    --device cuda --preset base \
    --minutes "$MINUTES" --batch-size "$BATCH" --lr "$LR" --warmup 0.04 --warmup-steps 300 \
    --workers "$WORKERS" --prefetch 4 \
    --eval-minutes 2 --eval-lines 200 --ckpt-minutes "$CKPT" --log-seconds 20 \
    ${EXTRA:-}
