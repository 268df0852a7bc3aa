"""The tamper report: student lines that touch the interpreter's or the course's internals.

The grader (`GuardedExecute`, grading/executor.py) lists, in its log and in `tamper_report.csv` in
the course folder, each line of a student cell that honest exercise code never needs (sys.modules,
builtins, get_ipython, the course's tests, frames, ...), and what the kernel reset had to put back,
for the instructor to read. The list changes no score.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

# What honest exercise code never needs; each hit is a line for the instructor to read.
SUSPICIOUS = {
    "sys.modules": r"\bsys\s*\.\s*modules\b",
    "builtins": r"\b__builtins__\b|\bbuiltins\b",
    "IPython internals": r"\bget_ipython\b|\bIPython\b(?!\.display\b)|\binput_transformers|\bast_transformers\b|\bset_custom_exc\b|"
                         r"\bshowtraceback\b|\bshell_handlers\b|\bevents\s*\.\s*register\b",
    "the course's tests": r"\bpart_tests\b|\bgrading\.[a-z_]+\b|\b(from|import)\s+grading\b|\bgraded\s*\(|GRADING_NONCE|"
                          r"\bgraded \w+: passed",
    "import machinery": r"\bimportlib\b|\bmeta_path\b|\b__import__\b|\bpath_hooks\b",
    "frames": r"\b_getframe\b|\bf_globals\b|\bf_back\b|\bf_locals\b|\binspect\.(stack|currentframe)",
    "code objects": r"\b__code__\b|\b__closure__\b|\bcell_contents\b|\b__kwdefaults__\b|\b__defaults__\b|"
                    r"\bgc\s*\.\s*get_(referr|objects)|\btb_frame\b|\bgi_frame\b",
    "code made at run time": r"(?<![.\w])(compile|exec|eval)\s*\(|\btypes\s*\.\s*(FunctionType|CodeType)\b",
    "process control": r"\bos\s*\.\s*_exit\b|\bos\s*\.\s*kill\b|\bsignal\s*\.\s*signal\b|\bsubprocess\b|\bos\s*\.\s*system\b|\bSystemExit\b|\bsys\s*\.\s*exit\b",
    "low-level access": r"\bctypes\b|\bsys\s*\.\s*settrace\b|\bsys\s*\.\s*setprofile\b|\batexit\b",
    "library patching": r"^\s*(torch|np|numpy|math|F|re|json)(\.\w+)+\s*=[^=]",
    "writing files": r"open\([^)]*['\"](w|a|r\+|wb|ab)['\"]|\.write_text\(|\.write_bytes\(",
}
SUSPICIOUS_RE = {name: re.compile(pattern, re.M) for name, pattern in SUSPICIOUS.items()}


def suspicious_lines(source: str) -> list[tuple[str, int, str]]:
    """(what, line number, line) for each line of student code that touches internals."""
    hits = []
    for lineno, line in enumerate(source.splitlines(), 1):
        for name, pattern in SUSPICIOUS_RE.items():
            if pattern.search(line):
                hits.append((name, lineno, line.strip()[:200]))
                break
    return hits


def write_report(flags: list[tuple[str, str, int, str]], resources: dict, log) -> None:
    """Log each (cell, what, line number, code) and append it to tamper_report.csv in the course folder."""
    if not flags:
        return
    meta = resources.get("nbgrader", {})
    student, assignment = meta.get("student", "?"), meta.get("assignment", "?")
    for cell_id, what, lineno, line in flags:
        log.warning("tamper check: %s/%s cell %s line %d touches %s: %s", student, assignment, cell_id, lineno, what, line)
    report = Path.cwd() / "tamper_report.csv"  # nbgrader runs in the course folder
    new = not report.exists()
    with open(report, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["student", "assignment", "cell", "line", "what", "code"])
        for cell_id, what, lineno, line in flags:
            w.writerow([student, assignment, cell_id, lineno, what, line])
