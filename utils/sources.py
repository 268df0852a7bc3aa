"""The section source format: solution regions, stubs and hidden tests (see scripts/generate.py).

A section's source is a jupytext percent file; inside `exercise` cells the student's part sits
between `### BEGIN SOLUTION` and `### END SOLUTION` (nbgrader's own markers), and graded test cells
may hold `### BEGIN HIDDEN TESTS` / `### END HIDDEN TESTS` blocks.
"""

from __future__ import annotations

import ast
import re

STUB = 'raise NotImplementedError("not implemented yet")'
STUB_COMMENT = "# YOUR CODE HERE"
SOLUTION_RE = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION[^\n]*\n.*?^[ \t]*### END SOLUTION[^\n]*(\n|$)", re.M | re.S)
MARKER_RE = re.compile(r"^[ \t]*### (BEGIN|END) (SOLUTION|HIDDEN TESTS)[^\n]*\n?", re.M)
HIDDEN_RE = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[^\n]*\n.*?^[ \t]*### END HIDDEN TESTS[^\n]*(\n|$)", re.M | re.S)
DIRECTIVE_RE = re.compile(r"^:::\{(?P<kind>[\w-]+)\}[ \t]*(?P<title>[^\n]*)\n(?P<body>.*?)^:::[ \t]*$", re.M | re.S)


def _bound_names(region: str) -> list[str]:
    """The names a module-level solution region assigns; ValueError for anything else in it."""
    body = MARKER_RE.sub("", region)
    try:
        tree = ast.parse(body)
    except SyntaxError as err:
        raise ValueError(f"a module-level solution region does not parse: {err}") from None
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else None
        if targets is None:
            raise ValueError("a module-level solution region may only assign names (NAME = ...); put code in a "
                             f"function whose body is the region instead (line {node.lineno}: {ast.unparse(node)[:60]!r})")
        for target in targets:
            elements = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
            for element in elements:
                if not isinstance(element, ast.Name):
                    raise ValueError(f"a module-level solution region may only assign plain names, not {ast.unparse(element)!r}")
                names.append(element.id)
    return list(dict.fromkeys(names))


def stub_code(source: str) -> str:
    """The student's version: each solution region becomes the stub, at the region's indentation.

    Inside a function the stub raises NotImplementedError; at module level (where a `raise` would
    stop the cell before the rest of it defines anything) each name the region assigns becomes
    `NAME = ...  # YOUR CODE HERE`, so that every name exists and the tests say "not implemented yet"."""
    def repl(m: re.Match) -> str:
        ind = m.group("indent")
        if not ind:
            return "".join(f"{name} = ...  {STUB_COMMENT}\n" for name in _bound_names(m.group(0)))
        return f"{ind}{STUB_COMMENT}\n{ind}{STUB}\n"

    return SOLUTION_RE.sub(repl, source).rstrip("\n")


def nbgrader_exercise_code(source: str) -> str:
    """An exercise cell as nbgrader's source holds it: nbgrader itself turns every solution region
    into a `raise`, which at module level would stop the cell before the code after it runs. So the
    module-level regions move to the end of the cell, each after a `NAME = ...` line: the released
    cell defines every name (as `...` until the student fills it in) before the last line raises."""
    moved = []

    def take(m: re.Match) -> str:
        if m.group("indent"):
            return m.group(0)
        names = _bound_names(m.group(0))
        moved.append("".join(f"{name} = ...  # your answer replaces this (below)\n" for name in names) + m.group(0))
        return ""

    rest = SOLUTION_RE.sub(take, source).strip("\n")
    if not moved:
        return source.rstrip("\n")
    return "\n\n".join([rest] + [block.strip("\n") for block in moved]).strip("\n")


def solution_code(source: str) -> str:
    return MARKER_RE.sub("", source).rstrip("\n")


def without_hidden_tests(source: str) -> str:
    return HIDDEN_RE.sub("", source).rstrip("\n")


def directives_to_html(markdown: str) -> str:
    """MyST directives to what Jupyter renders: dropdowns fold as <details>, others as quotes."""
    def repl(m: re.Match) -> str:
        kind, title, body = m.group("kind"), m.group("title").strip(), m.group("body").strip("\n")
        body = re.sub(r"^:[\w-]+:.*\n", "", body)  # drop directive options
        if kind == "dropdown":
            return f"<details><summary>{title or 'Details'}</summary>\n\n{body}\n\n</details>"
        label = kind.capitalize() + (f": {title}" if title else "")
        return "\n".join([f"> **{label}**", ">"] + [f"> {line}" if line else ">" for line in body.splitlines()])

    return DIRECTIVE_RE.sub(repl, markdown)


ADMONITIONS = ("note", "tip", "hint", "important", "warning", "caution", "attention", "danger", "error", "seealso")
TITLED_RE = re.compile(r"^:::\{(?P<kind>" + "|".join(ADMONITIONS) + r")\}[ \t]+(?P<title>\S[^\n]*)$", re.M)


def titled_admonitions(markdown: str) -> str:
    """`:::{tip} Before you run` for the book: MyST's named admonitions take no title (it would be
    read as body text), so a titled one becomes a generic admonition with the kind as its class."""
    return TITLED_RE.sub(lambda m: f":::{{admonition}} {m.group('title').strip()}\n:class: {m.group('kind')}", markdown)

