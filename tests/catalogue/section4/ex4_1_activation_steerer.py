"""Exercise 4.1 — An activation steerer

Wrong ActivationSteerers (small tweaks of the reference, or what a student writes from the exercise
text), each declared with the test it must fail and the phrase its message must name; correct
steerers written another way, declared with the tests they must pass.
"""

from __future__ import annotations

import contextlib
import math

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section4._shared import Ref
from utils.hooks import get_blocks, hidden_of, with_hidden
from utils.steering import Steerer


@mistake("test_activation_steerer", "other than the last")
class SteerResponseEveryPosition(Ref):
    """'response' mode steers every position (forgot to restrict to the last one)."""

    def _hook(self, module, args, output):
        h = hidden_of(output)
        if self.positions == "prompt" and h.shape[1] == 1:
            return output
        return with_hidden(output, h + self.coeff * self.vector)


@mistake("test_activation_steerer", "'prompt') steered a decoding step")
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


@mistake("test_activation_steerer", "last prompt position")
class ResponseOnlyDecode(Ref):
    """'response' mode only steers decoding steps, missing the last prompt position."""

    def _hook(self, module, args, output):
        h = hidden_of(output)
        if self.positions == "response" and h.shape[1] > 1:
            return output
        return Ref._hook(self, module, args, output)


@mistake("test_activation_steerer", "'response' mode steers each new token")
class ResponseSkipsDecode(Ref):
    """'response' mode steers the last prompt position, then never the new tokens."""

    def _hook(self, module, args, output):
        if self.positions == "response" and hidden_of(output).shape[1] == 1:
            return output
        return Ref._hook(self, module, args, output)


@mistake("test_activation_steerer", "'all' mode steers each new token")
class AllSkipsDecode(Ref):
    """'all' mode treated like 'prompt': the decoding steps are skipped."""

    def _hook(self, module, args, output):
        if self.positions == "all" and hidden_of(output).shape[1] == 1:
            return output
        return Ref._hook(self, module, args, output)


@mistake("test_activation_steerer", "other than the last")
class ResponseFirstPosition(Ref):
    """'response' mode steers position 0 instead of the last one."""

    def _hook(self, module, args, output):
        if self.positions != "response":
            return Ref._hook(self, module, args, output)
        h = hidden_of(output).clone()
        h[:, 0, :] = h[:, 0, :] + self.coeff * self.vector
        return with_hidden(output, h)


@mistake("test_activation_steerer", "not by a flag")
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


@mistake("test_activation_steerer", "in place")
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


@mistake("test_activation_steerer", "replaced by coeff * vector")
class ReplacesLastPosition(Ref):
    """'response' mode sets the last position to coeff * vector instead of adding it."""

    def _hook(self, module, args, output):
        if self.positions != "response":
            return Ref._hook(self, module, args, output)
        h = hidden_of(output).clone()
        h[:, -1, :] = self.coeff * self.vector
        return with_hidden(output, h)


@mistake("test_activation_steerer", "after an exception")
class HookLeftOnException(Ref):
    """Removes the hook only when the block ended without an exception."""

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return Ref.__exit__(self, exc_type, exc, tb)
        return False


@mistake("test_activation_steerer", "swallowed")
class SwallowsException(Ref):
    def __exit__(self, exc_type, exc, tb):
        Ref.__exit__(self, exc_type, exc, tb)
        return True


@mistake("test_activation_steerer", "left")
class NeverRemoves(Ref):
    def __exit__(self, exc_type, exc, tb):
        return False


@correct("test_activation_steerer")
class PrependedHook(Ref):
    """Correct: the hook registered with prepend=True (it runs before hooks registered earlier on the block)."""

    def __enter__(self):
        self._handle = get_blocks(self.model)[self.layer].register_forward_hook(self._hook, prepend=True)
        return self


@mistake("test_activation_steerer", "did not register")
class ClearsBlockHooks(Ref):
    """Removes its hook by clearing every forward hook of the block (other code's hooks too)."""

    def __exit__(self, exc_type, exc, tb):
        get_blocks(self.model)[self.layer]._forward_hooks.clear()
        self._handle = None
        return False


@mistake("test_activation_steerer", "two steerers nested")
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


@mistake("test_activation_steerer", "not in __init__")
class RegistersInInit(Ref):
    """Registers the hook in __init__; __enter__ only returns self."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, coeff, layer, positions)
        self._handle = get_blocks(model)[self.layer].register_forward_hook(self._hook)

    def __enter__(self):
        return self


@mistake("test_activation_steerer", "__enter__ should return self")
class EnterReturnsNone(Ref):
    def __enter__(self):
        Ref.__enter__(self)


@mistake("test_activation_steerer", "off by one")
class LayerPlusOne(Ref):
    def __enter__(self):
        self._handle = get_blocks(self.model)[self.layer + 1].register_forward_hook(self._hook)
        return self


@mistake("test_activation_steerer", "off by one")
class LayerMinusOne(Ref):
    """Thinks of `layer` as an index into hidden_states (block layer - 1)."""

    def __enter__(self):
        self._handle = get_blocks(self.model)[self.layer - 1].register_forward_hook(self._hook)
        return self


@mistake("test_activation_steerer", "*input*")
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


@mistake("test_activation_steerer", "coeff is ignored")
class CoeffIgnored(Ref):
    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, 1.0, layer, positions)


@mistake("test_activation_steerer", "sign is flipped")
class SignFlipped(Ref):
    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, -coeff, layer, positions)


@mistake("test_activation_steerer", "normalised")
class NormalisesVector(Ref):
    """Steers with coeff * v / ‖v‖ (the coefficient as a distance along a unit vector)."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, coeff, layer, positions)
        self.vector = self.vector / self.vector.norm()


@mistake("test_activation_steerer", "cast the change to the hidden state's dtype")
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


@mistake("test_activation_steerer", "(coeff * vector).to(h.dtype)")
class UpcastsHidden(Ref):
    """Works in float32 (h.float()) and returns that into the model."""

    def _hook(self, module, args, output):
        return with_hidden(output, hidden_of(Ref._hook(self, module, args, output)).float())


@mistake("test_activation_steerer", "output[0]")
class IndexesTensorOutput(Ref):
    """`output[0]` on a tensor output: takes batch row 0."""

    def _hook(self, module, args, output):
        h = output[0]
        if self.positions == "prompt" and h.shape[-2] == 1:
            return output
        return (h + self.coeff * self.vector,) + tuple(output[1:])


@mistake("test_activation_steerer", "same container type")
class TupleToTensor(Ref):
    """Unpacks a tuple output but returns only the hidden state."""

    def _hook(self, module, args, output):
        return hidden_of(Ref._hook(self, module, args, output))


@mistake("test_activation_steerer", "output[1:]")
class TupleNested(Ref):
    """Wraps the rest of a tuple output as one nested item: (h, output[1:])."""

    def _hook(self, module, args, output):
        new = Ref._hook(self, module, args, output)
        if isinstance(output, tuple):
            return (new[0], output[1:])
        return new


@mistake("test_activation_steerer", "modified the vector")
class ScalesVectorInPlace(Ref):
    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, 1.0, layer, positions)
        self.vector = vector.mul_(1.0)  # harmless scale, then...
        self.vector.mul_(coeff)  # ...the caller's tensor now holds coeff * vector


# -- input checks ------------------------------------------------------------------------
@mistake("test_activation_steerer_input_checks", "ValueError")
@correct("test_activation_steerer")  # no input checks: full credit for the maths
class NoShapeCheck(Ref):
    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        if positions not in self.POSITIONS:
            raise ValueError(positions)
        self.model, self.vector, self.coeff = model, torch.as_tensor(vector).reshape(-1)[: model.config.get_text_config().hidden_size], float(coeff)
        self.layer, self.positions, self._handle = layer, positions, None


@mistake("test_activation_steerer_input_checks", "positions='middle'")
@correct("test_activation_steerer")  # no input checks: full credit for the maths
class NoPositionCheck(Ref):
    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, coeff, layer, "all" if positions not in self.POSITIONS else positions)


@mistake("test_activation_steerer_input_checks", "shape [1, 64]")
class AcceptsRowVector(Ref):
    """Checks only the last dimension and flattens: a [1, d_model] vector gets through."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        vector = torch.as_tensor(vector)
        if vector.shape[-1] != model.config.get_text_config().hidden_size:
            raise ValueError("wrong size")
        super().__init__(model, vector.reshape(-1), coeff, layer, positions)


@mistake("test_activation_steerer_input_checks", "got AssertionError")
class AssertsInputs(Ref):
    """Checks its inputs with `assert` (AssertionError, not ValueError)."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        assert positions in self.POSITIONS, f"bad positions {positions!r}"
        assert tuple(torch.as_tensor(vector).shape) == (model.config.get_text_config().hidden_size,), "bad vector shape"
        super().__init__(model, vector, coeff, layer, positions)


@mistake("test_activation_steerer_input_checks", "after a ValueError")
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
@correct("test_activation_steerer", "test_activation_steerer_input_checks")
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


@correct("test_activation_steerer")
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


@correct("test_activation_steerer", "test_activation_steerer_input_checks")
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


correct("test_activation_steerer", "test_activation_steerer_input_checks")(Steerer)  # the course's utils.steering.Steerer


# -- input checks (continued) --------------------------------------------------------------
@mistake("test_activation_steerer_input_checks", "a vector holding NaN")
class SteererNoFiniteCheck(ClosureSteerer):
    """Checks shapes and positions, but steers with a NaN vector (every later activation is NaN)."""

    check_numbers = False


# -- coefficients that are not whole, positive numbers (fractional, negative, zero) ------------
@mistake("test_activation_steerer", "rounded to a whole number")
class IntCoeff(Ref):
    """Stores the coefficient as an int: 2.5 steers by 2, 0.5 by 0."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, coeff, layer, positions)
        self.coeff = int(coeff)


@mistake("test_activation_steerer", "sign of a negative coefficient was lost")
class AbsCoeff(Ref):
    """Takes the coefficient's size only (abs): a negative coefficient steers toward the trait."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, abs(coeff), layer, positions)


@mistake("test_activation_steerer", "clamped to 0")
class NegativeCoeffSkipped(Ref):
    """Steers only for a positive coefficient (`if self.coeff > 0`)."""

    def _hook(self, module, args, output):
        if self.coeff <= 0:
            return output
        return Ref._hook(self, module, args, output)


@mistake("test_activation_steerer", "`coeff or 1.0`")
class ZeroCoeffMeansDefault(Ref):
    """`coeff or 1.0`: a coefficient of 0 (unsteered) is taken as missing and steers by 1 * vector."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, coeff or 1.0, layer, positions)


@mistake("test_activation_steerer_input_checks", "every finite coefficient is valid")
@mistake("test_activation_steerer", "fractional, negative or zero")
class RefusesZeroCoeff(Ref):
    """Refuses coeff == 0 as 'no steering requested' (the notebook steers at 0 for its unsteered baseline)."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        if coeff == 0:
            raise ValueError("coeff must be non-zero")
        super().__init__(model, vector, coeff, layer, positions)


@mistake("test_activation_steerer_input_checks", "every finite coefficient is valid")
class RefusesNegativeCoeff(Ref):
    """Takes 'finite' to mean 'a non-negative number'."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        if not (math.isfinite(coeff) and coeff >= 0):
            raise ValueError(f"coeff must be a finite non-negative number, got {coeff!r}")
        super().__init__(model, vector, coeff, layer, positions)


@mistake("test_activation_steerer_input_checks", "int or float")
class RequiresFloatCoeff(Ref):
    """Refuses a coefficient that is not a float (the notebook's coefficients are ints)."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        if not isinstance(coeff, float) or not math.isfinite(coeff):
            raise ValueError(f"coeff must be a finite float, got {coeff!r}")
        super().__init__(model, vector, coeff, layer, positions)


@mistake("test_activation_steerer_input_checks", "-inf")
class ChecksPlusInfOnly(ClosureSteerer):
    """Looks for NaN and +inf by comparison (`v == inf`): a vector holding -inf gets through."""

    check_numbers = False

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        v = torch.as_tensor(vector)
        if torch.isnan(v).any() or (v == float("inf")).any() or not math.isfinite(coeff):
            raise ValueError("vector and coeff must be finite")
        super().__init__(model, vector, coeff, layer, positions)


@correct("test_activation_steerer", "test_activation_steerer_input_checks")
class Float64DeltaSteerer(Ref):
    """Correct: the change computed in float64 from a float coefficient, cast to the hidden state's dtype."""

    def __init__(self, model, vector, coeff=1.0, layer=19, positions="all"):
        super().__init__(model, vector, coeff, layer, positions)
        self.delta = float(coeff) * self.vector.double()

    def _hook(self, module, args, output):
        h = hidden_of(output)
        if self.positions == "prompt" and h.shape[1] == 1:
            return output
        add = self.delta.to(device=h.device, dtype=h.dtype)
        if self.positions == "response":
            return with_hidden(output, torch.cat([h[:, :-1], h[:, -1:] + add], dim=1))
        return with_hidden(output, h + add)
