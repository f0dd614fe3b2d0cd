# The two commands of the README. Each one builds .venv from scratch on a fresh
# machine (nothing installed by hand is assumed) and reuses it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes side by side (pytest-xdist), each test file in one of them:
# pytest took 13-14.5 minutes instead of 20.5 on 2 cores. PYTEST_WORKERS=0 runs
# in this process. The longest files start first (tests/conftest.py's order:
# xdist's own would start the files with the most tests first).
PYTEST_WORKERS ?= 2

.PHONY: install demo test clean

install: $(STAMP)

# uv installs the ~4 GB of wheels and compiles their bytecode in 2 min 3 s where
# pip took 3 min 16 s. The bytecode is compiled here because a machine may set
# PYTHONDONTWRITEBYTECODE=1 (this project's does): no process would save it later.
# tools/pip_config_to_uv.py hands uv the indexes the machine configured for pip.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==0.13.9
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) \
		$$($(PY) tools/pip_config_to_uv.py) \
		--upgrade pip setuptools wheel -e ".[detection,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nonlocal-demo

test: $(STAMP)
	$(PY) -m pytest -ra -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
