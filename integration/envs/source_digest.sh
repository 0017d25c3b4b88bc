#!/usr/bin/env bash
# A digest of everything the two wheels are built from: the venvs reinstall them when it changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
find hsr_plugin recipes integration/serving integration/lm_eval_tasks integration/organisms/data \
  pyproject.toml integration/pyproject.toml -type f \
  \( -name '*.py' -o -name '*.yaml' -o -name '*_yaml' -o -name '*.jsonl' -o -name '*.toml' -o -name '*.md' \) \
  -not -path '*/__pycache__/*' -not -path '*/images/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16
