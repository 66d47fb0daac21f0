#!/usr/bin/env bash
# Policy variants trained side by side on one lent GPU, then screened (benchmarks/steering.py),
# in one device run. Prepared in session 32 (no machine was lent then); checked on CPU with
# DEVICE=cpu STEPS=1. The device image lacks torch-pruning and has an older transformers; fetch
# their wheels here first (Python 3.12, x86-64), in the repository root:
#
#   echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d .whl \
#     torch-pruning==1.6.1 transformers==5.23.0
#
# then, on the device tool:
#
#   carry: .whl out/policy-world-v2/calibration out/policy-world-v2/manifest.json
#          out/compare-v2/world/calibration out/compare-v2/world/test out/compare-v2/world/manifest.json
#   command: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#              --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 9; \
#            bash benchmarks/device/policy_variants.sh
#
# Each line of VARIANTS (default benchmarks/device/variants.txt) is "NAME ARGS...": extra
# `hipp train` flags on top of the shipped recipe's (docs/results.md). Results under $RES:
# status.txt, steering-{none,lstsq}.{md,json}, pols.tgz (policies, checkpoints and training logs).
# Environment: DEVICE (cuda), STEPS (200), TRAIN_S (training-phase limit, s), SMOKE_S (the
# one-step smoke run's limit, s: 120), RES ($OUT), PY.
set -u
DEVICE=${DEVICE:-cuda}; STEPS=${STEPS:-200}; TRAIN_S=${TRAIN_S:-360}; RES=${RES:-$OUT}; PY=${PY:-python3}
VARIANTS=${VARIANTS:-benchmarks/device/variants.txt}
export HIPP_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p "$RES" /tmp/pol
$PY -c "import torch, transformers, torch_pruning; print(torch.__version__, transformers.__version__, torch.cuda.is_available())" || exit 1
RECIPE=(--model demo --data out/policy-world-v2 --round-to 8 --reward-limit 256 --calib-n 64 --device "$DEVICE"
        --no-progress --group 6 --prefs 2 --budget 0.2,0.6 --r-max 0.95 --budget-input compression --reward-stat loglik)
train() {  # NAME, limit in seconds, extra flags...
  local name=$1 limit=$2; shift 2
  rm -rf "/tmp/cal-$name"; cp -r hipp_torchprune/assets/demo-policy/calibration "/tmp/cal-$name"
  timeout "$limit" $PY -m hipp_torchprune.cli train "${RECIPE[@]}" --calibration "/tmp/cal-$name" \
    --out "/tmp/pol/$name" "$@" > "/tmp/pol/$name.log" 2>&1
  echo "$name rc=$? $(date +%T)" >> "$RES/status.txt"
}
start=$(date +%s)
train smoke "${SMOKE_S:-120}" --steps 1 --seed 1
echo "smoke: $(( $(date +%s) - start )) s"
[ -f /tmp/pol/smoke/policy.json ] || { tail -40 /tmp/pol/smoke.log; exit 3; }
while read -r name args; do
  [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
  # shellcheck disable=SC2086  # ARGS are flags split on spaces
  train "$name" "$TRAIN_S" --steps "$STEPS" $args &
done < "$VARIANTS"
wait
POLICIES=(--policy shipped=hipp_torchprune/assets/demo-policy)
for d in /tmp/pol/*/; do
  n=$(basename "$d"); [ "$n" != smoke ] && [ -f "$d/policy.json" ] && POLICIES+=(--policy "$n=$d")
done
for rec in none lstsq; do
  timeout 70 $PY benchmarks/steering.py --data out/compare-v2/world --out "/tmp/steer-$rec" --device "$DEVICE" \
    --reconstruct "$rec" "${POLICIES[@]}" > "$RES/steering-$rec.md" 2>&1
  echo "steering $rec rc=$? $(date +%T)" >> "$RES/status.txt"
  cp "/tmp/steer-$rec/steering.json" "$RES/steering-$rec.json" 2>/dev/null
done
tar -C /tmp/pol --exclude=smoke --exclude=runs -czf "$RES/pols.tgz" .
cat "$RES/status.txt"
