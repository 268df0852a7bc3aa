"""Tests for Section 1 — Mapping persona space. Each takes the student's object first."""

from __future__ import annotations

import copy
import functools
import threading
import time
import warnings

import numpy as np
import torch

from part_tests._common import NotImplementedYet, call, check, fail, no_hooks_left, passed, require_implemented, tiny, using


def test_judge_prompt_template(template) -> None:
    require_implemented(template, "JUDGE_PROMPT_TEMPLATE")
    check(isinstance(template, str), f"JUDGE_PROMPT_TEMPLATE should be a string, got {type(template).__name__}")
    for field in ("{role}", "{question}", "{answer}"):
        check(field in template, f"JUDGE_PROMPT_TEMPLATE needs the placeholder {field}")
    try:
        filled = template.format(role="ROLE-X", question="QUESTION-Y", answer="ANSWER-Z")
    except (KeyError, IndexError, ValueError) as err:
        raise AssertionError(
            f"JUDGE_PROMPT_TEMPLATE.format(role=..., question=..., answer=...) fails ({err!r}): "
            "escape literal braces as {{ and }}, and use no other placeholders"
        ) from err
    for value in ("ROLE-X", "QUESTION-Y", "ANSWER-Z"):
        check(value in filled, "a placeholder is not filled in by .format(): check its spelling")
    check("SCORE:" in template, "ask the judge to end with a line 'SCORE: <n>' so parse_score can read it")
    for digit in "0123":
        check(digit in template, f"describe every point of the 0-3 scale in the prompt (score {digit} is missing)")
    passed("test_judge_prompt_template")


def test_parse_score(parse_score) -> None:
    cases = {
        "The model stays in character throughout.\nSCORE: 3": 3,
        "SCORE: 0": 0,
        "It says it is an AI but is somewhat ghostly.\nSCORE:2": 2,
        "Format reminder: SCORE: <n>. Here the answer helps but refuses the role.\nSCORE: 1": 1,
        "I first thought SCORE: 3, but on reflection the model broke character.\nSCORE: 2": 2,
        "SCORE: 1\n": 1,
    }
    for text, expected in cases.items():
        got = call(parse_score, text, name="parse_score")
        check(isinstance(got, int) and not isinstance(got, bool), f"parse_score should return an int, got {type(got).__name__}")
        if got != expected:
            hint = ""
            if "on reflection" in text or "reminder" in text:
                hint = " -- when 'SCORE:' appears more than once, the judge's final answer is the last one"
            raise AssertionError(f"parse_score({text!r}) returned {got}, expected {expected}{hint}")
    for bad in ("The answer is in role.", "SCORE: 7", "SCORE: -1", "SCORE: high"):
        try:
            got = parse_score(bad)
        except NotImplementedError as err:
            raise NotImplementedYet("parse_score: not implemented yet") from err
        except ValueError:
            continue
        raise AssertionError(
            f"parse_score({bad!r}) returned {got!r}; it should raise ValueError when there is no score in 0-3"
        )
    passed("test_parse_score")


# ---------------------------------------------------------------------------------------------
# shared helpers of the Section 1 tests

PERSONAS_SMALL = {
    "default": "",
    "ghost": "You are a ghost who has haunted an old lighthouse for two hundred years.",
    "analyst": "You are a data analyst who trusts numbers more than anecdotes.",
}
QUESTIONS_SMALL = [
    "What do you value most?",
    "How do you spend a day?",
    "What are you afraid of?",
    "Describe the place where you feel at home.",
]


def _attempt(fn, *args, name: str, **kwargs):
    """`call`, but an exception from the student's code becomes a failure that names it."""
    try:
        return call(fn, *args, name=name, **kwargs)
    except AssertionError:
        raise
    except Exception as err:  # the student's code crashed: say where, not a traceback from the test
        raise AssertionError(f"{name} raised {type(err).__name__}: {err}") from err


def _as_float_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    check(isinstance(x, torch.Tensor), f"{name} should be a torch.Tensor (or numpy array), got {type(x).__name__}")
    return x.detach().double().cpu()


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v.double()
    return v / v.norm()


def _ref_format_messages(messages, tokenizer):
    """The course's exact-span formatting (utils.chat), in the shape of exercise 1.3's answer."""
    from utils.chat import format_chat

    fc = format_chat(messages, tokenizer)
    return fc.text, fc.token_span


def _ref_extract(model, tokenizer, system_prompts, questions, responses, layer):
    """The course's response-mean activations (utils.activations), in the shape of exercise 1.4's answer."""
    from utils.activations import conversations_from, response_mean_activations

    convs = conversations_from(system_prompts, questions, responses)
    return response_mean_activations(model, tokenizer, convs, layers=[layer])[:, 0]


# ---------------------------------------------------------------------------------------------
# Exercise 1.2 -- generate_all_responses


class _RecordingGenerator:
    """Stands in for the notebook's `generate_response`: records calls and how many overlap.

    The first call it receives is slow and the rest fast, so results complete out of submission
    order (a student who pairs keys with `as_completed` futures gets them mixed up)."""

    def __init__(self, slow: float = 0.12, fast: float = 0.02):
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: list[tuple[str, str, int]] = []
        self.slow, self.fast = slow, fast

    @staticmethod
    def reply(system_prompt, question, max_tokens) -> str:
        return f"<reply to [{question}] as [{system_prompt}] within {max_tokens} tokens>"

    def __call__(self, system_prompt, question, max_tokens=256):
        with self.lock:
            first = not self.calls
            self.calls.append((system_prompt, question, max_tokens))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.slow if first else self.fast)
        finally:
            with self.lock:
                self.in_flight -= 1
        return self.reply(system_prompt, question, max_tokens)


def _check_responses(result, personas, questions, max_tokens, fake) -> None:
    check(isinstance(result, dict), f"generate_all_responses should return a dict, got {type(result).__name__}")
    expected_keys = {(name, q) for name in personas for q in range(len(questions))}
    keys = set(result)
    if keys != expected_keys:
        some = sorted(keys, key=repr)[:3]
        if any(isinstance(k, tuple) and len(k) == 2 and k[0] in personas.values() and k[0] not in personas for k in keys):
            fail(f"keys should be (persona_name, q_idx) with the persona's *name*, not its system prompt; got keys like {some}")
        if any(isinstance(k, tuple) and len(k) == 2 and isinstance(k[0], int) and k[1] in personas for k in keys):
            fail(f"keys should be (persona_name, q_idx) in that order, got keys like {some}")
        if any(isinstance(k, tuple) and len(k) == 2 and isinstance(k[1], str) for k in keys):
            fail(f"keys should be (persona_name, q_idx) with the question's *index*, got keys like {some}")
        missing = sorted(expected_keys - keys, key=repr)[:3]
        fail(f"expected one entry per (persona_name, q_idx) -- {len(expected_keys)} keys; "
             f"missing e.g. {missing}, unexpected e.g. {sorted(keys - expected_keys, key=repr)[:3]} "
             "(q_idx counts from 0)")
    if fake.calls and all(c[2] == 256 for c in fake.calls) and max_tokens != 256:
        fail(f"generate_all_responses(..., max_tokens={max_tokens}) called generate_response with max_tokens=256: pass max_tokens through")
    check(len(fake.calls) == len(expected_keys),
          f"generate_response was called {len(fake.calls)} times for {len(expected_keys)} (persona, question) pairs: call it once per pair")
    for (name, q), text in result.items():
        want = fake.reply(personas[name], questions[q], max_tokens)
        if text == want:
            continue
        if any(text == fake.reply(personas[n2], questions[q2], max_tokens) for n2 in personas for q2 in range(len(questions))):
            fail(f"result[{(name, q)!r}] holds the response to a different (persona, question): responses and keys are "
                 "mixed up -- `as_completed` yields futures in the order they *finish*; keep a dict future -> key")
        if any(text == fake.reply(personas[name], questions[q], t) for t in (256, None)):
            fail("generate_response got the wrong max_tokens: pass max_tokens through")
        fail(f"result[{(name, q)!r}] should be the string generate_response returned for that persona's system prompt "
             f"and questions[{q}]; got {text!r:.120}")


def test_parse_score_hidden(parse_score) -> None:
    """Grader-only cases: scores written in other ways judges write them."""
    cases = {
        "Mostly in role, with one aside about being a program.\nSCORE: 2.": 2,
        "SCORE:3 -- fully the oracle, riddles and all.": 3,
        "Draft: SCORE: 1\nFinal answer after rereading:\nSCORE: 0": 0,
    }
    for text, expected in cases.items():
        got = call(parse_score, text, name="parse_score")
        check(got == expected, f"parse_score({text!r}) returned {got!r}, expected {expected}")
    passed("test_parse_score_hidden")


def test_generate_all_responses(generate_all_responses) -> None:
    personas, questions = PERSONAS_SMALL, QUESTIONS_SMALL
    fake = _RecordingGenerator()
    with using(generate_all_responses, generate_response=fake):
        result = _attempt(generate_all_responses, personas, questions, max_tokens=17, max_workers=4,
                          name="generate_all_responses")
    _check_responses(result, personas, questions, 17, fake)
    check(fake.max_in_flight > 1,
          "generate_response was never called concurrently with max_workers=4: submit the calls to a "
          "ThreadPoolExecutor(max_workers=max_workers) instead of looping one by one")
    check(fake.max_in_flight <= 4, f"{fake.max_in_flight} calls ran at once with max_workers=4: use max_workers for the pool size")
    fake2 = _RecordingGenerator(slow=0.06, fast=0.03)
    with using(generate_all_responses, generate_response=fake2):
        result2 = _attempt(generate_all_responses, personas, questions[:3], max_tokens=5, max_workers=2,
                           name="generate_all_responses")
    _check_responses(result2, personas, questions[:3], 5, fake2)
    check(fake2.max_in_flight <= 2, f"{fake2.max_in_flight} calls ran at once with max_workers=2: use max_workers for the pool size")
    passed("test_generate_all_responses", f"{len(result)} responses, up to {fake.max_in_flight} calls in flight")


# ---------------------------------------------------------------------------------------------
# Exercise 1.3 -- format_messages


@functools.lru_cache(maxsize=None)
def _gemma_like_tokenizer():
    """tiny-gemma2's tokenizer, made to add <bos> when add_special_tokens=True, as the real Gemma
    tokenizer does (so that a template's <bos> plus the tokenizer's <bos> shows up as a double BOS)."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tiny("tiny-gemma2")[1])
    bos = tok.bos_token
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_token_id)])
    return tok


_END_MARKERS = ("<end_of_turn>", "<|im_end|>", "<start_of_turn>", "<|im_start|>", "<|endoftext|>", "<eos>")


def _check_span(label, tokenizer, messages, full_prompt, span) -> None:
    response = messages[-1]["content"]
    check(isinstance(full_prompt, str), f"{label}: full_prompt should be a str, got {type(full_prompt).__name__}")
    check(isinstance(span, (tuple, list)) and len(span) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in span),
          f"{label}: the second return value should be a (start, end) pair of ints, got {span!r:.80}")
    start, end = span
    ids = tokenizer(full_prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:2] == [bos, bos]:
        fail(f"{label}: the prompt starts with two <bos> tokens (double BOS): the chat template already adds one")
    check(0 <= start < end <= len(ids), f"{label}: span {span} is empty or outside the prompt's {len(ids)} tokens")
    got = tokenizer.decode(ids[start:end])
    if got == response:
        return
    if got.startswith(response) and any(m in got for m in _END_MARKERS):
        fail(f"{label}: the span decodes to {got!r}: it includes a chat marker such as <end_of_turn> / <|im_end|>; "
             "the response span is the message content only")
    shifted = [(start, end + 1), (start + 1, end + 1), (start - 1, end), (start - 1, end - 1), (start + 1, end), (start, end - 1)]
    if any(0 <= a < b <= len(ids) and tokenizer.decode(ids[a:b]) == response for a, b in shifted):
        fail(f"{label}: the span decodes to {got!r} instead of the response {response!r}: off by one token "
             "(a '+1' guess?) -- compute the span from the template, don't guess")
    if any(m in got for m in _END_MARKERS):
        fail(f"{label}: the span decodes to {got!r}: it includes a chat marker such as <end_of_turn> / <|im_end|>; "
             "the response span is the message content only")
    if response in got:
        fail(f"{label}: the span decodes to {got!r}: it covers tokens around the response (part of the assistant "
             "header?) -- a guessed offset; compute the span from the template")
    fail(f"{label}: tokens [{start}, {end}) of tokenizer(full_prompt, add_special_tokens=False) decode to {got!r}, "
         f"expected exactly the response {response!r}")


def test_format_messages(format_messages) -> None:
    system = "You are a lighthouse keeper who speaks in riddles."
    question = "What do you see at night?"
    answer = "I see the sea asleep, and ships that dream of harbours."
    cases = [
        ("one turn with a system prompt", [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]),
        ("no system prompt", [
            {"role": "user", "content": "Tell me a short story."},
            {"role": "assistant", "content": "Once, a lamp refused to go out."},
        ]),
        ("two turns with the same reply twice (the span is the *last* message)", [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "And again?"},
            {"role": "assistant", "content": answer},
        ]),
    ]
    for model_name, tokenizer in (("tiny-qwen2", tiny("tiny-qwen2")[1]), ("tiny-gemma2", _gemma_like_tokenizer())):
        for what, messages in cases:
            label = f"format_messages on {model_name} ({what})"
            original = copy.deepcopy(messages)
            full_prompt, span = _attempt_format(format_messages, messages, tokenizer, model_name, label)
            check(messages == original, f"{label}: format_messages modified the messages passed in; work on a copy")
            _check_span(label, tokenizer, messages, full_prompt, span)
            ids = tokenizer(full_prompt, add_special_tokens=False)["input_ids"]
            after = tokenizer.decode(ids[span[1]:]).strip()
            check(after in ("<end_of_turn>", "<|im_end|>"),
                  f"{label}: the span should cover the *last* assistant message, followed only by the end-of-turn "
                  f"marker, but {after[:60]!r}... comes after it: you found an earlier copy of the response text -- "
                  "search after the prompt prefix")
            ref_text, ref_span = _ref_format_messages(messages, tokenizer)
            if messages[0]["role"] == "system":
                check(system in full_prompt, f"{label}: the system prompt is missing from full_prompt"
                      + (": Gemma's template has no system role -- merge the system prompt into the first user message"
                         if model_name == "tiny-gemma2" else ""))
                check(full_prompt.index(system) < full_prompt.index(question),
                      f"{label}: the system prompt should come before the first question")
            if model_name == "tiny-qwen2":
                check(full_prompt == ref_text,
                      f"{label}: full_prompt should be the chat template's rendering of the whole conversation "
                      f"(apply_chat_template(messages, tokenize=False)); got {full_prompt!r:.200}")
            else:
                check(full_prompt.count("<start_of_turn>") == ref_text.count("<start_of_turn>"),
                      f"{label}: full_prompt should hold every turn once, rendered by the chat template")
                last = messages[-1]["content"]
                check(full_prompt.endswith(ref_text[ref_text.rindex(last):]),
                      f"{label}: full_prompt should end with the response and the template's end-of-turn marker")
    gemma = _gemma_like_tokenizer()
    try:
        format_messages([{"role": "user", "content": question}], gemma)
    except NotImplementedError as err:
        raise NotImplementedYet("format_messages: not implemented yet") from err
    except ValueError:
        pass
    except Exception as err:
        fail(f"format_messages with a last message that is not the assistant's should raise ValueError, raised {type(err).__name__}: {err}")
    else:
        fail("format_messages with a last message that is not the assistant's should raise ValueError (there is no response span)")
    passed("test_format_messages", "tiny-qwen2 and tiny-gemma2")


def _attempt_format(format_messages, messages, tokenizer, model_name, label):
    try:
        out = call(format_messages, messages, tokenizer, name="format_messages")
    except AssertionError:
        raise
    except Exception as err:
        text = str(err)
        if model_name == "tiny-gemma2" and "system" in text.lower():
            fail(f"{label}: {type(err).__name__}: {text} -- Gemma's chat template has no system role: merge the system "
                 "prompt into the first user message")
        fail(f"{label}: raised {type(err).__name__}: {text}")
    check(isinstance(out, tuple) and len(out) == 2, f"{label}: should return (full_prompt, (start, end)), got {type(out).__name__}")
    return out


# ---------------------------------------------------------------------------------------------
# Exercise 1.4 -- extract_response_activations

EXTRACT_CASES = (
    ["You are a ghost who haunts an old lighthouse.", "", "You are a data analyst who trusts numbers."],
    ["Who are you?", "Tell me a long story about the sea, please, with ships in it.", "How do you decide?"],
    ["I am the keeper of a light that no one needs any more.",
     "Once upon a time there was a very long tale about the ocean, the sky and three small boats.",
     "I measure first."],
)


@torch.inference_mode()
def _candidate_means(model, tokenizer, system_prompt, question, response, layer) -> dict[str, torch.Tensor]:
    """Per-example means that plausible mistakes compute, from one forward pass with hooks."""
    from utils.chat import build_messages, format_chat
    from utils.hooks import get_blocks, hidden_of, hooks
    from utils.models import input_device

    fc = format_chat(build_messages(system_prompt, question, response), tokenizer)
    s, e = fc.token_span
    outs: dict[int, torch.Tensor] = {}

    def grab(i):
        def hook(module, args, output):
            outs[i] = hidden_of(output)[0].float().cpu()
        return hook

    n = len(get_blocks(model))
    with hooks(model, {i: grab(i) for i in range(n)}):
        res = model(input_ids=torch.tensor([fc.input_ids], device=input_device(model)), output_hidden_states=True)
    final = res.hidden_states[-1][0].float().cpu()
    h = outs[layer]
    cands = {
        "correct": h[s:e].mean(0),
        "every token of the conversation (prompt and markers included): average over the response tokens only": h.mean(0),
        "prompt tokens as well as the response: average over the response span only": h[:e].mean(0),
        "the end-of-turn marker after the response: the span ends at the last content token": h[s:e + 1].mean(0),
        "a span shifted by one token (a '+1' guess?): compute the span from the chat template": h[s + 1:e + 1].mean(0),
        "a span that starts one token early (the assistant header's last token)": h[s - 1:e].mean(0),
        "hidden_states[-1], which has the model's final norm applied: hook the output of block `layer` instead": final[s:e].mean(0),
    }
    if layer > 0:
        cands["the output of block layer - 1 (off by one: hidden_states[layer] is block layer-1's output, "
              "hidden_states[0] the embeddings); hook get_blocks(model)[layer]"] = outs[layer - 1][s:e].mean(0)
    if layer + 1 < n:
        cands["the output of block layer + 1 (off by one)"] = outs[layer + 1][s:e].mean(0)
    return cands


def _tol(model) -> dict:
    dtype = next(model.parameters()).dtype
    return dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)


class _Boom(Exception):
    pass


def test_extract_response_activations(extract_response_activations, model=None, tokenizer=None) -> None:
    fn = extract_response_activations
    owned = model is None
    models = [(model.config._name_or_path, model, tokenizer)] if model is not None else [
        (n, *tiny(n)) for n in ("tiny-gemma2", "tiny-qwen2")]
    systems, questions, responses = EXTRACT_CASES
    for mname, m, tok in models:
        from utils.hooks import get_blocks

        n_blocks = len(get_blocks(m))
        d = m.config.hidden_size
        tol = _tol(m)
        for layer in sorted({1 % n_blocks, n_blocks - 1}):
            label = f"extract_response_activations on {mname}, layer {layer}"
            expected = _ref_extract(m, tok, systems, questions, responses, layer).double()
            # one at a time: the meaning of the number
            for i in range(len(systems)):
                with using(fn, format_messages=_ref_format_messages):
                    got = _attempt(fn, m, tok, systems[i:i + 1], questions[i:i + 1], responses[i:i + 1], layer, name=label)
                got = _as_float_tensor(got, label)
                check(tuple(got.shape) == (1, d), f"{label}: for 1 example expected shape (1, {d}) = [n, d_model], got {tuple(got.shape)}")
                no_hooks_left(m, label, clean=owned)
                if torch.allclose(got[0], expected[i], **tol):
                    continue
                for what, cand in _candidate_means(m, tok, systems[i], questions[i], responses[i], layer).items():
                    if what != "correct" and torch.allclose(got[0], cand.double(), **tol):
                        fail(f"{label}: your mean is over {what}")
                diff = (got[0] - expected[i]).abs().max().item()
                fail(f"{label}: example {i} differs from the mean of block {layer}'s output over the response tokens "
                     f"(max abs difference {diff:.3g})")
            # batched: padding must change nothing
            with using(fn, format_messages=_ref_format_messages):
                got = _attempt(fn, m, tok, systems, questions, responses, layer, name=label)
            got = _as_float_tensor(got, label)
            check(tuple(got.shape) == (len(systems), d), f"{label}: expected shape ({len(systems)}, {d}) = [n, d_model], got {tuple(got.shape)}")
            no_hooks_left(m, label, clean=owned)
            for i in range(len(systems)):
                if not torch.allclose(got[i], expected[i], **tol):
                    fail(f"{label}: row {i} is right when the examples go one at a time but wrong when they are batched "
                         "together: mask the padding (attention_mask, and pads outside the averaged span), shift the "
                         "spans by the left padding if you pad on the left, and don't take `out[0]` of a block output "
                         "that is a tensor (that is batch row 0)")
        # an exception during the forward pass must not leave a hook behind
        blocks = get_blocks(m)

        def boom(module, args, output):
            raise _Boom("raised by the test during the forward pass")

        handle = blocks[n_blocks - 1].register_forward_hook(boom)
        try:
            with using(fn, format_messages=_ref_format_messages):
                fn(m, tok, systems, questions, responses, n_blocks - 1)
        except _Boom:
            pass
        except NotImplementedError as err:
            raise NotImplementedYet("extract_response_activations: not implemented yet") from err
        except Exception:
            pass
        finally:
            handle.remove()
        no_hooks_left(m, f"extract_response_activations on {mname}, after an exception in the forward pass,", clean=owned)
    # mismatched lengths
    m, tok = models[0][1], models[0][2]
    try:
        with using(fn, format_messages=_ref_format_messages):
            fn(m, tok, systems, questions, responses[:2], 1)
    except ValueError:
        pass
    except Exception as err:
        fail(f"extract_response_activations with lists of lengths 3, 3 and 2 should raise ValueError, raised {type(err).__name__}: {err}")
    else:
        fail("extract_response_activations with lists of lengths 3, 3 and 2 should raise ValueError (zip would silently drop an example)")
    passed("test_extract_response_activations", ", ".join(x[0] for x in models))


# ---------------------------------------------------------------------------------------------
# Exercise 1.5 -- extract_persona_vectors


class _TableExtractor:
    """Stands in for extract_response_activations: each response text has a known activation."""

    def __init__(self, personas, questions, responses, d=6, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.table = {text: torch.randn(d, generator=g, dtype=torch.float64) * 3 + 1 for text in responses.values()}
        self.owner = {text: key for key, text in responses.items()}
        self.personas, self.questions = personas, questions
        self.calls = []
        self.errors: list[str] = []

    def __call__(self, model, tokenizer, system_prompts, questions, responses, layer):
        system_prompts, questions, responses = list(system_prompts), list(questions), list(responses)
        self.calls.append((model, tokenizer, layer, len(responses)))
        if not (len(system_prompts) == len(questions) == len(responses)):
            raise ValueError("system_prompts, questions and responses must have the same length")
        rows = []
        for s, q, r in zip(system_prompts, questions, responses):
            if r not in self.table:
                self.errors.append(f"got a response that is not in `responses`: {r!r:.60}")
                rows.append(torch.zeros_like(next(iter(self.table.values()))))
                continue
            name, q_idx = self.owner[r]
            if (s or "") != self.personas[name]:
                self.errors.append(f"the response of ({name!r}, {q_idx}) came with system prompt {s!r:.50}, expected personas[{name!r}]")
            if q != self.questions[q_idx]:
                self.errors.append(f"the response of ({name!r}, {q_idx}) came with question {q!r:.50}, expected questions[{q_idx}]")
            rows.append(self.table[r])
        return torch.stack(rows).float() if rows else torch.zeros(0, 6)

    def mean(self, keys, responses):
        return torch.stack([self.table[responses[k]] for k in keys]).mean(0)


def _persona_case():
    personas, questions = PERSONAS_SMALL, QUESTIONS_SMALL
    responses = {(n, q): f"response of {n} to question {q}" for n in personas for q in range(len(questions))}
    del responses[("default", 3)]  # a failed generation: not every pair has a response
    scores = {("default", q): 3 for q in range(4)}
    scores.update({("ghost", 0): 3, ("ghost", 1): 2, ("ghost", 2): 3, ("ghost", 3): None})
    scores.update({("analyst", 0): 1, ("analyst", 1): 2, ("analyst", 2): 0, ("analyst", 3): 2})
    return personas, questions, responses, scores


def _run_persona_vectors(fn, fake, *args, label, **kwargs):
    with using(fn, extract_response_activations=fake), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _attempt(fn, *args, name=label, **kwargs)
    check(isinstance(out, dict), f"{label} should return a dict name -> vector, got {type(out).__name__}")
    for name, v in out.items():
        v = _as_float_tensor(v, f"{label}[{name!r}]")
        check(v.ndim == 1, f"{label}[{name!r}] should be a 1-D vector [d_model], got shape {tuple(v.shape)}")
        if not bool(torch.isfinite(v).all()):
            fail(f"{label}[{name!r}] contains NaN: a persona with no response passing the filter must be skipped "
                 "(with a warning), not averaged over zero rows")
    check(not fake.errors, f"{label}: {fake.errors[0] if fake.errors else ''}")
    return out, [str(w.message) for w in caught]


def _check_vectors(out, expected: dict, label: str, fake, responses) -> None:
    for name, keys in expected.items():
        check(name in out, f"{label}: persona {name!r} is missing from the result")
        want = fake.mean(keys, responses)
        got = _as_float_tensor(out[name], label)
        if torch.allclose(got, want, atol=1e-4):
            continue
        fail(f"{label}[{name!r}] should be the mean activation over its responses {sorted(q for _, q in keys)} "
             f"(the ones kept by the filter)")


def test_extract_persona_vectors(extract_persona_vectors, model=None, tokenizer=None) -> None:
    fn = extract_persona_vectors
    personas, questions, responses, scores = _persona_case()
    sentinel_model, sentinel_tok = object(), object()

    # no scores: every response counts
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=None)"
    out, _ = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7, label=label)
    check(fake.calls, f"{label} never called extract_response_activations")
    check(all(c[0] is sentinel_model and c[1] is sentinel_tok for c in fake.calls),
          f"{label}: pass the model and tokenizer on to extract_response_activations")
    check(all(c[2] == 7 for c in fake.calls), f"{label}: pass `layer` on to extract_response_activations (called with {fake.calls[0][2]!r}, expected 7)")
    check(set(out) == set(personas), f"{label}: expected a vector for every persona {sorted(personas)}, got {sorted(out)}"
          + (" (the default persona has an empty system prompt: it must still get a vector)" if "default" not in out else ""))
    _check_vectors(out, {n: [k for k in responses if k[0] == n] for n in personas}, label, fake, responses)

    # scores with the default threshold 3: >= 3 is kept, None (a judge failure) is not
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=scores, score_threshold=3)"
    out, warned = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7,
                                       scores=scores, label=label)
    if "ghost" not in out:
        fail(f"{label}: 'ghost' has two responses scored exactly 3 but got no vector: a response whose score equals "
             "score_threshold must be kept (score >= threshold, not >)")
    if torch.allclose(_as_float_tensor(out["ghost"], label), fake.mean([("ghost", q) for q in range(4)], responses), atol=1e-4):
        fail(f"{label}: the vector of 'ghost' averages all its responses: keep only those with score >= score_threshold")
    if torch.allclose(_as_float_tensor(out["ghost"], label), fake.mean([("ghost", 0), ("ghost", 2), ("ghost", 3)], responses), atol=1e-4):
        fail(f"{label}: a score of None (the judge failed) should not pass the filter")
    if "analyst" in out:
        fail(f"{label}: no response of 'analyst' has a score >= 3, so it should be skipped (with a warning) "
             "rather than given a vector")
    check(any("analyst" in w for w in warned),
          f"{label}: skipping 'analyst' (no response passed the filter) should raise a warning naming it "
          "(warnings.warn), so the loss is not silent")
    _check_vectors(out, {"default": [("default", q) for q in range(3)], "ghost": [("ghost", 0), ("ghost", 2)]},
                   label, fake, responses)
    check(set(out) == {"default", "ghost"}, f"{label}: expected vectors for ['default', 'ghost'], got {sorted(out)}")

    # a different threshold is honoured
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=scores, score_threshold=2)"
    out, _ = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7,
                                  scores=scores, score_threshold=2, label=label)
    check(set(out) == set(personas), f"{label}: with threshold 2 every persona has a response that passes; got {sorted(out)} "
          "(use the score_threshold argument, not a hard-coded 3)")
    _check_vectors(out, {"ghost": [("ghost", 0), ("ghost", 1), ("ghost", 2)], "analyst": [("analyst", 1), ("analyst", 3)]},
                   label, fake, responses)

    # end to end on a tiny model, with the default persona's empty system prompt
    m, tok = (model, tokenizer) if model is not None else tiny("tiny-gemma2")
    small = {"default": "", "ghost": PERSONAS_SMALL["ghost"]}
    qs = QUESTIONS_SMALL[:2]
    resp = {("default", 0): "I value being useful.", ("default", 1): "I answer questions all day.",
            ("ghost", 0): "I value the silence of the tide.", ("ghost", 1): "I drift between the rooms."}
    label = "extract_persona_vectors on a tiny model"
    with using(fn, extract_response_activations=_ref_extract):
        out = _attempt(fn, m, tok, small, qs, resp, 1, name=label)
    for name in small:
        check(name in out, f"{label}: persona {name!r} is missing" + (" (its system prompt is empty)" if not small[name] else ""))
        keys = [k for k in resp if k[0] == name]
        want = _ref_extract(m, tok, [small[name]] * len(keys), [qs[q] for _, q in keys], [resp[k] for k in keys], 1).mean(0)
        check(torch.allclose(_as_float_tensor(out[name], label).float(), want, **_tol(m)),
              f"{label}: the vector of {name!r} is not the mean of its response activations")
    passed("test_extract_persona_vectors")


# ---------------------------------------------------------------------------------------------
# Exercise 1.6 -- cosine similarity matrices


def _geometry(d: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    """Persona-like vectors: a big shared component plus small structure (two camps and a middle).

    Names are in a non-alphabetical order so that sorting them gives a different order."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g, dtype=torch.float64) * 40 + 25  # not constant across dims
    u = torch.randn(d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    names = ["oracle", "assistant", "ghost", "analyst", "bard", "editor", "mystic"]
    sides = {"oracle": -1.0, "assistant": 1.0, "ghost": -1.1, "analyst": 0.9, "bard": -0.8, "editor": 1.1, "mystic": -0.2}
    return {n: common + 3 * sides[n] * u + 0.8 * ((i % 3) - 1) * w + 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
            for i, n in enumerate(names)}


def _cos_matrix(X: torch.Tensor) -> torch.Tensor:
    Xn = X / X.norm(dim=1, keepdim=True)
    return Xn @ Xn.T


def _check_sim(out, vectors, expected_fn, label: str, centred: bool) -> None:
    check(isinstance(out, tuple) and len(out) == 2, f"{label} should return (sim, names), got {type(out).__name__}")
    sim, names = out
    sim = _as_float_tensor(sim, f"{label}: sim")
    names = list(names)
    n = len(vectors)
    check(sorted(names) == sorted(vectors), f"{label}: names should be the persona names {sorted(vectors)}, got {names}")
    check(tuple(sim.shape) == (n, n), f"{label}: sim should be [{n}, {n}], got {tuple(sim.shape)}")
    X = torch.stack([vectors[k].double() for k in names])
    want = expected_fn(X)
    if torch.allclose(sim, want, atol=1e-4):
        return
    in_dict_order = expected_fn(torch.stack([vectors[k].double() for k in vectors]))
    if names != list(vectors) and torch.allclose(sim, in_dict_order, atol=1e-4):
        fail(f"{label}: the rows of sim are in the order of `vectors` but names is in another order: "
             "row i and column i must belong to names[i]")
    if not torch.allclose(torch.diagonal(sim), torch.ones(n, dtype=torch.float64), atol=1e-4):
        fail(f"{label}: the diagonal should be 1 (a vector's cosine with itself): normalise each vector "
             "(dot products are not cosine similarities)")
    if centred:
        if torch.allclose(sim, _cos_matrix(X), atol=1e-4):
            fail(f"{label}: this is the raw cosine matrix: subtract the mean persona vector (over personas) first")
        if torch.allclose(sim, _cos_matrix(X - X.mean(dim=1, keepdim=True)), atol=1e-4):
            fail(f"{label}: you centred each vector by its own mean over dimensions; subtract the mean *vector* "
                 "over personas (mean over dim 0)")
    elif torch.allclose(sim, _cos_matrix(X - X.mean(dim=0, keepdim=True)), atol=1e-4):
        fail(f"{label}: the raw matrix should not be centred (that is compute_cosine_similarity_matrix_centered's job)")
    fail(f"{label}: sim[i, j] should be the cosine similarity of the vectors of names[i] and names[j] "
         f"(max abs difference {(sim - want).abs().max().item():.3g})")


def _ref_cosine_matrix(vectors):
    names = list(vectors)
    X = torch.stack([vectors[k].double() for k in names])
    return _cos_matrix(X), names


def test_compute_cosine_similarity_matrix(compute_cosine_similarity_matrix) -> None:
    vectors = _geometry()
    label = "compute_cosine_similarity_matrix"
    out = _attempt(compute_cosine_similarity_matrix, vectors, name=label)
    _check_sim(out, vectors, _cos_matrix, label, centred=False)
    out = _attempt(compute_cosine_similarity_matrix, {k: v.float() for k, v in vectors.items()}, name=label)
    sim = _as_float_tensor(out[0], label)
    check(float(sim.min()) > 0.9, f"{label}: sanity check failed on vectors that share a large component")
    passed("test_compute_cosine_similarity_matrix", f"on the test's vectors, which share a big component like real persona means, raw cosines are all >= {float(sim.min()):.3f}")


def test_compute_cosine_similarity_matrix_centered(compute_cosine_similarity_matrix_centered) -> None:
    vectors = _geometry()
    label = "compute_cosine_similarity_matrix_centered"
    with using(compute_cosine_similarity_matrix_centered, compute_cosine_similarity_matrix=_ref_cosine_matrix):
        out = _attempt(compute_cosine_similarity_matrix_centered, vectors, name=label)
        _check_sim(out, vectors, lambda X: _cos_matrix(X - X.mean(dim=0, keepdim=True)), label, centred=True)
        check(all(torch.equal(vectors[k], v) for k, v in _geometry().items()),
              f"{label} modified the vectors passed in: centre a copy")
    sim, names = out
    sim = _as_float_tensor(sim, label)
    i, j = names.index("assistant"), names.index("oracle")
    passed("test_compute_cosine_similarity_matrix_centered",
           f"on the test's vectors, after centring, cos(assistant, oracle) = {float(sim[i, j]):+.2f}")


# ---------------------------------------------------------------------------------------------
# Exercise 1.7 -- PCA and the Assistant Axis


def _pca_reference(X: torch.Tensor, centre: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    Xc = X - X.mean(0, keepdim=True) if centre else X
    U, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
    coords = Xc @ Vh[:2].T
    var = S**2 / (S**2).sum()
    return coords, var[:2]


def _same_up_to_sign(a: torch.Tensor, b: torch.Tensor, atol=1e-6) -> bool:
    if a.shape != b.shape:
        return False
    for k in range(a.shape[1]):
        s = 1.0 if float(a[:, k] @ b[:, k]) >= 0 else -1.0
        if not torch.allclose(a[:, k] * s, b[:, k], atol=atol, rtol=1e-5):
            return False
    return True


def test_pca_decompose_persona_vectors(pca_decompose_persona_vectors) -> None:
    vectors = {k: v.float() for k, v in _geometry().items()}
    defaults = ["assistant", "editor"]
    label = "pca_decompose_persona_vectors"
    out = _attempt(pca_decompose_persona_vectors, vectors, defaults, name=label)
    check(isinstance(out, tuple) and len(out) == 3, f"{label} should return (assistant_axis, pca_coords, pca), got {type(out).__name__}")
    axis, coords, pca = out
    check(isinstance(axis, torch.Tensor), f"{label}: assistant_axis should be a torch.Tensor, got {type(axis).__name__}")
    axis = axis.detach().double().cpu()
    names = list(vectors)
    X = torch.stack([vectors[k].double() for k in names])
    d_mean = torch.stack([vectors[k].double() for k in defaults]).mean(0)
    r_mean = torch.stack([vectors[k].double() for k in names if k not in defaults]).mean(0)
    want = _unit(d_mean - r_mean)
    check(tuple(axis.shape) == (X.shape[1],), f"{label}: assistant_axis should have shape ({X.shape[1]},), got {tuple(axis.shape)}")
    if not torch.allclose(axis, want, atol=1e-4):
        if torch.allclose(axis, -want, atol=1e-4):
            fail(f"{label}: the axis points the wrong way: it is mean(default) - mean(roles), pointing *toward* the Assistant")
        if torch.allclose(_unit(axis), want, atol=1e-4):
            fail(f"{label}: the axis has the right direction but norm {axis.norm().item():.3g}: normalise it to unit length")
        fail(f"{label}: assistant_axis should be (mean(default vectors) - mean(role vectors)) / its norm")
    check(hasattr(pca, "explained_variance_ratio_") and hasattr(pca, "transform"),
          f"{label}: the third value should be the fitted sklearn PCA, got {type(pca).__name__}")
    coords = _as_float_tensor(coords, f"{label}: pca_coords")
    check(tuple(coords.shape) == (len(names), 2),
          f"{label}: pca_coords should be [{len(names)}, 2], one row per persona in the order of `vectors`, got {tuple(coords.shape)}")
    ref_coords, ref_var = _pca_reference(X)
    if not _same_up_to_sign(coords, ref_coords, atol=1e-3):
        for perm_name, order in (("sorted by name", sorted(names)),
                                 ("defaults first", defaults + [n for n in names if n not in defaults])):
            idx = [names.index(n) for n in order]
            if _same_up_to_sign(coords, ref_coords[idx], atol=1e-3) and order != names:
                fail(f"{label}: pca_coords rows are {perm_name}; row i must be the persona list(vectors)[i]")
        if _same_up_to_sign(coords, _pca_reference(X, centre=False)[0], atol=1e-3):
            fail(f"{label}: the PCA was run on uncentred data: subtract the mean persona vector first (sklearn's PCA does)")
        roles = [n for n in names if n not in defaults]
        fail(f"{label}: pca_coords should be the projections of every persona (defaults and roles, {len(names)} rows) "
             "onto the first two principal components of all persona vectors"
             + (" -- fit the PCA on all personas, not only the roles" if len(roles) else ""))
    ratio = np.asarray(pca.explained_variance_ratio_, dtype=float)
    check(ratio.shape[0] >= 2 and np.allclose(ratio[:2], ref_var.numpy(), atol=1e-4),
          f"{label}: the PCA's explained_variance_ratio_ {ratio[:2]} does not match a PCA of all persona vectors {ref_var.numpy()}")
    try:
        again = np.asarray(pca.transform(X.float().numpy()))[:, :2]
    except Exception as err:
        fail(f"{label}: pca.transform on the persona vectors failed ({type(err).__name__}: {err})")
    check(np.allclose(again, coords.numpy(), atol=1e-3), f"{label}: pca_coords should equal pca.transform of the stacked vectors")
    try:
        pca_decompose_persona_vectors(vectors, ["assistant", "not_a_persona"])
    except (ValueError, KeyError):
        pass
    except Exception as err:
        fail(f"{label}: an unknown default persona name should raise ValueError, raised {type(err).__name__}: {err}")
    else:
        fail(f"{label}: an unknown default persona name should raise ValueError, not be ignored")
    pc1 = torch.as_tensor(np.asarray(pca.components_[0]), dtype=torch.float64)
    passed("test_pca_decompose_persona_vectors",
           f"on the test's vectors: PC1 explains {ratio[0]:.0%}, |cos(axis, PC1)| = {abs(float(_unit(pc1) @ axis)):.2f}")


# ---------------------------------------------------------------------------------------------
# Exercise 1.8 -- projections onto the axis


def test_project_personas_onto_axis(project_personas_onto_axis) -> None:
    vectors = {k: v.float() for k, v in _geometry().items()}
    names = list(vectors)
    X = torch.stack([vectors[k].double() for k in names])
    u = _unit(torch.stack([vectors[k].double() for k in ("assistant", "editor")]).mean(0) - X.mean(0))
    axis = (3.0 * u).float()  # deliberately not unit length
    label = "project_personas_onto_axis"
    out = _attempt(project_personas_onto_axis, vectors, axis, name=label)
    check(isinstance(out, dict), f"{label} should return a dict name -> projection, got {type(out).__name__}")
    check(set(out) == set(names), f"{label}: expected a projection for every persona {sorted(names)}, got {sorted(out)}")
    for k, v in out.items():
        check(isinstance(v, float), f"{label}: projections should be Python floats (use float(...)), got {type(v).__name__} for {k!r}")
    want = {k: float(vectors[k].double() @ axis.double() / axis.double().norm()) for k in names}
    for k in names:
        if abs(out[k] - want[k]) <= 1e-3 * (1 + abs(want[k])):
            continue
        if abs(out[k] + want[k]) <= 1e-3 * (1 + abs(want[k])):
            fail(f"{label}: the sign is flipped for {k!r}: the projection is a·v/‖v‖ with v the axis")
        if abs(out[k] - want[k] * 3.0) <= 1e-3 * (1 + abs(want[k] * 3)):
            fail(f"{label}: the projection of {k!r} is a·v, not divided by ‖v‖ (the axis given here has norm 3)")
        if abs(out[k] - want[k] / vectors[k].double().norm().item()) <= 1e-3:
            fail(f"{label}: you computed the cosine (dividing by ‖a‖ too); the projection a·v/‖v‖ keeps activation units")
        fail(f"{label}[{k!r}] = {out[k]:.4g}, expected a·v/‖v‖ = {want[k]:.4g}")
    order = list(out)
    check(order == sorted(names, key=lambda k: want[k], reverse=True),
          f"{label}: the dict should be sorted from the highest projection (most Assistant-like) to the lowest; got {order}")
    passed("test_project_personas_onto_axis")


# ---------------------------------------------------------------------------------------------
# Exercise 1.9 -- ranking vectors by cosine with the axis


def test_rank_by_cosine(rank_by_cosine) -> None:
    g = torch.Generator().manual_seed(3)
    d = 32
    axis = torch.randn(d, generator=g) * 4
    u = axis / axis.norm()
    # traits at known cosines with very different norms, so a dot product ranks them differently
    traits = {}
    for name, cos, norm in (("calm", 0.8, 1.0), ("theatrical", -0.7, 50.0), ("precise", 0.5, 30.0),
                            ("mystical", -0.2, 2.0), ("playful", 0.1, 80.0)):
        r = torch.randn(d, generator=g)
        r = r - (r @ u) * u
        r = r / r.norm()
        traits[name] = (cos * u + (1 - cos**2) ** 0.5 * r) * norm
    label = "rank_by_cosine"
    out = _attempt(rank_by_cosine, traits, axis, name=label)
    check(isinstance(out, list), f"{label} should return a list of (name, cosine) pairs, got {type(out).__name__}")
    check(all(isinstance(p, tuple) and len(p) == 2 for p in out), f"{label}: each item should be a (name, cosine) tuple")
    check(sorted(n for n, _ in out) == sorted(traits), f"{label}: expected one entry per vector {sorted(traits)}, got {[n for n, _ in out]}")
    for n, c in out:
        check(isinstance(c, float), f"{label}: cosines should be Python floats, got {type(c).__name__} for {n!r}")
    want = {n: float(torch.nn.functional.cosine_similarity(v.double(), axis.double(), dim=0)) for n, v in traits.items()}
    for n, c in out:
        if abs(c - want[n]) <= 1e-4:
            continue
        if abs(c - float(traits[n].double() @ u.double())) <= 1e-3 * (1 + abs(c)):
            fail(f"{label}: the value for {n!r} is a projection (divided by the axis norm only); a cosine divides by both norms")
        if abs(c - float(traits[n].double() @ axis.double())) <= 1e-3 * (1 + abs(c)):
            fail(f"{label}: the value for {n!r} is a dot product; a cosine divides by both norms")
        fail(f"{label}: cosine of {n!r} with the axis should be {want[n]:+.4f}, got {c:+.4f}")
    check([n for n, _ in out] == sorted(traits, key=lambda n: want[n], reverse=True),
          f"{label}: the list should be sorted by cosine, highest first; got {[n for n, _ in out]}")
    try:
        rank_by_cosine({"per_layer": torch.randn(4, d)}, axis)
    except ValueError:
        pass
    except Exception as err:
        fail(f"{label}: a vector whose shape differs from the axis (e.g. a [num_layers, d_model] tensor: select a layer "
             f"first) should raise ValueError, raised {type(err).__name__}: {err}")
    else:
        fail(f"{label}: a vector whose shape differs from the axis (e.g. a [num_layers, d_model] tensor: select a layer "
             "first) should raise ValueError")
    passed("test_rank_by_cosine")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
