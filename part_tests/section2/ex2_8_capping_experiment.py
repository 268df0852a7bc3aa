"""Exercise 2.8 — Replaying a drifting conversation with and without capping

Tests of `compute_turn_projections`: `test_compute_turn_projections`, `test_run_capping_experiment`.
"""

from __future__ import annotations

import copy
import zlib
from contextlib import nullcontext

import torch

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    exercise,
    fail,
    friendly_tests,
    model_or_tiny,
    no_hooks_left,
    passed,
    remove_leftover_hooks,
    require_implemented,
    using,
)
from part_tests.section2._fakes import (
    CONVERSATION,
    _Boom,
    _ShiftContext,
    _d_model,
    _floats_close,
    _raise_in_forward,
    _random_vector,
    _rounded,
)
from part_tests.properties import braces_text, for_all, st
from utils.activations import turn_mean_activations
from utils.chat import assistant_turn_spans, format_prompt
from utils.generation import generate
from utils.hooks import get_blocks


def _projections(model, tokenizer, messages, axis, layer) -> list[float]:
    v = axis.float() / axis.float().norm()
    return [float(a @ v) for a in turn_mean_activations(model, tokenizer, messages, layer)]


class _ReferenceAnalyzer:
    """A correct ConversationAnalyzer built on utils (used to isolate later exercises)."""

    def __init__(self, model, tokenizer, layer, axis):
        self.model, self.tokenizer, self.layer = model, tokenizer, layer
        self.axis = torch.as_tensor(axis).float()

    def turn_spans(self, messages):
        return assistant_turn_spans(messages, self.tokenizer)[1]

    def extract_turn_activations(self, messages):
        return turn_mean_activations(self.model, self.tokenizer, messages, self.layer)

    def project_onto_axis(self, messages):
        return _projections(self.model, self.tokenizer, messages, self.axis, self.layer)


def _reference_turn_projections(model, tokenizer, messages, axis, layer, capper=None):
    with capper if capper is not None else nullcontext():
        return _projections(model, tokenizer, messages, axis, layer)


@exercise("2.8", "compute_turn_projections")
def test_compute_turn_projections(compute_turn_projections, model=None, tokenizer=None) -> None:
    require_implemented(compute_turn_projections, "compute_turn_projections")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    n_blocks = len(get_blocks(model))
    layer = max(1, n_blocks // 2)
    axis = _random_vector(d, 2.0, seed=13)
    messages = CONVERSATION
    with using(compute_turn_projections, ConversationAnalyzer=_ReferenceAnalyzer):
        got = call(compute_turn_projections, model, tokenizer, messages, axis, layer, name="compute_turn_projections")
        want = _projections(model, tokenizer, messages, axis, layer)
        if not (isinstance(got, (list, tuple)) and _floats_close(got, want, 1e-3)):
            if _floats_close(got, [w * float(axis.norm()) for w in want], 1e-3):
                fail("compute_turn_projections returned a . v: divide by ||v|| (the projection is a . v / ||v||; here "
                     f"||v|| = {float(axis.norm()):g})")
            for other in range(n_blocks):
                if other != layer and _floats_close(got, _projections(model, tokenizer, messages, axis, other), 1e-3):
                    fail(f"compute_turn_projections(..., layer={layer}) returned the projections at block {other}: "
                         "use the layer argument")
            fail(f"compute_turn_projections without a capper returned {got!r}, expected {_rounded(want)} "
                 "(the projection a . v / ||v|| of each assistant turn's mean at block `layer`)")
        ctx = _ShiftContext(model, layer - 1, _random_vector(d, 20.0, seed=14))
        got_c = call(compute_turn_projections, model, tokenizer, messages, axis, layer, capper=ctx, name="compute_turn_projections")
        left_open = ctx.active
        if left_open:
            ctx.close()
        with ctx:
            want_c = _projections(model, tokenizer, messages, axis, layer)
        if left_open:
            fail("the capper was entered but never exited: it was still active after compute_turn_projections returned. "
                 "Use `with capper:`, which exits (removing its hooks) even when the body raises")
        if ctx.entries < 2 or _floats_close(got_c, want, 1e-3):
            fail("the capper was not active during the forward pass: run the projection inside `with capper:`")
        check(_floats_close(got_c, want_c, 1e-3), f"with the capper active, expected {_rounded(want_c)}, got {got_c!r}")
        _check_capper_exits_on_error(model, ctx, lambda: compute_turn_projections(model, tokenizer, messages, axis, layer,
                                                                                  capper=ctx), "compute_turn_projections")

        # property: conversations of 1 to 3 turns with braces in their text, with and without the capper
        def check_projections(case) -> None:
            turns, capped = case
            msgs = []
            for user, reply in turns:
                msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
            c = ctx if capped else None
            got_p = call(compute_turn_projections, model, tokenizer, msgs, axis, layer, capper=c,
                         name="compute_turn_projections")
            if ctx.active:
                ctx.close()
                fail("the capper was still active after compute_turn_projections returned: use `with capper:`")
            want_p = _reference_turn_projections(model, tokenizer, msgs, axis, layer, capper=c)
            check(isinstance(got_p, (list, tuple)) and _floats_close(got_p, want_p, 1e-3),
                  f"compute_turn_projections {'with' if capped else 'without'} the capper returned {got_p!r:.100} for a "
                  f"conversation of {len(turns)} turn(s), expected {_rounded(want_p)}")

        for_all(st.tuples(st.lists(st.tuples(braces_text(), braces_text()), min_size=1, max_size=3), st.booleans()),
                check_projections, name="compute_turn_projections", examples=5)
    no_hooks_left(model, "compute_turn_projections")
    passed("test_compute_turn_projections")


def _check_capper_exits_on_error(model, ctx, fn, name: str) -> None:
    """A forward pass that fails while the capper is active must still leave the capper exited."""
    with _raise_in_forward(model, block=0, when=lambda: ctx.active):
        try:
            fn()
        except _Boom:
            pass
        except NotImplementedError as err:
            raise NotImplementedYet(f"{name}: not implemented yet") from err
    if ctx.active:
        ctx.close()
        remove_leftover_hooks(model)
        fail(f"after an exception inside a forward pass, {name} left the capper active (entered, never exited): use "
             "`with capper:`, which exits even when the body raises")


EMPTY_REPLY = "[empty reply]"  # what an empty generated reply is recorded as (stated in the exercise)


def _replay(model, tokenizer, system, users, ctx, n_new, history=None, gen=generate):
    """(messages, replies): greedy replies to each user turn, after the model's own earlier replies
    (or after `history`, the transcript's replies, to recognise that mistake)."""
    messages = [{"role": "system", "content": system}] if system else []
    replies = []
    for k, u in enumerate(users):
        messages.append({"role": "user", "content": u})
        with ctx if ctx is not None else nullcontext():
            reply = gen(model, tokenizer, [messages], max_new_tokens=n_new)[0]
        replies.append(reply if reply.strip() else EMPTY_REPLY)
        messages.append({"role": "assistant", "content": history[k] if history else replies[-1]})
    return messages, replies


def _blanking_generate(users: list[str], blank_after: str, calls: list):
    """`generate`, except that the reply to the user message `blank_after` is whitespace only."""
    def last_user(p):
        if isinstance(p, str):  # an already formatted prompt: the user message that appears last in it
            found = [(p.rfind(u), u) for u in users if p.rfind(u) >= 0]
            return max(found)[1] if found else None
        said = [m["content"] for m in p if m.get("role") == "user"]
        return said[-1] if said else None

    def fake_generate(model, tokenizer, prompts, *args, **kwargs):
        calls.append(len(prompts))
        out = generate(model, tokenizer, prompts, *args, **kwargs)
        return [" \n " if last_user(p) == blank_after else o for p, o in zip(prompts, out)]

    return fake_generate


def _checked_projections(model, tokenizer, messages, axis, layer, capper=None):
    """The reference compute_turn_projections, which first checks what it is given."""
    for m in messages:
        if m["role"] == "assistant" and not m["content"].strip():
            fail(f"an empty (whitespace-only) reply {m['content']!r} was kept in the conversation: record it as "
                 f"EMPTY_REPLY ({EMPTY_REPLY!r}), so that every assistant turn has tokens to average")
    return _reference_turn_projections(model, tokenizer, messages, axis, layer, capper=capper)


def _check_condition(res, name, want, users, has_system, convo, max_turns, model, tokenizer, axis, layer, ctx, n_new,
                     expected, gen):
    check(isinstance(res, dict) and set(res) >= {"uncapped", "capped"}, "return a dict with keys 'uncapped' and 'capped'")
    if isinstance(res["uncapped"], dict) and isinstance(res["capped"], dict) and \
            res["uncapped"].get("conversation") is res["capped"].get("conversation"):
        fail("res['uncapped']['conversation'] and res['capped']['conversation'] are the same list: start each condition "
             "from a fresh list of messages (a new list, not another name for the same one)")
    run = res[name]
    check(isinstance(run, dict) and {"conversation", "projections"} <= set(run),
          f"res[{name!r}] should be a dict with 'conversation' and 'projections'")
    conv = run["conversation"]
    check(isinstance(conv, list) and all(isinstance(m, dict) for m in conv), f"res[{name!r}]['conversation'] should be a list of messages")
    if has_system and (not conv or conv[0] != {"role": "system", "content": "SYSTEM-PROMPT"}):
        fail(f"res[{name!r}]['conversation'] should start with the transcript's system prompt")
    if not has_system and conv and conv[0].get("role") == "system":
        fail(f"res[{name!r}]['conversation'] starts with a system message {conv[0]!r} although the transcript has no system "
             "prompt: add one only when there is one")
    if [m["role"] for m in conv] != [m["role"] for m in want]:
        n_users = sum(m["role"] == "user" for m in conv)
        if n_users != len(users):
            fail(f"res[{name!r}]['conversation'] has {n_users} user turns, expected {len(users)}: "
                 + (f"replay only the first max_turns={max_turns} user messages" if max_turns is not None
                    else "with max_turns=None replay every user message"))
        fail(f"res[{name!r}]['conversation'] has roles {[m['role'] for m in conv]}, expected {[m['role'] for m in want]} "
             f"(the system prompt if any, then each user turn followed by the model's reply)")
    check([m["content"] for m in conv if m["role"] == "user"] == users, f"res[{name!r}]: replay the transcript's user messages unchanged, in order")
    got_replies = [m["content"] for m in conv if m["role"] == "assistant"]
    want_replies = [m["content"] for m in want if m["role"] == "assistant"]
    if [r.strip() for r in got_replies] != [r.strip() for r in want_replies]:
        other = "uncapped" if name == "capped" else "capped"
        if got_replies == [m["content"] for m in expected[other] if m["role"] == "assistant"]:
            fail("the capped replies equal the uncapped ones: generate the capped replies with the capper active" if name == "capped"
                 else "the uncapped replies were generated with the capper active")
        if any(not r.strip() for r in got_replies):
            fail(f"res[{name!r}] kept an empty (whitespace-only) reply: record it as EMPTY_REPLY ({EMPTY_REPLY!r})")
        orig = [m["content"] for m in convo if m["role"] == "assistant"][: len(users)]
        if got_replies == orig:
            fail(f"res[{name!r}] kept the transcript's assistant replies: let the model write every reply itself")
        c = ctx if name == "capped" else None
        system = "SYSTEM-PROMPT" if has_system else None
        if name == "capped":
            uncapped_replies = [m["content"] for m in expected["uncapped"] if m["role"] == "assistant"]
            _, shared = _replay(model, tokenizer, system, users, c, n_new, history=uncapped_replies, gen=gen)
            if got_replies == shared:
                fail("each capped reply was generated after the UNCAPPED condition's earlier replies: the history of each "
                     "condition must be the model's OWN earlier replies in that condition")
        _, alt_replies = _replay(model, tokenizer, system, users, c, n_new, history=orig, gen=gen)
        if got_replies == alt_replies:
            fail(f"res[{name!r}]: each reply was generated after the transcript's original assistant replies; the "
                 "history of each condition must be the model's OWN earlier replies")
        _, long_replies = _replay(model, tokenizer, system, users, c, 48, gen=gen)
        if got_replies == long_replies:
            fail(f"res[{name!r}]: the replies are as long as with the default 48 new tokens although max_new_tokens={n_new} "
                 "was given: the max_new_tokens argument was ignored")
        fail(f"res[{name!r}]: the replies differ from greedy generation of each turn after the model's own earlier "
             f"replies (max_new_tokens={n_new}): got {got_replies!r}, expected {want_replies!r}")
    proj = run["projections"]
    want_p = _reference_turn_projections(model, tokenizer, conv, axis, layer, capper=ctx if name == "capped" else None)
    if not _floats_close(proj, want_p, 1e-3):
        if name == "capped" and _floats_close(proj, _reference_turn_projections(model, tokenizer, conv, axis, layer), 1e-3):
            fail("project the capped conversation with the capper active (compute_turn_projections(..., capper=capper))")
        if name == "uncapped" and _floats_close(proj, _reference_turn_projections(model, tokenizer, conv, axis, layer, capper=ctx), 1e-3):
            fail("the uncapped conversation was projected with the capper active: project it with capper=None")
        fail(f"res[{name!r}]['projections'] = {_rounded(proj)}, expected {_rounded(want_p)}: compute_turn_projections of that conversation")


@exercise("2.8", "run_capping_experiment")
def test_run_capping_experiment(run_capping_experiment, model=None, tokenizer=None) -> None:
    require_implemented(run_capping_experiment, "run_capping_experiment")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    layer = max(1, len(get_blocks(model)) // 2)
    axis = _random_vector(d, 2.0, seed=17)
    convo = [dict(m) for m in CONVERSATION if m["role"] != "system"]  # copies: CONVERSATION is shared
    n_new = 6
    ctx = _ShiftContext(model, 1, _random_vector(d, 40.0, seed=18))

    # 1. a transcript with a system prompt, the first max_turns user turns, one reply left blank by the model
    # 2. a transcript with no system prompt (no "system_prompt" key, as data.load_transcript gives), every turn
    with_system = {"domain": "test", "name": "test", "description": "", "system_prompt": "SYSTEM-PROMPT", "conversation": convo}
    without_system = {"domain": "test", "name": "plain", "description": "", "conversation": convo[:4]}
    runs = [(with_system, 2, True), (without_system, None, False)]
    for transcript, max_turns, has_system in runs:
        users = [m["content"] for m in transcript["conversation"] if m["role"] == "user"][:max_turns]
        calls: list = []
        gen = _blanking_generate(users, users[1], calls) if has_system else generate
        ctx.entries = 0
        kwargs = {"max_new_tokens": n_new} if max_turns is None else {"max_new_tokens": n_new, "max_turns": max_turns}
        pristine = copy.deepcopy(transcript)
        with using(run_capping_experiment, compute_turn_projections=_checked_projections, generate=gen):
            try:
                res = call(run_capping_experiment, model, tokenizer, transcript, axis, layer, ctx,
                           name="run_capping_experiment", **kwargs)
            except AssertionError:
                raise
            except Exception as err:
                if ctx.active:
                    ctx.close()
                remove_leftover_hooks(model)
                if has_system:
                    raise
                if isinstance(err, KeyError) and "system_prompt" in str(err):
                    fail(f"run_capping_experiment raised KeyError: {err} on a transcript with no system prompt (no "
                         "'system_prompt' key, as data.load_transcript gives for most transcripts): use "
                         "transcript.get('system_prompt') and start from the first user message")
                if isinstance(err, TypeError) and "None" in str(err):
                    fail(f"run_capping_experiment raised TypeError: {err} with max_turns=None: max_turns=None means "
                         "replay every user message (users[:max_turns] does that)")
                fail(f"run_capping_experiment raised {type(err).__name__}: {err} on a transcript with no system prompt "
                     "(no 'system_prompt' key) and max_turns=None (replay every user message)")
        if ctx.active:
            ctx.close()
            remove_leftover_hooks(model)
            fail("the capper is still active after run_capping_experiment returned: use `with capper:`")
        no_hooks_left(model, "run_capping_experiment")
        if transcript != pristine:
            fail("run_capping_experiment changed the transcript it was given (appended to transcript['conversation'], "
                 "or edited its messages): build each condition's conversation as a new list of new message dicts")
        if not calls and gen is not generate:  # the student generated some other way: no reply is blanked
            gen = generate
        system = "SYSTEM-PROMPT" if has_system else None
        expected = {"uncapped": _replay(model, tokenizer, system, users, None, n_new, gen=gen)[0],
                    "capped": _replay(model, tokenizer, system, users, ctx, n_new, gen=gen)[0]}
        for name in ("uncapped", "capped"):
            _check_condition(res, name, expected[name], users, has_system, transcript["conversation"], max_turns, model,
                             tokenizer, axis, layer, ctx, n_new, expected, gen)
    with using(run_capping_experiment, compute_turn_projections=_checked_projections, generate=generate):
        _check_capper_exits_on_error(model, ctx, lambda: run_capping_experiment(
            model, tokenizer, with_system, axis, layer, ctx, max_new_tokens=2, max_turns=1), "run_capping_experiment")
    no_hooks_left(model, "run_capping_experiment")

    # property: 1 to 4 user turns with braces in their text, any max_turns, with or without a system prompt; a
    # stand-in generate whose reply depends on the whole prompt and on whether the capper is active
    def fake_generate(model_, tokenizer_, prompts, *args, **kwargs):
        out = []
        for p in prompts:
            key = p if isinstance(p, str) else format_prompt(p, tokenizer)
            out.append(f"{'capped' if ctx.active else 'plain'} {{answer}} #{zlib.crc32(key.encode()) % 997}")
        return out

    def no_projections(model_, tokenizer_, messages, *args, **kwargs):
        return [0.0] * sum(m["role"] == "assistant" for m in messages)

    def check_replay(case) -> None:
        users, max_turns, with_system = case
        transcript = {"domain": "d", "name": "p", "description": "",
                      "conversation": [m for u in users for m in ({"role": "user", "content": u},
                                                                  {"role": "assistant", "content": "OLD {response}"})]}
        if with_system:
            transcript["system_prompt"] = "SYSTEM {conversation}"
        with using(run_capping_experiment, compute_turn_projections=no_projections, generate=fake_generate):
            try:
                res = call(run_capping_experiment, model, tokenizer, transcript, axis, layer, ctx, max_new_tokens=2,
                           max_turns=max_turns, name="run_capping_experiment")
            except AssertionError:
                raise
            except Exception as err:
                if ctx.active:
                    ctx.close()
                remove_leftover_hooks(model)
                more = (f": max_turns={max_turns} is more than the {len(users)} user turn(s), so replay them all "
                        "(users[:max_turns] does that; a loop over range(max_turns) indexes past the end)"
                        if max_turns is not None and max_turns > len(users) else "")
                fail(f"run_capping_experiment raised {type(err).__name__}: {err} on a transcript of {len(users)} user "
                     f"turn(s) with max_turns={max_turns}{more}")
        if ctx.active:
            ctx.close()
            fail("the capper is still active after run_capping_experiment returned: use `with capper:`")
        kept = users[:max_turns]
        for name, c in (("uncapped", None), ("capped", ctx)):
            want = _replay(model, tokenizer, "SYSTEM {conversation}" if with_system else None, kept, c, 2, gen=fake_generate)[0]
            got = res[name]["conversation"] if isinstance(res, dict) and isinstance(res.get(name), dict) else None
            check(got == want, f"res[{name!r}]['conversation'] for {len(users)} user turn(s) with braces in their text and "
                               f"max_turns={max_turns} is {got!r:.160}, expected {want!r:.160}: replay the first max_turns "
                               "user messages (all with None) unchanged, each followed by the model's reply to the "
                               "conversation so far in that condition")

    for_all(st.tuples(st.lists(braces_text(), min_size=1, max_size=4), st.sampled_from([None, 1, 2, 3, 5]), st.booleans()),
            check_replay, name="run_capping_experiment", examples=5)
    passed("test_run_capping_experiment")


friendly_tests(globals())
