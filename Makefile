# Every target installs what it needs into the project virtualenv on first use.
VENV ?= .venv
PYTHON ?= python3
# The worker's torch. The default pair ships torchvision, whose deform_conv2d kernel the engine
# prefers; set TORCH_SPEC=torch (or a CUDA wheel index) to change it.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install demo test test-unit lint format bench soak clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[worker,dev]'
	touch $@

demo: install
	$(BIN)/toonq demo

# Everything: unit, then integration (PostgreSQL, Redis, S3 over HTTP), then system (worker processes).
test: install
	$(BIN)/pytest

# The tests that need no server, on every core.
test-unit: install
	$(BIN)/pytest -n auto tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Reports go to .toonq/bench/; e.g. make bench BENCH_ARGS="--sections stages --quick".
bench: install
	$(BIN)/toonq bench $(BENCH_ARGS)

# 1000+ jobs through 3 workers with random SIGKILLs; prints a JSON summary, exits 1 on any loss.
soak: install
	$(BIN)/python -m tests.soak --jobs 1000 --workers 3 --kills 10

clean:
	rm -rf $(VENV) .toonq .mypy_cache .ruff_cache .pytest_cache
