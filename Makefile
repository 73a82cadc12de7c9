# Entry points for a fresh machine (Python 3.11, pip; no GPU needed).
#   make demo   set up .venv, write the bundled demo clips (24 s), apply the demo profile, dvc repro
#   make test   run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test bench container-image container-demo

setup: $(VENV)/.installed

# torch comes from requirements.txt as the CPU build (torch==2.13.0); on a GPU
# machine install your CUDA torch into the venv first (README, "GPU install").
$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-reference.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip install -q --no-deps --upgrade --target $(VENV)/reference -r requirements-reference.txt
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

# The stage image, and the smoke pipeline with every stage in it (docker or podman;
# CONTAINER_BUILD_ARGS adds build options, e.g. --build-arg TORCH_INDEX=...).
IMAGE  ?= dithead:latest
ENGINE ?= $(shell docker --version 2>/dev/null | grep -qi podman && echo podman || (command -v docker >/dev/null && echo docker || echo podman))
CONTAINER_BUILD_ARGS ?=

container-image:
	$(ENGINE) build $(if $(filter podman,$(ENGINE)),--format docker) $(CONTAINER_BUILD_ARGS) -f docker/Dockerfile -t $(IMAGE) .

container-demo: setup container-image
	$(BIN)/dithead demo-data --out data/raw
	$(BIN)/dithead profile smoke
	DITHEAD_RUNNER=docker DITHEAD_ENGINE=$(ENGINE) DITHEAD_IMAGE=$(IMAGE) DITHEAD_GPUS=$${DITHEAD_GPUS-none} $(BIN)/dvc repro
	@# Proof that stages import the repository's code, not a copy in the image:
	DITHEAD_RUNNER=docker DITHEAD_ENGINE=$(ENGINE) DITHEAD_IMAGE=$(IMAGE) DITHEAD_GPUS=none \
	  docker/run-stage python -c "import dithead, sys; print(dithead.__file__); sys.exit(not dithead.__file__.startswith('$(CURDIR)/'))"
