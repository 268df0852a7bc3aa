"""Exercise 3.7 — Reading a trait vector with a sparse autoencoder

`top_sae_features_by_cosine` and `feature_activation_differences` on small hand-built SAEs whose planted
features tell the likely mistakes apart (columns for rows, absolute values, pre-activations, chunk means). Then
properties on small random SAEs: shapes square and not, k from 1 to d_sae, and row counts that do and do not divide
the batch size (a single row too).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from part_tests._common import NotImplementedYet, call, check, close, exercise, fail, passed
from part_tests.properties import for_all, st
from part_tests.section3._fakes import _direct, _guarded
from part_tests.shapes import expect_tensor


# The exercise's annotations (solutions/section3_contrastive_prompting.py), checked with expect_tensor.
FEATURE_IDS = Int[Tensor, "k"]
FEATURE_VALUES = Float[Tensor, "k"]


def _unit(v):
    return v / v.norm()


def _cosine_fixture():
    """A non-square SAE with planted decoder rows of very different norms, and an encoder unlike its decoder."""
    from utils.sae import SparseAutoencoder

    d_model, d_sae = 16, 40
    g = torch.Generator().manual_seed(7)
    v = torch.randn(d_model, generator=g)
    u = torch.randn(d_model, generator=g)
    u = u - (u @ _unit(v)) * _unit(v)  # orthogonal to v
    W_dec = torch.randn(d_sae, d_model, generator=g)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True) * torch.linspace(0.5, 3.0, d_sae)[:, None]
    W_dec[7] = 0.2 * _unit(v)  # exactly along v, small norm
    W_dec[22] = 6.0 * (0.8 * _unit(v) + 0.6 * _unit(u))  # cosine 0.8, large norm
    W_dec[31] = -4.0 * _unit(v)  # exactly against v
    W_dec[12] = 0.5 * (0.6 * _unit(v) + 0.8 * _unit(u))  # cosine 0.6
    W_enc = torch.randn(d_model, d_sae, generator=g)
    sae = SparseAutoencoder(W_enc=W_enc, b_enc=torch.zeros(d_sae), W_dec=W_dec, b_dec=torch.zeros(d_model))
    return sae, 5.0 * v


def _true_cosines(sae, vector):
    return (sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)) @ _unit(vector)


def _run_cosine(fn, vector, sae, k):
    vector_before, decoder_before = vector.clone(), sae.W_dec.detach().clone()
    try:
        out = call(fn, vector, sae, k, name="top_sae_features_by_cosine")
    except NotImplementedYet:
        raise
    except (RuntimeError, IndexError) as err:
        raise AssertionError(f"top_sae_features_by_cosine raised {type(err).__name__} ({err}) on an SAE with d_sae != d_model: "
                             "feature i's direction is row i of sae.W_dec, which has shape [d_sae, d_model] "
                             "(rows, not columns)") from err
    for what, before, after in (("the vector", vector_before, vector), ("sae.W_dec", decoder_before, sae.W_dec)):
        check(torch.equal(before, after.detach()),
              f"top_sae_features_by_cosine changed {what} in place (x /= x.norm() or an in-place normalisation): "
              "normalise copies (x / x.norm(...)); the caller's persona vector and SAE must stay as they were")
    return _expect_pair(out, "top_sae_features_by_cosine", ("indices", "cosines"), k)


def _expect_pair(out, name, what, k):
    """(indices, values) as annotated: tuple[Int[Tensor, "k"], Float[Tensor, "k"]]; returned as long and float CPU tensors."""
    check(isinstance(out, (tuple, list)) and len(out) == 2, f"{name} should return a pair ({what[0]}, {what[1]})")
    for x, w in zip(out, what):
        if not isinstance(x, torch.Tensor):
            fail(f"{name} should return its {w} as a torch.Tensor of shape (k,) = ({k},), got a {type(x).__name__}: "
                 "keep the result of topk as tensors (torch.as_tensor converts a list or numpy array)")
    indices = expect_tensor(out[0], FEATURE_IDS, f"{name} ({what[0]})", k=k)
    values = expect_tensor(out[1], FEATURE_VALUES, f"{name} ({what[1]})", k=k)
    return indices.long().cpu(), values.float().cpu()


@exercise("3.7", "top_sae_features_by_cosine")
def test_top_sae_features_by_cosine(top_sae_features_by_cosine) -> None:
    from utils.sae import SparseAutoencoder

    sae, vector = _cosine_fixture()
    k = 3
    indices, cosines = _run_cosine(top_sae_features_by_cosine, vector, sae, k)
    true = _true_cosines(sae, vector)
    want = true.topk(k).indices
    if indices.tolist() != want.tolist():
        got_set = set(indices.tolist())
        if 31 in got_set:
            fail("feature 31 points exactly *against* the vector (cosine -1) but was ranked among the top: rank by the "
                 "signed cosine, largest first (not by its absolute value, and not smallest first)")
        by_columns = (sae.W_dec / sae.W_dec.norm(dim=0, keepdim=True)) @ _unit(vector)
        if indices.tolist() == by_columns.topk(k).indices.tolist():
            fail("you normalised the columns of W_dec (a norm over dim 0): normalise each decoder row, i.e. each "
                 "feature's direction (W_dec / W_dec.norm(dim=-1, keepdim=True))")
        raw = sae.W_dec @ vector
        if indices.tolist() == raw.topk(k).indices.tolist() or (22 in got_set and indices[0] == 22):
            fail("a long decoder row outranked one exactly along the vector: normalise each decoder row (divide by its "
                 "norm) before comparing")
        enc_dirs = sae.W_enc.T
        enc_cos = (enc_dirs / enc_dirs.norm(dim=-1, keepdim=True)) @ _unit(vector)
        if indices.tolist() == enc_cos.topk(k).indices.tolist():
            fail("you ranked the encoder's directions: a feature's direction in the residual stream is its *decoder* row, sae.W_dec[i]")
        fail(f"top_sae_features_by_cosine returned features {indices.tolist()}, expected {want.tolist()} (largest signed cosine first)")
    check(bool((cosines.abs() <= 1 + 1e-4).all()),
          f"cosines must lie in [-1, 1], got {cosines.tolist()}: divide by the norms of both the decoder rows and the vector")
    if not close(cosines, true[want], rtol=1e-4, atol=1e-4):
        if close(cosines, (sae.W_dec @ vector)[want], rtol=1e-4, atol=1e-4) or not bool((cosines.abs() <= 1 + 1e-4).all()):
            fail("the returned values are dot products, not cosines: normalise the decoder rows and the vector")
        fail(f"top_sae_features_by_cosine returned cosines {cosines.tolist()}, expected {true[want].tolist()}")

    # a square SAE: columns of W_dec have the right length but are not features
    d = 12
    g = torch.Generator().manual_seed(3)
    W_dec = torch.randn(d, d, generator=g)
    v = torch.randn(d, generator=g)
    W_dec[5] = 2.0 * v
    square = SparseAutoencoder(W_enc=W_dec.T.clone(), b_enc=torch.zeros(d), W_dec=W_dec, b_dec=torch.zeros(d))
    indices, cosines = _run_cosine(top_sae_features_by_cosine, v, square, 1)
    if indices.tolist() != [5] or abs(float(cosines[0]) - 1.0) > 1e-4:
        fail("on a square SAE the top feature should be row 5 of W_dec (planted along the vector, cosine 1): feature "
             "i's direction is row i of sae.W_dec (shape [d_sae, d_model]), not column i")

    # a property: random SAEs of assorted shapes, k from 1 to d_sae, each cosine written out row by row
    def check_cosines(case):
        seed, d_model, d_sae, k_frac = case
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d_sae, d_model, generator=g) * torch.rand(d_sae, 1, generator=g).add(0.2)
        sae_r = SparseAutoencoder(W_enc=torch.randn(d_model, d_sae, generator=g), b_enc=torch.zeros(d_sae), W_dec=W,
                                  b_dec=torch.zeros(d_model))
        vec = torch.randn(d_model, generator=g)
        k_r = max(1, round(k_frac * d_sae))
        true = torch.tensor([float(W[i] @ vec) / (float(W[i].norm()) * float(vec.norm())) for i in range(d_sae)])
        where = f" (d_model={d_model}, d_sae={d_sae}, k={k_r})"
        out = _direct(top_sae_features_by_cosine, vec, sae_r, k_r, name="top_sae_features_by_cosine")
        idx, cos = _expect_pair(out, "top_sae_features_by_cosine", ("indices", "cosines"), k_r)
        want = sorted(range(d_sae), key=lambda i: -float(true[i]))[:k_r]
        check(idx.tolist() == want, f"top_sae_features_by_cosine returned features {idx.tolist()}{where}, expected "
                                    f"{want}: the k largest signed cosines between each decoder row and the vector, "
                                    "largest first, whatever d_sae and k (k = 1 and k = d_sae too)")
        check(close(cos, true[want], rtol=1e-4, atol=1e-4),
              f"top_sae_features_by_cosine returned cosines {[round(x, 4) for x in cos.tolist()]}{where}, expected "
              f"{[round(x, 4) for x in true[want].tolist()]}")

    _guarded(lambda: for_all(st.tuples(st.integers(0, 10_000), st.integers(2, 8), st.integers(1, 12),
                                       st.sampled_from([0.0, 0.5, 1.0])),
                             check_cosines, name="top_sae_features_by_cosine on random SAEs", examples=5),
             "top_sae_features_by_cosine")
    passed("test_top_sae_features_by_cosine")


def _difference_fixture():
    """Identity encoder (so encode(x) = relu(x) per coordinate) and activations built feature by feature."""
    from utils.sae import SparseAutoencoder

    d = 32
    g = torch.Generator().manual_seed(11)
    sae = SparseAutoencoder(W_enc=torch.eye(d), b_enc=torch.zeros(d), W_dec=torch.randn(d, d, generator=g),
                            b_dec=torch.zeros(d))
    n_pos, n_neg = 6, 5
    pos = torch.zeros(n_pos, d)
    neg = torch.zeros(n_neg, d)
    pos[:, 3] = torch.tensor([0.0, 0.0, 0.0, 0.0, 4.5, 4.5])  # more active in pos: diff +1.5 (mean of chunk means of 4 + 2 rows: 2.25)
    pos[:, 12] = torch.tensor([5.0, -5.0] * 3)         # mean(relu) 2.5, relu(mean) 0: diff +2.5
    neg[:, 9] = 3.0                                   # more active in neg: diff -3.0
    neg[:, 20] = -6.0                                 # never active: diff 0 (pre-activation diff +6)
    pos[:, 25], neg[:, 25] = 1.0, 0.2                  # diff +0.8
    pos[:, 27] = torch.tensor([0.6, 0.0, 0.0, 0.0, 0.0, 0.0])  # diff +0.1
    return sae, pos, neg


@exercise("3.7", "feature_activation_differences")
def test_feature_activation_differences(feature_activation_differences) -> None:
    from utils.sae import SparseAutoencoder

    sae, pos, neg = _difference_fixture()
    k = 3
    try:
        out = call(feature_activation_differences, sae, pos.clone(), neg.clone(), k, name="feature_activation_differences")
    except NotImplementedYet:
        raise
    except (RuntimeError, IndexError, ValueError) as err:
        raise AssertionError(f"feature_activation_differences raised {type(err).__name__}: {err}") from err
    indices, diffs = _expect_pair(out, "feature_activation_differences", ("indices", "differences"), k)
    indices = indices.tolist()
    want = [12, 3, 25]
    want_diffs = torch.tensor([2.5, 1.5, 0.8])
    if indices != want:
        if 9 in indices and indices[0] == 9:
            if float(diffs[0]) > 0:
                fail("feature 9 fires more in the *negative* answers but came first with a positive difference: "
                     "the signed difference is mean_pos - mean_neg, not neg - pos")
            fail("feature 9 fires more in the *negative* answers (difference -3) but came first: rank by the signed "
                 "difference, largest first, not by its absolute value or smallest first")
        if 20 in indices:
            fail("feature 20 is never active (its pre-activation is negative everywhere) but was ranked: use "
                 "sae.encode(...) (after the ReLU), not the pre-activations")
        if 12 not in indices:
            fail("feature 12 fires on half of the positive rows but was missed: encode every row first, then average "
                 "(sae.encode(acts).mean(0)), not sae.encode(acts.mean(0))")
        fail(f"feature_activation_differences returned features {indices}, expected {want}")
    if not close(diffs, want_diffs, rtol=1e-4, atol=1e-4):
        if close(diffs, -want_diffs, rtol=1e-4, atol=1e-4):
            fail("the differences have the wrong sign: return mean_pos - mean_neg")
        fail(f"feature_activation_differences returned differences {diffs.tolist()}, expected {want_diffs.tolist()} "
             "(mean over the positive rows minus mean over the negative rows)")

    # batch_size: sae.encode sees at most batch_size rows at a time, and chunks of unequal size still give the means
    rows = []
    inner = sae.pre_activations

    def counting(x):
        rows.append(int(x.shape[0]) if x.ndim > 1 else 1)
        return inner(x)

    sae.pre_activations = counting  # sae.encode calls it
    try:
        out = call(feature_activation_differences, sae, pos.clone(), neg.clone(), k, batch_size=4,
                   name="feature_activation_differences")
    except (NotImplementedYet, AssertionError):
        raise
    except Exception as err:
        raise AssertionError(f"feature_activation_differences(..., batch_size=4) raised {type(err).__name__}: {err}") from err
    finally:
        del sae.pre_activations
    indices, diffs = _expect_pair(out, "feature_activation_differences", ("indices", "differences"), k)
    if rows:
        check(max(rows) <= 4, f"feature_activation_differences(..., batch_size=4) encoded {max(rows)} rows in one "
                              "sae.encode call: encode at most batch_size rows at a time (a real SAE's 131072 features "
                              "per row do not fit in memory for every token at once)")
    if indices.tolist() != want or not close(diffs, want_diffs, rtol=1e-4, atol=1e-4):
        with torch.no_grad():
            dropped = (sae.encode(pos[:4]).mean(0) - sae.encode(neg[:4]).mean(0)).topk(k)
        if indices.tolist() == dropped.indices.tolist() and close(diffs, dropped.values, rtol=1e-4, atol=1e-4):
            fail("with batch_size=4 (6 positive rows and 5 negative: chunks of 4, then 2 and 1) the rows of the last, "
                 "partial chunk were left out: loop over acts.split(batch_size) (or range(0, n, batch_size)), which "
                 "keeps the remainder")
        fail(f"with batch_size=4 (6 positive rows: chunks of 4 and 2) feature_activation_differences returned "
             f"{indices.tolist()} with differences {[round(x, 4) for x in diffs.tolist()]}, expected {want} with "
             f"{want_diffs.tolist()}: sum the feature activations over the chunks and divide by the number of rows "
             "(a mean of the chunks' means weighs a short last chunk too much)")

    # a property: row counts that do and do not divide batch_size (one row too), the means written out
    def check_rows(case):
        seed, n_pos, n_neg, bs = case
        g = torch.Generator().manual_seed(seed)
        d, d_sae = 6, 10
        sae_r = SparseAutoencoder(W_enc=torch.randn(d, d_sae, generator=g), b_enc=-0.3 * torch.ones(d_sae),
                                  W_dec=torch.randn(d_sae, d, generator=g), b_dec=torch.zeros(d))
        pos_r, neg_r = torch.randn(n_pos, d, generator=g) + 0.5, torch.randn(n_neg, d, generator=g)

        def side_mean(acts):
            pre = acts.double() @ sae_r.W_enc.double() + sae_r.b_enc.double()
            return pre.clamp_min(0).sum(0) / acts.shape[0]

        true = (side_mean(pos_r) - side_mean(neg_r)).float()
        k_r = 4
        where = f" with {n_pos} positive and {n_neg} negative rows and batch_size={bs}"
        try:
            out = _direct(feature_activation_differences, sae_r, pos_r.clone(), neg_r.clone(), k_r, batch_size=bs,
                          name="feature_activation_differences")
        except (NotImplementedYet, AssertionError):
            raise
        except Exception as err:
            raise AssertionError(f"feature_activation_differences raised {type(err).__name__} ({err}){where}: every "
                                 "row counts, in full chunks of batch_size and a last, shorter one (or a single row)") from err
        idx, vals = _expect_pair(out, "feature_activation_differences", ("indices", "differences"), k_r)
        want_vals = true.sort(descending=True).values[:k_r]
        if close(vals, want_vals, rtol=1e-4, atol=1e-4) and close(true[idx], vals, rtol=1e-4, atol=1e-4):
            return
        kept_pos, kept_neg = n_pos - n_pos % bs, n_neg - n_neg % bs
        partial = "the rows of the last, partial chunk were left out: loop over acts.split(batch_size) (or " \
                  "range(0, n, batch_size)), which keeps the remainder"
        if not bool(torch.isfinite(vals).all()):
            fail(f"feature_activation_differences{where} returned {vals.tolist()}: {partial}, and a side shorter than "
                 "batch_size (a single row too) is one chunk")
        if (kept_pos, kept_neg) != (n_pos, n_neg) and kept_pos and kept_neg:
            dropped = (side_mean(pos_r[:kept_pos]) - side_mean(neg_r[:kept_neg])).float()
            if close(vals, dropped.sort(descending=True).values[:k_r], rtol=1e-4, atol=1e-4):
                fail(f"feature_activation_differences{where}: {partial}")
        fail(f"feature_activation_differences{where} returned differences {[round(x, 4) for x in vals.tolist()]} for "
             f"features {idx.tolist()}, expected the differences {[round(x, 4) for x in want_vals.tolist()]}: encode "
             "every row (in chunks of at most batch_size), sum, and divide by the side's number of rows")

    _guarded(lambda: for_all(st.tuples(st.integers(0, 10_000), st.integers(1, 9), st.integers(1, 9), st.integers(1, 4)),
                             check_rows, name="feature_activation_differences over row counts and batch sizes",
                             examples=5), "feature_activation_differences")
    passed("test_feature_activation_differences")
