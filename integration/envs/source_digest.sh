#!/usr/bin/env bash
# A digest of everything the two wheels are built from: a venv set up from wheels ($HSR_WHEELS)
# reinstalls them when it changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
find hsr_plugin recipes integration/hsr_eval \
  pyproject.toml integration/pyproject.toml -type f \
  \( -name '*.py' -o -name '*.yaml' -o -name '*_yaml' -o -name '*.jsonl' -o -name '*.toml' -o -name '*.md' \) \
  -not -path '*/__pycache__/*' -not -path '*/images/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16
