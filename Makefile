# chi-companion: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
DEV_DIR ?= .dev
PYTHON ?= python3

.PHONY: help venv run test lint pytest molecule molecule-companion molecule-ollama molecule-site \
        bench fuzz-long clean

help:
	@echo "make run       set up .venv and start the companion on 127.0.0.1:8000 (data in $(DEV_DIR)/)"
	@echo "make test      everything CI runs: lint, pytest, Molecule scenarios"
	@echo "make lint      ruff, yamllint, ansible-lint (production profile)"
	@echo "make pytest    service tests only"
	@echo "make molecule  role and site scenarios on disposable systemd-nspawn hosts (root)"
	@echo "make bench     benchmarks under bench/"

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt service/pyproject.toml service/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt -c service/constraints.txt -e service
	touch $@

run: venv
	@$(BIN)/chi-companion init-config --out $(DEV_DIR)/companion.toml --data-dir $(DEV_DIR)/data >/dev/null
	@echo "config: $(DEV_DIR)/companion.toml   data: $(DEV_DIR)/data"
	@echo "dev API key (device chi-eclipse-01): $$(sed -n 's/^api_key = "\(.*\)"/\1/p' $(DEV_DIR)/companion.toml | head -1)"
	$(BIN)/chi-companion serve --config $(DEV_DIR)/companion.toml

test: lint pytest molecule

lint: venv
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint --profile production

pytest: venv
	$(BIN)/pytest

molecule: venv
	PATH="$(abspath $(BIN)):$$PATH" tests/molecule_rig/run-scenarios.sh

bench: venv
	$(BIN)/python bench/sync_ingest.py

clean:
	rm -rf $(VENV) $(DEV_DIR) .pytest_cache .ruff_cache
