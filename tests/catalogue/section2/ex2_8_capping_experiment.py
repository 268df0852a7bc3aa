"""Exercise 2.8 — Replaying a drifting conversation with and without capping

Wrong implementations of compute_turn_projections and run_capping_experiment that its tests must reject, and
correct ones written another way.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext

from tests.catalogue import correct, mistake
from utils.chat import build_messages, format_prompt
from utils.generation import generate


@mistake("test_compute_turn_projections", "not active")
def ctp_ignores_capper(model, tokenizer, messages, axis, layer, capper=None):
    return ConversationAnalyzer(model, tokenizer, layer, axis).project_onto_axis(messages)  # noqa: F821


@mistake("test_compute_turn_projections", "not active")
def ctp_capper_exited_early(model, tokenizer, messages, axis, layer, capper=None):
    with capper if capper is not None else nullcontext():
        analyzer = ConversationAnalyzer(model, tokenizer, layer, axis)  # noqa: F821
    return analyzer.project_onto_axis(messages)


@mistake("test_compute_turn_projections", "a . v / ||v||")
def ctp_not_normalised(model, tokenizer, messages, axis, layer, capper=None):
    with capper if capper is not None else nullcontext():
        acts = ConversationAnalyzer(model, tokenizer, layer, axis).extract_turn_activations(messages)  # noqa: F821
    return [float(a @ axis) for a in acts]


@mistake("test_compute_turn_projections", "never exited")
def ctp_never_exits(model, tokenizer, messages, axis, layer, capper=None):
    if capper is not None:
        capper.__enter__()
    return ConversationAnalyzer(model, tokenizer, layer, axis).project_onto_axis(messages)  # noqa: F821


@mistake("test_compute_turn_projections", "after an exception")
def ctp_exit_without_finally(model, tokenizer, messages, axis, layer, capper=None):
    if capper is not None:
        capper.__enter__()
    projections = ConversationAnalyzer(model, tokenizer, layer, axis).project_onto_axis(messages)  # noqa: F821
    if capper is not None:
        capper.__exit__(None, None, None)  # skipped when the forward pass raises
    return projections


@mistake("test_compute_turn_projections", "use the layer argument")
def ctp_fixed_layer(model, tokenizer, messages, axis, layer, capper=None):
    with capper if capper is not None else nullcontext():
        return ConversationAnalyzer(model, tokenizer, 1, axis).project_onto_axis(messages)  # noqa: F821


# correct alternatives


@correct("test_compute_turn_projections")
def ctp_alt_exit_stack(model, tokenizer, messages, axis, layer, capper=None):
    with ExitStack() as stack:
        if capper is not None:
            stack.enter_context(capper)
        acts = ConversationAnalyzer(model, tokenizer, layer, axis).extract_turn_activations(messages)  # noqa: F821
    unit = axis.float() / axis.float().norm()
    return [float(a.float() @ unit) for a in acts]


@correct("test_compute_turn_projections")
def ctp_alt_branches(model, tokenizer, messages, axis, layer, capper=None):
    analyzer = ConversationAnalyzer(model, tokenizer, layer, axis)  # noqa: F821
    if capper is None:
        return analyzer.project_onto_axis(messages)
    with capper:
        return analyzer.project_onto_axis(messages)


ConversationAnalyzer = None  # patched by the test


def _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, *, cap_generation=True,
                own_history=True, cap_measure=True, keep_system=True, generate_replies=True, measure_capped=None,
                empty=lambda r: r if r.strip() else "[empty reply]"):
    conv = transcript["conversation"] if isinstance(transcript, dict) else transcript
    system = transcript.get("system_prompt") if isinstance(transcript, dict) and keep_system else None
    users = [m["content"] for m in conv if m["role"] == "user"][:max_turns]
    originals = [m["content"] for m in conv if m["role"] == "assistant"]
    result = {}
    for name, ctx in (("uncapped", None), ("capped", capper)):
        msgs = [{"role": "system", "content": system}] if system else []
        for k, u in enumerate(users):
            msgs.append({"role": "user", "content": u})
            gen_ctx = ctx if cap_generation else None
            if generate_replies:
                with gen_ctx if gen_ctx is not None else nullcontext():
                    reply = generate(model, tokenizer, [msgs], max_new_tokens=max_new_tokens)[0]  # noqa: F821
                reply = empty(reply)
            else:
                reply = originals[k]
            msgs.append({"role": "assistant", "content": reply if own_history else originals[k]})
        measure = (ctx if cap_measure else None) if measure_capped is None else (capper if measure_capped else None)
        result[name] = {"conversation": msgs, "projections": compute_turn_projections(  # noqa: F821
            model, tokenizer, msgs, axis, layer, capper=measure)}
    return result


@mistake("test_run_capping_experiment", "changed the transcript")
def exp_mutates_transcript(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    """Replays correctly, then stores the capped replay in the transcript it was given."""
    result = _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns)
    transcript["conversation"] = result["capped"]["conversation"]
    return result


@mistake("test_run_capping_experiment", "capper active")
def exp_capper_unused(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, cap_generation=False)


@mistake("test_run_capping_experiment", "OWN earlier replies")
def exp_transcript_history(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    conv = transcript["conversation"]
    users = [m["content"] for m in conv if m["role"] == "user"][:max_turns]
    originals = [m["content"] for m in conv if m["role"] == "assistant"]
    result = {}
    for name, ctx in (("uncapped", None), ("capped", capper)):
        msgs = [{"role": "system", "content": transcript["system_prompt"]}] if transcript.get("system_prompt") else []
        replies = []
        for k, u in enumerate(users):
            context = msgs + [{"role": "user", "content": u}]
            with ctx if ctx is not None else nullcontext():
                reply = generate(model, tokenizer, [context], max_new_tokens=max_new_tokens)[0]  # noqa: F821
                replies.append(reply if reply.strip() else "[empty reply]")
            msgs = context + [{"role": "assistant", "content": originals[k]}]
        final = [{"role": "system", "content": transcript["system_prompt"]}] if transcript.get("system_prompt") else []
        for u, r in zip(users, replies):
            final += [{"role": "user", "content": u}, {"role": "assistant", "content": r}]
        result[name] = {"conversation": final, "projections": compute_turn_projections(  # noqa: F821
            model, tokenizer, final, axis, layer, capper=ctx)}
    return result


@mistake("test_run_capping_experiment", "capper active")
def exp_uncapped_measure(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, cap_measure=False)


@mistake("test_run_capping_experiment", "system prompt")
def exp_drops_system(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, keep_system=False)


@mistake("test_run_capping_experiment", "max_turns")
def exp_ignores_max_turns(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, None)


@mistake("test_run_capping_experiment", "write every reply itself")
def exp_keeps_original_replies(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, generate_replies=False)


@mistake("test_run_capping_experiment", "max_new_tokens argument was ignored")
def exp_ignores_max_new_tokens(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, 48, max_turns)


@mistake("test_run_capping_experiment", "EMPTY_REPLY")
def exp_whitespace_reply_kept(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns,
                       empty=lambda r: r or "[empty reply]")


@mistake("test_run_capping_experiment", "EMPTY_REPLY")
def exp_empty_reply_kept(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, empty=lambda r: r)


@mistake("test_run_capping_experiment", "no 'system_prompt' key")
def exp_requires_system_key(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    transcript = dict(transcript, system_prompt=transcript["system_prompt"])  # KeyError without one
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns)


@mistake("test_run_capping_experiment", "no system prompt")
def exp_always_system_message(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    conv = transcript["conversation"]
    users = [m["content"] for m in conv if m["role"] == "user"][:max_turns]
    result = {}
    for name, ctx in (("uncapped", None), ("capped", capper)):
        msgs = [{"role": "system", "content": transcript.get("system_prompt", "")}]
        for u in users:
            msgs.append({"role": "user", "content": u})
            with ctx if ctx is not None else nullcontext():
                reply = generate(model, tokenizer, [msgs], max_new_tokens=max_new_tokens)[0]  # noqa: F821
            msgs.append({"role": "assistant", "content": reply if reply.strip() else "[empty reply]"})
        result[name] = {"conversation": msgs, "projections": compute_turn_projections(  # noqa: F821
            model, tokenizer, msgs, axis, layer, capper=ctx)}
    return result


@mistake("test_run_capping_experiment", "max_turns=None")
def exp_max_turns_range(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    users = [m for m in transcript["conversation"] if m["role"] == "user"]
    [users[k] for k in range(max_turns)]  # TypeError when max_turns is None
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns)


@mistake("test_run_capping_experiment", "UNCAPPED condition's earlier replies")
def exp_shared_history(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    """Both conditions answer each turn after the same (uncapped) history."""
    system = transcript.get("system_prompt")
    users = [m["content"] for m in transcript["conversation"] if m["role"] == "user"][:max_turns]
    shared = [{"role": "system", "content": system}] if system else []
    convs = {"uncapped": list(shared), "capped": list(shared)}
    for u in users:
        shared = shared + [{"role": "user", "content": u}]
        plain = generate(model, tokenizer, [shared], max_new_tokens=max_new_tokens)[0]  # noqa: F821
        with capper:
            capped = generate(model, tokenizer, [shared], max_new_tokens=max_new_tokens)[0]  # noqa: F821
        plain, capped = (r if r.strip() else "[empty reply]" for r in (plain, capped))
        convs["uncapped"] += [{"role": "user", "content": u}, {"role": "assistant", "content": plain}]
        convs["capped"] += [{"role": "user", "content": u}, {"role": "assistant", "content": capped}]
        shared = shared + [{"role": "assistant", "content": plain}]
    return {name: {"conversation": c, "projections": compute_turn_projections(  # noqa: F821
        model, tokenizer, c, axis, layer, capper=capper if name == "capped" else None)} for name, c in convs.items()}


@mistake("test_run_capping_experiment", "after an exception")
def exp_exit_without_finally(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    system = transcript.get("system_prompt")
    users = [m["content"] for m in transcript["conversation"] if m["role"] == "user"][:max_turns]
    result = {}
    for name, cap in (("uncapped", None), ("capped", capper)):
        msgs = [{"role": "system", "content": system}] if system else []
        if cap is not None:
            cap.__enter__()
        for u in users:
            msgs.append({"role": "user", "content": u})
            reply = generate(model, tokenizer, [msgs], max_new_tokens=max_new_tokens)[0]  # noqa: F821
            msgs.append({"role": "assistant", "content": reply if reply.strip() else "[empty reply]"})
        if cap is not None:
            cap.__exit__(None, None, None)  # skipped when generation raises
        result[name] = {"conversation": msgs, "projections": compute_turn_projections(  # noqa: F821
            model, tokenizer, msgs, axis, layer, capper=cap)}
    return result


@mistake("test_run_capping_experiment", "the same list")
def exp_shared_list(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    """Both conditions append to one list of messages."""
    system = transcript.get("system_prompt")
    users = [m["content"] for m in transcript["conversation"] if m["role"] == "user"][:max_turns]
    messages = [{"role": "system", "content": system}] if system else []
    result = {}
    for name, cap in (("uncapped", None), ("capped", capper)):
        msgs = messages  # the same list for both conditions
        for u in users:
            msgs.append({"role": "user", "content": u})
            with cap if cap is not None else nullcontext():
                reply = generate(model, tokenizer, [msgs], max_new_tokens=max_new_tokens)[0]  # noqa: F821
            msgs.append({"role": "assistant", "content": reply if reply.strip() else "[empty reply]"})
        result[name] = {"conversation": msgs, "projections": compute_turn_projections(  # noqa: F821
            model, tokenizer, msgs, axis, layer, capper=cap)}
    return result


@mistake("test_run_capping_experiment", "projected with the capper active")
def exp_uncapped_measured_capped(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, measure_capped=True)


# correct alternatives


@correct("test_run_capping_experiment")
def exp_alt_nested_with(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    """One `with capper:` around the whole capped condition, projections included (and passed capper again)."""
    system = transcript.get("system_prompt") if isinstance(transcript, dict) else None
    conv = transcript["conversation"] if isinstance(transcript, dict) else transcript
    users = [m["content"] for m in conv if m["role"] == "user"]
    users = users if max_turns is None else users[:max_turns]

    def run(cap):
        msgs = [{"role": "system", "content": system}] if system else []
        for u in users:
            msgs.append({"role": "user", "content": u})
            reply = generate(model, tokenizer, [msgs], max_new_tokens=max_new_tokens)[0]  # noqa: F821
            msgs.append({"role": "assistant", "content": reply if reply.strip() else EMPTY_REPLY})
        return {"conversation": msgs, "projections": compute_turn_projections(model, tokenizer, msgs, axis, layer, capper=cap)}  # noqa: F821

    uncapped = run(None)
    with capper:
        capped = run(capper)
    return {"uncapped": uncapped, "capped": capped}


@correct("test_run_capping_experiment")
def exp_alt_formatted_prompts(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    """Generates from already formatted prompt strings; ExitStack for the capper."""
    system = transcript.get("system_prompt")
    users = [m["content"] for m in transcript["conversation"] if m["role"] == "user"][:max_turns]
    out = {}
    for name, cap in (("uncapped", None), ("capped", capper)):
        msgs = build_messages(system, users[0])
        replies = []
        for k, u in enumerate(users):
            if k:
                msgs = msgs + [{"role": "assistant", "content": replies[-1]}, {"role": "user", "content": u}]
            with ExitStack() as stack:
                if cap is not None:
                    stack.enter_context(cap)
                text = generate(model, tokenizer, [format_prompt(msgs, tokenizer)], max_new_tokens=max_new_tokens)[0]  # noqa: F821
            replies.append(text if text.strip() else EMPTY_REPLY)
        msgs = msgs + [{"role": "assistant", "content": replies[-1]}]
        out[name] = {"conversation": msgs, "projections": compute_turn_projections(model, tokenizer, msgs, axis, layer, capper=cap)}  # noqa: F821
    return out


EMPTY_REPLY = "[empty reply]"


compute_turn_projections = None  # patched by the test


# wrong ones found by the property-based inputs


@mistake("test_run_capping_experiment", "more than the")
def exp_range_max_turns(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    """Picks the user turns with range(max_turns): right for None (all) and for max_turns up to their number."""
    users = [m for m in transcript["conversation"] if m["role"] == "user"]
    [users[k] for k in range(len(users) if max_turns is None else max_turns)]  # IndexError past the end
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns)

