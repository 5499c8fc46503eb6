#!/usr/bin/env bash
# Runs the chart, image and monitoring tests from the repository root.
set -euo pipefail
cd "$(dirname "$0")/../.."
# pytest exits 5 when it collects no test: make that a failure, never a silent pass.
set +e
python3 -m pytest -q -p no:cacheprovider helm/tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "helm/tests: no tests were collected" >&2
  exit 1
fi
exit "$rc"
