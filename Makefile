# `make test` and `make reproduce` work on a fresh clone: they create .venv and install noderun first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= quick
SEEDS ?= 0

.PHONY: install test test-all reproduce table1 depth table bench data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The fast test suite (a few minutes on 2 CPU cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Everything, including tests marked slow.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

data: $(STAMP)
	$(BIN)/noderun data

## Table 1 (all four rows), the depth experiment, then the tables. PROFILE=quick|paper, SEEDS=0,1,2
reproduce: $(STAMP) data table1 depth table

table1: $(STAMP)
	$(BIN)/noderun train -m model=mlp,resnet,rknet,odenet profile=$(PROFILE) seed=$(SEEDS)

depth: $(STAMP)
	$(BIN)/noderun train -m experiment=depth_resnet profile=$(PROFILE) seed=$(SEEDS)
	$(BIN)/noderun train -m experiment=depth_ode profile=$(PROFILE) seed=$(SEEDS)

table: $(STAMP)
	$(BIN)/noderun table

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ode.py
	$(BIN)/python benchmarks/bench_data.py

clean:
	rm -rf outputs multirun .pytest_cache
