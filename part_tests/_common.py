"""Shared machinery of the per-exercise tests: friendly failures, tiny fixtures, dependency isolation.

Every test function takes the student's object first and raises AssertionError with a message
that says what is wrong; on success it prints one line. Student functions are called through
`call`, which hands the tests plain values (`plain`): no check runs code of a subclass the student wrote.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable

import torch

from part_tests._guard import changed_since, fingerprint


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


def exercise(number: str, target: str) -> Callable[[Callable], Callable]:
    """Mark a test as the test of Exercise `number` ("2.7"), run on the student's object `target`
    (the name of the function or class the exercise asks for, e.g. "ActivationCapper").

    `tests/test_exercises.py` reads these marks to hand each test the reference solution and the stub::

        @exercise("2.7", "ActivationCapper")
        def test_activation_capper(ActivationCapper, model=None, tokenizer=None) -> None: ...
    """

    def mark(test: Callable) -> Callable:
        test.exercise, test.target = number, target
        return test

    return mark


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


def call(fn: Callable, *args, name: str | None = None, _fingerprint=fingerprint, _changed_since=changed_since,
         **kwargs):
    """Call the student's function; a NotImplementedError becomes a friendly 'not implemented yet'.

    The functions the tests check with (the course's test and utility modules, the libraries, the
    interpreter's hooks) must be the same objects when the function returns: a function that switched
    a check off, even one that would switch it back on later, fails here. What the function returned
    goes through `plain` next, so every check after it compares plain values (a tensor, a float, a
    list ...) and never runs methods of a subclass the student wrote.
    """
    label = name or getattr(fn, "__name__", "your function")
    require_implemented(fn, label)
    before = _fingerprint()
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError as err:
        raise NotImplementedYet(
            f"{label}: not implemented yet -- replace the `raise NotImplementedError` in the cell above with your code."
        ) from err
    finally:
        changed = _changed_since(before)
        if changed:
            raise AssertionError(
                f"{label} replaced {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''} while it ran: a "
                "function under test must compute its answer, not change the tests' or the libraries' functions")
    if isinstance(fn, type) and type(out) is fn:  # an instance of the student's own class: the test drives it
        return out
    return plain(out, label)


# Types whose instances are kept as they are (exact type only: a subclass is converted or refused).
_KEEP = (type(None), type(Ellipsis), bool, bytes, complex, range, slice, torch.Size, torch.dtype, torch.device)
# A plain subclass of one of these becomes the base type, its value read through the base type's methods.
_SCALARS = ((int, int.__int__), (float, float.__float__), (str, str.__str__),
            (complex, lambda x: complex(complex.real.__get__(x), complex.imag.__get__(x))),
            (bytes, lambda x: bytes.__getitem__(x, slice(None))))
# Attributes that make an object look like a number, an array, a tensor or a container (and answer
# comparisons): an object of another type that has one is refused.
_NUMERIC_HOOKS = ("__float__", "__int__", "__index__", "__complex__", "__array__", "__array_interface__",
                  "__array_struct__", "__array_ufunc__", "__array_function__", "__torch_function__",
                  "__torch_dispatch__", "__dlpack__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__",
                  "__bool__", "__len__", "__iter__", "__getitem__", "__contains__", "keys", "items", "values")


_ARGUMENT = "\0argument of "  # a label that starts so names what the student's code passed to a stand-in


def _said(label: str) -> str:
    return f"your code passed {label[len(_ARGUMENT):]}" if label.startswith(_ARGUMENT) else f"{label} returned"


def _verb(label: str) -> str:
    return "pass" if label.startswith(_ARGUMENT) else "return"


def _refuse(x: Any, label: str, what: str) -> None:
    t = type(x)
    bases = ", ".join(f"{b.__module__}.{b.__qualname__}" if b.__module__ != "builtins" else b.__qualname__
                      for b in t.__mro__[1:-1]) or "object"
    raise AssertionError(f"{_said(label)} a {t.__module__}.{t.__qualname__} (a subclass of {bases}); {_verb(label)} a plain {what}")


def _plain_tensor(x: torch.Tensor, label: str) -> torch.Tensor:
    if type(x) is not torch.Tensor and type(x) is not torch.nn.Parameter:
        # as_subclass, called on the base class with torch-function handling switched off, aliases
        # the same data as a plain Tensor without running any override of the subclass.
        with torch._C.DisableTorchFunction():
            x = torch.Tensor.as_subclass(x, torch.Tensor)
    keys = str(torch._C._dispatch_keys(x))
    if "Python" in keys or "Functionalize" in keys:
        _refuse(x, label, "torch.Tensor (a tensor whose operations run Python code cannot be checked)")
    with torch._C.DisableTorchFunction():
        device, layout = torch.Tensor.device.__get__(x), torch.Tensor.layout.__get__(x)
    if device.type == "meta":
        raise AssertionError(f"{_said(label)} a tensor on the meta device, which holds no values; {_verb(label)} a tensor "
                             "with its values (on the CPU or the model's device)")
    if layout != torch.strided:
        raise AssertionError(f"{_said(label)} a {layout} tensor; {_verb(label)} a plain dense torch.Tensor (x.to_dense())")
    return x


@functools.lru_cache(maxsize=1)
def _numpy_scalar_types() -> frozenset:
    import numpy as np

    return frozenset(t for t in np.sctypeDict.values() if isinstance(t, type))


def plain(x: Any, label: str = "your function", strict: bool = True) -> Any:
    """`x` with every subclass of a tensor, number, string or container replaced by its plain base type.

    A torch.Tensor subclass becomes a torch.Tensor sharing its data, a float subclass a float, a
    list/tuple/dict subclass a list/tuple/dict of plain values (recursively); values are read through
    the base type's own methods, never through the subclass's overrides, so an object cannot answer
    the checks differently from the value it holds. A plain container whose items are all plain is
    returned itself (`is` still tells whether a function handed back, or shared, a list), and one
    object met twice becomes one object. An exact numpy array or scalar is kept; an object that
    pretends to be a number, an array, a tensor or a container fails with an AssertionError that
    names it. Any other object (an instance of a class the exercise asks for) is returned as it is.

    With `strict=False` (the arguments a student's code hands to the tests' stand-ins, which include
    models and tokenizers) an object of another type is passed on as it is unless it fakes its class,
    and the library's own containers (a transformers ModelOutput, torch's named tuples) are kept.
    """
    return _plain(x, label, 0, {}, strict)


def _plain(x: Any, label: str, depth: int, memo: dict, strict: bool = True) -> Any:
    if depth > 50:
        raise AssertionError(f"{_said(label)} a structure nested more than 50 levels deep")
    t = type(x)
    if t in _KEEP or t is int or t is float or t is str:
        return x
    if id(x) in memo:
        return memo[id(x)][1]
    out = _plain_new(x, t, label, depth, memo, strict)
    memo[id(x)] = (x, out)  # keeps x alive, so that its id is not reused while converting
    return out


def _plain_new(x: Any, t: type, label: str, depth: int, memo: dict, strict: bool) -> Any:
    sub = lambda v: _plain(v, label, depth + 1, memo, strict)  # noqa: E731
    if issubclass(t, torch.Tensor):
        return _plain_tensor(x, label)
    import numpy as np

    if t is np.ndarray and np.ndarray.dtype.__get__(x).kind == "O":
        raise AssertionError(f"{_said(label)} a numpy array of Python objects; {_verb(label)} a torch.Tensor, or numbers")
    if t in _numpy_scalar_types() or t is np.ndarray:  # numpy's own scalars (numpy.float64 ...) and arrays
        return x
    for base, read in _SCALARS:
        if issubclass(t, base):
            return read(x)
    if not strict and t.__module__.split(".")[0] in ("torch", "transformers"):
        return x
    if issubclass(t, dict):
        items = [(k, v, sub(k), sub(v)) for k, v in dict.items(x)]
        if t is dict and all(k is pk and v is pv for k, v, pk, pv in items):
            return x
        return {pk: pv for _, _, pk, pv in items}
    if issubclass(t, (list, tuple)):
        base = list if issubclass(t, list) else tuple
        items = [base.__getitem__(x, i) for i in range(base.__len__(x))]
        new = [sub(v) for v in items]
        if t is base and all(a is b for a, b in zip(items, new)):
            return x
        return base(new)
    if issubclass(t, (set, frozenset)):
        base = frozenset if issubclass(t, frozenset) else set
        items = list(base.__iter__(x))
        new = [sub(v) for v in items]
        if t is base and all(a is b for a, b in zip(items, new)):
            return x
        return base(new)
    if issubclass(t, np.ndarray):
        _refuse(x, label, "value (a torch.Tensor, a float, a list ...; np.asarray(x) for a numpy array)")
    if issubclass(t, np.generic):
        _refuse(x, label, "number")
    try:
        cls = object.__getattribute__(x, "__class__")
    except Exception:
        cls = None
    if cls is not t:
        raise AssertionError(f"{_said(label)} a {t.__qualname__} that claims to be {getattr(cls, '__qualname__', cls)}; "
                             f"{_verb(label)} a plain value (a torch.Tensor, a float, a list ...)")
    import dataclasses
    import inspect

    if dataclasses.is_dataclass(t) and t.__module__.startswith("utils."):  # a course type: plain fields
        fields = {f.name: object.__getattribute__(x, f.name) for f in dataclasses.fields(t) if f.init}
        new = {k: sub(v) for k, v in fields.items()}
        return x if all(new[k] is v for k, v in fields.items()) else dataclasses.replace(x, **new)
    if not strict or inspect.isclass(x) or inspect.ismodule(x) or inspect.isfunction(x) or inspect.ismethod(x):
        return x
    fakes = [h for h in _NUMERIC_HOOKS if inspect.getattr_static(t, h, None) not in (None, getattr(object, h, None))]
    if "shape" not in fakes and not isinstance(x, torch.nn.Module) and inspect.getattr_static(x, "shape", None) is not None:
        fakes.append("shape")
    if fakes:
        raise AssertionError(f"{_said(label)} a {t.__module__}.{t.__qualname__}, which acts like a number, an array, a "
                             f"tensor or a container ({', '.join(fakes)}) without being one; {_verb(label)} a plain torch.Tensor, "
                             "float, int, str, list, tuple or dict")
    return x


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
    # A stand-in gets plain arguments: a str subclass the student's code passes to a fake judge
    # cannot answer the test's == for the prompt it holds.
    objects = {k: _plain_arguments(v, k) for k, v in objects.items()}
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


def _plain_arguments(obj: Any, name: str) -> Any:
    """`obj` (a function or a callable stand-in) called with its arguments made plain; classes and modules as they are."""
    import inspect

    if not callable(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
        return obj

    @functools.wraps(obj)
    def stand_in(*args, **kwargs):
        label = _ARGUMENT + name
        return obj(*plain(args, label, strict=False), **plain(kwargs, label, strict=False))

    return stand_in


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
