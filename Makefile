# Every target creates .venv when it is missing and installs into it.
# The CPU build of torch goes in first: a bare `torch` requirement would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.hipp-installed

.PHONY: test demo bench clean

# The recipe below is a prerequisite too: a changed install step reinstalls an existing .venv.
$(STAMP): Makefile pyproject.toml plugins/hipp-lmms/pyproject.toml plugins/hipp-lmms/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps -e plugins/hipp-owl
	$(PY) -m pip install -q --no-deps -e plugins/hipp-baselines
	# lmms-eval 0.7.3 (docs/lmms-eval.md): exact pins; torchvision 0.28.0 matches torch 2.13.0 so the CPU
	# torch stays, and is removed again (its PyPI wheel is a CUDA build that breaks `import lmms_eval`).
	# timm goes with it: it imports torchvision, and every `accelerate` command imports timm when it is
	# installed. lmms-eval only declares timm; neither its code nor ours imports it.
	$(PY) -m pip install -q -c plugins/hipp-lmms/constraints.txt "torchvision==0.28.0" -e ".[test,lmms]" -e plugins/hipp-lmms
	$(PY) -m pip uninstall -q -y torchvision timm
	touch $(STAMP)

test: $(STAMP)
	# two xdist workers with one torch thread each: two threads per worker spin against each other
	OMP_NUM_THREADS=1 HIPP_DISABLE_PLUGIN_AUTOLOAD=1 $(PY) -m pytest -q -n 2 tests

# The main job: a fresh proving-ground world, the shipped demo model and the HiPP policy trained
# on it, queried at three preferences, pruned, and compared with the uniform plan and the baselines
# (FLAP, OWL, SliceGPT, LLM-Pruner) at the same sparsity (see README).
demo: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(VENV)/bin/hipp demo --out out/demo --world out/demo/world

bench: $(STAMP)
	$(PY) benchmarks/pruned_speed.py

clean:
	rm -rf out $(VENV)
