"""Exercise 2.7 — Activation capping

Wrong implementations of ActivationCapper that its tests must reject, and correct ones written another way.
"""

from __future__ import annotations

import math
from contextlib import ExitStack

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section2._shared import R
from utils.hooks import check_layer, get_blocks, hidden_of, with_hidden


class _CapperBase(R.ActivationCapper):
    def cap(self, h, v, tau):
        raise NotImplementedError

    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output)
            return with_hidden(output, self.cap(h, v_hat.to(h.dtype), tau))

        return hook


@mistake("test_activation_capper", "sign is flipped")
class CapCeiling(_CapperBase):
    def cap(self, h, v, tau):
        return h - (h @ v - tau).clamp(min=0).unsqueeze(-1) * v


@mistake("test_activation_capper", "threshold")
class CapHalfConverted(_CapperBase):
    """Took the released ceiling, reversed the vector, but kept the threshold's sign."""

    def cap(self, h, v, tau):
        u = -v
        return h - (h @ u - tau).clamp(min=0).unsqueeze(-1) * u


@mistake("test_activation_capper", "normalise")
class CapNotNormalised(R.ActivationCapper):
    def __init__(self, model, vectors, thresholds, layers):
        super().__init__(model, vectors, thresholds, layers)
        self.units = [torch.as_tensor(v).float() for v in (list(vectors) if not isinstance(vectors, torch.Tensor) else list(vectors))]


@mistake("test_activation_capper", "only the last position")
class CapLastPosition(_CapperBase):
    def cap(self, h, v, tau):
        out = h.clone()
        last = h[:, -1]
        out[:, -1] = last - (last @ v - tau).clamp(max=0).unsqueeze(-1) * v
        return out


@mistake("test_activation_capper", "in place")
class CapInPlace(_CapperBase):
    def cap(self, h, v, tau):
        h.sub_((h @ v - tau).clamp(max=0).unsqueeze(-1) * v)
        return h


@mistake("test_activation_capper", "orthogonal")
class CapReplacesVector(_CapperBase):
    def cap(self, h, v, tau):
        below = ((h @ v) < tau).unsqueeze(-1)
        return torch.where(below, tau * v.expand_as(h), h)


@mistake("test_activation_capper", "one token")
class CapSkipsDecode(_CapperBase):
    def cap(self, h, v, tau):
        if h.shape[1] == 1:
            return h
        return h - (h @ v - tau).clamp(max=0).unsqueeze(-1) * v


@mistake("test_activation_capper", "hook")
class CapKeepsLastHandle(R.ActivationCapper):
    def __enter__(self):
        blocks = get_blocks(self.model)
        for v_hat, tau, layer in zip(self.units, self.thresholds, self.layers):
            self._handles = [blocks[layer].register_forward_hook(self._make_hook(v_hat, tau))]
        return self


@mistake("test_activation_capper_input_checks", "raise ValueError")
@correct("test_activation_capper")
class CapNoLengthCheck(R.ActivationCapper):
    def __init__(self, model, vectors, thresholds, layers):
        vectors = list(vectors)
        n = min(len(vectors), len(thresholds), len(layers))
        super().__init__(model, vectors[:n], list(thresholds)[:n], list(layers)[:n])


@mistake("test_activation_capper_input_checks", "stayed capped")
class CapLeaksOnBadLayer(R.ActivationCapper):
    """No layer check when built; __enter__ registers hook after hook and stops at the first missing block."""

    def __init__(self, model, vectors, thresholds, layers):
        n = len(get_blocks(model))
        super().__init__(model, vectors, thresholds, [min(int(x), n - 1) for x in layers])
        self.layers = [int(x) for x in layers]

    def __enter__(self):
        blocks = get_blocks(self.model)
        for v_hat, tau, layer in zip(self.units, self.thresholds, self.layers):
            self._handles.append(blocks[layer].register_forward_hook(self._make_hook(v_hat, tau)))
        return self


@mistake("test_activation_capper", "expected block(s) [1, 3]")
class CapFirstLayerOnly(R.ActivationCapper):
    def __enter__(self):
        self._handles.append(get_blocks(self.model)[self.layers[0]].register_forward_hook(
            self._make_hook(self.units[0], self.thresholds[0])))
        return self


@mistake("test_activation_capper", "container you received")
class CapReturnsTensor(_CapperBase):
    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output)
            v = v_hat.to(h.dtype)
            return h - (h @ v - tau).clamp(max=0).unsqueeze(-1) * v

        return hook


@mistake("test_activation_capper", "wrong layers")
class CapLayersReversed(R.ActivationCapper):
    def __init__(self, model, vectors, thresholds, layers):
        super().__init__(model, vectors, thresholds, list(layers)[::-1])


@mistake("test_activation_capper", "whatever the order of the layers")
class CapSortsLayers(R.ActivationCapper):
    """Sorts the layers but not the vectors and thresholds that go with them."""

    def __init__(self, model, vectors, thresholds, layers):
        super().__init__(model, vectors, thresholds, sorted(layers))


@mistake("test_activation_capper", "changed the vectors it was given")
class CapNormalisesInPlace(R.ActivationCapper):
    """Normalises the caller's vectors in place."""

    def __init__(self, model, vectors, thresholds, layers):
        for v in vectors:
            v.div_(v.norm())
        super().__init__(model, vectors, thresholds, layers)


@mistake("test_activation_capper", "register the hooks in __enter__")
class CapHooksInInit(R.ActivationCapper):
    """Registers its hooks as soon as it is built; __enter__ does nothing more."""

    def __init__(self, model, vectors, thresholds, layers):
        super().__init__(model, vectors, thresholds, layers)
        R.ActivationCapper.__enter__(self)

    def __enter__(self):
        if not self._handles:
            R.ActivationCapper.__enter__(self)
        return self


@mistake("test_activation_capper", "late binding")
class CapLateBinding(R.ActivationCapper):
    def __enter__(self):
        blocks = get_blocks(self.model)
        for v_hat, tau, layer in zip(self.units, self.thresholds, self.layers):
            def hook(module, args, output):
                h = hidden_of(output)
                v = v_hat.to(device=h.device)  # looked up when the hook runs: the last loop value
                p = h.float() @ v
                return with_hidden(output, (h.float() - (p - tau).clamp(max=0).unsqueeze(-1) * v).to(h.dtype))

            self._handles.append(blocks[layer].register_forward_hook(hook))
        return self


@mistake("test_activation_capper", "tau / ||v||")
class CapThresholdOnRawVector(R.ActivationCapper):
    """Projects on the raw vector and divides by ||v||^2: the floor lands at tau / ||v|| on the unit vector."""

    def __init__(self, model, vectors, thresholds, layers):
        super().__init__(model, vectors, thresholds, layers)
        self.raw = [torch.as_tensor(v).float() for v in (list(vectors) if not isinstance(vectors, torch.Tensor) else list(vectors))]

    def __enter__(self):
        blocks = get_blocks(self.model)
        for v, tau, layer in zip(self.raw, self.thresholds, self.layers):
            def hook(module, args, output, v=v, tau=tau):
                h = hidden_of(output).float()
                return with_hidden(output, (h - ((h @ v - tau).clamp(max=0) / (v @ v)).unsqueeze(-1) * v).to(hidden_of(output).dtype))

            self._handles.append(blocks[layer].register_forward_hook(hook))
        return self


@mistake("test_activation_capper", "came back as torch.float32")
class CapReturnsFloat32(R.ActivationCapper):
    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output).float()
            return with_hidden(output, h - (h @ v_hat - tau).clamp(max=0).unsqueeze(-1) * v_hat)

        return hook


@mistake("test_activation_capper", "3 significant digits")
class CapHalfPrecisionProjection(R.ActivationCapper):
    """Everything in the block's dtype: in bfloat16 the projection keeps about 3 significant digits."""

    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output)
            v = v_hat.to(h.dtype)
            return with_hidden(output, h - (h @ v - tau).clamp(max=0).unsqueeze(-1) * v)

        return hook


@mistake("test_activation_capper", "compute the projection in float32")
class CapMixedDtypes(R.ActivationCapper):
    """Multiplies the block's hidden state by the float32 unit vector as it is."""

    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output)
            p = h @ v_hat
            return with_hidden(output, h - (p - tau).clamp(max=0).unsqueeze(-1) * v_hat)

        return hook


@mistake("test_activation_capper", "expected (batch, seq, d_model)")
class CapBatchRowZero(R.ActivationCapper):
    """Takes output[0] of a tensor output: batch row 0, and returns it in place of the whole batch."""

    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = output[0].float()
            return (h - (h @ v_hat - tau).clamp(max=0).unsqueeze(-1) * v_hat).to(output[0].dtype)

        return hook


@mistake("test_activation_capper", "PRE-hook")
class CapPreHook(R.ActivationCapper):
    """Caps the block's input (a forward pre-hook), i.e. the previous block's output."""

    def __enter__(self):
        blocks = get_blocks(self.model)
        for v_hat, tau, layer in zip(self.units, self.thresholds, self.layers):
            def pre(module, args, v_hat=v_hat, tau=tau):
                h = args[0].float()
                return ((h - (h @ v_hat - tau).clamp(max=0).unsqueeze(-1) * v_hat).to(args[0].dtype), *args[1:])

            self._handles.append(blocks[layer].register_forward_pre_hook(pre))
        return self


# correct alternatives


@correct("test_activation_capper", "test_activation_capper_input_checks")
class CapAltWhereExitStack(R.ActivationCapper):
    """torch.where form in float64, hooks held by an ExitStack."""

    def __init__(self, model, vectors, thresholds, layers):
        super().__init__(model, vectors, thresholds, layers)
        self._stack = None

    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output)
            hd, vd = h.double(), v_hat.double().to(h.device)
            p = (hd @ vd).unsqueeze(-1)
            capped = torch.where(p < tau, hd + (tau - p) * vd, hd)
            return with_hidden(output, capped.to(h.dtype))

        return hook

    def __enter__(self):
        self._stack = ExitStack()
        for v_hat, tau, layer in zip(self.units, self.thresholds, self.layers):
            handle = get_blocks(self.model)[layer].register_forward_hook(self._make_hook(v_hat, tau))
            self._stack.callback(handle.remove)
        return self

    def remove(self):
        if self._stack is not None:
            self._stack.close()
            self._stack = None


# wrong ones found by the property-based inputs and the finiteness checks


class _CapperFromScratch(R.ActivationCapper):
    """A capper whose __init__ is written out, with `finite` deciding what it refuses."""

    def finite_vector(self, v):
        return bool(torch.isfinite(v).all())

    def finite_threshold(self, t):
        return math.isfinite(t)

    def __init__(self, model, vectors, thresholds, layers):
        if isinstance(vectors, torch.Tensor):
            vectors = [vectors] if vectors.ndim == 1 else list(vectors)
        vectors, thresholds, layers = list(vectors), self.convert(thresholds), [int(x) for x in layers]
        if not len(vectors) == len(thresholds) == len(layers):
            raise ValueError("one vector and one threshold per layer")
        self.units = []
        for v in vectors:
            v = torch.as_tensor(v).detach().float()
            if not self.finite_vector(v):
                raise ValueError("not finite")
            if v.norm() == 0:
                raise ValueError("zero vector")
            self.units.append(v / v.norm())
        if not all(self.finite_threshold(t) for t in thresholds):
            raise ValueError("not finite")
        self.model, self.thresholds = model, thresholds
        self.layers = [check_layer(model, x) for x in layers]
        self._handles = []

    def convert(self, thresholds):
        return [float(t) for t in thresholds]


@mistake("test_activation_capper_input_checks", "NaN")
class CapNoFiniteCheck(_CapperFromScratch):
    """Checks the lengths and a zero vector, and nothing else: a NaN vector or threshold fills h with NaN."""

    def finite_vector(self, v):
        return True

    def finite_threshold(self, t):
        return True


@mistake("test_activation_capper_input_checks", "NaN threshold")
class CapChecksVectorsOnly(_CapperFromScratch):
    def finite_threshold(self, t):
        return True


@mistake("test_activation_capper_input_checks", "inf")
class CapNanOnly(_CapperFromScratch):
    """Refuses NaN but not inf (torch.isnan / math.isnan)."""

    def finite_vector(self, v):
        return not bool(torch.isnan(v).any())

    def finite_threshold(self, t):
        return not math.isnan(t)


@mistake("test_activation_capper", "rounded to whole numbers")
class CapIntThresholds(_CapperFromScratch):
    """Converted the thresholds as it converted the layers: int(t)."""

    def convert(self, thresholds):
        return [int(t) for t in thresholds]


@mistake("test_activation_capper", "not to a fixed dtype")
class CapFixedDtype(R.ActivationCapper):
    """Casts the capped result to bfloat16 whatever the model's dtype."""

    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output)
            v = v_hat.to(h.device)
            capped = h.float() - (h.float() @ v - tau).clamp(max=0).unsqueeze(-1) * v
            return with_hidden(output, capped.to(torch.bfloat16))

        return hook


@mistake("test_activation_capper", "squeeze")
class CapSqueezes(R.ActivationCapper):
    """Squeezes the projection: a batch of one-token forwards ([B, 1, d]) broadcasts to [B, B, d]."""

    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output)
            v = v_hat.to(h.device)
            proj = (h.float() @ v).squeeze()
            capped = h.float() - (proj - tau).clamp(max=0).unsqueeze(-1) * v
            return with_hidden(output, capped.to(h.dtype))

        return hook
