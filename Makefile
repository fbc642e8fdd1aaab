# Two set-up commands: `make demo` and `make test`. Both create .venv and install what they need.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: demo test test-fast theorems slow lint typecheck bench mutation clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[experiments,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/moelora study --preset demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy moelora_core proofs_numeric
	$(BIN)/mypy --strict benchmarks
	$(BIN)/mypy --strict experiments

theorems: $(STAMP)
	$(BIN)/pytest -m theorems -q

test: lint typecheck
	$(BIN)/pytest -q -m "not slow"

slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# Mutation run (not part of `make test`): each mutant of tests/mutation/catalogue.toml against
# `pytest -m theorems`; e.g. make mutation MUTATION_ARGS="--only exact_tol_loose --jobs 2".
mutation: $(STAMP)
	$(BIN)/python tests/mutation/run.py $(MUTATION_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/layers.py
	$(BIN)/python benchmarks/sparse_crossover.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
