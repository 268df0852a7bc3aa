"""Catalogue of plausible wrong implementations for Section 4; each must fail its test, with a
message that names the mistake. CORRECT_ALTERNATIVES holds implementations written another way
(or correct maths without the input checks) that must pass.

Wrong versions are small tweaks of the reference, or what a student writes from the exercise text.
Functions that call other exercises or course steps look them up in this module's globals (copied
from the reference namespace below), so that the tests' `using(...)` patches reach them exactly as
they reach a student's notebook.
"""

from __future__ import annotations

import contextlib

import numpy as np
import math

import torch

from utils.chat import format_chat, format_prompt
from utils.hooks import get_blocks, hidden_of, with_hidden
from utils.reference import load
from utils.steering import Steerer

ref = load("section4")

# The names a student's notebook has in its globals (course steps, utils imports, earlier exercises):
# module-level names here, so that the tests' `using(...)` patches reach the wrong versions below.
ActivationSteerer = ref.ActivationSteerer
generate_with_steerer = ref.generate_with_steerer
get_judge = ref.get_judge
data = ref.data
generate = ref.generate
build_messages = ref.build_messages
conversations_from = ref.conversations_from
response_mean_activations = ref.response_mean_activations
StepRunner = ref.StepRunner
model_id = ref.model_id
tensor_digest = ref.tensor_digest
contrastive_requests = ref.contrastive_requests
generate_responses = ref.generate_responses
judge_call = ref.judge_call
is_final = ref.is_final
judge_identity = ref.judge_identity
filter_effective = ref.filter_effective
extract_trait_vectors = ref.extract_trait_vectors
JUDGE_KINDS = ref.JUDGE_KINDS
LAYER = 2  # the notebook's LAYER on the tiny model: a function that reads it instead of `layer` uses block 2

Ref = ref.ActivationSteerer


# --------------------------------------------------------------------------------------
# 4.1 ActivationSteerer
# --------------------------------------------------------------------------------------
class SteerResponseEveryPosition(Ref):
    """'response' mode steers every position (forgot to restrict to the last one)."""

    def _hook(self, module, args, output):
        h = hidden_of(output)
        if self.positions == "prompt" and h.shape[1] == 1:
            return output
        return with_hidden(output, h + self.coeff * self.vector)


class PromptSteersDecode(Ref):
    """'prompt' mode does not skip the seq_len-1 decoding forwards."""

    def _hook(self, module, args, output):
        h = hidden_of(output)
        add = self.coeff * self.vector
        if self.positions == "response":
            h = h.clone()
            h[:, -1, :] += add
            return with_hidden(output, h)
        return with_hidden(output, h + add)


class ResponseOnlyDecode(Ref):
    """'response' mode only steers decoding steps, missing the last prompt position."""

    def _hook(self, module, args, output):
        h = hidden_of(output)
        if self.positions == "response" and h.shape[1] > 1:
            return output
        return Ref._hook(self, module, args, output)


class ResponseSkipsDecode(Ref):
    """'response' mode steers the last prompt position, then never the new tokens."""

    def _hook(self, module, args, output):
        if self.positions == "response" and hidden_of(output).shape[1] == 1:
            return output
        return Ref._hook(self, module, args, output)


class AllSkipsDecode(Ref):
    """'all' mode treated like 'prompt': the decoding steps are skipped."""

    def _hook(self, module, args, output):
        if self.positions == "all" and hidden_of(output).shape[1] == 1:
            return output
        return Ref._hook(self, module, args, output)


class ResponseFirstPosition(Ref):
    """'response' mode steers position 0 instead of the last one."""

    def _hook(self, module, args, output):
        if self.positions != "response":
            return Ref._hook(self, module, args, output)
        h = hidden_of(output).clone()
        h[:, 0, :] = h[:, 0, :] + self.coeff * self.vector
        return with_hidden(output, h)


class PrefillFlag(Ref):
    """Tells prefill from decoding with a flag set on the first forward (breaks on the next prompt)."""

    def _hook(self, module, args, output):
        first = not getattr(self, "_seen", False)
        self._seen = True
        h = hidden_of(output)
        if self.positions == "prompt" and not first:
            return output
        if self.positions == "response" and first:
            h = h.clone()
            h[:, -1, :] = h[:, -1, :] + self.coeff * self.vector
            return with_hidden(output, h)
        return with_hidden(output, h + self.coeff * self.vector)


class InPlaceResponse(Ref):
    """Adds to the last position in place, without cloning."""

    def _hook(self, module, args, output):
        h = hidden_of(output)
        if self.positions == "prompt" and h.shape[1] == 1:
            return output
        if self.positions == "response":
            h[:, -1, :] += self.coeff * self.vector
        else:
            h += self.coeff * self.vector
        return output


class ReplacesLastPosition(Ref):
    """'response' mode sets the last position to coeff * vector instead of adding it."""

    def _hook(self, module, args, output):
        if self.positions != "response":
            return Ref._hook(self, module, args, output)
        h = hidden_of(output).clone()
        h[:, -1, :] = self.coeff * self.vector
        return with_hidden(output, h)


class HookLeftOnException(Ref):
    """Removes the hook only when the block ended without an exception."""

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return Ref.__exit__(self, exc_type, exc, tb)
        return False


class SwallowsException(Ref):
    def __exit__(self, exc_type, exc, tb):
        Ref.__exit__(self, exc_type, exc, tb)
        return True


class NeverRemoves(Ref):
    def __exit__(self, exc_type, exc, tb):
        return False


class PrependedHook(Ref):
    """Correct: the hook registered with prepend=True (it runs before hooks registered earlier on the block)."""

    def __enter__(self):
        self._handle = get_blocks(self.model)[self.layer].register_forward_hook(self._hook, prepend=True)
        return self


class ClearsBlockHooks(Ref):
    """Removes its hook by clearing every forward hook of the block (other code's hooks too)."""

    def __exit__(self, exc_type, exc, tb):
        get_blocks(self.model)[self.layer]._forward_hooks.clear()
        self._handle = None
        return False


class SharedHandles(Ref):
    """Keeps the hook handles in a class attribute: every steerer's __exit__ removes every steerer's hook."""

    handles: list = []

    def __enter__(self):
        self.handles.append(get_blocks(self.model)[self.layer].register_forward_hook(self._hook))
        return self

    def __exit__(self, exc_type, exc, tb):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        return False


class RegistersInInit(Ref):
    """Registers the hook in __init__; __enter__ only returns self."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, coeff, layer, positions)
        self._handle = get_blocks(model)[self.layer].register_forward_hook(self._hook)

    def __enter__(self):
        return self


class EnterReturnsNone(Ref):
    def __enter__(self):
        Ref.__enter__(self)


class LayerPlusOne(Ref):
    def __enter__(self):
        self._handle = get_blocks(self.model)[self.layer + 1].register_forward_hook(self._hook)
        return self


class LayerMinusOne(Ref):
    """Thinks of `layer` as an index into hidden_states (block layer - 1)."""

    def __enter__(self):
        self._handle = get_blocks(self.model)[self.layer - 1].register_forward_hook(self._hook)
        return self


class PreHook(Ref):
    """Adds the vector to block `layer`'s input with a forward pre-hook."""

    def _pre(self, module, args):
        h = args[0]
        if self.positions == "prompt" and h.shape[1] == 1:
            return None
        add = (self.coeff * self.vector).to(h.dtype)
        if self.positions == "response":
            h = h.clone()
            h[:, -1, :] = h[:, -1, :] + add
        else:
            h = h + add
        return (h, *args[1:])

    def __enter__(self):
        self._handle = get_blocks(self.model)[self.layer].register_forward_pre_hook(self._pre)
        return self


class CoeffIgnored(Ref):
    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, 1.0, layer, positions)


class SignFlipped(Ref):
    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, -coeff, layer, positions)


class NormalisesVector(Ref):
    """Steers with coeff * v / ‖v‖ (the coefficient as a distance along a unit vector)."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, coeff, layer, positions)
        self.vector = self.vector / self.vector.norm()


class NoDtypeCast(Ref):
    """Adds the float32 vector to the hidden state without casting: a bfloat16 model gets float32 back."""

    def _hook(self, module, args, output):
        h = hidden_of(output)
        if self.positions == "prompt" and h.shape[1] == 1:
            return output
        delta = torch.zeros(h.shape, device=h.device)  # float32, like the vector
        if self.positions == "response":
            delta[:, -1] = self.coeff * self.vector
        else:
            delta[:] = self.coeff * self.vector
        return with_hidden(output, h + delta)


class UpcastsHidden(Ref):
    """Works in float32 (h.float()) and returns that into the model."""

    def _hook(self, module, args, output):
        return with_hidden(output, hidden_of(Ref._hook(self, module, args, output)).float())


class IndexesTensorOutput(Ref):
    """`output[0]` on a tensor output: takes batch row 0."""

    def _hook(self, module, args, output):
        h = output[0]
        if self.positions == "prompt" and h.shape[-2] == 1:
            return output
        return (h + self.coeff * self.vector,) + tuple(output[1:])


class TupleToTensor(Ref):
    """Unpacks a tuple output but returns only the hidden state."""

    def _hook(self, module, args, output):
        return hidden_of(Ref._hook(self, module, args, output))


class TupleNested(Ref):
    """Wraps the rest of a tuple output as one nested item: (h, output[1:])."""

    def _hook(self, module, args, output):
        new = Ref._hook(self, module, args, output)
        if isinstance(output, tuple):
            return (new[0], output[1:])
        return new


class ScalesVectorInPlace(Ref):
    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, 1.0, layer, positions)
        self.vector = vector.mul_(1.0)  # harmless scale, then...
        self.vector.mul_(coeff)  # ...the caller's tensor now holds coeff * vector


# -- input checks ------------------------------------------------------------------------
class NoShapeCheck(Ref):
    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        if positions not in self.POSITIONS:
            raise ValueError(positions)
        self.model, self.vector, self.coeff = model, torch.as_tensor(vector).reshape(-1)[: model.config.get_text_config().hidden_size], float(coeff)
        self.layer, self.positions, self._handle = layer, positions, None


class NoPositionCheck(Ref):
    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, coeff, layer, "all" if positions not in self.POSITIONS else positions)


class AcceptsRowVector(Ref):
    """Checks only the last dimension and flattens: a [1, d_model] vector gets through."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        vector = torch.as_tensor(vector)
        if vector.shape[-1] != model.config.get_text_config().hidden_size:
            raise ValueError("wrong size")
        super().__init__(model, vector.reshape(-1), coeff, layer, positions)


class AssertsInputs(Ref):
    """Checks its inputs with `assert` (AssertionError, not ValueError)."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        assert positions in self.POSITIONS, f"bad positions {positions!r}"
        assert tuple(torch.as_tensor(vector).shape) == (model.config.get_text_config().hidden_size,), "bad vector shape"
        super().__init__(model, vector, coeff, layer, positions)


class RegistersThenChecks(Ref):
    """Checks `positions` in __enter__ after registering the hook: the ValueError leaves the hook behind."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, coeff, layer, "all")
        self.positions = positions

    def __enter__(self):
        Ref.__enter__(self)
        if self.positions not in self.POSITIONS:
            raise ValueError(f"bad positions {self.positions!r}")
        return self


# -- correct alternatives ----------------------------------------------------------------
class ClosureSteerer:
    """A closure hook built in __enter__, positions as a 0/1 mask, an ExitStack for cleanup."""

    check_numbers = True

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        d = model.config.get_text_config().hidden_size
        if positions not in ("all", "prompt", "response"):
            raise ValueError(f"unknown positions {positions!r}")
        if torch.as_tensor(vector).shape != (d,):
            raise ValueError("vector must be [d_model]")
        if self.check_numbers and (not torch.isfinite(torch.as_tensor(vector)).all() or not math.isfinite(coeff)):
            raise ValueError("vector and coeff must be finite")
        self.model, self.vector, self.coeff, self.layer, self.positions = model, torch.as_tensor(vector), coeff, layer, positions
        self._stack = None

    def __enter__(self):
        def hook(module, args, output):
            h = hidden_of(output)
            T = h.shape[1]
            if self.positions == "prompt" and T == 1:
                return None
            mask = torch.zeros(T, 1, dtype=h.dtype, device=h.device)
            if self.positions == "response":
                mask[-1] = 1
            else:
                mask[:] = 1
            delta = mask * (self.coeff * self.vector).to(h.device, h.dtype)
            return with_hidden(output, torch.where(mask.bool(), h + delta, h))

        self._stack = contextlib.ExitStack()
        handle = get_blocks(self.model)[self.layer].register_forward_hook(hook)
        self._stack.callback(handle.remove)
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return None


class Float32MathSteerer(Ref):
    """Adds in float32 and casts the sum back to the hidden state's dtype."""

    def _hook(self, module, args, output):
        h = hidden_of(output)
        if self.positions == "prompt" and h.shape[1] == 1:
            return output
        add = self.coeff * self.vector.to(h.device, torch.float32)
        new = h.float().clone()
        if self.positions == "response":
            new[:, -1] += add
        else:
            new += add
        return with_hidden(output, new.to(h.dtype))


class ChecksInEnter(Ref):
    """Validates `positions` in __enter__, before registering anything (the text asks for __init__; the
    input-check test accepts either)."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, coeff, layer, "all")
        self.positions = positions

    def __enter__(self):
        if self.positions not in self.POSITIONS:
            raise ValueError(f"bad positions {self.positions!r}")
        return Ref.__enter__(self)


# --------------------------------------------------------------------------------------
# 4.2 generate_with_steerer, run_steering_experiment
# --------------------------------------------------------------------------------------
def _gws(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
         max_new_tokens=64, batch_size=32, *, steer=None, one_at_a_time=False, temperature=0.0, close=True,
         raw=False, tokens=None, batch=None):
    prompts = list(questions) if raw else [build_messages(system_prompt, q) for q in questions]
    kwargs = steer if steer is not None else dict(coeff=coeff, layer=layer, positions=positions)
    s = ActivationSteerer(model, vector, **kwargs)
    s.__enter__()
    try:
        n = max_new_tokens if tokens is None else tokens
        if one_at_a_time:
            return [generate(model, tokenizer, [p], max_new_tokens=n, temperature=temperature)[0] for p in prompts]
        return generate(model, tokenizer, prompts, max_new_tokens=n, temperature=temperature,
                        batch_size=batch_size if batch is None else batch, seed=0)
    finally:
        if close:
            s.__exit__(None, None, None)


def gws_sign_flipped(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, steer=dict(coeff=-coeff, layer=layer, positions="response"), **kw)


def gws_coeff_ignored(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, steer=dict(coeff=1.0, layer=layer, positions="response"), **kw)


def gws_positions_not_passed(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, steer=dict(coeff=coeff, layer=layer), **kw)


def gws_positions_hardcoded(model, tokenizer, questions, vector, coeff, layer, positions="response", **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, "response", **kw)


def gws_layer_off_by_one(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, steer=dict(coeff=coeff, layer=layer - 1, positions="response"), **kw)


def gws_layer_global(model, tokenizer, questions, vector, coeff, layer, positions="response", **kw):
    """Steers the notebook's LAYER whatever `layer` says."""
    return _gws(model, tokenizer, questions, vector, coeff, layer, steer=dict(coeff=coeff, layer=LAYER, positions=positions), **kw)


def gws_normalised(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector / vector.norm(), coeff, layer, **kw)


def gws_not_steered(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                    max_new_tokens=64, batch_size=32):
    return generate(model, tokenizer, [build_messages(system_prompt, q) for q in questions], max_new_tokens=max_new_tokens)


def gws_ignores_system_prompt(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, positions, None, **kw)


def gws_max_new_tokens_ignored(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                               max_new_tokens=64, batch_size=32):
    return _gws(model, tokenizer, questions, vector, coeff, layer, positions, system_prompt, 64, batch_size)


def gws_batch_size_ignored(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                           max_new_tokens=64, batch_size=32):
    return _gws(model, tokenizer, questions, vector, coeff, layer, positions, system_prompt, max_new_tokens, batch=32)


def gws_raw_questions(model, tokenizer, questions, vector, coeff, layer, **kw):
    """Passes the questions as prompt strings: no chat template."""
    return _gws(model, tokenizer, questions, vector, coeff, layer, raw=True, **kw)


def gws_hand_template(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                      max_new_tokens=64, batch_size=32):
    """Applies the chat template by hand: a template with no system role (Gemma 2) raises on the system message."""
    prompts = [tokenizer.apply_chat_template(build_messages(system_prompt, q), tokenize=False, add_generation_prompt=True)
               for q in questions]
    with ActivationSteerer(model, vector, coeff, layer, positions):
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)


def gws_one_at_a_time(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, one_at_a_time=True, **kw)


def gws_sampled(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, temperature=1.0, **kw)


def gws_hook_left(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, close=False, **kw)


def gws_no_finally(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                   max_new_tokens=64, batch_size=32):
    """Enters and exits the steerer by hand, without `with` or `finally`."""
    steerer = ActivationSteerer(model, vector, coeff=coeff, layer=layer, positions=positions)
    steerer.__enter__()
    out = generate(model, tokenizer, [build_messages(system_prompt, q) for q in questions], max_new_tokens=max_new_tokens,
                   temperature=0.0, batch_size=batch_size)
    steerer.__exit__(None, None, None)
    return out


def gws_swallows_errors(model, tokenizer, questions, vector, coeff, layer, **kw):
    """Catches a failed generation and returns empty answers."""
    try:
        return ref.generate_with_steerer(model, tokenizer, questions, vector, coeff, layer, **kw)
    except Exception:
        return [""] * len(questions)


def gws_chunked(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                max_new_tokens=64, batch_size=32):
    """Correct: its own chunks of batch_size, one generate call each."""
    out = []
    with ActivationSteerer(model, vector, coeff=coeff, layer=layer, positions=positions):
        for start in range(0, len(questions), batch_size):
            chunk = [build_messages(system_prompt, q) for q in questions[start:start + batch_size]]
            out += generate(model, tokenizer, chunk, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    return out


def gws_formatted_strings(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                          max_new_tokens=64, batch_size=32):
    """Correct: renders each prompt itself (format_prompt), an ExitStack, stripped answers."""
    prompts = [format_prompt(build_messages(system_prompt, q), tokenizer) for q in questions]
    with contextlib.ExitStack() as stack:
        stack.enter_context(ActivationSteerer(model, vector, coeff, layer, positions))
        answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0, batch_size=batch_size)
    return [a.strip() for a in answers]


def _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=(-3, -1, 0, 1, 3, 5),
                judge=None, coherence_template=None, max_new_tokens=64, positions="response", *, mistake=None):
    if mistake == "ignores_judge":
        judge = get_judge()
    judge = judge if judge is not None else get_judge()
    if mistake == "ignores_coherence_template":
        coherence_template = None
    coherence_template = coherence_template if coherence_template is not None else data.load_coherence_prompt()
    if mistake == "coherence_with_trait_template":
        coherence_template = eval_prompt_template
    if mistake == "trait_with_coherence_template":
        eval_prompt_template = coherence_template
    records = []
    for k, coeff in enumerate(coefficients):
        if mistake == "per_question":
            answers = [generate_with_steerer(model, tokenizer, [q], vector, coeff, layer, max_new_tokens=max_new_tokens)[0]
                       for q in questions]
        else:
            answers = generate_with_steerer(
                model, tokenizer, questions, vector, coeff, LAYER if mistake == "layer_global" else layer,
                positions="response" if mistake == "positions_not_passed" else positions,
                max_new_tokens=64 if mistake == "max_new_tokens_not_passed" else max_new_tokens)
        label = coefficients[(k + 1) % len(coefficients)] if mistake == "mislabelled" else coeff
        records += [{"question": q, "coeff": label, "response": a} for q, a in zip(questions, answers)]
    if mistake == "zero_skipped":
        records = [r for r in records if r["coeff"] != 0]
    for r in records:
        if mistake == "judge_args_swapped":
            t = judge.score_trait(r["response"], r["question"], eval_prompt_template)
            c = judge.score_coherence(r["response"], r["question"], coherence_template)
        else:
            t = judge.score_trait(r["question"], r["response"], eval_prompt_template)
            c = judge.score_coherence(r["question"], r["response"], coherence_template)
        if mistake == "judge_score_objects":
            r["trait_score"], r["coherence_score"] = t, c
        elif mistake == "swapped":
            r["trait_score"], r["coherence_score"] = c.value, t.value
        elif mistake == "none_as_zero":
            r["trait_score"], r["coherence_score"] = t.value or 0, c.value or 0
        elif mistake == "key_only_when_scored":
            r.update({k: s.value for k, s in (("trait_score", t), ("coherence_score", c)) if s.value is not None})
        else:
            r["trait_score"], r["coherence_score"] = t.value, c.value
    if mistake == "drops_unscored":
        records = [r for r in records if r["trait_score"] is not None and r["coherence_score"] is not None]
    if mistake == "scores_shifted":
        values = [(r["trait_score"], r["coherence_score"]) for r in records]
        for r, (t, c) in zip(records, values[1:] + values[:1]):
            r["trait_score"], r["coherence_score"] = t, c
    if mistake == "by_question":  # a correct alternative: records ordered by question
        records.sort(key=lambda r: (questions.index(r["question"]), coefficients.index(r["coeff"])))
    return records


def _experiment_variant(mistake):
    def wrong(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=(-3, -1, 0, 1, 3, 5), **kw):
        return _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients, mistake=mistake, **kw)

    wrong.__name__ = f"run_steering_experiment_{mistake}"
    return wrong


def experiment_other_default(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=(-1, 0, 1), **kw):
    return _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients, **kw)


def experiment_offline_judge(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=(-3, -1, 0, 1, 3, 5), judge=None, **kw):
    """Builds its own judge instead of calling get_judge()."""
    from utils.judge import OfflineJudge

    return _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients, judge=judge or OfflineJudge(), **kw)


def experiment_none_default(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=None, **kw):
    """Correct: `coefficients=None` (no tuple in the signature), the paper's sweep filled in inside."""
    if coefficients is None:
        coefficients = [-3, -1, 0, 1, 3, 5]
    return _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients, **kw)


def experiment_none_other_default(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=None, **kw):
    """`coefficients=None`, filled in with a sweep of its own instead of the paper's."""
    if coefficients is None:
        coefficients = [-3, 0, 3]
    return _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients, **kw)


def experiment_module_get_judge(model, tokenizer, questions, vector, eval_prompt_template, layer,
                                coefficients=(-3, -1, 0, 1, 3, 5), judge=None, **kw):
    """Correct: the course's judge through the module (`utils.judge.get_judge()`), not the notebook's global name."""
    import utils.judge

    judge = judge if judge is not None else utils.judge.get_judge()
    return _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients, judge=judge, **kw)


def experiment_score_many(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=(-3, -1, 0, 1, 3, 5),
                          judge=None, coherence_template=None, max_new_tokens=64, positions="response"):
    """Correct: every prompt filled by hand and scored in one score_many call; coefficients stored as floats."""
    from utils.judge import fill_template

    judge = judge or get_judge()
    template = coherence_template or data.load_coherence_prompt()
    records = []
    for coeff in coefficients:
        answers = generate_with_steerer(model, tokenizer, questions, vector, coeff, layer, positions, None, max_new_tokens)
        records += [{"question": q, "coeff": float(coeff), "response": a} for q, a in zip(questions, answers)]
    prompts = [fill_template(t, r["question"], r["response"]) for r in records for t in (eval_prompt_template, template)]
    scores = judge.score_many(prompts)
    for i, r in enumerate(records):
        r["trait_score"], r["coherence_score"] = scores[2 * i].value, scores[2 * i + 1].value
    return records


# --------------------------------------------------------------------------------------
# 4.3 compute_trait_projections
# --------------------------------------------------------------------------------------
def _check_inputs(model, system_prompts, questions, responses, vector, directions=True):
    d = model.config.get_text_config().hidden_size
    vector = torch.as_tensor(vector, dtype=torch.float32)
    if vector.shape != (d,):
        raise ValueError("bad vector")
    if not len(system_prompts) == len(questions) == len(responses):
        raise ValueError("lengths differ")
    if directions and (not torch.isfinite(vector).all() or not vector.any()):
        raise ValueError("vector has no direction")
    return vector


def proj_no_direction_check(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Checks shapes and lengths, but a zero vector gives NaN projections."""
    vector = _check_inputs(model, system_prompts, questions, responses, vector, directions=False)
    convs = conversations_from(system_prompts, questions, responses)
    acts = response_mean_activations(model, tokenizer, convs, layers=[layer])[:, 0]
    return (acts.float() @ (vector / vector.norm())).tolist()


def _projections(model, tokenizer, system_prompts, questions, responses, vector, layer, *, denom="norm", span="response", offset=0):
    vector = _check_inputs(model, system_prompts, questions, responses, vector)
    convs = conversations_from(system_prompts, questions, responses)
    if span == "response":
        acts = response_mean_activations(model, tokenizer, convs, layers=[layer + offset])[:, 0]
    else:
        from utils.activations import span_means

        chats = [format_chat(c, tokenizer) for c in convs]
        acts = torch.cat(span_means(model, [c.input_ids for c in chats], [[(0, len(c.input_ids))] for c in chats], [layer]))[:, 0]
    scale = {"norm": vector.norm(), "none": torch.tensor(1.0), "norm2": vector.norm() ** 2}[denom]
    return (acts @ vector / scale).tolist()


def _block_output(model, ids, layer, attention_mask=None, hidden_states=False):
    """Block `layer`'s output [B, T, d] (float32) for a batch of ids."""
    device = model.get_input_embeddings().weight.device
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask.to(device)}
    with torch.no_grad():
        # hidden_states[layer + 1] is block `layer`'s output except at the last block, where it is the final norm's
        # output: hidden_states=True reads it from hidden_states below the last block only, "always" everywhere
        if hidden_states == "always" or (hidden_states and layer + 1 < len(get_blocks(model))):
            return model(input_ids=ids.to(device), output_hidden_states=True, **kwargs).hidden_states[layer + 1].float().cpu()
        seen = {}
        handle = get_blocks(model)[layer].register_forward_hook(lambda m, a, out: seen.update(h=hidden_of(out)))
        try:
            model(input_ids=ids.to(device), **kwargs)
        finally:
            handle.remove()
    return seen["h"].float().cpu()


def _hand_rolled(model, tokenizer, system_prompts, questions, responses, vector, layer, *, span_of=None, empty_system=False,
                 merge=None, add_special=False, as_numpy=False, hidden_states=False):
    """One chat at a time, the template applied by hand, the span located by `span_of(text, prompt_text, response, tok)`."""
    vector = _check_inputs(model, system_prompts, questions, responses, vector)
    out = []
    for s, q, r in zip(system_prompts, questions, responses):
        msgs = []
        if s is not None and (s or empty_system):
            if merge is not None:
                q = f"{s}{merge}{q}"
            else:
                msgs.append({"role": "system", "content": s})
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        start, end = span_of(text, prompt, r, enc, tokenizer)
        h = _block_output(model, torch.tensor([enc["input_ids"]]), layer, hidden_states=hidden_states)[0]
        a = h[start:end].mean(0)
        if as_numpy:
            v = vector.numpy()
            out.append(np.float32(a.numpy() @ v / np.linalg.norm(v)))
        else:
            out.append(float(a @ vector / vector.norm()))
    return out


def _char_to_tokens(enc, c0, c1):
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a >= c0 and b <= c1 and b > a]
    return inside[0], inside[-1] + 1


def _span_after_prompt(text, prompt, r, enc, tok):  # correct: search after the prompt
    c0 = text.find(r.strip(), len(prompt))
    return _char_to_tokens(enc, c0, c0 + len(r.strip()))


def _span_first_match(text, prompt, r, enc, tok):
    c0 = text.find(r)
    return _char_to_tokens(enc, c0, c0 + len(r))


def _n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _span_prompt_to_end(text, prompt, r, enc, tok):
    return _n_tokens(tok, prompt), len(enc["input_ids"])


def _span_prompt_minus_two(text, prompt, r, enc, tok):
    return _n_tokens(tok, prompt), len(enc["input_ids"]) - 2


def _span_header(text, prompt, r, enc, tok):
    """From the end of the conversation before the assistant turn (its header included)."""
    before = text[: text.rfind(r)]
    header = before.rfind("<|im_start|>") if "<|im_start|>" in before else len(before)
    s, e = _span_after_prompt(text, prompt, r, enc, tok)
    return _n_tokens(tok, text[:header]), e


def _span_last_token(text, prompt, r, enc, tok):
    s, e = _span_after_prompt(text, prompt, r, enc, tok)
    return e - 1, e


def proj_no_norm(*args):
    return _projections(*args, denom="none")


def proj_norm_squared(*args):
    return _projections(*args, denom="norm2")


def proj_all_tokens(*args):
    return _projections(*args, span="all")


def proj_layer_minus_one(*args):
    return _projections(*args, offset=-1)


def proj_layer_plus_one(*args):
    return _projections(*args, offset=1)


def proj_layer_global(model, tokenizer, system_prompts, questions, responses, vector, layer):
    return _projections(model, tokenizer, system_prompts, questions, responses, vector, LAYER)


def proj_tensor(*args):
    return torch.tensor(_projections(*args))


def proj_neg(*args):
    return [-x for x in _projections(*args)]


def proj_to_end(*args):
    return _hand_rolled(*args, span_of=_span_prompt_to_end)


def proj_minus_two(*args):
    """Prompt length to two tokens before the end: right for '<|im_end|>\\n', wrong for a one-token end of turn."""
    return _hand_rolled(*args, span_of=_span_prompt_minus_two)


def proj_header(*args):
    return _hand_rolled(*args, span_of=_span_header)


def proj_last_token(*args):
    return _hand_rolled(*args, span_of=_span_last_token)


def proj_first_match(*args):
    return _hand_rolled(*args, span_of=_span_first_match)


def proj_empty_system_kept(*args):
    return _hand_rolled(*args, span_of=_span_after_prompt, empty_system=True)


def proj_merge_newline(model, tokenizer, *args):
    """Merges the system prompt into the question by hand, with one newline (the course: two)."""
    from utils.chat import supports_system_role

    merge = None if supports_system_role(tokenizer) else "\n"
    return _hand_rolled(model, tokenizer, *args, span_of=_span_after_prompt, merge=merge)


def proj_numpy_float32(*args):
    return [np.float32(x) for x in _projections(*args)]


def _batched(model, tokenizer, system_prompts, questions, responses, vector, layer, *, side="left", mask=True, shift=True):
    vector = _check_inputs(model, system_prompts, questions, responses, vector)
    chats = [format_chat(build_messages(s, q, r), tokenizer) for s, q, r in zip(system_prompts, questions, responses)]
    T = max(len(c.input_ids) for c in chats)
    ids = torch.zeros((len(chats), T), dtype=torch.long)
    attn = torch.zeros((len(chats), T), dtype=torch.long)
    offsets = []
    for b, c in enumerate(chats):
        n = len(c.input_ids)
        off = T - n if side == "left" else 0
        ids[b, off:off + n] = torch.tensor(c.input_ids)
        attn[b, off:off + n] = 1
        offsets.append(off if shift else 0)
    h = _block_output(model, ids, layer, attention_mask=attn if mask else None)
    acts = torch.stack([h[b, c.token_span[0] + o:c.token_span[1] + o].mean(0) for b, (c, o) in enumerate(zip(chats, offsets))])
    return (acts @ (vector / vector.norm())).tolist()


def proj_left_pad_no_mask(*args):
    return _batched(*args, mask=False)


def proj_left_pad_unshifted(*args):
    return _batched(*args, shift=False)


def proj_left_padded(*args):
    return _batched(*args)


def proj_right_padded(*args):
    return _batched(*args, side="right")


def proj_per_chat_hooks(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Correct: format_chat per example, a hook, float64 maths."""
    vector = _check_inputs(model, system_prompts, questions, responses, vector).double()
    out = []
    for s, q, r in zip(system_prompts, questions, responses):
        chat = format_chat(build_messages(s, q, r), tokenizer)
        h = _block_output(model, torch.tensor([chat.input_ids]), layer)[0].double()
        out.append(float(h[slice(*chat.token_span)].mean(0) @ vector / vector.norm()))
    return out


def proj_hidden_states_numpy(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Correct: hidden_states[layer + 1] (a hook at the last block, whose hidden_states entry is normed), the
    template applied by hand, numpy maths, Python floats."""
    return [float(x) for x in _hand_rolled(model, tokenizer, system_prompts, questions, responses, vector, layer,
                                           span_of=_span_after_prompt, as_numpy=True, hidden_states=True,
                                           merge=None if _system_role(tokenizer) else "\n\n")]


def proj_hidden_states_everywhere(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """hidden_states[layer + 1] at every layer: at the last block that is hidden_states[-1], the final norm's output."""
    return _hand_rolled(model, tokenizer, system_prompts, questions, responses, vector, layer, span_of=_span_after_prompt,
                        hidden_states="always", merge=None if _system_role(tokenizer) else "\n\n")


def proj_no_inf_check(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Refuses a zero or NaN vector, but not one holding inf (every projection is then inf or NaN)."""
    vector = _check_inputs(model, system_prompts, questions, responses, vector, directions=False)
    if torch.isnan(vector).any() or not vector.any():
        raise ValueError("vector has no direction")
    return _projections(model, tokenizer, system_prompts, questions, responses, vector.nan_to_num(posinf=1.0), layer)


def _system_role(tokenizer):
    from utils.chat import supports_system_role

    return supports_system_role(tokenizer)


def proj_no_checks(model, tokenizer, system_prompts, questions, responses, vector, layer):
    n = min(len(system_prompts), len(questions), len(responses))
    vector = torch.as_tensor(vector).reshape(-1)[: model.config.get_text_config().hidden_size]
    return _projections(model, tokenizer, list(system_prompts)[:n], list(questions)[:n], list(responses)[:n], vector, layer)


def proj_no_length_check(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Checks the vector, then zips the lists (the shortest wins)."""
    n = min(len(system_prompts), len(questions), len(responses))
    return _projections(model, tokenizer, list(system_prompts)[:n], list(questions)[:n], list(responses)[:n], vector, layer)


def proj_accepts_row_vector(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Checks only the vector's last dimension, then flattens it."""
    vector = torch.as_tensor(vector)
    if vector.shape[-1] != model.config.get_text_config().hidden_size:
        raise ValueError("bad vector size")
    return _projections(model, tokenizer, system_prompts, questions, responses, vector.reshape(-1), layer)


# --------------------------------------------------------------------------------------
# 4.4 run_trait_pipeline
# --------------------------------------------------------------------------------------
def _pipeline(model, tokenizer, trait_name, trait_data, layer, coefficients=(-3, -1, 0, 1, 3, 5), eval_questions=None,
              judge=None, cache_dir=None, n_questions=None, max_new_tokens=64, temperature=0.7, threshold=50,
              coherence_threshold=50, batch_size=32, verbose=False, *, mistake=None):
    judge = judge if judge is not None else get_judge()
    if eval_questions is None or mistake == "eval_questions_ignored":
        eval_questions = trait_data["questions"][:n_questions]
    if mistake == "steers_without_coefficients":
        coefficients = coefficients or (-3, -1, 0, 1, 3, 5)
    coherence_prompt = data.load_coherence_prompt()
    eval_prompt = trait_data["eval_prompt"]
    runner = StepRunner(cache_dir, context={"model": model_id(model), "trait": trait_name}, verbose=verbose)
    judge_shared = {} if mistake == "judge_key_without_coherence_prompt" else {"coherence_prompt": coherence_prompt}
    if mistake != "judge_key_without_judge":
        judge_shared["judge"] = judge_identity(judge)
    if mistake != "judge_key_without_eval_prompt":
        judge_shared["eval_prompt"] = eval_prompt
    cache_if = {"caches_errors": None, "cache_if_value_only": lambda r: r["value"] is not None}.get(mistake, is_final)

    def score(step, records):
        one = lambda item: judge_call(judge, item, eval_prompt, coherence_prompt)  # noqa: E731
        if mistake == "judge_per_kind":  # a correct alternative: one map_each per kind
            by_kind = {kind: runner.map_each(f"{step}_{kind}", [{"kind": kind, "question": r["question"], "answer": r["response"]}
                                                               for r in records], one, shared=judge_shared, cache_if=is_final)
                       for kind in JUDGE_KINDS}
            return [{**r, "trait_score": by_kind["trait"][i]["value"], "coherence_score": by_kind["coherence"][i]["value"]}
                    for i, r in enumerate(records)]
        if mistake == "judge_kinds_share_keys":  # two map_each calls, one step name, items without their kind
            by_kind = {kind: runner.map_each(step, [{"question": r["question"], "answer": r["response"]} for r in records],
                                             lambda item, kind=kind: judge_call(judge, {**item, "kind": kind}, eval_prompt,
                                                                                coherence_prompt),
                                             shared=judge_shared, cache_if=is_final)
                       for kind in JUDGE_KINDS}
            return [{**r, "trait_score": by_kind["trait"][i]["value"], "coherence_score": by_kind["coherence"][i]["value"]}
                    for i, r in enumerate(records)]
        items = [{"kind": kind, "question": r["question"], "answer": r["response"]} for r in records for kind in JUDGE_KINDS]
        if mistake == "judge_map_batched":  # runner.map over the whole step: cached only when every call has returned
            results = runner.map(step, items, lambda batch: [one(item) for item in batch], shared=judge_shared, cache_if=is_final)
        elif mistake == "judge_uncached":
            results = [one(item) for item in items]
        elif mistake == "judge_whole_step":
            results = runner.json(step, {"items": items, **judge_shared}, lambda: [one(item) for item in items])
        elif mistake == "steer_judge_caches_errors" and step == "steer_judge":  # cache_if forgotten on the second call
            results = runner.map_each(step, items, one, shared=judge_shared)
        elif mistake == "steer_judge_key_judge_only" and step == "steer_judge":  # a second call keyed by the judge only
            results = runner.map_each(step, items, one, shared={"judge": judge_identity(judge)}, cache_if=is_final)
        else:
            results = runner.map_each(step, items, one, shared=judge_shared, cache_if=cache_if)
        return [{**r, "trait_score": results[2 * i]["value"], "coherence_score": results[2 * i + 1]["value"]}
                for i, r in enumerate(records)]

    requests = contrastive_requests(trait_name, trait_data, None if mistake == "n_questions_ignored" else n_questions)
    if mistake == "generate_settings_not_passed":
        gen = lambda batch: generate_responses(model, tokenizer, batch)  # noqa: E731
    elif mistake in ("batch_size_ignored", "generate_one_runner_batch"):
        gen = lambda batch: generate_responses(model, tokenizer, batch, max_new_tokens, temperature,  # noqa: E731
                                               **({} if mistake == "batch_size_ignored" else {"batch_size": batch_size}))
    else:
        gen = lambda batch: generate_responses(model, tokenizer, batch, max_new_tokens, temperature, batch_size)  # noqa: E731
    gen_shared = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    if mistake == "generate_key_without_settings":
        gen_shared = None
    elif mistake == "generate_key_without_temperature":
        gen_shared = {"max_new_tokens": max_new_tokens}
    if mistake == "generate_uncached":
        texts = gen(requests)
    else:
        texts = runner.map("gen" if mistake == "judge_per_kind" else "generate", requests, gen,
                           batch_size=None if mistake in ("batch_size_ignored", "generate_one_runner_batch") else batch_size,
                           shared=gen_shared)
    records = score("judge", [{**r, "response": t} for r, t in zip(requests, texts)])
    if mistake == "thresholds_ignored":
        effective = filter_effective(records)
    elif mistake == "coherence_threshold_ignored":
        effective = filter_effective(records, threshold)
    elif mistake == "thresholds_swapped":
        effective = filter_effective(records, coherence_threshold, threshold)
    else:
        effective = filter_effective(records, threshold, coherence_threshold)
    if mistake == "strict_threshold":
        effective = [p for p in effective if p["pos"]["trait_score"] > threshold]
    use = effective
    if mistake == "all_pairs":  # every pair, effective or not
        use = filter_effective([{**r, "trait_score": 100 if r["polarity"] == "pos" else 0, "coherence_score": 100} for r in records])
    pairs = [[p[s][k] for s in ("pos", "neg") for k in ("system_prompt", "question", "response")] for p in use]
    if mistake == "extract_uncached":
        vectors = extract_trait_vectors(model, tokenizer, use)
    else:
        key = {"pairs": pairs}
        if mistake == "extract_key_constant":
            key = {"trait": trait_name}
        elif mistake == "extract_key_indices":
            key = {"pairs": [(p["instruction_idx"], p["question_idx"]) for p in use]}
        out = runner.tensors("extract", key, lambda: {"vectors": extract_trait_vectors(model, tokenizer, use)})
        vectors = out if mistake == "vectors_dict" else out["vectors"]
    if mistake == "vectors_dict":
        vector = vectors["vectors"][layer]
    elif mistake == "vector_keepdim":
        vector = vectors[layer:layer + 1]
    else:
        vector = vectors[layer + (1 if mistake == "vector_layer_plus_one" else 0)]
    steer_vector = vector.reshape(-1)
    steering = []
    if coefficients:
        items = [{"question": q, "coeff": c} for c in coefficients for q in eval_questions]
        steer_shared = {"max_new_tokens": max_new_tokens}
        if mistake == "steer_key_without_max_new_tokens":
            steer_shared = {}
        if mistake == "steer_key_layer_only":
            steer_shared["layer"] = layer
        elif mistake != "steer_key_without_vector":
            steer_shared.update(vector=tensor_digest(steer_vector), layer=layer)
        steer_tokens = 64 if mistake == "steer_max_new_tokens_not_passed" else max_new_tokens
        answers = runner.map(
            "steer", items,
            lambda batch: generate_with_steerer(model, tokenizer, [b["question"] for b in batch], steer_vector, batch[0]["coeff"],
                                                layer, max_new_tokens=steer_tokens),
            batch_size=1 if mistake == "steer_per_question" else batch_size,
            group_by=None if mistake == "steer_mixed_batches" else (lambda item: item["coeff"]),
            shared=steer_shared)
        steered = score("steer_judge", [{**it, "response": a} for it, a in zip(items, answers)])
        steering = [{k: r[k] for k in ("question", "coeff", "response", "trait_score", "coherence_score")} for r in steered]
    result = {"records": records, "effective": effective, "vectors": vectors, "vector": vector, "steering": steering,
              "stats": {} if mistake == "stats_empty" else dict(runner.stats)}
    return result


def _pipeline_variant(mistake):
    def wrong(model, tokenizer, trait_name, trait_data, layer, coefficients=(-3, -1, 0, 1, 3, 5), **kw):
        return _pipeline(model, tokenizer, trait_name, trait_data, layer, coefficients, mistake=mistake, **kw)

    wrong.__name__ = f"run_trait_pipeline_{mistake}"
    return wrong


def pipeline_swallows_judge_errors(model, tokenizer, trait_name, trait_data, layer, coefficients=(-3, -1, 0, 1, 3, 5), **kw):
    """Catches the judge's failure and carries on with what it has."""
    try:
        return _pipeline(model, tokenizer, trait_name, trait_data, layer, coefficients, **kw)
    except RuntimeError:
        return {"records": [], "effective": [], "vectors": torch.zeros(1, 1), "vector": torch.zeros(1), "steering": [], "stats": {}}


# --------------------------------------------------------------------------------------
# 4.5 trait_cosine_matrix
# --------------------------------------------------------------------------------------
def _check_vectors(vectors, directions=True):
    if any(torch.as_tensor(v).ndim != 1 for v in vectors.values()):
        raise ValueError("pick one layer first")
    if len({torch.as_tensor(v).shape[0] for v in vectors.values()}) != 1:
        raise ValueError("sizes differ")
    if directions and any(not torch.isfinite(torch.as_tensor(v)).all() or not torch.as_tensor(v).any() for v in vectors.values()):
        raise ValueError("a vector has no direction")


def cos_no_direction_check(vectors):
    """Checks shapes, but a zero or NaN vector gives a NaN row."""
    _check_vectors(vectors, directions=False)
    names = list(vectors)
    X = torch.stack([torch.as_tensor(vectors[n]).float() for n in names])
    X = X / X.norm(dim=1, keepdim=True)
    return X @ X.T, names


def _stack(vectors, dtype=torch.float32):
    _check_vectors(vectors)
    names = list(vectors)
    return torch.stack([torch.as_tensor(vectors[n]).to(dtype) for n in names]), names


def cos_dot_products(vectors):
    X, names = _stack(vectors)
    return X @ X.T, names


def cos_centred(vectors):
    X, names = _stack(vectors)
    X = X - X.mean(0)
    X = X / X.norm(dim=1, keepdim=True)
    return X @ X.T, names


def cos_abs(vectors):
    sim, names = ref.trait_cosine_matrix(vectors)
    return sim.abs(), names


def cos_sorted_names(vectors):
    sim, names = ref.trait_cosine_matrix(vectors)
    return sim, sorted(names)


def cos_rowwise(vectors):
    """F.cosine_similarity(X, X): each row with itself, shape [n]."""
    X, names = _stack(vectors)
    return torch.nn.functional.cosine_similarity(X, X, dim=-1), names


def cos_numpy(vectors):
    X, names = _stack(vectors)
    X = X / X.norm(dim=1, keepdim=True)
    return (X @ X.T).numpy(), names


def cos_keeps_dtype(vectors):
    """Stacks without converting: bfloat16 vectors give bfloat16 cosines."""
    _check_vectors(vectors)
    names = list(vectors)
    X = torch.stack([vectors[n] for n in names])
    X = X / X.norm(dim=1, keepdim=True)
    return X @ X.T, names


def cos_bf16_then_float(vectors):
    """Computes in the vectors' dtype and converts only the result."""
    sim, names = cos_keeps_dtype(vectors)
    return sim.float(), names


def cos_pairwise(vectors):
    """Correct: F.cosine_similarity with broadcasting."""
    X, names = _stack(vectors)
    return torch.nn.functional.cosine_similarity(X[:, None, :], X[None, :, :], dim=-1), names


def cos_numpy_float64(vectors):
    """Correct: numpy in float64 inside, a float64 tensor out, names sorted (rows in the same order)."""
    _check_vectors(vectors)
    names = sorted(vectors)
    X = np.stack([torch.as_tensor(vectors[n]).double().numpy() for n in names])
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    return torch.from_numpy(X @ X.T), names


def cos_loops(vectors):
    """Correct: one cosine at a time."""
    _check_vectors(vectors)
    names = list(vectors)
    v = [torch.as_tensor(vectors[n]).float() for n in names]
    sim = torch.empty(len(names), len(names))
    for i in range(len(names)):
        for j in range(len(names)):
            sim[i, j] = (v[i] @ v[j]) / (v[i].norm() * v[j].norm())
    return sim, names


def cos_no_inf_check(vectors):
    """Refuses zero and NaN vectors, but not one holding inf (its row of cosines is NaN)."""
    _check_vectors(vectors, directions=False)
    if any(torch.isnan(torch.as_tensor(v)).any() or not torch.as_tensor(v).any() for v in vectors.values()):
        raise ValueError("a vector has no direction")
    names = list(vectors)
    X = torch.stack([torch.as_tensor(vectors[n]).float() for n in names])
    X = X / X.norm(dim=1, keepdim=True)
    return X @ X.T, names


def cos_flattens_layers(vectors):
    flat = {k: torch.as_tensor(v).reshape(-1) for k, v in vectors.items()}
    size = min(v.shape[0] for v in flat.values())
    return ref.trait_cosine_matrix({k: v[:size] for k, v in flat.items()})


def cos_no_size_check(vectors):
    """Rejects 2-D vectors, then truncates to the shortest."""
    if any(torch.as_tensor(v).ndim != 1 for v in vectors.values()):
        raise ValueError("pick one layer first")
    size = min(torch.as_tensor(v).shape[0] for v in vectors.values())
    return ref.trait_cosine_matrix({k: torch.as_tensor(v)[:size] for k, v in vectors.items()})


def cos_numpy_no_checks(vectors):
    X, names = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(-1)[:4] for v in vectors.values()]), list(vectors)
    X = X / X.norm(dim=1, keepdim=True)
    return (X @ X.T).numpy(), names


# test name -> (reference object name, [(wrong implementation, phrase its failure message must contain)])
CATALOGUE = {
    "test_activation_steerer": ("ActivationSteerer", [
        (SteerResponseEveryPosition, "other than the last"),
        (PromptSteersDecode, "'prompt') steered a decoding step"),
        (ResponseOnlyDecode, "last prompt position"),
        (ResponseSkipsDecode, "'response' mode steers each new token"),
        (AllSkipsDecode, "'all' mode steers each new token"),
        (ResponseFirstPosition, "other than the last"),
        (PrefillFlag, "not by a flag"),
        (InPlaceResponse, "in place"),
        (ReplacesLastPosition, "replaced by coeff * vector"),
        (HookLeftOnException, "after an exception"),
        (SwallowsException, "swallowed"),
        (NeverRemoves, "left"),
        (ClearsBlockHooks, "did not register"),
        (SharedHandles, "two steerers nested"),
        (RegistersInInit, "not in __init__"),
        (EnterReturnsNone, "__enter__ should return self"),
        (LayerPlusOne, "off by one"),
        (LayerMinusOne, "off by one"),
        (PreHook, "*input*"),
        (CoeffIgnored, "coeff is ignored"),
        (SignFlipped, "sign is flipped"),
        (NormalisesVector, "normalised"),
        (NoDtypeCast, "cast the change to the hidden state's dtype"),
        (UpcastsHidden, "(coeff * vector).to(h.dtype)"),
        (IndexesTensorOutput, "output[0]"),
        (TupleToTensor, "same container type"),
        (TupleNested, "output[1:]"),
        (ScalesVectorInPlace, "modified the vector"),
    ]),
    "test_activation_steerer_input_checks": ("ActivationSteerer", [
        (NoShapeCheck, "ValueError"),
        (NoPositionCheck, "positions='middle'"),
        (AcceptsRowVector, "shape [1, 64]"),
        (AssertsInputs, "got AssertionError"),
        (RegistersThenChecks, "after a ValueError"),
    ]),
    "test_generate_with_steerer": ("generate_with_steerer", [
        (gws_sign_flipped, "sign is flipped"),
        (gws_coeff_ignored, "coeff is ignored"),
        (gws_positions_not_passed, "positions"),
        (gws_positions_hardcoded, "`positions` is ignored"),
        (gws_layer_off_by_one, "off by one layer"),
        (gws_layer_global, "`layer` is ignored"),
        (gws_normalised, "normalised vector"),
        (gws_not_steered, "unsteered"),
        (gws_ignores_system_prompt, "system_prompt is ignored"),
        (gws_max_new_tokens_ignored, "max_new_tokens is ignored"),
        (gws_batch_size_ignored, "batch_size is ignored"),
        (gws_raw_questions, "without the chat template"),
        (gws_hand_template, "no system role"),
        (gws_one_at_a_time, "batches"),
        (gws_sampled, "greedy"),
        (gws_hook_left, "hook"),
        (gws_no_finally, "after the model raised mid-generation"),
        (gws_swallows_errors, "let the exception propagate"),
    ]),
    "test_run_steering_experiment": ("run_steering_experiment", [
        (_experiment_variant("per_question"), "one batched call"),
        (_experiment_variant("mislabelled"), "generated at coeff"),
        (_experiment_variant("zero_skipped"), "records for"),
        (_experiment_variant("judge_score_objects"), ".value"),
        (_experiment_variant("swapped"), "swapped"),
        (_experiment_variant("scores_shifted"), "do not belong"),
        (_experiment_variant("coherence_with_trait_template"), "load_coherence_prompt"),
        (_experiment_variant("trait_with_coherence_template"), "score the trait with eval_prompt_template"),
        (_experiment_variant("ignores_judge"), "ignored the judge passed in"),
        (_experiment_variant("ignores_coherence_template"), "ignored coherence_template"),
        (_experiment_variant("positions_not_passed"), "pass positions on"),
        (_experiment_variant("layer_global"), "pass layer on"),
        (_experiment_variant("max_new_tokens_not_passed"), "pass max_new_tokens on"),
        (_experiment_variant("none_as_zero"), "holds 0"),
        (_experiment_variant("drops_unscored"), "records for"),
        (_experiment_variant("key_only_when_scored"), "even when its score is None"),
        (_experiment_variant("judge_args_swapped"), "question as the answer"),
        (experiment_other_default, "default to [-3, -1, 0, 1, 3, 5]"),
        (experiment_none_other_default, "default to [-3, -1, 0, 1, 3, 5]"),
        (experiment_offline_judge, "get_judge()"),
    ]),
    "test_compute_trait_projections": ("compute_trait_projections", [
        (proj_no_norm, "not divided by ‖v‖"),
        (proj_norm_squared, "‖v‖²"),
        (proj_all_tokens, "response tokens only"),
        (proj_layer_minus_one, "off by one layer"),
        (proj_layer_plus_one, "off by one layer"),
        (proj_layer_global, "`layer` is ignored"),
        (proj_tensor, "not a tensor"),
        (proj_numpy_float32, "plain Python floats"),
        (proj_neg, "sign is flipped"),
        (proj_to_end, "end-of-turn token(s)"),
        (proj_minus_two, "ends in two tokens"),
        (proj_header, "assistant header"),
        (proj_last_token, "only the last response token"),
        (proj_first_match, "occurrence of the response text"),
        (proj_empty_system_kept, "empty system prompt"),
        (proj_left_pad_no_mask, "without the attention mask"),
        (proj_left_pad_unshifted, "not shifted"),
        (proj_merge_newline, "merged into the question with '\\n'"),
        (proj_hidden_states_everywhere, "final norm"),
    ]),
    "test_compute_trait_projections_input_checks": ("compute_trait_projections", [
        (proj_no_checks, "ValueError"),
        (proj_no_length_check, "lists of different lengths"),
        (proj_accepts_row_vector, "shape [1, 64]"),
        (proj_no_inf_check, "a vector holding inf"),
    ]),
    "test_run_trait_pipeline": ("run_trait_pipeline", [
        (_pipeline_variant("judge_uncached"), "repeated"),
        (_pipeline_variant("judge_whole_step"), "as soon as it returns"),
        (_pipeline_variant("generate_uncached"), "regenerated"),
        (_pipeline_variant("extract_uncached"), "extracted the vectors again"),
        (_pipeline_variant("judge_key_without_eval_prompt"), "eval prompt"),
        (_pipeline_variant("judge_key_without_judge"), "judge_identity"),
        (_pipeline_variant("judge_key_without_coherence_prompt"), "must include the coherence prompt"),
        (_pipeline_variant("judge_map_batched"), "as soon as it returns"),
        (_pipeline_variant("judge_kinds_share_keys"), "own trait and coherence score"),
        (_pipeline_variant("generate_key_without_settings"), "generation settings"),
        (_pipeline_variant("generate_key_without_temperature"), "changing temperature"),
        (_pipeline_variant("generate_settings_not_passed"), "generate_responses was called with"),
        (_pipeline_variant("extract_key_constant"), "stale vectors"),
        (_pipeline_variant("extract_key_indices"), "not only their indices"),
        (_pipeline_variant("steer_key_without_vector"), "tensor_digest"),
        (_pipeline_variant("steer_key_layer_only"), "the vector itself"),
        (_pipeline_variant("steer_key_without_max_new_tokens"), "steer step's key must include max_new_tokens"),
        (_pipeline_variant("steer_max_new_tokens_not_passed"), "generate_with_steerer was called with max_new_tokens"),
        (_pipeline_variant("eval_questions_ignored"), "steer on eval_questions"),
        (_pipeline_variant("all_pairs"), "effective"),
        (_pipeline_variant("strict_threshold"), "pos >= threshold"),
        (_pipeline_variant("thresholds_ignored"), "threshold and coherence_threshold are ignored"),
        (_pipeline_variant("coherence_threshold_ignored"), "coherence_threshold is ignored"),
        (_pipeline_variant("thresholds_swapped"), "are swapped"),
        (_pipeline_variant("n_questions_ignored"), "n_questions is ignored"),
        (_pipeline_variant("vector_layer_plus_one"), "vectors[layer]"),
        (_pipeline_variant("vector_keepdim"), "returned shape (1, 64)"),
        (_pipeline_variant("vectors_dict"), "should return a torch.Tensor"),
        (_pipeline_variant("steer_per_question"), "once per coefficient"),
        (_pipeline_variant("steer_mixed_batches"), "once per coefficient"),
        (_pipeline_variant("batch_size_ignored"), "batch_size is ignored"),
        (_pipeline_variant("generate_one_runner_batch"), "pass batch_size to runner.map"),
        (_pipeline_variant("caches_errors"), "never retries"),
        (_pipeline_variant("steer_judge_caches_errors"), "on a steered answer"),
        (_pipeline_variant("steer_judge_key_judge_only"), "steered answers' scores came from the cache"),
        (_pipeline_variant("cache_if_value_only"), "refusal"),
        (_pipeline_variant("steers_without_coefficients"), "nothing to steer"),
        (_pipeline_variant("stats_empty"), "return dict(runner.stats)"),
        (pipeline_swallows_judge_errors, "propagate"),
    ]),
    "test_trait_cosine_matrix": ("trait_cosine_matrix", [
        (cos_dot_products, "dot products"),
        (cos_centred, "centred"),
        (cos_abs, "keep the sign"),
        (cos_sorted_names, "order of `names`"),
        (cos_rowwise, "returned shape (4,)"),
        (cos_numpy, "should return a torch.Tensor"),
        (cos_keeps_dtype, "bfloat16"),
        (cos_bf16_then_float, "bfloat16"),
    ]),
    "test_trait_cosine_matrix_input_checks": ("trait_cosine_matrix", [
        (cos_flattens_layers, "pick one layer"),
        (cos_no_size_check, "different sizes"),
        (cos_numpy_no_checks, "ValueError"),
        (cos_no_inf_check, "a vector holding inf"),
    ]),
}

# test name -> implementations written another way (or correct maths without input checks): each must pass
CORRECT_ALTERNATIVES = {
    "test_activation_steerer": [ClosureSteerer, Float32MathSteerer, Steerer, ChecksInEnter, PrependedHook,
                                NoShapeCheck, NoPositionCheck],  # the last two: no input checks, full maths credit
    "test_activation_steerer_input_checks": [ClosureSteerer, Steerer, ChecksInEnter],
    "test_generate_with_steerer": [gws_chunked, gws_formatted_strings],
    "test_run_steering_experiment": [_experiment_variant(None), _experiment_variant("by_question"), experiment_score_many,
                                     experiment_module_get_judge, experiment_none_default],
    "test_compute_trait_projections": [proj_per_chat_hooks, proj_hidden_states_numpy, proj_left_padded, proj_right_padded,
                                       proj_no_checks],  # the last: no input checks, full maths credit
    "test_compute_trait_projections_input_checks": [proj_per_chat_hooks],
    "test_run_trait_pipeline": [_pipeline_variant(None), _pipeline_variant("judge_per_kind")],
    "test_trait_cosine_matrix": [cos_pairwise, cos_numpy_float64, cos_loops, cos_no_size_check],
    "test_trait_cosine_matrix_input_checks": [cos_pairwise, cos_numpy_float64, cos_loops],
}


class SteererNoFiniteCheck(ClosureSteerer):
    """Checks shapes and positions, but steers with a NaN vector (every later activation is NaN)."""

    check_numbers = False


CATALOGUE["test_activation_steerer_input_checks"][1].append((SteererNoFiniteCheck, "a vector holding NaN"))
CATALOGUE["test_compute_trait_projections_input_checks"][1].append((proj_no_direction_check, "a zero vector"))
CATALOGUE["test_trait_cosine_matrix_input_checks"][1].append((cos_no_direction_check, "a zero vector"))
