#!/usr/bin/env bash
# nbgrader's tools in Jupyter (the Formgrader, "Create Assignment", "Validate", the Assignments
# list): off for students, on for an instructor. Applies to the course's virtualenv only.
#   bash scripts/nbgrader_tools.sh off   # what setup.sh does: students see none of them
#   bash scripts/nbgrader_tools.sh on    # an instructor, then restart `jupyter lab`
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
case "${1:-}" in
  on) action=enable ;;
  off) action=disable ;;
  *) echo "usage: bash scripts/nbgrader_tools.sh on|off" >&2; exit 2 ;;
esac
# The server side: nbgrader registers four server extensions by module name (they have no
# extension points, so `jupyter server extension disable` refuses them): set each in the venv's
# jupyter_server_config.d directly.
"$VENV/bin/python" - "$action" <<'PY'
import sys
from jupyter_server.extension.serverextension import toggle_server_extension_python

for name in ("formgrader", "validate_assignment", "assignment_list", "course_list"):
    toggle_server_extension_python(f"nbgrader.server_extensions.{name}", enabled=sys.argv[1] == "enable", sys_prefix=True)
PY
# The browser side: the menu, the "Create Assignment" panel and the "Validate" button.
"$VENV/bin/jupyter-labextension" "$action" --level=sys_prefix @jupyter/nbgrader >/dev/null
echo "nbgrader's Jupyter tools are $1 (restart Jupyter to see the change)"
