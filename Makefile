# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each first creates .venv (CPU torch pin, triton, adaptkern + test extras) if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adaptkern-installed
PYTEST_ARGS ?=

.PHONY: setup demo test bench gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py scripts/setup-dev.sh $(wildcard csrc/*)
	VENV=$(VENV) bash scripts/setup-dev.sh
	touch $@

demo: $(STAMP)
	$(VENV)/bin/adaptkern demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/adaptkern bench --quick

# On the lent GPU machine (no network, torch + triton preinstalled): no venv, no $(STAMP).
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build *.egg-info adaptkern/_C*.so .pytest_cache
