# Set-up is part of every target: each creates or refreshes .venv itself.
#   make run      the main job: the dashboard on the embedded defaults
#   make compare  the same experiment headless (full, LoRA, adapters + TF-IDF, one table)
#   make test     the fast test tier (a few minutes: no worker processes, torchrun or Ray)
#   make test-all every tier: the fast one, then the tests marked `slow` (CI runs it, then make lint)
#   make lint     ruff, import contracts, mypy (CI runs it after the tests)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup run compare test test-all lint bench screenshots clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@# torch: keep one the venv already has (e.g. a CUDA build); otherwise a GPU box takes
	@# PyPI's default build and a CPU box the pinned CPU build (an unpinned torch pulls GBs of CUDA).
	@if $(PY) -c "import torch" 2>/dev/null; then echo "keeping torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then $(PIP) install torch; \
	else $(PIP) install torch==2.13.0; fi
	$(PIP) install -e '.[dev]'
	touch $@

run: setup
	$(VENV)/bin/peft-tui launch

compare: setup
	$(VENV)/bin/peft-tui compare

test: setup
	$(VENV)/bin/python -m pytest -q

test-all: setup
	$(VENV)/bin/python -m pytest -q -m ''

# the gates CI runs after the tests: style, import contracts (pyproject [tool.importlinter]), engine types
lint: setup
	$(VENV)/bin/ruff check peft_tui tests benchmarks
	cd $(CURDIR) && $(VENV)/bin/lint-imports
	$(VENV)/bin/mypy peft_tui/engine peft_tui/config.py peft_tui/errors.py

# every benchmark in sequence; each prints its figures and ratios (README, Performance). ~30-60 min on 2 CPU cores
AGNEWS ?= ../shared/datasets/ag_news/ag_news_test.csv
bench: setup
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/engine_vs_trainer.py --methods lora,full,adapters --size 2400 --epochs 2
	@if [ -f $(AGNEWS) ]; then $(PY) benchmarks/engine_vs_trainer.py --methods lora,full --data $(AGNEWS) --limit 2000 --epochs 1; fi
	$(PY) benchmarks/precision.py
	$(PY) benchmarks/dashboard_overhead.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/scale.py
	bash benchmarks/gpu_check.sh
	$(PY) benchmarks/compare_defaults.py

clean:
	rm -rf $(VENV) peft-runs .pytest_cache
