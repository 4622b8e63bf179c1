# Set-up and the two everyday commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedlab-installed
# Empty: the app's num-clients default (10) or the one given in RUN_CONFIG.
CLIENTS ?=
RUN_CONFIG ?=
FEDERATION_CONFIG ?=
PYTEST_ARGS ?=

.PHONY: install run test bench-table clean

install: $(STAMP)

# Reinstall when the dependencies change; torch and torchvision are pinned in pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedlab run $(if $(CLIENTS),--clients $(CLIENTS)) --run-config "$(RUN_CONFIG)" --federation-config "$(FEDERATION_CONFIG)"

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench-table: $(STAMP)
	$(BIN)/python benchmarks/results_table.py

clean:
	rm -rf outputs .pytest_cache
