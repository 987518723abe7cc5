# Two commands on a fresh machine:  `make demo` (main job, small default) and `make test` (test suite).
# Both create .venv on first use: the CPU build of torch first (as CPU-only CI does), then the project.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# pytest-xdist workers for `make test`, each with one torch/OpenMP thread (the scripts the tests start inherit it): the
# tests' models are small, so one thread per core in two processes uses CI's 2 cores better than one process of two
TEST_WORKERS ?= 2

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,onnx,sb3,torchrl,smax,atari,ray]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -m "not cuda" -n $(TEST_WORKERS) --durations=15

demo: $(VENV)/.installed
	$(PY) examples/04_model_based.py --env-id mpe:simple_spread_v3 --iterations 10 --run-dir runs/demo/model_based --resume
	$(PY) examples/03_export_onnx.py --run-dir runs/demo/model_based --out runs/demo/agent.onnx --episodes 5

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check wmenv agents exports examples tests

.PHONY: install test demo lint
