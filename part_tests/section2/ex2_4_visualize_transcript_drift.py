"""Exercise 2.4 — The drift plot

Tests of `visualize_transcript_drift`: `test_visualize_transcript_drift`.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

from part_tests._common import call, check, exercise, fail, friendly_tests, passed, require_implemented, using
from part_tests.properties import braces_text, for_all, st
from part_tests.section2._fakes import CONVERSATION


@contextmanager
def _capture_figures():
    from plotly.basedatatypes import BaseFigure

    shown = []
    original = BaseFigure.show

    def fake_show(self, *args, **kwargs):
        shown.append(self)

    BaseFigure.show = fake_show
    try:
        yield shown
    finally:
        BaseFigure.show = original


class _FakeAnalyzer:
    def __init__(self, values):
        self.values = values
        self.calls: list[list[dict]] = []

    def project_onto_axis(self, messages):
        self.calls.append([dict(m) for m in messages])
        n = sum(m["role"] == "assistant" for m in messages)
        return list(self.values[:n])

    def turn_spans(self, messages):  # pragma: no cover - not expected to be used
        raise AssertionError("visualize_transcript_drift should call analyzer.project_onto_axis")

    extract_turn_activations = turn_spans


@exercise("2.4", "visualize_transcript_drift")
def test_visualize_transcript_drift(visualize_transcript_drift) -> None:
    require_implemented(visualize_transcript_drift, "visualize_transcript_drift")
    transcript = {
        "domain": "test", "description": "", "name": "test", "system_prompt": "SYSTEM-PROMPT",
        "conversation": [dict(m) for m in CONVERSATION if m["role"] != "system"],
    }
    pristine = copy.deepcopy(transcript)
    proj_values = [0.5, -1.25, 2.0]
    risk_values = [10, None, 80]
    rate_calls = []

    def fake_rate(conversation, assistant_idx):
        rate_calls.append(([dict(m) for m in conversation], assistant_idx))
        return risk_values[assistant_idx]

    analyzer = _FakeAnalyzer(proj_values)
    with using(visualize_transcript_drift, rate_delusion_risk=fake_rate), _capture_figures() as figs:
        out = call(visualize_transcript_drift, analyzer, transcript, name="visualize_transcript_drift")
    if transcript != pristine:
        fail("visualize_transcript_drift changed the transcript it was given (e.g. inserted the system prompt into "
             "transcript['conversation']): build a new list of messages")
    check(isinstance(out, tuple) and len(out) == 2, "visualize_transcript_drift should return a tuple (projections, risks)")
    projections, risks = out
    check(len(analyzer.calls) == 1, f"call analyzer.project_onto_axis once (one forward pass for the whole transcript), called {len(analyzer.calls)} times")
    sent = analyzer.calls[0]
    if sent[0] != {"role": "system", "content": "SYSTEM-PROMPT"}:
        fail("the transcript's system_prompt must come first in the messages given to the analyzer")
    check(sent[1:] == transcript["conversation"], "the analyzer should get the transcript's conversation (after the system prompt), unchanged")
    check(list(projections) == proj_values, f"return the analyzer's projections unchanged, got {projections!r}")
    check([i for _, i in rate_calls] == [0, 1, 2],
          f"rate every assistant turn once, with assistant_idx 0, 1, 2 (got {[i for _, i in rate_calls]}): "
          "assistant_idx counts assistant turns, the same index as the projections")
    for conv, _ in rate_calls:
        if conv != sent:
            missing = " (the system prompt is missing)" if conv == transcript["conversation"] else ""
            fail(f"rate_delusion_risk should get the same messages as the analyzer{missing}: the judge then sees the "
                 "system prompt the model saw")
    check(list(risks) == risk_values, f"return the risks in turn order (None where the judge gave none), got {risks!r}")

    check(figs, "no figure was shown: build a plotly figure and call fig.show()")
    fig = figs[-1]
    traces = list(fig.data)

    def find(values):
        for t in traces:
            y = list(t.y) if t.y is not None else []
            if len(y) == len(values) and all((a is None and b is None) or (a is not None and b is not None and abs(float(a) - float(b)) < 1e-9)
                                             for a, b in zip(y, values)):
                return t
        return None

    t_proj, t_risk = find(proj_values), find(risk_values)
    check(t_proj is not None, "the figure has no trace with the projections per assistant turn")
    check(t_risk is not None, "the figure has no trace with the risks per assistant turn")
    if (t_risk.yaxis or "y") == (t_proj.yaxis or "y"):
        fail("the projection and the risk share one y axis: put the risk on a second y axis "
             "(make_subplots(specs=[[{'secondary_y': True}]]) and add_trace(..., secondary_y=True))")
    if (t_proj.yaxis or "y") != "y" and (t_risk.yaxis or "y") == "y":
        fail("the axes are swapped: the projection goes on the left (primary) y axis and the risk on the second one "
             "(add_trace(risk_trace, secondary_y=True))")

    analyzer2 = _FakeAnalyzer(proj_values)
    rate_calls.clear()
    with using(visualize_transcript_drift, rate_delusion_risk=fake_rate), _capture_figures() as figs2:
        projections, risks = call(visualize_transcript_drift, analyzer2, transcript["conversation"], rate_risk=False,
                                  title="DRIFT-TITLE-7", name="visualize_transcript_drift")
    check(not rate_calls, "with rate_risk=False, do not call the judge")
    check(list(risks) == [None] * 3, f"with rate_risk=False every risk is None, got {risks!r}")
    check(analyzer2.calls and analyzer2.calls[0] == transcript["conversation"],
          "a plain list of messages (no system prompt) should go to the analyzer unchanged")
    check(figs2, "no figure was shown: build a plotly figure and call fig.show()")
    shown_title = figs2[-1].layout.title.text or ""
    if "DRIFT-TITLE-7" not in shown_title:
        fail(f"with title='DRIFT-TITLE-7' the figure's title is {shown_title!r}: the title argument was ignored "
             "(fig.update_layout(title=title))")

    # the first figure's axes: turns numbered from 1, the risk on its full 0-100 scale
    for trace, what in ((t_proj, "projection"), (t_risk, "risk")):
        xs = None if trace.x is None else list(trace.x)
        if xs is None or xs == list(range(len(proj_values))):
            fail(f"the {what} trace puts assistant turn 1 at x = 0 ({'no x given' if xs is None else f'x = {xs}'}): number "
                 "the turns 1, 2, ... on the x axis (x=list(range(1, n + 1))), as the printed turns are numbered")
    axis_name = (t_risk.yaxis or "y").replace("y", "yaxis", 1)
    risk_range = fig.layout[axis_name].range
    lo, hi = (None, None) if risk_range is None else (float(risk_range[0]), float(risk_range[1]))
    if lo is None or not (-15 <= lo <= 0 and 100 <= hi <= 115):
        fail(f"the risk axis shows {'an automatic range' if lo is None else f'the range [{lo:g}, {hi:g}]'}: fix it to the "
             "risk's full scale, 0 to 100 (fig.update_yaxes(range=[0, 100], secondary_y=True)), so that a low risk looks "
             "low and plots of different transcripts compare")
    x_axis = fig.layout[(t_proj.xaxis or "x").replace("x", "xaxis", 1)]
    dtick, tickvals = x_axis.dtick, x_axis.tickvals
    whole = (dtick is not None and float(dtick) == 1.0) or (
        tickvals is not None and len(tickvals) > 0 and all(float(t) == int(float(t)) for t in tickvals))
    if not whole:
        fail("the turn axis has automatic ticks, which label half turns (1.5, 2.5) on a short conversation: put a tick at "
             "every whole turn and none between (fig.update_xaxes(dtick=1))")

    # --- property: conversations of 1 to 6 turns with braces in their text, fractional and negative projections,
    # risks with gaps; the expected values are the fakes' own
    turn = st.tuples(braces_text(), braces_text(), st.floats(-4, 4, allow_nan=False).map(lambda f: round(f, 3)),
                     st.one_of(st.none(), st.integers(0, 100)))
    for_all(st.tuples(st.lists(turn, min_size=1, max_size=6), st.booleans()),
            lambda case: _check_drift_case(visualize_transcript_drift, *case), name="visualize_transcript_drift", examples=5)
    passed("test_visualize_transcript_drift")


def _check_drift_case(visualize_transcript_drift, turns, with_system: bool) -> None:
    conversation = []
    for user, reply, _, _ in turns:
        conversation += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    transcript = {"domain": "d", "name": "n", "description": "", "conversation": copy.deepcopy(conversation)}
    if with_system:
        transcript["system_prompt"] = "SYSTEM {answer}"
    sent_want = ([{"role": "system", "content": "SYSTEM {answer}"}] if with_system else []) + conversation
    proj_values, risk_values = [t[2] for t in turns], [t[3] for t in turns]
    n = len(turns)
    analyzer = _FakeAnalyzer(proj_values)
    with using(visualize_transcript_drift, rate_delusion_risk=lambda conv, k: risk_values[k]), _capture_figures() as figs:
        out = call(visualize_transcript_drift, analyzer, transcript, name="visualize_transcript_drift")
    where = f" (a transcript of {n} assistant turn{'s' if n > 1 else ''}{', with a system prompt' if with_system else ''})"
    check(isinstance(out, tuple) and len(out) == 2, f"visualize_transcript_drift should return (projections, risks){where}")
    check(analyzer.calls and analyzer.calls[0] == sent_want,
          f"the analyzer should get the system prompt (when there is one) and then the conversation, unchanged{where}")
    check(list(out[0]) == proj_values and list(out[1]) == risk_values,
          f"return the analyzer's projections and the risks of turns 0..{n - 1} in order, unchanged{where}: got {out!r:.120}")
    check(figs, f"no figure was shown{where}: call fig.show()")
    for trace in figs[-1].data:
        xs = None if trace.x is None else [float(x) for x in trace.x]
        if xs is not None and xs != [float(k) for k in range(1, n + 1)]:
            fail(f"a trace has x = {xs}{where}: number the assistant turns 1, 2, ..., {n} (x=list(range(1, n + 1))), "
                 "not by their positions in the message list")


friendly_tests(globals())
