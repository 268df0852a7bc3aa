"""The digest of the course's files that the tests execute or read.

A graded cell carries the digest of the course as it was when the assignment was generated
(scripts/generate.py writes it); the runner (grading/runner.py) compares it with the files on disk,
so a submission that edited them cannot change another student's grade unnoticed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from grading import COURSE_PACKAGES

_ROOT = Path(__file__).resolve().parent.parent
# The files the tests execute or read: the course's packages (sub-packages included; utils with the
# tiny models' configs and tokenizers) and the course data.
_TRACKED = tuple((package, "**/*.py") for package in COURSE_PACKAGES) + (
    ("utils/assets/tiny-qwen2", "*"), ("utils/assets/tiny-gemma2", "*"), ("data", "**/*"))


def course_files(root: Path = _ROOT) -> list[Path]:
    files: set[Path] = set()
    for folder, pattern in _TRACKED:
        files.update(p for p in (root / folder).glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    return sorted(files)


def course_digest(root: Path = _ROOT) -> str:
    """sha256 over the relative paths and contents of the course files the tests depend on."""
    h = hashlib.sha256()
    for path in course_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()
