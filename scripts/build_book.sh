#!/usr/bin/env bash
# Build the book offline in the toy persona world (a small trained model and its judge, see
# scripts/toy_world), executing every section notebook.
# Jupyter Book 1.x exits 0 when a notebook fails unless -W is given: we give it, with --keep-going
# so that one run reports every problem.
set -euo pipefail
cd "$(dirname "$0")/.."
export PERSONA_COURSE_MODEL=toy
unset PERSONA_COURSE_TINY NBGRADER_EXECUTION
# Figures for the book: HTML drawn by the book's one shared plotly.js (utils/plots.py decides).
export PERSONA_COURSE_BOOK=1
# No progress bars in the book (they would be widgets needing scripts from a CDN).
export TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
# Every build starts from an empty cache, so no vector or judge score from an earlier model leaks in.
PERSONA_COURSE_CACHE="$(mktemp -d)"
export PERSONA_COURSE_CACHE
trap 'rm -rf "$PERSONA_COURSE_CACHE"' EXIT
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning}"
jupyter-book build . --all -W --keep-going "$@"  # --all: re-execute every page (a new model changes outputs)
