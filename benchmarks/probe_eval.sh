#!/usr/bin/env bash
# Proving-ground probe evaluation (issue 13): dense POPE/ScienceQA on the calibration and test splits,
# single-layer sensitivity on calibration rows, degradation at 30/50 % (uniform, sensitivity, random) on test,
# (random allocations: 8 seeds; 3 can all land on the same fragile layer) uniform pruning at 75 % (idle.md: do the tasks need the MLPs at all?) and ScienceQA per topic under
# single-layer pruning (topics.jsonl).
# Usage (repository root): [WORLD=out/world2f-s2] [LIMIT=600] bash benchmarks/probe_eval.sh MODEL_DIR OUT_DIR
set -euo pipefail
M=$1; O=$2; W=${WORLD:-out/world2-s2}; L=${LIMIT:-600}
mkdir -p $O
export OMP_NUM_THREADS=1 HIPP_DISABLE_PLUGIN_AUTOLOAD=1
PY=$PWD/.venv/bin/python
$PY -m hipp_torchprune.cli eval --model $M --data $W --split calibration --limit $L --tasks pope_random,pope_adversarial,scienceqa --json > $O/dense-cal.json 2>/dev/null
$PY -m hipp_torchprune.cli eval --model $M --data $W --split test --limit $L --tasks pope_random,pope_adversarial,scienceqa --json > $O/dense-test.json 2>/dev/null
(cd benchmarks && $PY layer_sensitivity.py --model ../$M --data ../$W --split calibration --limit 300 --ratios 0.75 --out ../$O/ls-cal.json > ../$O/ls-cal.log 2>/dev/null)
(cd benchmarks && $PY degradation.py --model ../$M --data ../$W --limit $L --sparsities 0.3,0.5 --seeds 8 --sensitivity ../$O/ls-cal.json --out ../$O/degradation > ../$O/degradation.md 2>/dev/null)
# How much the tasks need the MLPs at all: uniform Wanda at 75 % of every MLP (one random seed beside it).
# A model whose loss here is small answers with attention and embeddings, and no allocation can matter.
(cd benchmarks && $PY degradation.py --model ../$M --data ../$W --limit 300 --sparsities 0.75 --seeds 1 --out ../$O/idle > ../$O/idle.md 2>/dev/null)
# Which ScienceQA kinds live in which layer: accuracy per topic, dense and with each layer alone at 75 %
# (calibration rows; a world with lore asks its knowledge and places kinds about made-up things).
N=$($PY -c "import json; print(json.load(open('$M/config.json'))['text_config']['num_hidden_layers'])")
(cd benchmarks && $PY scienceqa_topics.py --model ../$M --data ../$W --split calibration --limit $L \
   --prune-layers $(seq -s, 0 $((N - 1))) --ratio 0.75 > ../$O/topics.jsonl 2>/dev/null)
# Where the memorized tables live: lore-fact and alias recall, dense and with each layer alone at 75 %.
for KIND in fact alias; do
  KEY=$([ $KIND = fact ] && echo lore || echo aliases)
  if $PY -c "import json, sys; sys.exit(0 if json.load(open('$W/manifest.json')).get('$KEY') else 1)"; then
    (cd benchmarks && $PY fact_recall.py --model ../$M --data ../$W --kind $KIND \
       --prune-layers $(seq -s, 0 $((N - 1))) --ratio 0.75 > ../$O/recall-$KIND.jsonl 2>/dev/null)
  fi
done
