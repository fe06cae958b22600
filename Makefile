# `make test` and `make demo` work from nothing: they build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A user's own torch (for example a CUDA build installed system-wide) is kept: the venv sees it.
# Without one, this pin takes the CPU wheel on the development machines and the default build elsewhere.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-slow demo bench bench-train clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "using the torch already installed for $(PYTHON)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

# Until the small world ships a default model, the demo edits with a model you name:
#   make demo MODEL=timbrooks/instruct-pix2pix   (or a local folder / .safetensors file)
MODEL ?=
INPUT ?= examples/input.png
demo: setup
	@if [ -z "$(MODEL)" ]; then \
		echo "make demo needs MODEL=<folder, hub id or .safetensors> until the shipped default model lands"; exit 2; \
	fi
	$(VENV)/bin/ip2p edit "$(INPUT)" "turn it into a watercolor painting" --then "make it night" \
		--model "$(MODEL)" -o demo.png

bench: setup
	$(PY) benchmarks/bench_edit.py

# Our trainer against diffusers' training recipe (and cached latents against none), a few minutes on a CPU.
bench-train: setup
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) build src/*.egg-info
