"""Exercise 1.7 — PCA and the Assistant Axis

Wrong pca_decompose_persona_vectors, and one written another way.
"""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section1._shared import factory, ref


def _pca(vectors, default_personas, *, flip=False, normalise=True, roles_include_defaults=False,
         uncentred=False, order=None, fit_on_roles=False, check_names=True, axis_numpy=False):
    import numpy as np
    from sklearn.decomposition import PCA

    if check_names and any(n not in vectors for n in default_personas):
        raise ValueError("unknown default persona")
    defaults = [n for n in default_personas if n in vectors]
    names = list(vectors) if order is None else order(list(vectors), defaults)
    roles = list(vectors) if roles_include_defaults else [n for n in vectors if n not in defaults]
    axis = torch.stack([vectors[n].float() for n in defaults]).mean(0) - torch.stack([vectors[n].float() for n in roles]).mean(0)
    if flip:
        axis = -axis
    if normalise:
        axis = axis / axis.norm()
    X = torch.stack([vectors[n].float() for n in names]).numpy()
    pca = PCA(n_components=2)
    if uncentred:
        pca.fit(X)
        _, _, vh = np.linalg.svd(X, full_matrices=False)
        coords = X @ vh[:2].T
    elif fit_on_roles:
        pca.fit(torch.stack([vectors[n].float() for n in roles if n not in defaults]).numpy())
        coords = pca.transform(X)
    else:
        coords = pca.fit_transform(X)
    return (axis.numpy() if axis_numpy else axis), coords, pca


@factory
def _wrong_pca(**mistake):
    def wrong(vectors, default_personas):
        return _pca(vectors, default_personas, **mistake)
    return wrong


@mistake("test_pca_decompose_persona_vectors", "returned shape")
def pca_roles_only_rows(vectors, default_personas):
    axis, _, pca = _pca(vectors, default_personas)
    roles = [n for n in vectors if n not in default_personas]
    X = torch.stack([vectors[n].float() for n in roles]).numpy()
    return axis, pca.transform(X), pca


@mistake("test_pca_decompose_persona_vectors", "coordinates of the returned PCA")
def pca_coords_flipped(vectors, default_personas):
    """Orients the coordinates toward the defaults but leaves pca.components_ as fitted."""
    axis, coords, pca = ref.pca_decompose_persona_vectors(vectors, default_personas)
    return axis, -coords, pca


@mistake("test_pca_decompose_persona_vectors", "fit PCA(n_components=2)")
def pca_all_components(vectors, default_personas):
    """PCA() with every component, and the first two columns of its coordinates."""
    from sklearn.decomposition import PCA

    axis, _, _ = ref.pca_decompose_persona_vectors(vectors, default_personas)
    X = torch.stack([v.float() for v in vectors.values()]).numpy()
    pca = PCA()
    return axis, pca.fit_transform(X)[:, :2], pca


@mistake("test_pca_decompose_persona_vectors", "is PC1")
def pca_axis_is_pc1(vectors, default_personas):
    _, coords, pca = ref.pca_decompose_persona_vectors(vectors, default_personas)
    return torch.tensor(pca.components_[0], dtype=torch.float32), coords, pca


@mistake("test_pca_decompose_persona_vectors", "returned shape")
def pca_three_components(vectors, default_personas):
    import numpy as np
    from sklearn.decomposition import PCA

    axis, _, _ = ref.pca_decompose_persona_vectors(vectors, default_personas)
    X = np.stack([vectors[n].float().numpy() for n in vectors])
    pca = PCA(n_components=3)
    return axis, pca.fit_transform(X), pca


@correct("test_pca_decompose_persona_vectors", "test_pca_decompose_persona_vectors_input_checks")
def alt_pca_fit_on_centred(vectors, default_personas):
    """Centres the vectors itself and fits the PCA on them; returns torch coordinates."""
    import numpy as np
    from sklearn.decomposition import PCA

    if set(default_personas) - set(vectors):
        raise ValueError("unknown default persona")
    X = np.stack([vectors[n].double().numpy() for n in vectors])
    is_default = np.array([n in default_personas for n in vectors])
    axis = X[is_default].mean(0) - X[~is_default].mean(0)
    Xc = X - X.mean(0)
    pca = PCA(n_components=2).fit(Xc)
    return torch.from_numpy(axis / np.linalg.norm(axis)).float(), torch.from_numpy(pca.transform(Xc)), pca


def _sorted_names(names, defaults):
    return sorted(names)


# Made by the factories above: each declared on the line that makes it.
mistake("test_pca_decompose_persona_vectors", "wrong way")(_wrong_pca(flip=True))
mistake("test_pca_decompose_persona_vectors", "normalise")(_wrong_pca(normalise=False))
mistake("test_pca_decompose_persona_vectors", "uncentred")(_wrong_pca(uncentred=True))
mistake("test_pca_decompose_persona_vectors", "sorted by name")(_wrong_pca(order=_sorted_names))
mistake("test_pca_decompose_persona_vectors", "all personas")(_wrong_pca(fit_on_roles=True))
mistake("test_pca_decompose_persona_vectors", "torch.Tensor")(_wrong_pca(axis_numpy=True))
mistake("test_pca_decompose_persona_vectors_input_checks", "unknown default")(_wrong_pca(check_names=False))
correct("test_pca_decompose_persona_vectors")(_wrong_pca(check_names=False))
# mean(defaults) - mean(all personas) is parallel to mean(defaults) - mean(roles): the same unit axis
correct("test_pca_decompose_persona_vectors")(_wrong_pca(roles_include_defaults=True))


@mistake("test_pca_decompose_persona_vectors", "first")
def pca_first_k_are_defaults(vectors, default_personas):
    """Takes the first len(default_personas) vectors as the defaults (the course's dict happens to start with them)."""
    if any(n not in vectors for n in default_personas):
        raise ValueError("unknown default persona")
    names = list(vectors)
    k = len(default_personas)
    return _pca({n: vectors[n] for n in names}, names[:k])


@mistake("test_pca_decompose_persona_vectors_input_checks", "typo")
def pca_checks_first_name(vectors, default_personas):
    """Checks only the first name of default_personas (and drops the unknown others silently)."""
    if default_personas and default_personas[0] not in vectors:
        raise ValueError(f"unknown default persona {default_personas[0]!r}")
    return _pca(vectors, default_personas, check_names=False)
