"""A wrong answer dressed up as the right one fails every exercise test; correct answers of other plain types pass.

Each exercise test gets the reference solution wrapped so that it returns a WRONG value (tensors
negated and shifted, numbers shifted, strings changed, containers filled with wrong values) held in an
object that lies to the checks: it knows the correct value and answers every operation a test could
use (torch.allclose, ==, -, abs, max, item, float(), len, iteration, keys ...) with the correct one.
The kinds of liar:

- `tensor_torch_function`: a torch.Tensor subclass whose __torch_function__ computes every torch
  operation (and .shape, .dtype, ...) on the correct tensor;
- `tensor_methods`: a torch.Tensor subclass overriding ==, -, abs, <, max, item, tolist, float ...;
- `scalar_subclass`: float / int / str subclasses whose every method answers for the correct value
  (bool, which cannot be subclassed, becomes an int subclass);
- `container_subclass`: list / tuple / dict subclasses holding wrong items whose __eq__, __len__,
  __getitem__, __iter__, keys, items ... answer for the correct container;
- `stateful_number`: objects whose __float__ / __int__ / __index__ / __bool__ give the correct value
  on the first call and a wrong one after;
- `fake_class`: proxies that answer everything for the correct value and claim its __class__;
- `fake_shape`: objects with the correct tensor's .shape / .dtype that delegate to it, without
  being a tensor;
- `ndarray_subclass`: numpy ndarray subclasses delegating every ufunc and operator to the correct value;
- `meta_tensor`: tensors on the meta device (correct shape and dtype, no values).

The liar holds the wrong value wherever its kind fits (every tensor, every number, the outer
container ...), everything else stays correct; a kind that fits nothing a function returns is skipped.
ConversationAnalyzer's methods are attacked like functions. ActivationCapper and ActivationSteerer
hand back only themselves: their work is a forward hook whose output goes into the model, so their
tests are skipped in the matrix (test_hooks_that_return_lying_tensors_fail dresses their hooks'
outputs instead), as are the input-check tests, which look at no returned value (a test is skipped
when the plain wrong value passes it).

Every test function is attacked by every kind that fits (the tiny models make most runs take a
fraction of a second), except the slowest, Section 4's test_run_trait_pipeline (the whole pipeline,
several seconds a run), which gets a representative subset (`SUBSET`): one liar for each way a value
is made plain (tensor subclass, number subclass, container subclass, an object faking its class) and
two legitimate variants. A wrong value that fails its test when returned plainly is required, so
each attack really tests the dressing.

Legitimate variants must keep passing: a tensor answer as a non-contiguous copy or as a view of a
larger tensor; where the test accepted them before, a float32 answer in float64, a tensor that
requires grad, a list answer as a tuple, a float answer as a numpy.float64 (a float subclass from
numpy) or numpy.float32 (`_REJECTED_BEFORE` lists the variants each test rejected, on purpose,
before return values were made plain).

`python tests/test_return_values.py` prints the whole matrix.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import sys

import numpy as np
import pytest
import torch
from torch.utils._pytree import tree_map

from utils.reference import load, sections

SECTION_MODULES = {name: name.split("_")[0] for name in sections()}

KINDS = ("tensor_torch_function", "tensor_methods", "scalar_subclass", "container_subclass", "stateful_number",
         "fake_class", "fake_shape", "ndarray_subclass", "meta_tensor")
# The slowest test gets a representative subset of the kinds (see the docstring).
SUBSET = {"section4.test_run_trait_pipeline": ("tensor_torch_function", "scalar_subclass", "container_subclass",
                                               "fake_class", "noncontiguous", "numpy_float64")}
LEGIT = ("noncontiguous", "view", "float64", "requires_grad", "tuple_for_list", "numpy_float64", "numpy_float32")


# ---------------------------------------------------------------- wrong values

def wrong(x):
    """A value of the same structure and types as `x` that a test must reject."""
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool:
            return ~x
        if x.is_floating_point():
            return -x - 1.0
        return x + 1
    if isinstance(x, bool):
        return not x
    if isinstance(x, (int, float)):
        return -x - 1
    if isinstance(x, str):
        return x[::-1] + " [wrong]" if x else "[wrong]"
    if isinstance(x, list):
        return [wrong(v) for v in x] or [0]
    if isinstance(x, tuple):
        return tuple(wrong(v) for v in x)
    if isinstance(x, dict):
        return {k: wrong(v) for k, v in x.items()} or {"wrong": 0}
    return x


# ---------------------------------------------------------------- liars

def _correct(x):
    return x._lie_correct if isinstance(x, (TorchFunctionLiar, MethodLiar)) else x


class TorchFunctionLiar(torch.Tensor):
    """Holds wrong data; every torch function sees the correct tensor instead."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        args, kwargs = tree_map(_correct, (args, kwargs or {}))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


_TENSOR_METHODS = ("__eq__", "__ne__", "__sub__", "__rsub__", "__add__", "__radd__", "__mul__", "__rmul__",
                   "__truediv__", "__matmul__", "__rmatmul__", "__abs__", "__neg__", "__lt__", "__le__", "__gt__",
                   "__ge__", "__getitem__", "__len__", "__iter__", "__float__", "__int__", "__bool__", "__index__",
                   "max", "min", "item", "tolist", "float", "double", "to", "cpu", "detach", "clone", "abs", "sum",
                   "mean", "norm", "numpy", "all", "any", "eq", "sub", "allclose", "equal", "isclose", "flatten",
                   "view", "reshape", "contiguous", "squeeze", "unsqueeze", "size", "dim")


def _tensor_method(name):
    def method(self, *args, **kwargs):
        args, kwargs = tree_map(_correct, (args, kwargs))
        return getattr(self._lie_correct, name)(*args, **kwargs)
    return method


MethodLiar = type("MethodLiar", (torch.Tensor,), {n: _tensor_method(n) for n in _TENSOR_METHODS})
MethodLiar.__hash__ = torch.Tensor.__hash__


def _tensor_liar(cls, correct, bad):
    t = bad.detach().clone().as_subclass(cls)
    t._lie_correct = correct
    return t


_SKIP = {"__new__", "__init__", "__getattribute__", "__getattr__", "__setattr__", "__delattr__", "__class__",
         "__init_subclass__", "__subclasshook__", "__reduce__", "__reduce_ex__", "__getnewargs__", "__getstate__",
         "__dir__", "__sizeof__", "__class_getitem__", "__doc__", "__new__", "__setstate__"}


def _delegate(name):
    def method(self, *args, **kwargs):
        return getattr(object.__getattribute__(self, "_lie_correct"), name)(*args, **kwargs)
    return method


_DELEGATING = {}


def delegating(base):
    """A subclass of `base` whose every method answers for the instance's `_lie_correct`."""
    if base not in _DELEGATING:
        ns = {n: _delegate(n) for n in dir(base) if n not in _SKIP and callable(getattr(base, n, None))}
        _DELEGATING[base] = type(f"Lying{base.__name__.capitalize()}", (base,), ns)
    return _DELEGATING[base]


def _sub_liar(correct, bad):
    base = int if type(correct) is bool else type(correct)
    obj = delegating(base)(bad)
    obj._lie_correct = correct
    return obj


class Stateful:
    """A number that is right the first time it is read and wrong afterwards."""

    def __init__(self, correct, bad):
        self._values, self._calls = (correct, bad), 0

    def _next(self, conv):
        v = self._values[min(self._calls, 1)]
        self._calls += 1
        return conv(v)

    def __float__(self):
        return self._next(float)

    def __int__(self):
        return self._next(int)

    def __index__(self):
        return self._next(int)

    def __bool__(self):
        return self._next(bool)

    def __eq__(self, other):
        return True

    __hash__ = object.__hash__

    def __repr__(self):
        return repr(self._values[0])


_PROXY_DUNDERS = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__", "__len__", "__iter__",
                  "__getitem__", "__contains__", "__float__", "__int__", "__index__", "__bool__", "__abs__", "__neg__",
                  "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
                  "__matmul__", "__rmatmul__", "__round__", "__format__", "__repr__", "__str__", "__array__")


def _proxy_class(fake_class: bool):
    ns = {n: _delegate(n) for n in _PROXY_DUNDERS}
    ns["__init__"] = lambda self, correct: object.__setattr__(self, "_lie_correct", correct)
    ns["__getattr__"] = lambda self, name: getattr(object.__getattribute__(self, "_lie_correct"), name)

    def torch_function(cls, func, types, args=(), kwargs=None):
        unwrap = lambda x: object.__getattribute__(x, "_lie_correct") if type(x) is cls else x  # noqa: E731
        args, kwargs = tree_map(unwrap, (args, kwargs or {}))
        return func(*args, **kwargs)

    ns["__torch_function__"] = classmethod(torch_function)
    if fake_class:
        ns["__class__"] = property(lambda self: type(object.__getattribute__(self, "_lie_correct")))
    return type("FakeClass" if fake_class else "FakeShape", (), ns)


FakeClass, FakeShape = _proxy_class(True), _proxy_class(False)


class NdarrayLiar(np.ndarray):
    """Holds wrong numbers; every ufunc, numpy function and conversion sees the correct ones."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        unwrap = lambda x: np.asarray(x._lie_correct) if isinstance(x, NdarrayLiar) else x  # noqa: E731
        return getattr(ufunc, method)(*[unwrap(i) for i in inputs], **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        unwrap = lambda x: np.asarray(x._lie_correct) if isinstance(x, NdarrayLiar) else x  # noqa: E731
        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))

    for _n in ("__float__", "__int__", "__index__", "__bool__", "item", "tolist", "__eq__", "__ne__", "__lt__",
               "__le__", "__gt__", "__ge__", "__sub__", "__rsub__", "__abs__", "__len__", "__iter__", "__getitem__"):
        locals()[_n] = (lambda n: lambda self, *a, **k: getattr(np.asarray(self._lie_correct), n)(*a, **k))(_n)
    del _n
    __hash__ = None


def _ndarray_liar(correct, bad):
    c = correct.detach().cpu().numpy() if isinstance(correct, torch.Tensor) else np.asarray(correct)
    b = bad.detach().cpu().numpy() if isinstance(bad, torch.Tensor) else np.asarray(bad)
    arr = np.array(b).view(NdarrayLiar)
    arr._lie_correct = c
    return arr


def _is_number(x):
    return type(x) in (int, float, bool)


def lie(kind: str, correct, bad):
    """`bad` dressed by the liar `kind` (which knows `correct`); None where the kind fits nothing."""
    if kind == "container_subclass":
        if type(correct) in (list, tuple, dict) and len(correct):
            obj = delegating(type(correct))(bad)
            obj._lie_correct = correct
            return obj
        return None
    fits = {
        "tensor_torch_function": lambda c: isinstance(c, torch.Tensor),
        "tensor_methods": lambda c: isinstance(c, torch.Tensor),
        "scalar_subclass": lambda c: type(c) in (int, float, bool, str),
        "stateful_number": _is_number,
        "fake_class": lambda c: isinstance(c, torch.Tensor) or type(c) in (int, float, bool, str),
        "fake_shape": lambda c: isinstance(c, torch.Tensor),
        "ndarray_subclass": lambda c: isinstance(c, torch.Tensor) or type(c) in (int, float),
        "meta_tensor": lambda c: isinstance(c, torch.Tensor),
    }[kind]
    make = {
        "tensor_torch_function": lambda c, b: _tensor_liar(TorchFunctionLiar, c, b),
        "tensor_methods": lambda c, b: _tensor_liar(MethodLiar, c, b),
        "scalar_subclass": _sub_liar,
        "stateful_number": Stateful,
        "fake_class": lambda c, b: FakeClass(c),
        "fake_shape": lambda c, b: FakeShape(c),
        "ndarray_subclass": _ndarray_liar,
        "meta_tensor": lambda c, b: torch.empty_like(c, device="meta"),
    }[kind]
    hit = [False]

    def walk(c, b):
        if fits(c):
            hit[0] = True
            return make(c, b)
        if type(c) in (list, tuple) and type(b) is type(c) and len(b) == len(c):
            return type(c)(walk(x, y) for x, y in zip(c, b))
        if type(c) is dict and type(b) is dict and set(b) == set(c):
            return {k: walk(c[k], b[k]) for k in c}
        return c  # only what the liar dresses is wrong

    out = walk(correct, bad)
    return out if hit[0] else None


def legit(kind: str, correct):
    """A correct answer in another legitimate form; None where the form fits nothing."""
    hit = [False]

    def walk(c):
        if isinstance(c, torch.Tensor) and c.is_floating_point() and kind in ("float64", "requires_grad"):
            hit[0] = True
            return c.double() if kind == "float64" else c.detach().clone().requires_grad_(True)
        if isinstance(c, torch.Tensor) and c.dim() >= 1 and kind in ("noncontiguous", "view"):
            hit[0] = True
            if kind == "view":
                return torch.stack([c, c])[1]
            if c.dim() == 1:
                return torch.stack([c, c], dim=1)[:, 0]
            return c.transpose(0, 1).contiguous().transpose(0, 1)
        if type(c) is float and kind in ("numpy_float64", "numpy_float32"):
            hit[0] = True
            return np.float64(c) if kind == "numpy_float64" else np.float32(c)
        if type(c) is list:
            items = [walk(x) for x in c]
            if kind == "tuple_for_list":
                hit[0] = True
                return tuple(items)
            return items
        if type(c) is tuple:
            return tuple(walk(x) for x in c)
        if type(c) is dict:
            return {k: walk(v) for k, v in c.items()}
        return c

    out = walk(correct)
    return out if hit[0] else None


# ---------------------------------------------------------------- wrapping the reference

class _Skip(Exception):
    """The transformation fits nothing this function returns."""


def _transform_fn(fn, transform):
    @functools.wraps(fn)  # the tests look up the exercise's notebook globals (and signature) through __wrapped__
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        new = transform(out)
        return out if new is None else new
    return wrapper


def wrap(ref_obj, transform):
    """The reference exercise (function, class or constant) with `transform` applied to what it returns."""
    if inspect.isclass(ref_obj):
        ns = {}
        for name, member in vars(ref_obj).items():
            if not name.startswith("_") and inspect.isfunction(member):
                ns[name] = (lambda m: lambda self, *a, **k: _transform_fn(m.__get__(self), transform)(*a, **k))(member)
        return type(ref_obj.__name__, (ref_obj,), ns) if ns else None
    if callable(ref_obj):
        return _transform_fn(ref_obj, transform)
    return transform(ref_obj)


def attack(kind):
    """transform(correct) -> the wrong value dressed by liar `kind` (None: fits nothing)."""
    return lambda out: lie(kind, out, wrong(out))


def _cases():
    from tests.catalogue import targets

    for full, short in SECTION_MODULES.items():
        for test_name, ref_name in targets(short).items():
            yield full, short, test_name, ref_name


CASES = list(_cases())


def run(short, test_name, student):
    """'pass', or the exception's type and message."""
    test = getattr(importlib.import_module(f"part_tests.{short}"), test_name)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            test(student)
        return "pass"
    except Exception as err:  # noqa: BLE001 -- the attack's report wants every failure
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"


_fires: dict = {}


def _probe(full, ref_name, transform):
    """wrap() that records whether the transformation changed anything the test saw."""
    fired = [False]

    def recording(out):
        new = transform(out)
        if new is not None:
            fired[0] = True
        return new

    return wrap(getattr(load(full), ref_name), recording), fired


def _kinds(short, test_name, kinds):
    subset = SUBSET.get(f"{short}.{test_name}")
    return [k for k in kinds if subset is None or k in subset]


def _ids(rows):
    return [f"{r[1]}.{r[2]}" for r in rows]


@pytest.mark.parametrize("full,short,test_name,ref_name", CASES, ids=_ids(CASES))
def test_lying_return_values_fail(full, short, test_name, ref_name):
    student, fired = _probe(full, ref_name, lambda out: wrong(out) if wrong(out) is not out else None)
    if student is None:
        pytest.skip("nothing to wrap")
    plain_result = run(short, test_name, student)
    if not fired[0]:
        pytest.skip("the test reads no return value of the exercise")
    if plain_result == "pass":
        pytest.skip("the test does not look at the value that was changed (input checks)")
    fooled, unclear = [], []
    for kind in _kinds(short, test_name, KINDS):
        student, fired = _probe(full, ref_name, attack(kind))
        result = run(short, test_name, student)
        if fired[0] and result == "pass":
            fooled.append(kind)
        elif fired[0] and not result.startswith(("TestFailure", "AssertionError", "NotImplementedYet")):
            unclear.append(f"{kind}: {result}")
    assert not fooled, f"{short}.{test_name} passes a wrong answer dressed as {fooled}"
    assert not unclear, f"{short}.{test_name} fails a dressed-up wrong answer with an error, not a message: {unclear}"


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
@pytest.mark.parametrize("full,short,test_name,ref_name", CASES, ids=_ids(CASES))
def test_legitimate_variants_pass(full, short, test_name, ref_name):
    rejected = []
    for kind in _kinds(short, test_name, LEGIT):
        if kind in _REJECTED_BEFORE.get(f"{short}.{test_name}", ()):
            continue
        student, fired = _probe(full, ref_name, lambda out, kind=kind: legit(kind, out))
        if student is None:
            continue
        result = run(short, test_name, student)
        if fired[0] and result != "pass":
            rejected.append(f"{kind}: {result}")
    assert not rejected, f"{short}.{test_name} rejects a correct answer: {rejected}"


# Legitimate-looking variants these tests rejected before return values were made plain (on
# purpose: the exercise asks for that type); they may keep rejecting them.
_REJECTED_BEFORE: dict[str, tuple[str, ...]] = {
    # the dtype must follow the model's; the stub's @torch.inference_mode() keeps autograd off
    "section1.test_extract_response_activations": ("float64", "requires_grad"),
    "section1.test_project_personas_onto_axis": ("numpy_float32",),
    "section1.test_rank_by_cosine": ("tuple_for_list", "numpy_float32"),
    "section2.test_record_hidden_shapes": ("tuple_for_list",),
    "section2.test_conversation_analyzer": ("float64", "numpy_float32"),
    "section2.test_compute_capping_threshold": ("numpy_float32",),
    "section2.test_run_capping_experiment": ("tuple_for_list",),
    "section3.test_generate_contrastive_responses": ("tuple_for_list",),
    "section3.test_filter_effective_pairs": ("tuple_for_list",),
    "section3.test_extract_all_layer_activations": ("float64", "requires_grad"),
    "section3.test_steering_effect_by_layer": ("numpy_float32",),
    "section4.test_run_steering_experiment": ("tuple_for_list", "numpy_float32"),
    "section4.test_compute_trait_projections": ("numpy_float32",),
    "section5.test_last_prompt_activations": ("requires_grad",),  # activations read under inference_mode
    "section4.test_run_trait_pipeline": ("tuple_for_list",),
}


def main():
    """Print the matrix: for each test, the liars that pass it and the legitimate variants it rejects."""
    for full, short, test_name, ref_name in CASES:
        student, fired = _probe(full, ref_name, lambda out: wrong(out) if wrong(out) is not out else None)
        base = run(short, test_name, student) if student is not None else "n/a"
        row = {"wrong": "fired" if fired[0] else "-", "wrong_result": base}
        for kind in KINDS + LEGIT:
            transform = attack(kind) if kind in KINDS else (lambda out, kind=kind: legit(kind, out))
            student, fired = _probe(full, ref_name, transform)
            if student is None:
                continue
            result = run(short, test_name, student)
            if fired[0]:
                row[kind] = result
        print(f"== {short}.{test_name}: wrong plain -> {row.pop('wrong_result')[:100]} ({row.pop('wrong')})")
        for k, v in row.items():
            mark = "FOOLED" if (k in KINDS and v == "pass") else ("REJECTS-LEGIT" if (k in LEGIT and v != "pass") else "")
            print(f"   {k:24s} {mark:14s} {v[:150]}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------- the conversion itself

def test_plain_tensor_runs_no_code_of_the_subclass():
    from part_tests._common import plain

    calls = []

    class Recording(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            calls.append(func)
            return super().__torch_function__(func, types, args, kwargs or {})

    base = torch.arange(6.0).reshape(2, 3)
    x = base.as_subclass(Recording)
    calls.clear()
    out = plain(x, "f")
    assert calls == [], f"plain() ran the subclass's __torch_function__ for {calls}"
    assert type(out) is torch.Tensor and out.data_ptr() == base.data_ptr() and torch.equal(out, base)


def test_plain_reads_values_through_the_base_type():
    from part_tests._common import plain

    for kind in ("scalar_subclass", "container_subclass"):
        for correct in (2.5, 3, "abc", [1.0, 2.0], (1, 2), {"a": 1.0}):
            dressed = lie(kind, correct, wrong(correct))
            if dressed is None:
                continue
            out = plain(dressed, "f")
            assert type(out) is type(correct) and out == wrong(correct), (kind, correct, out)


@pytest.mark.parametrize("kind", ["fake_class", "fake_shape", "stateful_number", "ndarray_subclass", "meta_tensor"])
def test_objects_that_cannot_be_made_plain_are_named(kind):
    from part_tests._common import plain
    from part_tests.shapes import expect_tensor

    correct = torch.ones(3) if kind != "stateful_number" else 1.5
    dressed = lie(kind, correct, wrong(correct))
    with pytest.raises(AssertionError, match="returned a"):
        plain(dressed, "f")
    if isinstance(correct, torch.Tensor):
        with pytest.raises(AssertionError):
            expect_tensor(dressed, "n", "f", n=3)


# ---------------------------------------------------------------- hooks that hand the model a lying tensor

_ALWAYS_TRUE = {torch.allclose, torch.equal, torch.Tensor.equal, torch.Tensor.allclose}


class SpreadingLiar(torch.Tensor):
    """Wrong data that stays a SpreadingLiar through every torch operation and says it equals anything."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _ALWAYS_TRUE:
            return True
        if func in (torch.isclose, torch.eq, torch.Tensor.__eq__, torch.Tensor.isclose, torch.Tensor.eq):
            with torch._C.DisableTorchFunctionSubclass():
                return torch.ones_like(args[0], dtype=torch.bool)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_hooks_that_return_lying_tensors_fail():
    """ActivationSteerer and ActivationCapper whose hooks hand the model a halved hidden state as a
    SpreadingLiar (the model's later outputs stay liars): the tests read numbers, and fail them."""
    from utils.hooks import hidden_of, with_hidden

    s2, s4 = load("section2"), load("section4")

    def dress(out):
        return with_hidden(out, (hidden_of(out) * 0.5).as_subclass(SpreadingLiar))

    class ActivationSteerer(s4.ActivationSteerer):
        def _hook(self, module, args, output):
            return dress(super()._hook(module, args, output))

    class ActivationCapper(s2.ActivationCapper):
        def _make_hook(self, v_hat, tau):
            inner = super()._make_hook(v_hat, tau)
            return lambda module, args, output: dress(inner(module, args, output))

    for short, test_name, student in (("section4", "test_activation_steerer", ActivationSteerer),
                                      ("section2", "test_activation_capper", ActivationCapper)):
        result = run(short, test_name, student)
        assert result.startswith(("TestFailure", "AssertionError")), f"{short}.{test_name} with a lying hook: {result}"


# ---------------------------------------------------------------- what the student's code hands the tests' stand-ins

def test_stand_ins_see_plain_arguments():
    """score_trait_response handing the fake judge a wrong prompt as a str subclass that says it
    equals the right one: the stand-ins put in by `using` get plain arguments, so the test sees it."""
    g = load("section3").score_trait_response.__globals__

    def dressed(correct):
        obj = delegating(str)("a wrong prompt")
        obj._lie_correct = correct
        return obj

    namespace = dict(g, _dressed=dressed)
    exec("def score_trait_response(question, answer, eval_prompt_template):\n"
         "    prompt = eval_prompt_template.format(question=question, answer=answer)\n"
         "    return parse_judge_reply(ask_judge(_dressed(prompt)))\n", namespace)
    result = run("section3", "test_score_trait_response", namespace["score_trait_response"])
    assert result.startswith("TestFailure") and "a wrong prompt" in result, result
