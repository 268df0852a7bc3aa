"""Exercise 3.7 — Reading a trait vector with a sparse autoencoder

Wrong implementations of `top_sae_features_by_cosine` and `feature_activation_differences` that
`test_top_sae_features_by_cosine` or `test_feature_activation_differences` must reject, each declared where it
is defined with the phrase its failure message must contain, and correct implementations written another way,
which must pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.catalogue import correct, mistake
from tests.catalogue.section3._shared import ref


def _topk(values, k):
    top = values.topk(k)
    return top.indices, top.values


@mistake("test_top_sae_features_by_cosine", "rows, not columns")
def cos_decoder_columns(vector, sae, k=10):
    cols = sae.W_dec.T  # [d_model, d_sae]: its rows are not features
    cols = cols / cols.norm(dim=-1, keepdim=True)
    return _topk(cols @ (vector / vector.norm()), k)


@mistake("test_top_sae_features_by_cosine", "normalise each decoder row")
def cos_unnormalised_rows(vector, sae, k=10):
    return _topk(sae.W_dec @ (vector / vector.norm()), k)


@mistake("test_top_sae_features_by_cosine", "not by its absolute value")
def cos_absolute(vector, sae, k=10):
    d = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    cos = d @ (vector / vector.norm())
    idx = cos.abs().topk(k).indices
    return idx, cos[idx]


@mistake("test_top_sae_features_by_cosine", "decoder")
def cos_encoder_directions(vector, sae, k=10):
    d = sae.W_enc.T / sae.W_enc.T.norm(dim=-1, keepdim=True)
    return _topk(d @ (vector / vector.norm()), k)


@mistake("test_top_sae_features_by_cosine", "[-1, 1]")
def cos_vector_not_normalised(vector, sae, k=10):
    d = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    return _topk(d @ vector, k)


@mistake("test_top_sae_features_by_cosine", "largest first")
def cos_smallest_first(vector, sae, k=10):
    d = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    cos = d @ (vector / vector.norm())
    top = cos.topk(k, largest=False)
    return top.indices, top.values


@mistake("test_top_sae_features_by_cosine",
         "should return its indices as a torch.tensor of shape (k,) = (3,), got a list")
def cos_returns_lists(vector, sae, k=10):
    idx, cos = ref.top_sae_features_by_cosine(vector, sae, k)
    return idx.tolist(), cos.tolist()


@mistake("test_top_sae_features_by_cosine", "(indices) returned shape (1, 3) (2 dims), expected (k,) = (3,)")
def cos_keepdim(vector, sae, k=10):
    idx, cos = ref.top_sae_features_by_cosine(vector, sae, k)
    return idx[None], cos[None]


@mistake("test_top_sae_features_by_cosine", "you normalised the columns of w_dec")
def cos_columns_normalised(vector, sae, k=10):
    d = sae.W_dec / sae.W_dec.norm(dim=0, keepdim=True)
    return _topk(d @ (vector / vector.norm()), k)


@mistake("test_top_sae_features_by_cosine", "changed the vector in place")
def cos_normalises_in_place(vector, sae, k=10):
    """Normalises the caller's vector with /=: the persona vector it was given changes."""
    vector /= vector.norm()
    W = sae.W_dec.float()
    return _topk((W / W.norm(dim=-1, keepdim=True)) @ vector.float(), k)


@mistake("test_top_sae_features_by_cosine", "changed sae.w_dec in place")
def cos_normalises_decoder_in_place(vector, sae, k=10):
    """Normalises sae.W_dec in place: the SAE's decoder changes."""
    W = sae.W_dec.data
    W /= W.norm(dim=-1, keepdim=True)
    return _topk(W.float() @ (vector.float() / vector.float().norm()), k)


@mistake("test_feature_activation_differences", "not by its absolute value")
def diff_absolute(sae, pos_acts, neg_acts, k=10):
    d = sae.encode(pos_acts).mean(0) - sae.encode(neg_acts).mean(0)
    idx = d.abs().topk(k).indices
    return idx, d[idx]


@mistake("test_feature_activation_differences", "not neg - pos")
def diff_neg_minus_pos(sae, pos_acts, neg_acts, k=10):
    return _topk(sae.encode(neg_acts).mean(0) - sae.encode(pos_acts).mean(0), k)


@mistake("test_feature_activation_differences", "encode every row first")
def diff_encode_the_mean(sae, pos_acts, neg_acts, k=10):
    return _topk(sae.encode(pos_acts.mean(0)) - sae.encode(neg_acts.mean(0)), k)


@mistake("test_feature_activation_differences", "after the relu")
def diff_pre_activations(sae, pos_acts, neg_acts, k=10):
    return _topk(sae.pre_activations(pos_acts).mean(0) - sae.pre_activations(neg_acts).mean(0), k)


@mistake("test_feature_activation_differences", "mean over the positive rows minus mean over the negative rows")
def diff_unbalanced(sae, pos_acts, neg_acts, k=10):
    n = len(pos_acts) + len(neg_acts)
    return _topk((sae.encode(pos_acts).sum(0) - sae.encode(neg_acts).sum(0)) / n, k)


@mistake("test_feature_activation_differences", "largest first")
def diff_smallest_first(sae, pos_acts, neg_acts, k=10):
    d = sae.encode(pos_acts).mean(0) - sae.encode(neg_acts).mean(0)
    top = d.topk(k, largest=False)
    return top.indices, top.values


@mistake("test_feature_activation_differences", "a mean of the chunks' means")
def diff_mean_of_chunk_means(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    def side(acts):
        return torch.stack([sae.encode(c).mean(0) for c in acts.split(batch_size)]).mean(0)
    return _topk(side(pos_acts) - side(neg_acts), k)


@mistake("test_feature_activation_differences", "encode at most batch_size rows at a time")
def diff_ignores_batch_size(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    return _topk(sae.encode(pos_acts).mean(0) - sae.encode(neg_acts).mean(0), k)


@mistake("test_feature_activation_differences",
         "should return its indices as a torch.tensor of shape (k,) = (3,), got a ndarray")
def diff_returns_numpy(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    idx, vals = ref.feature_activation_differences(sae, pos_acts, neg_acts, k, batch_size)
    return idx.numpy(), vals.numpy()


# Correct, written another way: each must pass.
@mistake("test_feature_activation_differences", "last, partial chunk were left out")
def diff_drops_last_chunk(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    """Counts whole chunks only (at least one): the rows after the last full chunk are never encoded."""
    def mean_features(acts):
        n_chunks = max(1, len(acts) // batch_size)
        rows = torch.cat([acts[i * batch_size:(i + 1) * batch_size] for i in range(n_chunks)])
        return torch.cat([sae.encode(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]).mean(0)

    diffs = mean_features(pos_acts) - mean_features(neg_acts)
    return _topk(diffs, k)


@correct("test_top_sae_features_by_cosine")
def cos_argsort_loop(vector, sae, k=10):
    """The cosines one feature at a time, then argsort descending."""
    v = vector / vector.norm()
    cos = torch.stack([(row @ v) / row.norm() for row in sae.W_dec])
    order = torch.argsort(cos, descending=True)[:k]
    return order, cos[order]


@correct("test_top_sae_features_by_cosine")
def cos_functional(vector, sae, k=10):
    cos = F.cosine_similarity(sae.W_dec.float(), vector.float()[None, :].to(sae.W_dec.device), dim=-1)
    values, indices = torch.topk(cos, k)
    return indices, values


@correct("test_top_sae_features_by_cosine")
def cos_feature_directions(vector, sae, k=10):
    dirs = sae.feature_directions()  # unit rows, float32
    cos = dirs @ F.normalize(vector.float(), dim=0)
    order = torch.argsort(cos, descending=True)[:k]
    return order, cos[order]


@correct("test_feature_activation_differences")
def diff_concatenated_chunks(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    def side(acts):
        return torch.cat([sae.encode(acts[i:i + batch_size]) for i in range(0, len(acts), batch_size)]).mean(0)
    d = side(pos_acts) - side(neg_acts)
    order = d.argsort(descending=True)[:k]
    return order, d[order]


@correct("test_feature_activation_differences")
def diff_running_sums(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    def side(acts):
        total, n = 0.0, 0
        for chunk in torch.split(acts, batch_size):
            total = total + sae.encode(chunk).double().sum(0)
            n += chunk.shape[0]
        return total / n
    return _topk((side(pos_acts) - side(neg_acts)).float(), k)


@correct("test_feature_activation_differences")
def diff_weighted_chunk_means(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    """Each chunk's mean weighted by its share of the rows (float64)."""
    def side(acts):
        total = torch.zeros(sae.d_sae, dtype=torch.float64)
        for chunk in acts.split(batch_size):
            total += sae.encode(chunk).double().mean(0).cpu() * (chunk.shape[0] / acts.shape[0])
        return total
    d = (side(pos_acts) - side(neg_acts)).float()
    values, order = d.sort(descending=True)
    return order[:k], values[:k]
