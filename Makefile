PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= out/demo

.PHONY: demo test lint bench venv venv-dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The CPU torch wheel is installed first so that nothing resolves a CUDA build.
venv: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .

venv-dev: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"

demo: venv
	$(BIN)/curate build configs/demo.yaml --output $(DEMO_OUT) --overwrite
	$(BIN)/curate verify $(DEMO_OUT)
	$(BIN)/curate report $(DEMO_OUT)
	@echo "demo dataset: $(DEMO_OUT)  report: $(DEMO_OUT)/report/index.html"

test: venv-dev
	$(BIN)/python -m pytest -q

# Side-by-side ratios (ours vs baseline, same run); writes benchmarks/results.json. See README "Performance".
bench: venv-dev
	$(BIN)/python -m benchmarks.run

# Full-size random-weight T5-XXL encoder / SDXL VAE encoder / LLaVA-1.5-7B on one CUDA GPU, ~5 minutes: needs only a
# python3 with torch and transformers, no venv (diffusers: installed, or carried by `make gpu-wheels`). Writes
# benchmarks/results_gpu.json. BENCH_GPU_ARGS: e.g. --compile, --only t5,vae, --out PATH, --smoke (CPU check).
.PHONY: bench-gpu gpu-wheels
bench-gpu:
	$(PY) benchmarks/gpu.py $(BENCH_GPU_ARGS)

# diffusers (the version pinned in pyproject.toml) and its dependencies as wheels, for a GPU machine without network:
# copy .cache/gpu-wheels into its checkout; benchmarks/gpu.py unpacks them there. GPU_PYTHON / GPU_ARCH: that machine's.
GPU_PYTHON ?= 3.12
GPU_ARCH ?= x86_64
gpu-wheels:
	$(PY) -m pip download -q --only-binary=:all: --dest .cache/gpu-wheels \
		--python-version $(GPU_PYTHON) --implementation cp --abi cp$(subst .,,$(GPU_PYTHON)) --abi abi3 --abi none \
		$(foreach tag,manylinux_2_28 manylinux_2_17 manylinux2014,--platform $(tag)_$(GPU_ARCH)) --platform any \
		$(shell grep -o '"diffusers==[^"]*"' pyproject.toml)

lint: venv-dev
	$(BIN)/ruff check curation pipelines tests benchmarks examples
	$(BIN)/ruff format --check curation pipelines tests benchmarks examples

clean:
	rm -rf $(VENV) out .cache
