# Set-up on a fresh machine: `make test` and `make demo` install what they need into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU torch first, then everything else under the same pin (see constraints.txt).
EXTRAS ?= dev

.PHONY: install test demo lint format clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/ruff check peft_ckt tests examples benchmarks
	$(PY) -m pytest -q -x tests

demo: install
	$(PY) examples/quickstart.py

lint: install
	$(VENV)/bin/ruff check peft_ckt tests examples benchmarks
	$(VENV)/bin/ruff format --check peft_ckt tests examples benchmarks

format: install
	$(VENV)/bin/ruff check --fix peft_ckt tests examples benchmarks
	$(VENV)/bin/ruff format peft_ckt tests examples benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
