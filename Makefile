# Two commands for a newcomer: `make demo` and `make test`. Every install goes through constraints.txt
# (torch==2.13.0, the CPU build); without it pip would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
export TOKENIZERS_PARALLELISM := false
export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install test test-slow lint format demo demo-fast results bench bench-quality clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# One torch thread per process: the suite's multi-process tests (workers, torchrun) oversubscribe two cores at the
# default of one thread per core (measured on 2 cores, nothing else running: 836 s with the default, 668 s with one).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/pytest -q

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

demo: $(STAMP)
	$(BIN)/obliviate demo

demo-fast: $(STAMP)
	$(BIN)/obliviate demo --fast

# Runs the demo and rewrites README's demo section and docs/demo_*.png from it (benchmarks/demo_results.py).
results: $(STAMP)
	$(BIN)/python benchmarks/demo_results.py --run --write

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_step.py
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_finetune.py

bench-quality: $(STAMP)
	$(BIN)/python benchmarks/bench_quality.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
