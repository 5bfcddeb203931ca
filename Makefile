# Set-up, tests and the demo. Every target creates .venv on first use and installs the package (editable, with
# its dev, tune, zoo and export extras) under constraints.txt, which pins the CPU build of torch that these machines carry.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# pytest-xdist processes for `make test` (CI has 2 cores); each takes whole files, so a module's fixtures are built once
TEST_WORKERS ?= 2

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(wildcard fwm_rl/fused/*.cpp fwm_rl/fused/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,tune,zoo,export]"
	$(PY) -m fwm_rl.build_ext
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP)
	$(PY) -m fwm_rl demo

bench: $(STAMP)
	$(PY) benchmarks/bench_cores.py
	$(PY) benchmarks/bench_envs.py
	$(PY) benchmarks/bench_agents.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
