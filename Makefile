# Two commands do everything: `make repro` (run the study) and `make test` (run the tests).
# Both create .venv on first use and install the pinned dependencies into it.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Vega, Vega-Lite and Vega-Embed inlined in DVC's HTML template (.dvc/config plots.html_template),
# fetched with npm at install time: `dvc plots show` renders offline (src/mambava/vega.py).
VEGA   := .dvc/vega/template.html
# DVC stages call `mambava`, `papermill`, `jupyter-book` by name: put the venv first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# torch and numba each load OpenMP; spinning idle threads slow everything on 2 cores (see cli.py).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: repro test test-slow test-all install lock bench clean-venv

$(STAMP): pyproject.toml requirements/lock.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -c requirements/lock.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name mambava --display-name "mambava (Python 3.11)" >/dev/null
	@touch $(STAMP)

$(VEGA): $(STAMP) src/mambava/vega.py
	$(BIN)/python -m mambava.vega --out $@

install: $(STAMP) $(VEGA)

repro: $(STAMP) $(VEGA)
	$(BIN)/dvc repro
	@$(BIN)/mambava where

test: $(STAMP) $(VEGA)
	$(BIN)/python -m pytest

test-slow: $(STAMP) $(VEGA)
	$(BIN)/python -m pytest -m slow

test-all: $(STAMP) $(VEGA)
	$(BIN)/python -m pytest -m "not gpu or gpu"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_scan.py

lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^mambava' > requirements/lock.new
	@mv requirements/lock.new requirements/lock.txt

clean-venv:
	rm -rf $(VENV)
