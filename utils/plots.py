"""Plotting for the course: one look, one colour per meaning, and the one place that decides how a
figure is rendered.

Where a figure goes decides how it is written (`setup_plotting`, run on import):

- **Jupyter** (JupyterLab, Notebook 7, nbclient, nbgrader): the figure is stored as plotly's JSON
  (`application/vnd.plotly.v1+json`, 10-20 KB), which JupyterLab and Notebook 7 draw with the
  extension plotly ships. The notebook never embeds plotly.js itself (4.8 MB), so the notebook a
  student submits stays small. A one-line text fallback names the figure where no plotly extension
  runs (nbconvert's HTML, nbgrader's feedback).
- **The book** (`scripts/build_book.sh` sets `PERSONA_COURSE_BOOK=1`): the figure is an HTML div
  drawn by the one copy of plotly.js that the book serves from its own `_static/` folder
  (`utils/book.py` adds it to each page with a figure). Nothing is fetched from the network.

Either way a figure is responsive: no fixed width (it takes its container's), a legend that wraps
above the plot, and in the book the title is set as HTML above the figure so that it wraps on a
phone instead of being cut.
"""

from __future__ import annotations

import html
import os
import textwrap

import plotly.graph_objects as go
import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer

BOOK_ENV = "PERSONA_COURSE_BOOK"  # set by scripts/build_book.sh
JUPYTER_RENDERER = "course_jupyter"
BOOK_RENDERER = "course_book"
TEMPLATE = "course"

# One colour per meaning, for the whole course.
COLORS = {
    # Section 1: persona groups
    "default": "#1f77b4",
    "assistant_like": "#2ca02c",
    "middle": "#ff7f0e",
    "fantastical": "#d62728",
    # signs (a cosine, a projection)
    "positive": "#1f77b4",
    "negative": "#d62728",
    # Section 2: activation capping
    "uncapped": "#d62728",
    "capped": "#1f77b4",
    "projection": "#1f77b4",
    "risk": "#ff7f0e",
    # Section 3: contrastive answers
    "pos": "#d62728",
    "neg": "#1f77b4",
    # Sections 3-4: judge scores and steering
    "trait": "#d62728",
    "coherence": "#2ca02c",
    "steered": "#9467bd",
    "unsteered": "#7f7f7f",
    "paper": "#7f7f7f",
}
GROUP_COLORS = {g: COLORS[g] for g in ("default", "assistant_like", "middle", "fantastical")}

# A 0-100 judge score (delusion risk, trait score, coherence) always on the same axis.
SCORE_TICKS = [0, 25, 50, 75, 100]
SCORE_AXIS = dict(range=[-2, 102], tickmode="array", tickvals=SCORE_TICKS)

# The plotly.js config of every figure: resize with the page, no plotly logo/link in the mode bar.
CONFIG = {"responsive": True, "displaylogo": False}
# In the book the mode bar would sit on the legend above the plot (pan and zoom still work by touch).
BOOK_CONFIG = {**CONFIG, "displayModeBar": False}
DEFAULT_HEIGHT = 420
WRAP_X_TITLE = 42  # characters per line of an x-axis title (about a phone's width)


def score_axis(title: str) -> dict:
    """A y-axis (or x-axis) layout for a 0-100 score: fixed range, ticks 0, 25, 50, 75, 100."""
    return dict(title=dict(text=title), **SCORE_AXIS)


def _template() -> go.layout.Template:
    base = pio.templates["plotly_white"]
    template = go.layout.Template(base)
    template.layout.update(
        autosize=True,
        colorway=["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"],
        margin=dict(l=60, r=24, t=72, b=56),
        title=dict(x=0, xanchor="left", font=dict(size=16), automargin=True),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
        xaxis=dict(automargin=True),
        yaxis=dict(automargin=True),
    )
    return template


def _wrap(text: str, width: int) -> str:
    if not text or "<br" in text or len(text) <= width:
        return text
    return "<br>".join(textwrap.wrap(text, width=width, break_long_words=False))


def responsive_layout(fig_dict: dict, book: bool) -> tuple[dict, str]:
    """A figure dict made to fit any width, and its title (lifted out of the figure in the book).

    The fixed width goes (the figure takes its container's), long x-axis titles wrap, and in the
    book the title is returned separately so that the page sets it as HTML text that wraps."""
    layout = dict(fig_dict.get("layout", {}))
    layout.pop("width", None)
    layout["autosize"] = True
    for key, axis in list(layout.items()):
        if key.startswith("xaxis") and isinstance(axis, dict) and isinstance(axis.get("title"), dict):
            title = dict(axis["title"])
            if isinstance(title.get("text"), str):
                title["text"] = _wrap(title["text"], WRAP_X_TITLE)
            layout[key] = {**axis, "title": title}
    title = ""
    if book and isinstance(layout.get("title"), dict):
        title = layout["title"].get("text") or ""
        layout["title"] = {k: v for k, v in layout["title"].items() if k != "text"}
        margin = dict(layout.get("margin", {}))
        margin.setdefault("t", 36)  # the title is outside: keep room for the legend only
        layout["margin"] = margin
    return {**fig_dict, "layout": layout}, title


def _title_of(fig_dict: dict) -> str:
    title = fig_dict.get("layout", {}).get("title", {})
    return title.get("text", "") if isinstance(title, dict) else ""


class JupyterRenderer(MimetypeRenderer):
    """plotly's JSON for JupyterLab / Notebook 7 (no plotly.js in the notebook), with a text fallback."""

    def to_mimebundle(self, fig_dict):
        fig_dict, _ = responsive_layout(fig_dict, book=False)
        title = _title_of(fig_dict).replace("<br>", " ")
        return {
            "application/vnd.plotly.v1+json": {**fig_dict, "config": CONFIG},
            "text/plain": f"<plotly figure{': ' + title if title else ''} -- open the notebook in JupyterLab or Notebook 7 to see it>",
        }


class BookRenderer(MimetypeRenderer):
    """HTML for the book: a title that wraps, and a div that the page's shared plotly.js draws."""

    def to_mimebundle(self, fig_dict):
        fig_dict, title = responsive_layout(fig_dict, book=True)
        height = fig_dict["layout"].get("height") or DEFAULT_HEIGHT
        div = pio.to_html(fig_dict, config=BOOK_CONFIG, include_plotlyjs=False, include_mathjax=False, full_html=False,
                          default_width="100%", default_height=f"{height}px", validate=False)
        head = f'<p class="course-figure-title">{title}</p>' if title else ""  # plotly titles are (simple) HTML
        return {"text/html": f'<div class="course-figure">{head}{div}</div>'}


def in_book() -> bool:
    return os.environ.get(BOOK_ENV, "") not in ("", "0")


def setup_plotting() -> None:
    """The course's template and renderer (see the module's docstring); safe to call again."""
    pio.templates[TEMPLATE] = _template()
    pio.templates.default = TEMPLATE
    pio.renderers[JUPYTER_RENDERER] = JupyterRenderer()
    pio.renderers[BOOK_RENDERER] = BookRenderer()
    pio.renderers.default = BOOK_RENDERER if in_book() else JUPYTER_RENDERER


def heatmap(matrix, labels: list[str], title: str, zmin: float = -1.0, zmax: float = 1.0, colorscale: str = "RdBu") -> go.Figure:
    """A labelled square heatmap (cosine-similarity matrices); every row and column labelled."""
    import numpy as np

    z = np.asarray(matrix, dtype=float)
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, zmin=zmin, zmax=zmax, colorscale=colorscale, reversescale=True,
                               colorbar=dict(thickness=12)))
    size = max(360, 18 * len(labels) + 160)
    fig.update_layout(title=title, height=size, yaxis_autorange="reversed", margin=dict(t=48))
    fig.update_xaxes(tickmode="linear", dtick=1, tickangle=-60, tickfont=dict(size=10))
    fig.update_yaxes(tickmode="linear", dtick=1, tickfont=dict(size=10))
    return fig


def ranked_bars(names: list[str], values: list[float], colors: list[str], title: str, value_title: str,
                legend: dict[str, str] | None = None, value_range: list[float] | None = None) -> go.Figure:
    """Horizontal bars, the first name at the top, every bar labelled (a ranking).

    `colors` gives each bar's colour; `legend` ({label: colour}) adds a legend entry per colour."""
    if not (len(names) == len(values) == len(colors)):
        raise ValueError(f"names, values and colors differ in length: {len(names)}, {len(values)}, {len(colors)}")
    fig = go.Figure(go.Bar(x=list(values), y=list(names), orientation="h", marker_color=list(colors),
                           showlegend=False, hovertemplate="%{y}: %{x:.3g}<extra></extra>"))
    for label, color in (legend or {}).items():  # legend-only entries: one per colour
        fig.add_trace(go.Bar(x=[None], y=[None], orientation="h", marker_color=color, name=label, showlegend=True))
    fig.update_layout(title=title, height=22 * len(names) + 150, bargap=0.25,
                      xaxis=dict(title=value_title, range=value_range, zeroline=True, zerolinecolor="#888"))
    fig.update_yaxes(autorange="reversed", tickmode="linear", dtick=1, tickfont=dict(size=11))
    return fig


def label_positions(x, y, labels: list[str], order: list[int] | None = None, width_px: int = 220,
                    height_px: int = 420, font_px: int = 11) -> list[str]:
    """Where to put each point's text label so that labels do not overlap ('' = leave it unlabelled).

    Greedy, in `order` (indices, the points you most want labelled first; default: as given): try
    above, below, right and left of the marker, in a plot whose points span about `width_px` x
    `height_px` (the default width is a phone's: a label placed there fits a wider screen too), and
    keep the first place that overlaps no label or marker placed so far. A label may reach 10 %
    beyond the points' x range (pad the axis range by that much). Returns plotly `textposition`
    values; give an unlabelled point its name as hover text."""
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if not (len(x) == len(y) == len(labels)):
        raise ValueError(f"x, y and labels differ in length: {len(x)}, {len(y)}, {len(labels)}")
    if len(x) == 0:
        return []
    span = lambda v: (v.max() - v.min()) or 1.0  # noqa: E731
    px = (x - x.min()) / span(x) * width_px
    py = (y - y.min()) / span(y) * height_px
    marker = 6.0
    boxes = [(a - marker, b - marker, a + marker, b + marker) for a, b in zip(px, py)]  # markers block labels too

    positions = [""] * len(labels)
    for i in (range(len(labels)) if order is None else order):
        label = labels[i]
        w, h = 0.62 * font_px * len(label), 1.3 * font_px
        a, b = px[i], py[i]
        options = {
            "top center": (a - w / 2, b + marker, a + w / 2, b + marker + h),
            "bottom center": (a - w / 2, b - marker - h, a + w / 2, b - marker),
            "middle right": (a + marker, b - h / 2, a + marker + w, b + h / 2),
            "middle left": (a - marker - w, b - h / 2, a - marker, b + h / 2),
        }
        for position, box in options.items():
            clear = all(not (box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3])
                        for k, o in enumerate(boxes) if k != i)  # its own marker never blocks it
            if clear and box[0] >= -0.1 * width_px and box[2] <= 1.1 * width_px:
                positions[i] = position
                boxes.append(box)
                break
    return positions


setup_plotting()
