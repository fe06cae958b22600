# `make test` and `make demo` work from nothing: they build .venv first.
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VENV ?= .venv
PY := $(VENV)/bin/python
# A user's own torch (for example a CUDA build installed system-wide) is kept: the venv sees it.
# Without one, this pin takes the CPU wheel on the development machines and the default build elsewhere.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-slow test-browser lint format demo train-default bench bench-default bench-train bench-text bench-evaluate bench-pairs paper clean

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

# ruff (configured in pyproject.toml): the lint rules and the formatter's check; `make format` applies both.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The web app in headless Chromium (Debian's chromium and chromium-driver, installed when missing);
# the screenshot is the README's docs/app.png.
test-browser: setup
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	APP_SCREENSHOT=docs/app.png $(PY) -m pytest -q -m browser

test-slow: setup
	$(PY) -m pytest -q -m slow

# Renders a held-out small-world scene, edits it several ways (one compound edit) with the shipped
# default model, and writes demo.png: input, each edit, ground truth. MODEL=... uses another model.
MODEL ?=
demo: setup
	$(VENV)/bin/ip2p world demo -o demo.png $(if $(MODEL),--model "$(MODEL)")

# Retrains the shipped default model from nothing (data, CLIP, VAE, UNet), then packages it.
train-default: setup
	$(VENV)/bin/ip2p world train-default

# The whole paper in the small world: text stage, Prompt-to-Prompt pairs, CLIP filter, editors on
# generated and on exact pairs, evaluation, report (runs/paper/report.md). T2I=... names the world's
# text-to-image model; without it, the one shipped in the package.
T2I ?=
paper: setup
	$(VENV)/bin/ip2p world paper -o runs/paper $(if $(T2I),--text-to-image "$(T2I)")

bench: setup
	$(PY) benchmarks/bench_edit.py

# Our trainer against diffusers' training recipe (and cached latents against none), a few minutes on a CPU.
# The shipped default model: one 20-step 64x64 edit, ours against diffusers' pipeline.
bench-default: setup
	$(PY) benchmarks/bench_edit.py --model default --size 64 --steps 20 --runs 9

bench-train: setup
	$(PY) benchmarks/bench_train.py

# The text stage: batched local generation against one caption at a time; API concurrency 8 against 1.
bench-text: setup
	$(PY) benchmarks/bench_text_stage.py

# Evaluation: the sweep's batched editing and scoring against one example at a time, default model.
bench-evaluate: setup
	$(PY) benchmarks/bench_evaluate.py

# The image stage: batched Prompt-to-Prompt candidates against one pair at a time; the processors'
# overhead against diffusers' plain sampling (the small world's architecture).
bench-pairs: setup
	$(PY) benchmarks/bench_pairs.py

clean:
	rm -rf $(VENV) build src/*.egg-info
