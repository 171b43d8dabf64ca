# Two commands for a new user: `make demo` (train the default and print results) and `make test`.
# Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/glofnd-jax train --config configs/digits_sogclr_glofnd.py --workdir workdir/digits_sogclr_glofnd

test: $(STAMP)
	$(PY) -m pytest -q tests

bench-quick: $(STAMP)
	$(PY) -m pytest -q tests/test_benchmarks_quick.py

clean:
	rm -rf $(VENV) workdir
