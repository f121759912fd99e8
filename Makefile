# Two set-up commands on a fresh machine: `make run` and `make test`.
# Each installs what it needs into .venv (checkov, which pins its own old
# dependencies, gets a separate venv under .venv/tools).
# CPython 3.13, what the Function App runs (infra/app/broker.bicep's runtimeVersion). pyenv's shims
# answer for every installed version, so each candidate is asked its version rather than trusted.
PYTHON_VERSION := 3.13
comma := ,
IS_PYTHON_VERSION := -c 'import sys; sys.exit(sys.version_info[:2] != ($(subst .,$(comma),$(PYTHON_VERSION))))'
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in python$(PYTHON_VERSION) "$$(pyenv root 2>/dev/null)"/versions/$(PYTHON_VERSION)*/bin/python$(PYTHON_VERSION) python3; do \
	"$$p" $(IS_PYTHON_VERSION) >/dev/null 2>&1 && { echo "$$p"; break; }; done)
endif
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHECKOV_VENV := $(VENV)/tools/checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov
# make run PORT=8080 picks the local run's port (0: any free port).
PORT ?= 7071
# Current checkov (>= 3.3 has CKV_AZURE_189 and the newer Azure checks); a new pin re-installs.
CHECKOV_VERSION := 3.3.30
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
# The npm tools the tests run, each installed with `npm ci` from a committed lockfile
# (tests/tools/<tool>/package.json + package-lock.json), so no transitive version can drift.
# A changed lockfile re-installs. To bump one: edit the version in its package.json, then
#   npm install --package-lock-only --no-audit --no-fund --prefix tests/tools/<tool>
# review the lockfile's diff, run make test, and commit both files.
# Azurite, the Blob Storage emulator the fleet-cache tests start (tests/fleet/conftest.py). Its
# well-known development account key is public by design.
AZURITE_LOCK := tests/tools/azurite
AZURITE_VERSION := $(shell sed -n 's/^ *"azurite": "\(.*\)".*/\1/p' $(AZURITE_LOCK)/package.json)
AZURITE_DIR := $(VENV)/tools/azurite
AZURITE_STAMP := $(AZURITE_DIR)/.installed-$(AZURITE_VERSION)
# Microsoft's KQL parser (Kusto.Language, built for JavaScript): tests/infra/test_kql_syntax.py
# parses and analyses every deployed and documented query with it.
KUSTO_LOCK := tests/tools/kusto
KUSTO_VERSION := $(shell sed -n 's/^ *"@kusto\/language-service-next": "\(.*\)".*/\1/p' $(KUSTO_LOCK)/package.json)
KUSTO_DIR := $(VENV)/tools/kusto
KUSTO_STAMP := $(KUSTO_DIR)/.installed-$(KUSTO_VERSION)
NPM_CI := npm ci --no-audit --no-fund --silent
# The suite on 2 pytest-xdist workers (this machine's 2 cores), each with its own session stand-ins on
# port 0; --dist loadfile keeps a module's tests (and its module-scoped fixtures, such as the workbook's
# recorded night) on one worker. The timing gates (marked serial) run afterwards, alone.
XDIST := -n 2 --dist loadfile
DURATIONS := --durations=15
# The calendar guard: the clock a year ahead for the whole process and its children (Debian's faketime,
# libfaketime). Only the wall clock moves (--exclude-monotonic), so timeouts are untouched
# (tests/tools/faketime/sitecustomize.py says why time.sleep needs a stand-in there). The offset is
# read once: libfaketime re-reads it every 10 s by default, unsynchronised, and the stand-ins' threads
# crashed in its clock calls twice here (libfaketime 0.9.10; its threaded build -m crashed as well).
FAKETIME := PYTHONPATH=tests/tools/faketime FAKETIME_CACHE_DURATION=31536000 faketime --exclude-monotonic -f +365d

.PHONY: run test tools check fast check-future gates faketime lint typecheck unit infra-check bench clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -n "$(PYTHON)" || { echo "make: CPython $(PYTHON_VERSION) is needed (what Azure runs) and was not found: install it (pyenv install $(PYTHON_VERSION); Debian/Ubuntu: apt-get install python$(PYTHON_VERSION) python$(PYTHON_VERSION)-venv; or python.org), or name it: make PYTHON=/path/to/python$(PYTHON_VERSION)" >&2; exit 1; }
	@"$(PYTHON)" $(IS_PYTHON_VERSION) || { echo "make: $(PYTHON) is not CPython $(PYTHON_VERSION); name a $(PYTHON_VERSION) interpreter: make PYTHON=/path/to/python$(PYTHON_VERSION)" >&2; exit 1; }
	@if [ -x $(PY) ] && ! $(PY) $(IS_PYTHON_VERSION); then echo "make: .venv is not on Python $(PYTHON_VERSION); making it anew"; rm -rf $(VENV); fi
	"$(PYTHON)" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

$(CHECKOV_STAMP): | $(STAMP)
	$(PY) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

$(AZURITE_STAMP): $(AZURITE_LOCK)/package.json $(AZURITE_LOCK)/package-lock.json | $(STAMP)
	rm -rf $(AZURITE_DIR) && mkdir -p $(AZURITE_DIR)
	cp $^ $(AZURITE_DIR)/
	$(NPM_CI) --prefix $(AZURITE_DIR)
	touch $@

$(KUSTO_STAMP): $(KUSTO_LOCK)/package.json $(KUSTO_LOCK)/package-lock.json
	rm -rf $(KUSTO_DIR) && mkdir -p $(KUSTO_DIR)
	cp $^ $(KUSTO_DIR)/
	$(NPM_CI) --prefix $(KUSTO_DIR)
	touch $@

run: $(STAMP)
	@$(PY) -m broker.standin.demo --port $(PORT)

# The whole truth (CI's .ci/run): lint, types, the infra checks and every test, each test once: the
# fast tier (and the workbook's recorded night) with the clock a year ahead (check-future), then the
# slow tests on today's clock (gates). `make unit` runs every test on today's clock instead.
test: $(STAMP) tools lint typecheck infra-check check-future gates

# The test tools (checkov's venv, the two npm trees) install independently of each other: in parallel.
tools: $(STAMP)
	@$(MAKE) --no-print-directory -j3 $(CHECKOV_STAMP) $(AZURITE_STAMP) $(KUSTO_STAMP)

# The fast tier: lint, types and every test not marked slow (no subprocess, no npm tool, no
# multi-second gate; tests/conftest.py says how a test is marked), with a tenth of hypothesis's examples.
check: lint typecheck fast

fast: $(STAMP)
	$(PY) -m pytest $(XDIST) -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check broker tests bench function_app.py infra/hooks docs/examples
	$(PY) -m ruff format --check broker tests bench function_app.py infra/hooks docs/examples

typecheck: $(STAMP)
	$(PY) -m mypy

# Every test on today's clock: all but the timing gates on the xdist workers, then the gates alone.
unit: $(STAMP) $(AZURITE_STAMP) $(KUSTO_STAMP)
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest $(XDIST) -m "not serial" $(DURATIONS)
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -m serial $(DURATIONS) || [ $$? = 5 ]  # 5: no test is marked serial

# The slow tests on today's clock, the same way (make test runs the fast tier in check-future).
gates: $(STAMP) $(AZURITE_STAMP) $(KUSTO_STAMP)
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest $(XDIST) -m "slow and not serial" $(DURATIONS)
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -m serial $(DURATIONS) || [ $$? = 5 ]  # 5: no test is marked serial

# The fast tier (hypothesis's full examples) and the workbook's recorded night with the clock a year
# ahead: no test may lean on a date.
check-future: $(STAMP) $(AZURITE_STAMP) faketime
	@now=$$(date +%s); ahead=$$($(FAKETIME) $(PY) -c 'import time; print(int(time.time()))'); \
	test "$$ahead" -gt "$$((now + 364 * 86400))" || { echo "make: faketime did not move Python's clock a year ahead ($$now -> $$ahead)" >&2; exit 1; }
	HYPOTHESIS_PROFILE=ci $(FAKETIME) $(PY) -m pytest $(XDIST) -m "not slow" $(DURATIONS)
	$(FAKETIME) $(PY) -m pytest tests/test_bench_workbook.py

# Debian's faketime, installed when missing (as root, with apt-get); otherwise says how.
faketime:
	@command -v faketime >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing Debian's faketime (libfaketime) for check-future"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q faketime >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q faketime >/dev/null; }; \
	  else \
	    echo "make: check-future needs faketime (libfaketime), which moves the clock for a whole process (Linux): sudo apt-get install faketime" >&2; exit 1; \
	  fi; }

infra-check: $(STAMP) $(CHECKOV_STAMP)
	$(PY) tests/infra/run_checkov.py $(CHECKOV)

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
