# hsr-plugin: the two front-door commands and their building blocks.
#   make demo   end-to-end demo on the embedded organism (prune -> HSR -> vLLM -> lm-eval -> table)
#   make test   install what the tests need, then run the whole suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
SERVE_VENV ?= .venv-serve
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HSR_SERVE_VENV := $(abspath $(SERVE_VENV))

.PHONY: venvs compress-venv serve-venv demo test test-fast clean-outputs

compress-venv:
	HSR_VENV=$(VENV) PYTHON=$(PYTHON) bash integration/envs/setup_compress_venv.sh

serve-venv:
	HSR_SERVE_VENV=$(abspath $(SERVE_VENV)) PYTHON=$(PYTHON) bash integration/serving/setup_venv.sh

venvs: compress-venv serve-venv

demo: venvs
	$(VENV)/bin/hsr demo --out outputs/demo

test: venvs
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-fast: compress-venv
	$(VENV)/bin/python -m pytest -m "not slow and not vllm" $(PYTEST_ARGS)

clean-outputs:
	rm -rf outputs
