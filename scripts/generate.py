"""Generate every derived notebook from the one source of truth per section.

    python scripts/generate.py           # write all generated files
    python scripts/generate.py --check   # exit 1 (listing them) if any generated file is stale

Sources are jupytext "percent" files `solutions/<section>.py`. Cell tags in a source:
- `exercise`: code with `### BEGIN SOLUTION` / `### END SOLUTION` regions (the student's part);
- `test` (with `points=N`): the graded cell that runs the exercise's test from `part_tests`;
  lines between `### BEGIN HIDDEN TESTS` / `### END HIDDEN TESTS` only appear in nbgrader's source;
- `export`: setup code that the reference namespace needs (`utils.reference.load`);
- `book-only`: the cell goes to the book alone (e.g. prose that pastes numbers with MyST-NB's
  `{glue:text}` role, which Jupyter cannot render; see utils/glue.py);
- any other tag (e.g. `hide-input`, `remove-cell`) passes through to the book.
Markdown may use MyST directives (`:::{dropdown} Hint 1`); the Jupyter notebooks get them as
HTML `<details>` so they fold in Jupyter too.

Outputs for each section:
- `exercises/<section>.ipynb`: solution regions replaced by the stub;
- `solutions/<section>.ipynb`: the solutions, markers removed;
- `nbgrader/source/<section>/<section>.ipynb`: markers kept, nbgrader cell metadata (solution
  cells, locked graded test cells with points, locked read-only cells elsewhere);
- `book/<section>.ipynb`: each exercise shows its stub, then the solution in a dropdown.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import jupytext
import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.sources import SOLUTION_RE, directives_to_html, nbgrader_exercise_code, solution_code, stub_code, titled_admonitions, without_hidden_tests  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "solutions"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def _id(section: str, kind: str, i: int) -> str:
    return hashlib.sha1(f"{section}:{kind}:{i}".encode()).hexdigest()[:12]


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def _base_cell(cell, source: str, section: str, kind: str, i: int, tags=None, extra_meta=None):
    meta = {}
    if tags:
        meta["tags"] = tags
    if extra_meta:
        meta.update(extra_meta)
    if cell.cell_type == "markdown":
        new = nbformat.v4.new_markdown_cell(source, metadata=meta)
    else:
        new = nbformat.v4.new_code_cell(source, metadata=meta)
    new["id"] = _id(section, kind, i)
    return new


def _notebook(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    return nb


PASS_TAGS = lambda tags: [t for t in tags if t not in ("exercise", "test", "export")]  # noqa: E731


def build_variants(source_path: Path) -> dict[str, nbformat.NotebookNode]:
    section = source_path.stem
    src = jupytext.read(source_path)
    ex, sol, nbg, book = [], [], [], []
    for i, cell in enumerate(src.cells):
        tags = _tags(cell)
        text = cell.source
        if "book-only" in tags:  # the book alone (e.g. prose with {glue} numbers Jupyter cannot render)
            if {"exercise", "test", "export"} & set(tags):
                raise ValueError(f"{source_path.name} cell {i}: a 'book-only' cell cannot be an exercise, test or export cell")
            body = titled_admonitions(text) if cell.cell_type == "markdown" else text
            book.append(_base_cell(cell, body, section, "book", i, tags=tags))
            continue
        if cell.cell_type == "markdown":
            html = directives_to_html(text)
            ex.append(_base_cell(cell, html, section, "ex", i))
            sol.append(_base_cell(cell, html, section, "sol", i))
            nbg.append(_base_cell(cell, html, section, "nbg", i, extra_meta={"nbgrader": _nbg_meta(f"md-{i}", locked=True)}))
            book.append(_base_cell(cell, titled_admonitions(text), section, "book", i, tags=PASS_TAGS(tags) or None))
            continue
        is_exercise = "exercise" in tags
        is_test = "test" in tags
        if is_exercise and not SOLUTION_RE.search(text):
            raise ValueError(f"{source_path.name} cell {i}: tagged 'exercise' but has no ### BEGIN/END SOLUTION region")
        if SOLUTION_RE.search(text) and not is_exercise:
            raise ValueError(f"{source_path.name} cell {i}: has a solution region but is not tagged 'exercise'")
        visible = without_hidden_tests(text) if is_test else text
        ex.append(_base_cell(cell, stub_code(visible), section, "ex", i))
        sol.append(_base_cell(cell, solution_code(visible), section, "sol", i))
        if is_exercise:
            meta = _nbg_meta(f"exercise-{i}", solution=True, locked=False)
        elif is_test:
            points = cell.metadata.get("points")
            if not isinstance(points, int) or points <= 0:
                raise ValueError(f"{source_path.name} cell {i}: a 'test' cell needs points=N (N > 0)")
            meta = _nbg_meta(f"test-{i}", grade=True, locked=True, points=points)
        else:
            meta = _nbg_meta(f"code-{i}", locked=True)
        nbg_text = graded_cell(text, section, source_path.name, i) if is_test else \
            nbgrader_exercise_code(text) if is_exercise else text.rstrip("\n")
        nbg.append(_base_cell(cell, nbg_text, section, "nbg", i, extra_meta={"nbgrader": meta}))
        if is_exercise:
            stub = stub_code(text)
            book.append(nbformat.v4.new_markdown_cell(
                "**Your turn.** Fill in the stub below in the exercise notebook, then run the test cell under it.\n\n"
                f"```python\n{stub}\n```"))
            book[-1]["id"] = _id(section, "book-stub", i)
            book.append(_base_cell(
                cell, solution_code(text), section, "book", i,
                tags=sorted(set(PASS_TAGS(tags)) | {"hide-input"}),
                extra_meta={"mystnb": {"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"}},
            ))
        else:
            book.append(_base_cell(cell, solution_code(visible), section, "book", i, tags=PASS_TAGS(tags) or None))
    return {
        f"exercises/{section}.ipynb": _notebook(ex),
        f"solutions/{section}.ipynb": _notebook(sol),
        f"nbgrader/source/{section}/{section}.ipynb": _notebook(nbg),
        f"book/{section}.ipynb": _notebook(book),
    }


TEST_IMPORT_RE = re.compile(r"^from part_tests import (section\d+) as tests$")
TEST_CALL_RE = re.compile(r"^tests\.test_\w+\(.*\)$")
GRADED_HEADER = """\
# Graded cell (locked). The tests are read again from the course's own files, so nothing a cell above
# did to `utils`, `part_tests` or `grading` changes them (see the instructors' appendix).
import sys; [sys.modules.pop(m) for m in [m for m in sys.modules if m.split(".")[0] in {packages!r}]]
from grading.runner import graded
tests = graded({module!r}, digest={digest!r}, nonce={nonce!r})"""


def graded_cell(text: str, section: str, source_name: str, i: int) -> str:
    """nbgrader's version of a test cell: the same test calls, run by `grading.runner`."""
    from grading import COURSE_PACKAGES
    from grading.digest import course_digest
    from grading.runner import NONCE_PLACEHOLDER

    lines = [ln for ln in text.rstrip("\n").splitlines() if ln.strip()]
    module = None
    body = []
    for ln in lines:
        m = TEST_IMPORT_RE.match(ln.strip())
        if m and module is None:
            module = m.group(1)
        elif TEST_CALL_RE.match(ln.strip()) or ln.strip() in ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS") \
                or ln.lstrip().startswith("#"):
            body.append(ln)
        else:
            raise ValueError(f"{source_name} cell {i}: a test cell may hold only `from part_tests import sectionN as tests` "
                             f"and `tests.test_<name>(...)` lines (and hidden-test markers), found {ln!r}")
    if module is None or not section.startswith(module + "_"):
        raise ValueError(f"{source_name} cell {i}: a test cell must start with `from part_tests import {section.split('_')[0]} as tests`")
    header = GRADED_HEADER.format(packages=COURSE_PACKAGES, module=module, digest=course_digest(), nonce=NONCE_PLACEHOLDER)
    return header + "\n" + "\n".join(body)


def _nbg_meta(grade_id: str, grade=False, solution=False, locked=False, points=None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return meta


def sources() -> list[Path]:
    return sorted(SOURCES.glob("section*.py"))


def render_all() -> dict[Path, str]:
    out = {}
    for path in sources():
        for rel, nb in build_variants(path).items():
            out[ROOT / rel] = nbformat.writes(nb) + "\n"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if any generated file is stale")
    args = parser.parse_args(argv)
    rendered = render_all()
    stale = [p for p, text in rendered.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)} (run: python scripts/generate.py)")
        return 1 if stale else 0
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rendered[p])
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
