# Two commands a newcomer needs: `make demo` and `make test`. Both set up .venv from nothing.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
DEMO_DIR ?= demo_output
HOST_PIN ?=# e.g. llamafactory==0.9.4; empty = the newest release the package declares (<0.10)
LOWEST_HOST := llamafactory==0.9.4

.PHONY: setup chromium demo test test-lowest lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]" $(HOST_PIN)
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
	$(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The same suite against the lowest LLaMA-Factory the package supports, in its own environment.
test-lowest:
	$(MAKE) test VENV=.venv-lowest HOST_PIN="$(LOWEST_HOST)"

lint: setup
	$(PY) -m ruff check simpo_plugin tests
	$(PY) -m ruff format --check simpo_plugin tests

clean:
	rm -rf $(VENV) .venv-lowest $(DEMO_DIR)
