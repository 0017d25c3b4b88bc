#!/usr/bin/env bash
# Build the two wheels a user installs: hsr-plugin (this folder's pyproject.toml) and hsr-eval
# (integration/pyproject.toml), into $1 (default dist/). The venv scripts and the wheel test
# install these, never the checkout itself, so a file missing from a wheel fails there first.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-dist}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
rm -f "$OUT"/hsr_plugin-*.whl "$OUT"/hsr_eval-*.whl
# setuptools copies sources into build/ and never removes what the checkout no longer has: a
# deleted or moved module would ship on in the next wheel
rm -rf build integration/build
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$OUT" . ./integration
ls "$OUT"/hsr_plugin-*.whl "$OUT"/hsr_eval-*.whl
