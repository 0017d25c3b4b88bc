#!/usr/bin/env bash
# Create (or reuse) the compression virtualenv: torch (CPU), llm-compressor and this plugin.
# Idempotent: a stamp file records the pinned set; a second run with the same pins returns at once.
# Usage: bash integration/envs/setup_compress_venv.sh   (venv path: $HSR_VENV, default .venv)
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="${HSR_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
PINS=(
  "torch==${TORCH_VERSION}"
  "llmcompressor==0.14.0.1"
  "compressed-tensors==0.19.0"
  "transformers==5.17.0"
  "pytest==9.2.0"
  "hypothesis==6.170.17"
  "matplotlib==3.11.2"
  "gguf==0.19.0"
  "ruff==0.17.6"
)
STAMP="$VENV/.hsr-compress-stamp"
WANT="$(printf '%s\n' "${PINS[@]}" "$(sha256sum pyproject.toml | cut -c1-16)")"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
  echo "[setup] compression venv $VENV is up to date"
  exit 0
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"hsr-plugin needs Python >= 3.11, found {sys.version.split()[0]}")
PY

echo "[setup] creating compression venv $VENV (about 2 minutes on a cold machine)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
"$VENV/bin/python" -m pip install --quiet "torch==${TORCH_VERSION}"
"$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
"$VENV/bin/python" -m pip install --quiet --no-deps -e .
"$VENV/bin/python" -c "import torch, llmcompressor, hsr_plugin; print('[setup] torch', torch.__version__, '| llmcompressor', llmcompressor.__version__)"
printf '%s' "$WANT" > "$STAMP"
