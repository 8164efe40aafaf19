# chi-companion: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
DEV_DIR ?= .dev
# `make run` needs only the service and its runtime pins: its own small venv.
RUN_VENV ?= .venv-run
RUN_BIN := $(RUN_VENV)/bin
PYTHON ?= python3

.PHONY: help venv run test lint pytest deps-min soak molecule bench fuzz-long screenshots clean

help:
	@echo "make run       set up $(RUN_VENV) (service + runtime deps only) and start the companion on 127.0.0.1:8000 (data in $(DEV_DIR)/)"
	@echo "make test      everything CI runs: lint, pytest, Molecule scenarios"
	@echo "make lint      ruff, import-linter contracts, yamllint, ansible-lint (production profile)"
	@echo "make pytest    service tests only"
	@echo "make deps-min  install the lowest allowed dependency versions and start the server"
	@echo "make molecule  role and site scenarios on disposable systemd-nspawn hosts (root)"
	@echo "make soak      60 s mixed-load soak (SOAK_SECONDS=600 for the full run)"
	@echo "make bench     benchmarks under bench/"
	@echo "make fuzz-long schemathesis with 500 examples per operation"
	@echo "make screenshots  docs/images/*.png of the status page on demo data (needs chromium, chromium-driver)"

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt service/pyproject.toml service/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt -c service/constraints.txt -e service
	touch $@

# Editable, so a code change is live at the next `make run`; runtime pins only.
$(RUN_VENV)/.installed: service/pyproject.toml service/constraints.txt
	$(PYTHON) -m venv $(RUN_VENV)
	$(RUN_BIN)/pip install -q --upgrade pip
	$(RUN_BIN)/pip install -q -c service/constraints.txt -e service
	touch $@

run: $(RUN_VENV)/.installed
	@$(RUN_BIN)/chi-companion init-config --out $(DEV_DIR)/companion.toml --data-dir $(DEV_DIR)/data >/dev/null
	@echo "config: $(DEV_DIR)/companion.toml   data: $(DEV_DIR)/data"
	@echo "dev API key (device chi-eclipse-01): $$(sed -n 's/^api_key = "\(.*\)"/\1/p' $(DEV_DIR)/companion.toml | head -1)"
	$(RUN_BIN)/chi-companion serve --config $(DEV_DIR)/companion.toml

test: lint pytest deps-min soak molecule

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint --profile production

# Tests run in parallel (pytest-xdist): most of their time is spent waiting on server
# processes, so more workers than the 2 CI cores still pays. PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= 4
pytest: venv
	$(BIN)/pytest -n $(PYTEST_WORKERS) --maxschedchunk=2

molecule: venv
	PATH="$(abspath $(BIN)):$$PATH" tests/molecule_rig/run-scenarios.sh

# The lowest dependency versions pyproject.toml allows (service/constraints-min.txt), in a
# venv of their own: every module imports and the server starts, answers and stops.
MIN_VENV ?= .venv-min
deps-min:
	rm -rf $(MIN_VENV)
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install -q --upgrade pip
	$(MIN_VENV)/bin/pip install -q -c service/constraints-min.txt ./service
	$(MIN_VENV)/bin/pip freeze | grep -iE '^(bottle|gunicorn|jsonschema|multipart|requests)=='
	cd /tmp && $(abspath $(MIN_VENV))/bin/python $(abspath tests/startup_smoke.py)

# The 60-second soak CI runs; `make soak SOAK_SECONDS=600` for the full ten minutes.
SOAK_SECONDS ?= 60
soak: venv
	$(BIN)/python bench/soak.py --duration $(SOAK_SECONDS)

bench: venv
	$(BIN)/python bench/sync_ingest.py
	$(BIN)/python bench/upload.py
	$(BIN)/python bench/analysis.py
	$(BIN)/python bench/drive_page.py
	$(BIN)/python bench/drive_list.py
	$(BIN)/python bench/slow_clients.py

# The README's pictures of the status page, from demo data, in the browser the tests use.
screenshots: venv
	$(BIN)/python tests/demo_screenshots.py

# Many more generated cases per operation than CI's default of 25.
fuzz-long: venv
	FUZZ_EXAMPLES=500 $(BIN)/pytest tests/test_fuzz_api.py

clean:
	rm -rf $(VENV) $(RUN_VENV) $(MIN_VENV) $(DEV_DIR) .pytest_cache .ruff_cache
