"""Exercise 2.4 — The drift plot

Wrong implementations of visualize_transcript_drift that its tests must reject, and correct ones written
another way.
"""

from __future__ import annotations

import plotly.graph_objects as go

from tests.catalogue import correct, mistake


def _messages(transcript, keep_system=True):
    if isinstance(transcript, dict):
        conv, system = transcript["conversation"], transcript.get("system_prompt")
    else:
        conv, system = list(transcript), None
    return ([{"role": "system", "content": system}] if system and keep_system else []) + list(conv)


def _plot(projections, risks, secondary=True, show=True, title=None, first_turn=1, risk_range=(0, 100),
          integer_ticks=True, turns=None):
    from plotly.subplots import make_subplots

    turns = turns or list(range(first_turn, len(projections) + first_turn))
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=turns, y=projections), secondary_y=False)
    fig.add_trace(go.Scatter(x=turns, y=risks), secondary_y=secondary)
    fig.update_layout(title=title)
    if secondary and risk_range is not None:
        fig.update_yaxes(range=list(risk_range), secondary_y=True)
    if integer_ticks:
        fig.update_xaxes(dtick=1)
    if show:
        fig.show()


@mistake("test_visualize_transcript_drift", "number the turns 1, 2, ...")
def drift_turns_from_zero(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title, first_turn=0)
    return p, r


@mistake("test_visualize_transcript_drift", "full scale, 0 to 100")
def drift_risk_autorange(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title, risk_range=None)
    return p, r


@mistake("test_visualize_transcript_drift", "system_prompt")
def drift_drops_system_prompt(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript, keep_system=False)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title)
    return p, r


@mistake("test_visualize_transcript_drift", "assistant_idx 0, 1, 2")
def drift_one_based(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = []
    for k in range(1, len(p) + 1):
        try:
            r.append(rate_delusion_risk(msgs, k) if rate_risk else None)  # noqa: F821
        except IndexError:
            r.append(None)
    _plot(p, r, title=title)
    return p, r


@mistake("test_visualize_transcript_drift", "second y axis")
def drift_one_axis(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, secondary=False, title=title)
    return p, r


@mistake("test_visualize_transcript_drift", "fig.show()")
def drift_no_show(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, show=False, title=title)
    return p, r


@mistake("test_visualize_transcript_drift", "once")
def drift_project_per_turn(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    ends = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    p = [analyzer.project_onto_axis(msgs[: i + 1])[-1] for i in ends]
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title)
    return p, r


@mistake("test_visualize_transcript_drift", "do not call the judge")
def drift_always_rates(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))]  # noqa: F821
    if not rate_risk:
        r = [None] * len(p)
    _plot(p, r, title=title)
    return p, r


@mistake("test_visualize_transcript_drift", "title argument was ignored")
def drift_ignores_title(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r)
    return p, r


@mistake("test_visualize_transcript_drift", "system prompt is missing")
def drift_rates_without_system(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    conv = transcript["conversation"] if isinstance(transcript, dict) else list(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(conv, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title)
    return p, r


@mistake("test_visualize_transcript_drift", "changed the transcript")
def drift_mutates_transcript(analyzer, transcript, rate_risk=True, title=None):
    if isinstance(transcript, dict):
        msgs = transcript["conversation"]
        if transcript.get("system_prompt"):
            msgs.insert(0, {"role": "system", "content": transcript["system_prompt"]})
    else:
        msgs = transcript
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title)
    return p, r


@mistake("test_visualize_transcript_drift", "swapped")
def drift_swapped_axes(analyzer, transcript, rate_risk=True, title=None):
    from plotly.subplots import make_subplots

    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    turns = list(range(1, len(p) + 1))
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=turns, y=r), secondary_y=False)
    fig.add_trace(go.Scatter(x=turns, y=p), secondary_y=True)
    fig.update_layout(title=title)
    fig.show()
    return p, r


@mistake("test_visualize_transcript_drift", "dtick=1")
def drift_automatic_ticks(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title, integer_ticks=False)
    return p, r


@mistake("test_visualize_transcript_drift", "not by their positions in the message list")
def drift_message_positions(analyzer, transcript, rate_risk=True, title=None):
    """x = each assistant message's position in the conversation (1-based), not its turn number."""
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    conv = transcript["conversation"] if isinstance(transcript, dict) else list(transcript)
    xs = [i for i, m in enumerate(conv, start=1) if m["role"] == "assistant"]
    _plot(p, r, title=title, turns=xs)
    return p, r


# correct alternative


@correct("test_visualize_transcript_drift")
def drift_alt_overlay(analyzer, transcript, rate_risk=True, title=None):
    """A plain go.Figure with a second y axis laid over the first."""
    conv = list(transcript["conversation"]) if isinstance(transcript, dict) else list(transcript)
    system = transcript.get("system_prompt") if isinstance(transcript, dict) else None
    msgs = [{"role": "system", "content": system}, *conv] if system else conv
    p = analyzer.project_onto_axis(msgs)
    r = []
    for k in range(len(p)):
        r.append(rate_delusion_risk(msgs, k) if rate_risk else None)  # noqa: F821
    fig = go.Figure([go.Scatter(x=list(range(1, len(p) + 1)), y=p, name="projection"),
                     go.Scatter(x=list(range(1, len(p) + 1)), y=r, name="risk", yaxis="y2")])
    fig.update_layout(title=title or "drift", yaxis2=dict(overlaying="y", side="right", range=[0, 100]),
                      xaxis=dict(tickmode="array", tickvals=list(range(1, len(p) + 1))))
    fig.show()
    return list(p), r


rate_delusion_risk = None  # patched by the test
