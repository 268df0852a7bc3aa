#!/usr/bin/env bash
# Run every test (exercise tests vs reference/stubs/mistakes, utils, data, API faults, generated
# files, nbgrader round trip, book in headless Chromium). Offline; CPU only.
#   bash test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"
# Two workers (the CI machine has two cores); a test file stays on one worker (the nbgrader round
# trip shares one temporary course across its tests).
exec python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"
