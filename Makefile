# The README's two commands:  `make demo`  and  `make test`.
# Both work on a fresh machine: they create .venv, install lappdeploy with what it needs, and get the data.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint docs install data clean

# compress under a latency target measured on this machine -> inspect -> export (checked ONNX) -> bench: the
# compressed model against its dense architecture on ONNX Runtime CPU, interleaved, one thread as the latency
# table was timed, batch 8 (the table's: the speed-up asked) and 1 (table + runs/demo/bench/*.png)
demo: $(STAMP) data
	$(BIN)/lappdeploy compress --config configs/demo.yaml --out $(DEMO_DIR) --force
	$(BIN)/lappdeploy inspect $(DEMO_DIR)
	$(BIN)/lappdeploy export $(DEMO_DIR)
	$(BIN)/lappdeploy bench $(DEMO_DIR) --vs-dense --runtime ort --device cpu --threads 1 --batch 1,8 --min-seconds 5

# -n 2: two pytest workers (pytest-xdist), one per core of a CI machine; then the tests that assert on timings,
# alone, so no other worker shares the cores
test: $(STAMP) data lint docs
	$(BIN)/python -m pytest -m "not slow and not timing" -q -n 2
	$(BIN)/python -m pytest -m "timing and not slow" -q

# includes tests marked slow (the very largest torchvision models)
test-all: $(STAMP) data
	$(BIN)/python -m pytest -q

# ruff (style), the layer contracts of setup.cfg [importlinter] (no import cycles, cli on top, ...), hadolint
lint: $(STAMP)
	$(BIN)/ruff check lappdeploy tests benchmarks tools
	$(BIN)/ruff format --check lappdeploy tests benchmarks tools
	$(BIN)/lint-imports --no-logo
	$(BIN)/hadolint Dockerfile Dockerfile.jetson

# the documentation site (mkdocs.yml) into site/; --strict: a broken link, anchor or API reference fails
# (never with --quiet: it drops the warnings that --strict counts, and the build passes whatever they say)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

install: $(STAMP)

# torch/torchvision first, as ranges (on a machine with a local wheel cache or pip constraints, pip picks
# those); then lappdeploy itself, editable, with the ONNX, CPU ONNX Runtime, ModelOpt (FP16/INT8 graphs),
# report and test extras (on a GPU machine: ort-gpu instead of ort, never both).
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'torch>=2.1' 'torchvision>=0.16'
	$(BIN)/python -m pip install --quiet -e '.[onnx,ort,modelopt,report,timm,safetensors,tensorboard,openvino,docs,dev]'
	touch $@

# Real Fashion-MNIST from Debian's package when we can install it; otherwise `lappdeploy train --download`
# (used by the demo config) fetches it with torchvision, and tests that need it are skipped.
data:
	@if [ -d $(FASHION_MNIST_DIR) ] || [ -n "$$LAPPDEPLOY_DATA" ]; then \
		true; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null) || \
		echo "note: could not apt-get install dataset-fashion-mnist; the demo will try --download"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null || \
		echo "note: could not apt-get install dataset-fashion-mnist; the demo will try --download"; \
	else \
		echo "note: Fashion-MNIST not in $(FASHION_MNIST_DIR); the demo will try --download"; \
	fi

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
