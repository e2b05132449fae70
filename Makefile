# The README's two commands: `make demo` and `make test`. Both set up .venv (pinned by
# constraints.txt) and the Debian packages they need, and are quick when nothing changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
INSTALL := $(PIP) install -c constraints.txt
# Datasets: $TFDS_DATA_DIR when set, else .data/tensorflow_datasets here (created by make demo),
# the same rule the commands apply when run directly (input_pipeline.default_data_dir).
# pytest-xdist workers: XLA compiles on one core per program, so 2 workers halve the suite's
# time on 2 cores. Each holds a few GB at peak (model-zoo parity tests): mind memory if raised.
TEST_WORKERS ?= 2

# Debian packages of the embedded default data: file that proves it is installed -> package.
DEBIAN_PACKAGES := /usr/share/wordnet/data.noun:wordnet-base \
	/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz:dataset-fashion-mnist

.PHONY: demo test test-slow lint check-extras bench bench-curation bench-compile system-deps test-system-deps clean

demo: $(VENV)/.demo system-deps
	@mkdir -p .data/tensorflow_datasets
	$(PY) -m imagenot_jax.demo --config configs/demo.py --workdir .data/demo \
		--suite configs/suites/fashion_halves.py --suite_workdir .data/suite

test: $(VENV)/.test test-system-deps
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --durations=15

test-slow: $(VENV)/.test test-system-deps
	$(PY) -m pytest -q -m slow -n $(TEST_WORKERS) || [ $$? -eq 5 ]  # 5: none marked slow

lint: $(VENV)/.lint
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Benchmarks compare against PyTorch, so they also need the curation extra (torch, torchvision).
bench: $(VENV)/.bench system-deps bench-curation
	$(PY) -m benchmarks.input_pipeline
	$(PY) -m benchmarks.text_score

bench-curation: $(VENV)/.test system-deps
	$(PY) -m benchmarks.curation_match
	$(PY) -m benchmarks.curation_select --rows 1000000,3000000,10000000
	$(PY) -m benchmarks.curation_scale

# Train step vs torchvision + torch.optim (CPU: fp32, the demo's net and 3 small cases; on a
# GPU host: make bench-step BENCH_STEP_ARGS="--device gpu --write").
.PHONY: bench-step
bench-step: $(VENV)/.test
	$(PY) -m benchmarks.train_step $(BENCH_STEP_ARGS)

# Every study recipe compiled for H100, H200 and TPU slices without them (hours on 2 cores the
# first time; finished cells are cached in benchmarks/target_compile.json, so it resumes).
bench-compile: $(VENV)/.test
	$(PY) -m benchmarks.target_compile --write

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"' \
		|| { echo "error: $(PYTHON) is older than 3.11; run make PYTHON=python3.11 ..." >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# What the demo uses and no more: the JAX side and dataset building (TensorFlow writes the
# Fashion-MNIST halves). Not the `tfds` CLI's Beam and Croissant, nor dev tools.
$(VENV)/.demo: pyproject.toml constraints.txt | $(PY)
	$(INSTALL) -e '.[train,data]'
	@touch $@

# Tests also need the curation extra: models, optimizers, schedules, EMA and mixing are checked
# against torch/torchvision on the spot (regular wheels, several GB, but they run on CPU); the
# `tfds` CLI (curation's download -> tfds build test), deviceless compilation and W&B (offline).
$(VENV)/.test: pyproject.toml constraints.txt | $(PY)
	$(INSTALL) -e '.[train,data,tfds-cli,dev,curation,compile,wandb]'
	@touch $@

# The benchmarks' peers on top of the test environment (sentence-transformers).
$(VENV)/.bench: pyproject.toml constraints.txt $(VENV)/.test
	$(INSTALL) -e '.[train,data,tfds-cli,dev,curation,compile,wandb,bench]'
	@touch $@

$(VENV)/.lint: pyproject.toml constraints.txt | $(PY)
	$(INSTALL) ruff
	@touch $@

# Installs the Debian packages of a list (file that proves it is installed:package) when root,
# else stops with the command to run.
define debian_packages
	@missing=""; \
	for entry in $(1); do \
		[ -e "$${entry%%:*}" ] || missing="$$missing $${entry##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "error: missing Debian packages:$$missing; run: sudo apt-get install -y$$missing" >&2; \
			exit 2; \
		fi; \
	fi
endef

system-deps:
	$(call debian_packages,$(DEBIAN_PACKAGES))

# The tests also open the HTML ranking report in a headless Chromium.
test-system-deps:
	$(call debian_packages,$(DEBIAN_PACKAGES) /usr/bin/chromium:chromium)

# The extras this CPU machine does not install (gpu, tpu, gcs) resolved under constraints.txt:
# pip prints what it would add; every such package must be pinned there.
check-extras: | $(PY)
	$(PY) -m pip --disable-pip-version-check install --dry-run -c constraints.txt -e '.[all,tpu]' \
		2>/dev/null | grep -E '^(Would install|ERROR)' || true

clean:
	rm -rf $(VENV) .data .pytest_cache .ruff_cache *.egg-info
