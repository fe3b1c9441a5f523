# The two newcomer commands:  `make run` (the main job)  and  `make test` (the test suite).
# Each creates the virtualenv .venv at the repository root and installs what it needs.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Offline data: use the project's shared folder when it sits beside the checkout.
SHARED := $(abspath ../shared/data)
export MNAS_DATA ?= $(if $(wildcard $(SHARED)),$(SHARED),$(HOME)/.cache/mnas/data)

.PHONY: run test test-fast lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all]"
	touch $(STAMP)

run: $(STAMP)
	@out=runs/quick-$$(date +%Y%m%d-%H%M%S); \
	$(PY) -m mnas search --config examples/quick.yaml --out $$out && \
	$(PY) -m mnas report $$out

# Two pytest workers (the 2-core CI machine); a file's tests stay in one worker (--dist loadfile),
# so module fixtures are built once. Latency tests time against an interleaved reference, which
# holds while the other worker computes (docs/benchmarks/latency.md).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=20

# The fast tier: everything but the tests that train or measure (marked slow); under a minute.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache
