# Two commands do all the set-up: `make demo` and `make test` (each runs `setup` first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test soak bench clean

setup: $(STAMP)

# torch==2.13.0 is pinned: its CPU wheel is what every machine here has; any other
# version pulls gigabytes of CUDA packages.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/chromabeam demo demo-output

test: setup
	$(PY) -m pytest -q

# Memory soak: thousands of images through a job; prints peak RSS against image count.
soak: setup
	$(PY) -m pytest -q -s -m soak tests/soak

bench: setup
	$(PY) benchmarks/synth_pairs_speed.py

clean:
	rm -rf $(VENV) demo-output yaml-output .pytest_cache *.egg-info
