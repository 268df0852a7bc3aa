"""A Sphinx extension for the course's book: everything a page needs is served by the book itself.

- plotly.js: one shared copy, `_static/plotly.min.js` (from the installed plotly package), loaded
  only by the pages that have a figure and cached by the browser across pages; the figures
  themselves are small divs written by `utils.plots` (`PERSONA_COURSE_BOOK=1`).
- MathJax: `_static/mathjax/` (MathJax 3 with its fonts, from the `sphinx-mathjax-offline` package
  of requirements.txt) instead of a CDN.
- `_static/course.css`: outputs, tables and inline math wrap instead of scrolling sideways; figure
  titles set as text.
- Identical inline scripts are kept once per page (sphinx-thebe's configuration script came twice).

Enabled in `_config.yml` (`sphinx.local_extensions`).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

PLOTLY_JS = "plotly.min.js"
MATHJAX_DIR = "mathjax"
MATHJAX_ENTRY = "tex-mml-chtml.js"
MATHJAX_PACKAGE = "sphinx-mathjax-offline"  # ships MathJax 3.2.2 (its own extension is not used)
CSS = "course.css"

COURSE_CSS = """\
/* The course's book: outputs wrap rather than scroll sideways (phones; code keeps its lines and
   scrolls in its own box, as wrapped Python loses its indentation); figures fit their column. */
div.cell_output pre, div.output pre, div.cell_output .output pre {
  white-space: pre-wrap;
  overflow-wrap: anywhere;
}
.course-figure { width: 100%; max-width: 100%; overflow: hidden; }
.course-figure .plotly-graph-div { max-width: 100%; }
p.course-figure-title { font-weight: 600; margin: 0.6em 0 0.1em; line-height: 1.3; }
/* nothing pushes the page sideways: long inline code breaks, wide math and tables scroll in place */
code.literal, code.literal span.pre { white-space: pre-wrap; overflow-wrap: anywhere; }
/* display math scrolls in its own box if it must; inline math flows with the text (a scroll box on
   every inline formula showed a scrollbar for a pixel of rounding) */
mjx-container[display="true"], div.math { max-width: 100%; overflow-x: auto; overflow-y: hidden; }
mjx-container:not([display="true"]) { display: inline; overflow: visible !important; white-space: normal; }
/* on a phone, display formulas are set a little smaller so that they fit the column */
@media (max-width: 520px) { mjx-container[display="true"] { font-size: 84% !important; } }
/* tables wrap their cells' text to the column instead of scrolling sideways */
article table { display: table; width: 100%; max-width: 100%; table-layout: auto; }
article table th, article table td { white-space: normal; overflow-wrap: anywhere; word-break: normal; }
article table code.literal, article table code.literal span.pre { white-space: pre-wrap; overflow-wrap: anywhere; }
"""


def _mathjax_source() -> Path:
    spec = importlib.util.find_spec(MATHJAX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the offline book needs MathJax from the '{MATHJAX_PACKAGE}' package: "
                           "pip install -r requirements.txt (setup.sh does)")
    source = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax"
    if not (source / MATHJAX_ENTRY).is_file():
        raise RuntimeError(f"{source / MATHJAX_ENTRY} is missing: reinstall '{MATHJAX_PACKAGE}'")
    return source


def _plotly_source() -> Path:
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / PLOTLY_JS
    if not source.is_file():
        raise RuntimeError(f"{source} is missing: reinstall plotly")
    return source


def stage_assets(target: Path) -> Path:
    """Copy plotly.js, MathJax and the course's CSS into `target` (a folder Sphinx copies to _static)."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(_plotly_source(), target / PLOTLY_JS)
    mathjax = target / MATHJAX_DIR
    if not (mathjax / MATHJAX_ENTRY).is_file():
        # one combined component (TeX + MathML input, HTML output) and what it loads on demand
        shutil.copytree(_mathjax_source(), mathjax, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if n.endswith(".js") and Path(d).name == "mathjax"
                                                 and n not in (MATHJAX_ENTRY, "loader.js", "startup.js", "core.js")])
    (target / CSS).write_text(COURSE_CSS)
    return target


def _config_inited(app, config) -> None:
    staged = stage_assets(Path(app.outdir).parent / "course_static")
    config.html_static_path = [*config.html_static_path, str(staged)]
    config.mathjax_path = f"{MATHJAX_DIR}/{MATHJAX_ENTRY}"  # relative to _static: no CDN


def _page_context(app, pagename, templatename, context, doctree) -> None:
    # a first visit has no stored light/dark mode: without a default the theme's script logs a
    # console error ("Got invalid theme mode")
    if not context.get("default_mode"):
        context["default_mode"] = "light"
    if "plotly-graph-div" in (context.get("body") or ""):
        app.add_js_file(PLOTLY_JS)  # before the page's figures (a plain script in the head)


def drop_repeated_inline_scripts(html: str) -> str:
    """Keep the first of identical inline `<script>...</script>` lines in a page's head.

    sphinx-thebe adds its configuration script (`const THEBE_JS_URL = ...`) once per read phase, and
    Jupyter Book reads twice, so every page declared the same `const` twice: a console error."""
    seen, out = set(), []
    for line in html.splitlines(keepends=True):
        tag = line.strip()
        if tag.startswith("<script>") and tag.endswith("</script>"):
            if tag in seen:
                continue
            seen.add(tag)
        out.append(line)
    return "".join(out)


def _build_finished(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    for page in Path(app.outdir).rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        fixed = drop_repeated_inline_scripts(text)
        if fixed != text:
            page.write_text(fixed, encoding="utf-8")


def setup(app):
    app.connect("config-inited", _config_inited)
    app.connect("html-page-context", _page_context)
    app.connect("build-finished", _build_finished)
    app.add_css_file(CSS)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
