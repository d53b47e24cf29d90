#!/usr/bin/env bash
# The whole adaptive-module study (both settings, 5 seeds) in one call on a GPU machine with PyTorch installed.
# Results go to $ROOT/{default,study}; a snapshot without checkpoints is written to $OUT/study.tgz every 20 s,
# so a call stopped at its limit still returns what finished. Table them with
#   benchmarks/ama_study.py --root <unpacked>/default -c default --report-only   (and -c study).
# Fashion-MNIST must be in data/fashion-mnist (copy /usr/share/datasets/fashion-mnist/*.gz there).
# EPOCHS=N trains every student for N epochs instead of the configs' 4 (a longer schedule; keep ROOT apart).
set -u
OUT=${OUT:-/tmp/ama_study_out}; ROOT=${ROOT:-/tmp/ama_study}; BUDGET=${BUDGET:-330}; JOBS=${JOBS:-7}
PY=${PY:-python3}
LONG=(); [ -n "${EPOCHS:-}" ] && LONG=(--set "student.epochs=$EPOCHS")
mkdir -p "$OUT" "$ROOT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi -L
TINY=(--set data.synthetic_train=128 --set data.synthetic_test=64 --set teacher.epochs=1 --set student.epochs=1
      --set adapt.epochs=1 --set device=cuda)
if ! $PY benchmarks/ama_study.py --root "$ROOT/smoke" -c smoke "${TINY[@]}" --seeds 1 --only 0 \
    > "$ROOT/smoke.log" 2>&1; then
  tail -40 "$ROOT/smoke.log"; cp "$ROOT/smoke.log" "$OUT/"; exit 1
fi
echo "cuda smoke passed"
snap() {
  tar czf "$OUT/t.tgz" -C "$ROOT" --exclude=last.pt --exclude=best.pt --exclude='*/g[0-9]*/teacher' \
    --exclude='*/all' default study default.log study.log 2>/dev/null
  mv "$OUT/t.tgz" "$OUT/study.tgz"
}
(while sleep 20; do snap; done) & SNAP=$!
$PY benchmarks/ama_study.py --root "$ROOT/default" -c default --jobs "$JOBS" --budget-s "$BUDGET" "${LONG[@]}" \
  > "$ROOT/default.log" 2>&1 & A=$!
$PY benchmarks/ama_study.py --root "$ROOT/study" -c study --jobs "$JOBS" --budget-s "$BUDGET" "${LONG[@]}" \
  > "$ROOT/study.log" 2>&1 & B=$!
wait $A $B
kill $SNAP; snap
grep -h "group\|teacher epoch\|adapt:" "$ROOT/default.log" "$ROOT/study.log" | tail -60
ls -la "$OUT"
