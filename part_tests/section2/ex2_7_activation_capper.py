"""Exercise 2.7 — Activation capping

Tests of `ActivationCapper`: `test_activation_capper`, `test_activation_capper_input_checks`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    close,
    exercise,
    expect_value_error,
    fail,
    friendly_tests,
    model_or_tiny,
    no_hooks_left,
    passed,
    remove_leftover_hooks,
    require_implemented,
)
from part_tests.properties import coefficients, for_all, st
from part_tests.section2._fakes import (
    _Boom,
    _check_hooked_blocks,
    _d_model,
    _observe_block,
    _random_vector,
    _rounded,
    _spy_hook_registrations,
)
from part_tests.shapes import expect_tensor
from utils.hooks import count_hooks
from utils.models import input_device


class _TextConfig:
    def __init__(self, d):
        self.hidden_size = d


class _Config:
    def __init__(self, d):
        self._text = _TextConfig(d)
        self.hidden_size = d

    def get_text_config(self, *args, **kwargs):
        return self._text


class _BiasBlock(torch.nn.Module):
    def __init__(self, bias: torch.Tensor, tuple_out: bool):
        super().__init__()
        self.register_buffer("bias", bias)
        self.tuple_out = tuple_out

    def forward(self, x):
        y = x + self.bias if bool(self.bias.any()) else x  # an identity block hands its input on as it is
        return (y, None) if self.tuple_out else y


class _FakeLM(torch.nn.Module):
    """Blocks that add a fixed bias; the capper's hooks are the only other thing that acts."""

    def __init__(self, biases: list[torch.Tensor], tuple_out: bool = False):
        super().__init__()
        self.layers = torch.nn.ModuleList([_BiasBlock(b, tuple_out) for b in biases])
        self.config = _Config(biases[0].shape[0])
        self.tuple_out = tuple_out

    def get_decoder(self):
        return self

    def forward(self, x):
        for block in self.layers:
            out = block(x)
            if self.tuple_out and not isinstance(out, tuple):
                raise AssertionError("a capping hook returned a tensor where the block had returned a tuple: return the "
                                     "container you received (with_hidden(output, new_hidden))")
            x = out[0] if isinstance(out, tuple) else out
        return x


def _floor(h, v, tau):
    v_hat = v / v.norm()
    p = h @ v_hat
    return h + (tau - p).clamp(min=0).unsqueeze(-1) * v_hat


def _simulate(biases, x, caps: dict):
    for k, b in enumerate(biases):
        x = x + b
        for v, tau in caps.get(k, []):
            x = _floor(x, v, tau)
    return x


def _check_vectors_kept(vectors, before) -> None:
    if any(not torch.equal(torch.as_tensor(v), b) for v, b in zip(vectors, before)):
        fail("ActivationCapper changed the vectors it was given (normalised them in place, e.g. v /= v.norm() or "
             "v.div_(...)): build new unit vectors (v / v.norm()) and leave the caller's tensors as they were (the same "
             "axis is used again for projections and other cappers)")


def _run_capper(ActivationCapper, fake, vectors, thresholds, layers, x):
    v_before = [torch.as_tensor(v).clone() for v in vectors]  # a list of vectors, or the rows of a tensor
    capper = call(ActivationCapper, fake, vectors, thresholds, layers, name="ActivationCapper")
    x_before = x.clone()
    try:
        with capper:
            y = fake(x)
    except NotImplementedError as err:
        raise NotImplementedYet("ActivationCapper: not implemented yet") from err
    except AssertionError:
        raise
    except Exception as err:
        remove_leftover_hooks(fake)
        if x.dtype != torch.float32 and "dtype" in str(err).lower():
            fail(f"on a bfloat16 hidden state the capping hook failed ({type(err).__name__}: {str(err)[:100]}): compute the "
                 "projection in float32 (h.float() @ v_hat) and cast the capped result back to h.dtype")
        raise
    n = count_hooks(fake)
    if n:
        remove_leftover_hooks(fake)
        fail(f"ActivationCapper left {n} hook(s) after the `with` block: remove every hook in __exit__")
    if not torch.equal(x, x_before):
        fail("ActivationCapper edited the hidden state in place: build a new tensor (h - v_hat * min(<h, v_hat> - tau, 0))")
    _check_vectors_kept(vectors, v_before)
    if isinstance(y, torch.Tensor) and y.dtype != x.dtype:
        fail(f"the capped hidden state came back as {y.dtype} for a {x.dtype} block output: cast the capped result back to "
             "the block's own dtype (capped.to(h.dtype)), not to a fixed dtype; a float32 tensor fed into the next "
             "bfloat16 block fails or silently changes the model's precision")
    if isinstance(y, torch.Tensor) and y.ndim == x.ndim and y.shape != x.shape:
        fail(f"the capped forward returned shape {tuple(y.shape)} for a hidden state of shape {tuple(x.shape)}: keep the "
             "[B, T, d] shape of the projection's result ([B, T], no .squeeze(): with one sequence or one token it drops "
             "a dimension, and the update then broadcasts to the wrong shape)")
    expect_tensor(y, Float[Tensor, "batch seq d_model"], "the capped forward", batch=x.shape[0], seq=x.shape[1], d_model=x.shape[2])
    return y


def _explain_single_layer(y, x, v, tau) -> None:
    """y is the capped output of identity blocks for input x, one layer capped along v at tau: name the mistake."""
    v_hat = v / v.norm()
    ceiling = x - (x @ v_hat - tau).clamp(min=0).unsqueeze(-1) * v_hat
    if close(y, ceiling):
        fail("the sign is flipped: you capped from ABOVE (a ceiling, max(<h, v_hat> - tau, 0)). The course's cap is a "
             "floor on the assistant-pointing axis: h - v_hat * min(<h, v_hat> - tau, 0) raises projections below tau "
             "and leaves those above it alone")
    if close(y, _floor(x, v, -tau)):
        fail("the threshold has the wrong sign: the cap keeps <h, v_hat> >= tau. (Converting the released "
             "ceiling form means reversing the vector AND the threshold: v_hat = -u_hat, tau = -c.)")
    unnormalised = x - (x @ v - tau).clamp(max=0).unsqueeze(-1) * v
    if close(y, unnormalised) or close(y, x - (x @ v_hat - tau).clamp(max=0).unsqueeze(-1) * v):
        fail(f"normalise the capping vector: the cap uses the unit vector v_hat = v / ||v|| (here ||v|| = {float(v.norm()):g})")
    if close(y, _floor(x, v, tau / float(v.norm()))):
        fail(f"the floor ended at <h, v_hat> = tau / ||v|| = {tau / float(v.norm()):g}, not at tau = {tau:g}: compare the "
             "projection on the UNIT vector v_hat with tau (h @ v_hat - tau)")
    if not close(y[..., 1:], x[..., 1:]):
        fail("the cap changed the part of h orthogonal to v_hat: only the component along v_hat may move "
             "(h - v_hat * min(<h, v_hat> - tau, 0))")
    want = _floor(x, v, tau)
    last_only = x.clone()
    last_only[:, -1] = want[:, -1]
    if close(y, last_only):
        fail("only the last position was capped: cap every position of every forward pass")
    if close(y, x):
        fail("nothing was capped: register the hook on block layers[i] and RETURN the new output from the hook")
    fail(f"wrong capped output: got {y[0].tolist()}, expected {want[0].tolist()} (floor at tau = {tau} along v = {v.tolist()})")


@exercise("2.7", "ActivationCapper")
def test_activation_capper(ActivationCapper, model=None, tokenizer=None) -> None:
    require_implemented(ActivationCapper, "ActivationCapper")
    d = 4
    zeros = [torch.zeros(d) for _ in range(3)]
    v = torch.tensor([2.0, 0.0, 0.0, 0.0])  # not unit length
    tau = 1.0
    x = torch.tensor([[[0.5, 0.0, 0.0, 1.0], [1.0, 5.0, 5.0, 5.0], [2.5, -1.0, 0.0, 0.0], [-3.0, 1.0, 2.0, 0.0]]])
    want = _simulate(zeros, x, {1: [(v, tau)]})

    # --- nothing happens before `with`: the hooks belong in __enter__
    fake = _FakeLM(zeros)
    capper = call(ActivationCapper, fake, [v], [tau], [1], name="ActivationCapper")
    _check_vectors_kept([v], [torch.tensor([2.0, 0.0, 0.0, 0.0])])
    n_early, y_early = count_hooks(fake), fake(x)
    if n_early or not close(y_early, x):
        remove_leftover_hooks(fake)
        fail(f"ActivationCapper acted before `with capper:` was entered ({n_early} hook(s) on the model right after "
             "ActivationCapper(...)): register the hooks in __enter__, not in __init__, so that building a capper "
             "changes nothing until it is used")

    # --- hand-built geometry, one layer
    fake = _FakeLM(zeros)
    with _spy_hook_registrations(fake) as seen:
        y = _run_capper(ActivationCapper, fake, [v], [tau], [1], x)
    _check_hooked_blocks(seen, {1}, "ActivationCapper")
    if not close(y, want):
        _explain_single_layer(y, x, v, tau)

    # --- decode-shaped and batched forwards
    x1 = torch.tensor([[[-5.0, 1.0, 1.0, 1.0]]])
    y1 = _run_capper(ActivationCapper, _FakeLM(zeros), [v], [tau], [1], x1)
    if not close(y1, _simulate(zeros, x1, {1: [(v, tau)]})):
        fail("a forward pass with one token (a decode step with the KV cache) was not capped correctly: cap every "
             "forward, whatever its length")
    xd = torch.tensor([[[-5.0, 1.0, 1.0, 1.0]], [[3.0, 0.0, 2.0, 0.0]], [[0.5, 2.0, 0.0, 1.0]]])  # a batch of decode steps
    yd = _run_capper(ActivationCapper, _FakeLM(zeros), [v], [tau], [1], xd)
    check(close(yd, _simulate(zeros, xd, {1: [(v, tau)]})), "a batch of 3 one-token forwards (decode steps of a batch) "
                                                            "was not capped correctly: cap every position of every sequence")
    xb = torch.tensor([[[-1.0, 0, 0, 0], [3.0, 0, 0, 0], [0.0, 2, 2, 2]], [[0.9, 1, 1, 1], [-4.0, 0, 1, 0], [1.5, 0, 0, 0]]])
    yb = _run_capper(ActivationCapper, _FakeLM(zeros), [v], [tau], [1], xb)
    check(close(yb, _simulate(zeros, xb, {1: [(v, tau)]})), "a batch of 2 sequences was not capped correctly: cap every position of every sequence")

    # --- tuple outputs
    yt = _run_capper(ActivationCapper, _FakeLM(zeros, tuple_out=True), [v], [tau], [1], x)
    check(close(yt, want), "with blocks that return tuples the capped output is wrong: use hidden_of(output) and with_hidden(output, new)")

    # --- several layers at once, each with its own vector and threshold
    g = torch.Generator().manual_seed(3)
    biases = [torch.randn(d, generator=g) for _ in range(4)]
    v1, v2 = 2.0 * torch.randn(d, generator=g), 0.5 * torch.randn(d, generator=g)
    xm = torch.randn(2, 5, d, generator=g) * 2
    h1 = xm + biases[0] + biases[1]
    t1 = float((h1 @ (v1 / v1.norm())).median())
    h3 = _floor(h1, v1, t1) + biases[2] + biases[3]
    t2 = float((h3 @ (v2 / v2.norm())).median())
    want_m = _simulate(biases, xm, {1: [(v1, t1)], 3: [(v2, t2)]})
    for vectors in ([v1, v2], torch.stack([v1, v2])):
        fake = _FakeLM(biases)
        with _spy_hook_registrations(fake) as seen:
            ym = _run_capper(ActivationCapper, fake, vectors, [t1, t2], [1, 3], xm)
        _check_hooked_blocks(seen, {1, 3}, "ActivationCapper")
        if not close(ym, want_m, rtol=1e-4, atol=1e-4):
            if close(ym, _simulate(biases, xm, {3: [(v2, t2)]}), rtol=1e-4, atol=1e-4):
                fail("with layers [1, 3] only the last layer was capped: register one hook per layer")
            if close(ym, _simulate(biases, xm, {1: [(v2, t2)], 3: [(v2, t2)]}), rtol=1e-4, atol=1e-4):
                fail("every capped layer used the LAST layer's vector and threshold: a function defined inside a loop looks "
                     "its loop variables up when it runs (late binding). Build each hook in a helper that takes v_hat and "
                     "tau (self._make_hook(v_hat, tau)), or bind them as default arguments")
            if close(ym, _simulate(biases, xm, {1: [(v2, t2)], 3: [(v1, t1)]}), rtol=1e-4, atol=1e-4):
                fail("vectors[i] and thresholds[i] belong to layers[i]; they were applied to the wrong layers")
            if close(ym, _simulate(biases, xm, {1: [(v1, float(int(t1)))], 3: [(v2, float(int(t2)))]}), rtol=1e-4, atol=1e-4):
                fail(_ROUNDED_THRESHOLD.format(tau=f"{t1:g}"))
            fail("with two capped layers the output differs from capping block 1 along vectors[0] at thresholds[0] and "
                 "block 3 along vectors[1] at thresholds[1]")
    # the same caps listed with the layers in decreasing order: entry i is (vectors[i], thresholds[i], layers[i])
    fake = _FakeLM(biases)
    with _spy_hook_registrations(fake) as seen:
        ym = _run_capper(ActivationCapper, fake, [v2, v1], [t2, t1], [3, 1], xm)
    _check_hooked_blocks(seen, {1, 3}, "ActivationCapper")
    if not close(ym, want_m, rtol=1e-4, atol=1e-4):
        fail("with layers [3, 1] (not in increasing order) and vectors and thresholds listed in the same order, the caps "
             "went to the wrong layers: vectors[i] and thresholds[i] belong to layers[i], whatever the order of the "
             "layers. Keep the three lists aligned (zip them; do not sort the layers alone)")

    # --- half precision: the block's dtype is kept, and the projection is computed precisely
    db = 64
    gb = torch.Generator().manual_seed(11)
    vb = torch.randn(db, generator=gb)
    vb_hat = vb / vb.norm()
    orth = 0.05 * torch.randn(6, db, generator=gb)
    orth = orth - (orth @ vb_hat)[:, None] * vb_hat
    heights = torch.tensor([-150.3, -97.7, -63.1, -120.9, 7.0, 12.5])  # four far below tau, two above
    tau_b = 2.0
    xh = (orth + heights[:, None] * vb_hat)[None].to(torch.bfloat16)
    yh = _run_capper(ActivationCapper, _FakeLM([torch.zeros(db, dtype=torch.bfloat16)] * 2), [vb], [tau_b], [1], xh)
    if yh.dtype != torch.bfloat16:
        fail(f"on a bfloat16 model the capped hidden state came back as {yh.dtype}: cast the capped result back to the "
             "block's dtype (capped.to(h.dtype)); a float32 tensor fed into the next bfloat16 block fails or silently "
             "changes the model's precision")
    after = yh.double()[0] @ vb_hat.double()
    before = xh.double()[0] @ vb_hat.double()
    below = before < tau_b
    err = float((after[below] - tau_b).abs().max())
    if err > 0.05:
        fail(f"in bfloat16 the capped projections miss tau = {tau_b} by up to {err:.3f} (got {_rounded(after[below].tolist(), 3)}): "
             "compute the projection and the update in float32 (h.float() @ v_hat) and cast the result back to h.dtype; "
             "a bfloat16 dot product keeps about 3 significant digits")
    if not close(yh[0, ~below], xh[0, ~below], rtol=1e-2, atol=1e-2):
        fail("in bfloat16, positions already above tau were changed: the floor leaves them alone")

    # --- hooks removed on exceptions (every layer's hook), and re-entry
    fake = _FakeLM(biases)
    capper = call(ActivationCapper, fake, [v1, v2], [t1, t2], [1, 3], name="ActivationCapper")
    try:
        with capper:
            check(count_hooks(fake) >= 2, "inside the `with` block there should be one hook per capped layer")
            raise _Boom("inside the with block")
    except _Boom:
        pass
    n = count_hooks(fake)
    check(n == 0, f"ActivationCapper left {n} hook(s) after an exception inside the `with` block: __exit__ must remove "
                  "every layer's hook (keep all the handles, not just the last)")
    with capper:
        pass
    check(count_hooks(fake) == 0, "ActivationCapper left hooks after being used a second time")

    # --- a real model: the projection after the capped block is >= tau, the orthogonal part unchanged
    model, tokenizer = model_or_tiny(model, tokenizer)
    dm = _d_model(model)
    layer = 1
    vr = _random_vector(dm, 2.0, seed=9)
    ids = tokenizer("a short test sentence for capping", return_tensors="pt", add_special_tokens=False)["input_ids"].to(input_device(model))
    with _observe_block(model, layer) as obs:
        with torch.inference_mode():
            model(input_ids=ids)
    base = obs["before"][0].float()
    vr_hat = vr / vr.norm()
    tau_r = float((base @ vr_hat).median())
    capper = call(ActivationCapper, model, [vr], [tau_r], [layer], name="ActivationCapper")
    with _observe_block(model, layer) as obs:
        with capper, torch.inference_mode():
            model(input_ids=ids)
    no_hooks_left(model, "ActivationCapper")
    capped = obs["after"][0].float()
    check(close(capped, _floor(base, vr, tau_r), rtol=1e-4, atol=1e-4),
          "on the tiny model the capped block output differs from h - v_hat * min(<h, v_hat> - tau, 0)")

    # --- property: fractional and negative thresholds, float32 and bfloat16, one or several sequences and tokens
    shapes = st.sampled_from([(1, 1), (2, 1), (3, 1), (1, 3), (2, 4), (3, 2)])  # [B, T]: decode steps of a batch too
    for_all(st.tuples(coefficients(), st.sampled_from([torch.float32, torch.bfloat16]), shapes, st.integers(0, 10_000)),
            lambda case: _check_capper_case(ActivationCapper, case[0], case[1], *case[2], case[3]), name="ActivationCapper",
            examples=10)
    passed("test_activation_capper")


_ROUNDED_THRESHOLD = ("the thresholds were rounded to whole numbers (int(t)): tau = {tau} is a fraction, and the floor "
                      "must end exactly at it. Keep each threshold as a float (float(t)), not int(t) as for the layers")


def _check_capper_case(ActivationCapper, tau: float, dtype: torch.dtype, batch: int, seq: int, seed: int) -> None:
    """One capped forward on an identity model: expected from the floor formula, computed here in float64."""
    d = 4
    g = torch.Generator().manual_seed(seed)
    v = (0.5 + 3 * torch.rand(1, generator=g)) * torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    v_hat = (v / v.norm()).double()
    n = batch * seq
    heights = torch.tensor([-2.0]) if n == 1 else torch.linspace(-2.0, 1.0, n)  # the first far below tau
    heights = heights[torch.randperm(n, generator=g)].double() + tau
    orth = torch.randn(n, d, generator=g).double()
    orth = orth - (orth @ v_hat)[:, None] * v_hat
    x = (orth + heights[:, None] * v_hat).reshape(batch, seq, d).to(dtype)
    zeros = [torch.zeros(d, dtype=dtype)] * 2
    y = _run_capper(ActivationCapper, _FakeLM(zeros), [v], [tau], [1], x)
    where = f" (a {dtype} hidden state of shape {tuple(x.shape)}, tau = {tau:g})"
    if y.dtype != x.dtype:
        fail(f"the capped hidden state came back as {y.dtype}{where}: cast the capped result back to the block's own "
             "dtype (capped.to(h.dtype)), not to a fixed dtype")
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
    want = _floor(x.double(), v.double(), tau)
    if close(y.double(), want, **tol):
        return
    if tau != int(tau) and close(y.double(), _floor(x.double(), v.double(), float(int(tau))), **tol):
        fail(_ROUNDED_THRESHOLD.format(tau=f"{tau:g}") + where)
    fail(f"the capped output differs from h - v_hat * min(<h, v_hat> - tau, 0){where}: max difference "
         f"{float((y.double() - want).abs().max()):.3g}; check that every position of every sequence is capped, with "
         "the threshold as given")


@exercise("2.7", "ActivationCapper")
def test_activation_capper_input_checks(ActivationCapper) -> None:
    require_implemented(ActivationCapper, "ActivationCapper")
    g = torch.Generator().manual_seed(3)
    d = 4
    biases = [torch.randn(d, generator=g) for _ in range(4)]
    v1, v2 = torch.randn(d, generator=g), torch.randn(d, generator=g)
    for args in (([v1, v2], [0.5], [1, 3]), ([v1, v2], [0.5, 0.2], [1]), ([v1], [0.5, 0.2], [1, 3])):
        fake = _FakeLM(biases)
        expect_value_error(ActivationCapper, fake, *args, name="ActivationCapper",
                           what=f"{len(args[0])} vectors, {len(args[1])} thresholds and {len(args[2])} layers (the lengths "
                                "differ: one vector and one threshold per capped layer)")
        remove_leftover_hooks(fake)
    # vectors and thresholds that are not finite numbers, and a zero vector: refused when built
    fake = _FakeLM(biases)
    bad_cases = [
        ([v1, torch.full((d,), float("nan"))], [0.5, 0.2], "a vector holding NaN (capping with it would fill the residual "
         "stream with NaN; check torch.isfinite(v).all())"),
        ([v1, torch.zeros(d)], [0.5, 0.2], "a zero vector (it has no direction to normalise)"),
        ([v1, v2], [0.5, float("nan")], "a NaN threshold (every projection compared with NaN gives NaN hidden states; "
         "check math.isfinite(tau))"),
    ]
    for vectors, thresholds, what in bad_cases:
        expect_value_error(ActivationCapper, fake, vectors, thresholds, [1, 3], name="ActivationCapper", what=what)
        remove_leftover_hooks(fake)

    def _check_not_finite(case) -> None:
        value, where, entry, pos = case
        vectors, thresholds = [v1.clone(), v2.clone()], [0.5, 0.2]
        if where == "vector":
            vectors[entry][pos] = value
            what = (f"vectors[{entry}] holding {value} at one coordinate (not only NaN: inf and -inf also fill the "
                    "residual stream with NaN or inf; check torch.isfinite(v).all())")
        else:
            thresholds[entry] = value
            what = (f"thresholds[{entry}] = {value} (not only NaN: an infinite threshold also fills the residual stream "
                    "with NaN or inf; check math.isfinite(tau))")
        expect_value_error(ActivationCapper, fake, vectors, thresholds, [1, 3], name="ActivationCapper", what=what)
        remove_leftover_hooks(fake)

    for_all(st.tuples(st.sampled_from([float("nan"), float("inf"), float("-inf")]), st.sampled_from(["vector", "threshold"]),
                      st.integers(0, 1), st.integers(0, d - 1)),
            _check_not_finite, name="ActivationCapper", examples=8)

    # a layer the model does not have: refused (when built or when entered) without leaving a hook behind
    fake = _FakeLM(biases)
    try:
        with call(ActivationCapper, fake, [v1, v2], [0.5, 0.2], [1, 7], name="ActivationCapper"):
            pass
    except (IndexError, ValueError):
        pass
    except AssertionError:
        raise
    except Exception as err:
        remove_leftover_hooks(fake)
        fail(f"ActivationCapper with layers [1, 7] on a model with 4 blocks raised {err!r}: refuse a layer that does not "
             "exist with IndexError (check_layer(model, layer) does it)")
    else:
        remove_leftover_hooks(fake)
        fail("ActivationCapper accepted layers [1, 7] on a model with 4 blocks: refuse a layer that does not exist "
             "(check_layer(model, layer) raises IndexError)")
    n = count_hooks(fake)
    if n:
        remove_leftover_hooks(fake)
        fail(f"ActivationCapper left {n} hook(s) on the model after failing on layer 7 of a model with 4 blocks: `with` "
             "does not call __exit__ when __enter__ raises, so block 1 stayed capped. Check every layer in __init__ "
             "(check_layer(model, layer)), or remove the hooks already registered when __enter__ fails")
    passed("test_activation_capper_input_checks")


friendly_tests(globals())
