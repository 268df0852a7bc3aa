"""Shared machinery of the per-exercise tests: friendly failures, tiny fixtures, dependency isolation.

Every test function takes the student's object first and raises AssertionError with a message
that says what is wrong; on success it prints one line.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable

import torch


class TestFailure(AssertionError):
    """A failed check. In Jupyter it shows as its message alone, not as a traceback through the test."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook for exceptions that render themselves
        return [f"\x1b[31m\u2717 {line}\x1b[0m" if i == 0 else f"  {line}" for i, line in enumerate(str(self).splitlines() or [""])]


class NotImplementedYet(TestFailure):
    """The student's function still raises NotImplementedError (or the name is still a stub)."""


def friendly(test: Callable) -> Callable:
    """Wrap a test so that its AssertionError reaches the notebook as a short TestFailure."""
    if getattr(test, "_friendly", False):
        return test

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        try:
            return test(*args, **kwargs)
        except TestFailure:
            raise
        except AssertionError as err:
            raise TestFailure(str(err)) from None

    wrapper._friendly = True
    return wrapper


def friendly_tests(namespace: dict) -> None:
    """Wrap every `test_*` function of a section's test module (call at the end of the module)."""
    for name, obj in list(namespace.items()):
        if name.startswith("test_") and callable(obj):
            namespace[name] = friendly(obj)


def fail(message: str) -> None:
    raise AssertionError(message)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def passed(name: str, detail: str = "") -> None:
    print(f"\u2713 {name}: all checks passed" + (f" ({detail})" if detail else ""))


def require_implemented(obj: Any, name: str) -> None:
    if obj is None or obj is Ellipsis:
        raise NotImplementedYet(f"{name}: not implemented yet -- fill in the cell above, run it, then run this test again.")


def call(fn: Callable, *args, name: str | None = None, **kwargs):
    """Call the student's function; a NotImplementedError becomes a friendly 'not implemented yet'."""
    label = name or getattr(fn, "__name__", "your function")
    require_implemented(fn, label)
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        raise NotImplementedYet(
            f"{label}: not implemented yet -- replace the `raise NotImplementedError` in the cell above with your code."
        ) from err


def expect_value_error(fn: Callable, *args, name: str, what: str) -> None:
    """The student's function must reject bad input (`what`) with a ValueError."""
    try:
        fn(*args)
    except ValueError:
        return
    except NotImplementedError as err:
        raise NotImplementedYet(
            f"{name}: not implemented yet -- replace every `raise NotImplementedError` in the cell above with your code."
        ) from err
    except Exception as err:
        fail(f"{name} should raise ValueError for {what}, got {type(err).__name__}: {err}")
    fail(f"{name} should raise ValueError for {what}")


@contextmanager
def using(fn: Any, **objects):
    """Run with some names in the student's notebook namespace replaced by reference objects.

    Each test checks one exercise: when the student's function calls a function from an earlier
    exercise (looked up in the notebook's globals), we put the course's version there for the
    duration of the test, so an earlier mistake is not charged twice.
    """
    import inspect

    # A decorated function (@torch.inference_mode(), functools.wraps) looks its names up in the
    # globals of the function it wraps, not in the decorator's module.
    namespace = getattr(inspect.unwrap(fn), "__globals__", None) if callable(fn) else None
    if namespace is None and hasattr(fn, "__init__"):
        namespace = getattr(fn.__init__, "__globals__", None)
    if namespace is None:
        yield
        return
    missing = object()
    saved = {k: namespace.get(k, missing) for k in objects}
    try:
        namespace.update(objects)
        yield
    finally:
        for k, v in saved.items():
            if v is missing:
                namespace.pop(k, None)
            else:
                namespace[k] = v


@functools.lru_cache(maxsize=None)
def tiny(name: str = "tiny-qwen2", dtype: torch.dtype = torch.float32):
    """A tiny offline model and tokenizer (cached; never modified by the tests).

    `dtype=torch.bfloat16` gives the same weights in half precision, as real models run on a GPU:
    a result left in bf16, or a hook that changes the hidden state's dtype, shows there.
    """
    from utils.models import load_tiny_model

    model, tokenizer = load_tiny_model(name)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model, tokenizer


# Chat templates that break assumptions the course's own tiny templates happen to satisfy. Each
# uses only tiny-qwen2's vocabulary, so the tiny model runs them.
TEMPLATE_VARIANTS = {
    # Qwen3-style: the *final* assistant turn carries an (empty) thinking block that earlier
    # assistant turns lose, so rendering a prefix of a conversation is not a prefix of rendering it all.
    "qwen3": (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'assistant' and loop.last -%}"
        "{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' + message['content'] + '<|im_end|>\n' -}}"
        "{%- else -%}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' -}}{%- endif -%}"
    ),
    # Llama-3-style: a BOS token first, headers followed by a blank line, and a one-token end of turn
    # (no newline after it).
    "llama3": (
        "{{- '<|endoftext|>' -}}"
        "{%- for message in messages -%}"
        "{{- '<|im_start|>' + message['role'] + '\n\n' + message['content'] | trim + '<|im_end|>' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n\n' -}}{%- endif -%}"
    ),
}


@functools.lru_cache(maxsize=None)
def tiny_variant(kind: str):
    """tiny-qwen2's model with a tokenizer whose chat template is one of TEMPLATE_VARIANTS."""
    if kind not in TEMPLATE_VARIANTS:
        raise ValueError(f"unknown template variant {kind!r}; choose one of {sorted(TEMPLATE_VARIANTS)}")
    from utils.models import load_tokenizer

    model, _ = tiny("tiny-qwen2")
    tokenizer = load_tokenizer("tiny-qwen2")  # a fresh copy: the shared tokenizer keeps its template
    tokenizer.chat_template = TEMPLATE_VARIANTS[kind]
    return model, tokenizer


def model_or_tiny(model, tokenizer, name: str = "tiny-qwen2"):
    """The student's model, or the cached tiny model cleared of any hook a failed run left on it."""
    if model is None or tokenizer is None:
        model, tokenizer = tiny(name)
        remove_leftover_hooks(model)
    return model, tokenizer


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol)


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")


def remove_leftover_hooks(model) -> int:
    """Remove the hooks user code left on the model (transformers' own stay); return how many.

    The tests share cached tiny models: a hook left by one wrong run must not fail every later test
    once the student has fixed their code.
    """
    from utils.hooks import _is_ours

    removed = 0
    for m in model.modules():
        for hooks_dict in (m._forward_hooks, m._forward_pre_hooks):
            for key, fn in list(hooks_dict.items()):
                if _is_ours(fn):
                    del hooks_dict[key]
                    removed += 1
                    for extra in _HOOK_DICTS[1:]:
                        d = getattr(m, extra, None)
                        if isinstance(d, dict):
                            d.pop(key, None)
    return removed


def no_hooks_left(model, name: str, clean: bool = True) -> None:
    """Fail if user code left hooks on the model; with `clean`, remove them first (shared models)."""
    from utils.hooks import count_hooks

    n = count_hooks(model)
    if n and clean:
        remove_leftover_hooks(model)
    check(n == 0, f"{name} left {n} hook(s) on the model: remove them when you are done, in a `finally:` "
                  "block or with a context manager")


@contextmanager
def hook_guard(model, name: str, clean: bool = True):
    """Fail if the code inside leaves hooks on the model (removing them, with `clean`)."""
    from utils.hooks import count_hooks

    before = count_hooks(model)
    try:
        yield
    finally:
        leaked = count_hooks(model) - before
        if leaked and clean:
            remove_leftover_hooks(model)
    check(leaked <= 0, f"{name} left {leaked} hook(s) on the model: remove them when you are done, in a `finally:` "
                       "block or with a context manager such as `hooks(...)` or `Steerer(...)`")
