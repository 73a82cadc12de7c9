# Entry points for a fresh machine (Python 3.11, pip; no GPU needed).
#   make demo   set up .venv, write the bundled demo clips (24 s each), apply the demo profile, dvc repro
#   make test   run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test bench

setup: $(VENV)/.installed

# torch comes from requirements.txt as the CPU build (torch==2.13.0); on a GPU
# machine install your CUDA torch into the venv first (README, "GPU install").
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

demo: setup
	$(BIN)/dithead demo-data --out data/raw --seconds 24
	$(BIN)/dithead profile demo
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/preprocess.py
