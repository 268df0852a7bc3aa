"""The book's numbers about its own run come from the run (MyST-NB glue), never from a hand.

A hand-typed "19 % in our build" goes stale the next time the toy model is retrained. The section
sources (solutions/section*.py) mark their prose so that this test can tell three kinds apart:

- **Observations of this build**: markdown cells tagged `toy-world` (their paragraphs open with
  **In this build**). Every number in them is pasted from the run with a `{glue:text}` role; a
  literal number fails. They are also tagged `book-only` (scripts/generate.py keeps them out of the
  Jupyter notebooks, which cannot render glue roles).
- **The papers' numbers**: paragraphs that open with **On the paper model**. Literal numbers are
  allowed there, but such a paragraph must not speak of this build (or the marking would hide a
  build number behind the paper's label).
- **Everything else** (exercise text, tips, notes, discussion): a paragraph that speaks of this
  build ("toy world", "toy model", "our build", "this build", "this run", ...) holds no literal
  number (a number about the run belongs in a `toy-world` cell), and in a discussion cell a
  statement with a number must name the paper it comes from.

Glue plumbing is checked too: a cell with a glue role is `book-only`, every pasted key is glued by a
code cell of the same source, and every glued key is pasted somewhere.

Numbers that are names rather than quantities do not count: Section 3, Exercise 2.7, discussion
question 3, Qwen2.5-7B-Instruct, Gemma 2 27B, Llama 3.3 70B, "Lu et al., 2026", arXiv ids, links,
list numbering, and digits inside identifiers (d_model, toy-qwen2, hidden_states).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "solutions").glob("section*.py"))

OBSERVATION_TAG = "toy-world"
BOOK_ONLY_TAG = "book-only"
PAPER_LABEL = re.compile(r"^\*\*(On the paper model|Expected on the paper model)\b")
BUILD_LABEL = re.compile(r"^\*\*In this build\b")
BUILD_WORDS = re.compile(r"\btoy[ -](world|model|judge|assistant|trait|persona)|\bin the toy\b|\b(our|this) (build|run)\b"
                         r"|\bin this build\b", re.I)
GLUE_ROLE = re.compile(r"\{glue(?::[a-z]+)?\}`([^`]*)`")
GLUE_CALL = re.compile(r"""\bglue\(\s*["']([\w.-]+)["']""")
# Numbers that are names, not quantities.
NAMES = [
    r"\{glue(?::[a-z]+)?\}`[^`]*`",                          # pasted from the run
    r"\]\([^)]*\)",                                          # link targets
    r"https?://\S+",
    r"\barXiv[ :]?\d{4}\.\d{4,5}",
    r"\bet al\.,? \d{4}",
    r"\b(Sections?|Exercises?|[Dd]iscussion questions?|Hint|Step)\s+\d+(\.\d+)?((,| and| or| to|–)\s*\d+(\.\d+)?)*",
    r"\b(Qwen|Gemma|Llama|gemma|qwen|llama)[\w.-]*( \d+(\.\d+)?)?( \d+B)?(-[\w]+)*",
    r"^\s*(\d+\.|[-*])\s",                                   # list numbering
    r"^#+ .*$",                                              # headings (exercise numbers)
]
NAMES_RE = re.compile("|".join(f"(?:{p})" for p in NAMES), re.M)
CODE_SPAN = re.compile(r"``[^`]+``|`[^`]+`")
NUMBER = re.compile(r"(?<![\w.\-])[-+−]?\d+(?:[.,]\d+)?|(?<=[\s(])[-+−]\d+")


@dataclass
class Cell:
    kind: str  # "markdown" or "code"
    tags: tuple[str, ...]
    source: str
    index: int


def parse(text: str) -> list[Cell]:
    nb = jupytext.reads(text, fmt="py:percent")
    return [Cell(c.cell_type, tuple(c.metadata.get("tags", [])), c.source, i) for i, c in enumerate(nb.cells)]


def numbers(text: str) -> list[str]:
    """The literal numbers in a piece of markdown, names (Section 3, Qwen2.5-7B, ...) left out."""
    return NUMBER.findall(NAMES_RE.sub(" ", text))


def paragraphs(markdown: str) -> list[str]:
    """Blank-line separated paragraphs, each list item on its own, its marker (`- `, `3. `) removed;
    admonition fences (:::) and their options are dropped."""
    text = re.sub(r"^:::.*$|^:[\w-]+:.*$", "", markdown, flags=re.M)
    out = []
    for block in re.split(r"\n\s*\n", text):
        for item in re.split(r"^\s*(?:\d+\.|[-*])\s+", block, flags=re.M):
            if item.strip():
                out.append(item.strip())
    return out


def sentences(paragraph: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.?!])\s+(?=[A-Z(*`])", paragraph) if s.strip()]


def problems(text: str, name: str = "source") -> list[str]:
    """Every marking rule the section source `text` breaks, as readable messages."""
    cells = parse(text)
    out: list[str] = []
    glued = set()
    for c in cells:
        if c.kind == "code":
            glued |= set(GLUE_CALL.findall(c.source))
    pasted = set()
    for c in cells:
        if c.kind != "markdown":
            continue
        where = f"{name} cell {c.index}"
        keys = [k.split(":", 1)[0].strip() for k in GLUE_ROLE.findall(c.source)]
        pasted |= set(keys)
        if keys and BOOK_ONLY_TAG not in c.tags:
            out.append(f"{where}: pastes glued values but is not tagged {BOOK_ONLY_TAG!r} (Jupyter shows the raw role)")
        for k in keys:
            if k not in glued:
                out.append(f"{where}: pastes {k!r}, which no code cell of this source glues")
        observation = OBSERVATION_TAG in c.tags
        if observation and BOOK_ONLY_TAG not in c.tags:
            out.append(f"{where}: a {OBSERVATION_TAG!r} cell must also be tagged {BOOK_ONLY_TAG!r}")
        discussion = bool(re.search(r"^#+ .*Discussion", c.source, re.M))
        for p in paragraphs(c.source):
            # in an observation every number counts, even in code; elsewhere `PERSONA_COURSE_TINY=1` is code
            found = numbers(p) if observation else numbers(CODE_SPAN.sub(" ", p))
            head = p[:70].replace("\n", " ")
            if observation:
                if found:
                    out.append(f"{where}: an observation of this build holds literal numbers {found} "
                               f"(glue them from the run): {head!r}")
                continue
            if BUILD_LABEL.match(p):
                out.append(f"{where}: an 'In this build' paragraph outside a {OBSERVATION_TAG!r} cell: {head!r}")
            if PAPER_LABEL.match(p):
                if BUILD_WORDS.search(p):
                    out.append(f"{where}: a paragraph marked as the paper's speaks of this build: {head!r}")
                continue
            if found and BUILD_WORDS.search(p):
                out.append(f"{where}: a paragraph about this build holds literal numbers {found}; put them in a "
                           f"{OBSERVATION_TAG!r} cell, glued from the run: {head!r}")
            if discussion:
                for s in sentences(CODE_SPAN.sub(" ", p)):
                    if numbers(s) and not s.rstrip().endswith("?") and "paper" not in s.lower():
                        out.append(f"{where}: a discussion statement with numbers {numbers(s)} that does not name "
                                   f"the paper: {s[:90]!r}")
    for k in sorted(glued - pasted):
        out.append(f"{name}: glues {k!r}, which no markdown cell pastes")
    return out


@pytest.mark.parametrize("path", SOURCES, ids=[p.stem for p in SOURCES])
def test_section_prose_takes_build_numbers_from_the_run(path):
    found = problems(path.read_text(), path.name)
    assert not found, "\n".join(found)


def test_sections_mark_their_observations():
    """Each section has glued observations of this build and quotes the paper under its label."""
    for path in SOURCES:
        cells = parse(path.read_text())
        assert any(OBSERVATION_TAG in c.tags for c in cells), f"{path.name}: no {OBSERVATION_TAG!r} observation cell"
        assert any(PAPER_LABEL.match(p) for c in cells if c.kind == "markdown" for p in paragraphs(c.source)), \
            f"{path.name}: no paragraph marked **On the paper model**"


# ---- the detector itself, on small sources ---------------------------------------------------------

GOOD = '''# %% [markdown]
# ## Exercise 1.7 — PCA
#
# **On the paper model** (Gemma 2 27B) PC1 explains about **52 %** of the variance.

# %% tags=["book-only", "remove-cell"]
from utils.glue import glue
glue("pc1", 0.19)

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** PC1 explains {glue:text}`pc1:.0%` of the variance (Section 3 uses it).

# %% [markdown]
# ## Discussion
#
# 1. The paper reads the axis at block 32 of 64. What changes at quantile 0.95?
'''


def _bad(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


def test_detector_passes_a_well_marked_source():
    assert problems(GOOD) == []


@pytest.mark.parametrize("source, phrase", [
    (_bad("{glue:text}`pc1:.0%`", "19 %"), "literal numbers ['19']"),
    (_bad("{glue:text}`pc1:.0%` of the variance", "{glue:text}`pc1:.0%` of the variance, up from 0.12"), "['0.12']"),
    (_bad('tags=["book-only", "toy-world"]', 'tags=["toy-world"]'), "not tagged 'book-only'"),
    (_bad("{glue:text}`pc1:.0%`", "{glue:text}`pc2:.0%`"), "no code cell of this source glues"),
    (_bad('glue("pc1", 0.19)', 'glue("pc1", 0.19)\nglue("unused", 1)'), "'unused', which no markdown cell pastes"),
    (_bad("**On the paper model** (Gemma 2 27B)", "In the toy world (our build: 19 %)"), "about this build holds literal numbers"),
    (_bad("**On the paper model** (Gemma 2 27B)", "**On the paper model** (and 19 % in our build)"), "marked as the paper's speaks of this build"),
    (_bad("1. The paper reads the axis at block 32 of 64.", "1. Section 3 chose block 19."), "does not name the paper"),
    (_bad('# %% [markdown] tags=["book-only", "toy-world"]\n# **In this build**', '# %% [markdown] tags=["book-only"]\n# **In this build**'),
     "'In this build' paragraph outside"),
])
def test_detector_rejects(source, phrase):
    found = problems(source)
    assert any(phrase in f for f in found), f"expected a problem with {phrase!r}, got {found}"


def test_names_are_not_numbers():
    assert numbers("Section 3, Exercise 2.7, Qwen2.5-7B-Instruct, Gemma 2 27B, Llama 3.3 70B, d_model, toy-qwen2") == []
    assert numbers("(Lu et al., 2026; [arXiv 2507.21509](https://arxiv.org/abs/2507.21509))") == []
    assert numbers("from +1.6 to -1.9, 19 %, 0.78") == ["+1.6", "-1.9", "19", "0.78"]


def test_glue_helper_runs_without_a_book():
    """utils.glue works outside MyST-NB (plain Python, nbgrader): no kernel, no output, no error;
    numbers become plain Python values, which MyST-NB's format specs (`:.1f`, `:.0%`) can format."""
    import numpy as np
    import torch

    from utils.glue import glue, plain

    assert glue("anything", np.float32(0.5)) is None
    assert type(plain(np.float64(0.25))) is float and type(plain(np.int64(3))) is int
    assert plain(torch.tensor(2.5)) == 2.5 and type(plain(torch.tensor([7]))) is int
    assert plain("text") == "text" and plain([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="glue name"):
        glue("", 1)
