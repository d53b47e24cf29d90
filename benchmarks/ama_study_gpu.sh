#!/usr/bin/env bash
# Issue #9's long schedule on one GPU, in one call: a WRN-16-4 teacher (T_EPOCHS, crop+flip), the adaptive module
# (A_EPOCHS; the tenth session's 2 left the adapted teacher 6.8 points below the original),
# then student / ama(kd_target=original) / kd / ama (the paper's reading) for 5 seeds at S_EPOCHS student epochs,
# every (method, seed) its own process (benchmarks/ama_study.py --split), JOBS at a time, under CUDA MPS when the
# machine allows it (the small kernels of many processes then share the SMs instead of taking turns).
# No job is started that would end after BUDGET seconds (the teacher's time included); a snapshot without
# weights goes to $OUT/long.tgz every 15 s, so a call stopped at its limit still returns every finished run's
# result.json; the tables (compare.md, claims.md, epochs.md, compare.json) are made there at the end.
# Fashion-MNIST must be in data/fashion-mnist (copy /usr/share/datasets/fashion-mnist/*.gz there).
set -u
OUT=${OUT:-/tmp/ama_gpu_out}; ROOT=${ROOT:-/tmp/ama_long}; BUDGET=${BUDGET:-500}; JOBS=${JOBS:-12}
T_EPOCHS=${T_EPOCHS:-30}; S_EPOCHS=${S_EPOCHS:-20}; A_EPOCHS=${A_EPOCHS:-2}; PY=${PY:-python3}
SETS=(--set teacher.arch=wrn16_4 --set "teacher.epochs=$T_EPOCHS" --set "student.epochs=$S_EPOCHS"
      --set "adapt.epochs=$A_EPOCHS"
      --set student.precision=fp32 ${EXTRA:-})  # EXTRA: more --set options (a dry run on a CPU, say)
START=$(date +%s)
mkdir -p "$OUT" "$ROOT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi -L
grep -m1 "model name" /proc/cpuinfo; nproc  # the machine, for the results table
smoke() {  # the real path on 2048 images, one epoch each: stops a broken setup within a minute or two
  timeout 150 $PY benchmarks/ama_study.py --root "$ROOT/smoke$1" -c study "${SETS[@]}" --set data.train_subset=2048 \
    --set teacher.epochs=1 --set student.epochs=1 --set adapt.epochs=1 --seeds 1 --split --jobs 4 \
    --only 0 --only 1 > "$ROOT/smoke$1.log" 2>&1
}
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps
mkdir -p /tmp/mps
if nvidia-cuda-mps-control -d; then echo "MPS started"; else echo "MPS not available"; fi
if ! smoke 1; then
  cp "$ROOT/smoke1.log" "$OUT/"; tail -30 "$ROOT/smoke1.log"
  echo "smoke failed; again without MPS"
  echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  if ! smoke 2; then cp "$ROOT/smoke2.log" "$OUT/"; tail -40 "$ROOT/smoke2.log"; exit 1; fi
fi
grep -h "finished with\|img/s" "$ROOT"/smoke*.log | grep -v "━" | tail -8
echo "smoke passed after $(( $(date +%s) - START )) s"
snap() {
  tar czf "$OUT/t.tgz" -C "$ROOT" --exclude='*.pt' --exclude=.cache --exclude='g[0-9]*/teacher' --exclude='g[0-9]*/adapt' \
    --exclude='all' long long.log 2>/dev/null
  mv "$OUT/t.tgz" "$OUT/long.tgz"
}
(while sleep 15; do snap; done) & SNAP=$!
mkdir -p "$ROOT/long"
(while sleep 30; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done) \
  > "$ROOT/long/gpu.csv" 2>&1 & SMI=$!
$PY benchmarks/ama_study.py --root "$ROOT/long" -c study "${SETS[@]}" --only 0 --only 1 --split --jobs "$JOBS" \
  --budget-s $(( BUDGET - ($(date +%s) - START) )) > "$ROOT/long.log" 2>&1
kill $SNAP $SMI; snap
for f in compare.md claims.md epochs.md compare.json; do cp "$ROOT/long/all/compare/$f" "$OUT/" 2>/dev/null; done
grep -v "━" "$ROOT/long.log" | grep -i "teacher epoch\|adapt\|started\|finished\|budget\|error" | tail -60
cat "$ROOT/long/gpu.csv"
echo "done after $(( $(date +%s) - START )) s"
