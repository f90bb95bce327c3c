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

lint: venv-dev
	$(BIN)/ruff check curation pipelines tests benchmarks examples
	$(BIN)/ruff format --check curation pipelines tests benchmarks examples

clean:
	rm -rf $(VENV) out .cache
