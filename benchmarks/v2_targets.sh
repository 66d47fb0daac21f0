#!/usr/bin/env bash
# Proving-ground-v2 targets 2-5 (issue 13) for one demo model on one world, as the sessions-17-19 card
# measured them, so the measurement outlives the untracked out/ folder:
#   errors.md        pope_errors.py on the whole test split, dense and after uniform Wanda at SPARS_ERR
#                    (target 3: dense gap = random - adversarial, its widening, false "yes" by negative type)
#   ls-cal.json      single-layer 75 % drops on 300 calibration rows a task (the profile the sensitivity
#                    allocation of target 5 is derived from; sessions 17-20 read target 4 here too)
#   ls-test.json     the same on the whole test split (target 4 as the issue words it: most critical
#                    layers and Spearman of the POPE-adversarial and ScienceQA profiles; session 21 on)
#   degradation.md   uniform / sensitivity / 8 random allocations at SPARS on LIMIT test rows a task
#                    (targets 2, 5; LIMIT=600 by default, 0 = the whole test split, session 23's rule)
# Every figure is --round-to 8 (session 16: 32 allows only 0/25/50/75 % of a 128-row MLP).
# Usage (repository root): [WORLD=out/world8-s2] [SPARS=0.3,0.4,0.5] [SPARS_ERR=0.5] [LIMIT=600] \
#     bash benchmarks/v2_targets.sh MODEL_DIR OUT_DIR
set -euo pipefail
M=$(realpath "$1"); O=$(realpath -m "$2"); W=$(realpath "${WORLD:-out/world8-s2}")
mkdir -p "$O"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HIPP_DISABLE_PLUGIN_AUTOLOAD=1
PY=$PWD/.venv/bin/python
cd benchmarks
$PY pope_errors.py --model "$M" --data "$W" --sparsity "${SPARS_ERR:-0.5}" --round-to 8 > "$O/errors.md"
$PY layer_sensitivity.py --model "$M" --data "$W" --split calibration --limit 300 --ratios 0.75 \
    --out "$O/ls-cal.json" > "$O/ls-cal.log"
$PY layer_sensitivity.py --model "$M" --data "$W" --split test --ratios 0.75 \
    --out "$O/ls-test.json" > "$O/ls-test.log"
$PY degradation.py --model "$M" --data "$W" --limit "${LIMIT:-600}" --sparsities "${SPARS:-0.3,0.4,0.5}" --seeds 8 \
    --round-to 8 --sensitivity "$O/ls-cal.json" --out "$O/degradation" > "$O/degradation.md"
