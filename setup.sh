#!/usr/bin/env bash
# One command on a fresh machine: install everything, then build the course in the offline toy
# world (generated notebooks + rendered book in _build/html).
#   bash setup.sh              # venv in .venv (override with VENV=/path)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"

if ! command -v bwrap >/dev/null 2>&1; then
  # bubblewrap: the sandbox nbgrader grades student code in (grading/sandbox.py)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "note: install Debian's 'bubblewrap' package to autograde (see book/appendix_instructors.md)" >&2
  fi
fi

if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  # PostgreSQL's server: the gradebook a whole class is graded into in parallel (grading/classroom.py);
  # tests/test_classroom.py starts a throwaway one
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "note: install Debian's 'postgresql' package to grade a class into PostgreSQL (README, nbgrader)" >&2
  fi
fi

if ! command -v chromium >/dev/null 2>&1; then
  # headless Chromium checks that the book's figures render (tests/test_book.py)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Debian's 'chromium' package for the book test" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
"$VENV/bin/python" -m grading.sandbox install >/dev/null  # the sandboxed kernel that nbgrader grades with
# Students open this venv's JupyterLab: nbgrader's instructor tools stay off there (an instructor:
# `bash scripts/nbgrader_tools.sh on`).
VENV="$VENV" bash scripts/nbgrader_tools.sh off

export PATH="$PWD/$VENV/bin:$PATH"
python scripts/generate.py
bash scripts/build_book.sh
echo "course built: notebooks in exercises/ solutions/ nbgrader/source/, book in _build/html/index.html"
