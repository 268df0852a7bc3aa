"""Bad input gets a clear error in the reference solutions too (the utils' own checks are tested
beside each module: missing API key and unreachable endpoint in test_api, a tokenizer without a
chat template and mismatched list lengths in test_conventions, malformed data files in test_data)."""

from __future__ import annotations

import pytest
import torch

from part_tests._common import tiny
from utils.reference import load


def test_unknown_default_persona_is_named():
    ref = load("section1")
    vectors = {name: torch.randn(8) for name in ("default", "ghost", "bard", "oracle")}
    with pytest.raises(ValueError, match="helpful_asistant"):
        ref.pca_decompose_persona_vectors(vectors, ["default", "helpful_asistant"])


def test_a_judge_that_scores_nothing_stops_section1_with_one_message():
    """A judge that never answers with a number (every role score None) stops Section 1 where the scores
    are first used, with a message naming the judge and what to do, not inside the PCA later."""
    ref = load("section1")
    defaults = ["default", "assistant"]
    scores = {("default", 0): 3, ("assistant", 0): 3, ("ghost", 0): None, ("ghost", 1): None, ("bard", 0): None}
    with pytest.raises(RuntimeError) as info:
        ref.require_role_scores(scores, defaults, 3, "self-judged by tiny-judge")
    message = str(info.value)
    for part in ("self-judged by tiny-judge", "no score", "API key", "scores=None", "score_threshold"):
        assert part in message, f"{part!r} missing from {message!r}"
    # scores that exist but all fall below the threshold: the same stop, saying so
    low = {**scores, ("ghost", 0): 2, ("bard", 0): 1}
    with pytest.raises(RuntimeError, match=r"no role response has a score >= 3 .*1 of 3 have no score"):
        ref.require_role_scores(low, defaults, 3, "the toy-world judge")
    # one role response that passes is enough, and a lower threshold is honoured
    ref.require_role_scores({**scores, ("bard", 0): 3}, defaults, 3, "x")
    ref.require_role_scores(low, defaults, 2, "x")
    # without the check, the same scores end in the PCA's error: the check is what names the judge
    kept = {n: torch.randn(8) for n in defaults}  # every role filtered out
    with pytest.raises(ValueError, match="one role"):
        ref.pca_decompose_persona_vectors(kept, defaults)


def test_mismatched_lists_in_extraction_are_rejected():
    ref = load("section1")
    model, tok = tiny("tiny-gemma2")
    with pytest.raises(ValueError):
        ref.extract_response_activations(model, tok, ["", ""], ["q1"], ["r1", "r2"], layer=1)


def test_steering_vector_of_the_wrong_size_is_rejected():
    from utils.steering import Steerer

    model, _ = tiny("tiny-qwen2")
    with pytest.raises(ValueError, match="d_model"):
        Steerer(model, torch.randn(7), coeff=1.0, layer=1)
    with pytest.raises(ValueError, match="positions"):
        Steerer(model, torch.randn(model.config.hidden_size), layer=1, positions="everywhere")


# --------------------------------------------------------------------------
# the utils functions that take tensors and numbers from a learner (utils.validate at their door)
# --------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")


def _d(model):
    return model.config.get_text_config().hidden_size


@pytest.mark.parametrize("kwargs, message", [
    (dict(vector="nan"), r"vector has 1 NaN"),
    (dict(vector="inf"), r"vector has 0 NaN and 1 infinite"),
    (dict(vector="int"), r"vector must be a floating-point tensor, got dtype torch.int64"),
    (dict(vector="bool"), r"vector must be a floating-point tensor, got dtype torch.bool"),
    (dict(vector="2d"), r"vector must have shape \[d_model\]"),
    (dict(vector="short"), r"vector has 63 entries, but the model's d_model is 64"),
    (dict(coeff=INF), r"coeff must be finite"),
    (dict(coeff=NAN), r"coeff must be finite"),
    (dict(coeff=True), r"coeff must be a number, got True"),
    (dict(coeff="4"), r"coeff must be a real number"),
    (dict(coeff=torch.ones(3)), r"coeff must be one number"),
    (dict(layer=True), r"layer must be an int, got True \(a bool\)"),
    (dict(layer=1.0), r"layer must be an int, got 1.0"),
])
def test_steerer_refuses_bad_numbers(kwargs, message):
    from utils.steering import Steerer

    model, _ = tiny("tiny-qwen2")
    d = _d(model)
    v = torch.randn(d)
    kinds = {"nan": v.clone().index_fill_(0, torch.tensor([3]), NAN), "inf": v.clone().index_fill_(0, torch.tensor([0]), INF),
             "int": torch.ones(d, dtype=torch.long), "bool": torch.ones(d, dtype=torch.bool), "2d": v[None],
             "short": v[:-1]}
    args = dict(vector=v, coeff=1.0, layer=1)
    args.update(kwargs)
    if isinstance(args["vector"], str):
        args["vector"] = kinds[args["vector"]]
    with pytest.raises(ValueError, match=message):
        Steerer(model, **args)


def test_steerer_layer_out_of_range_is_still_an_index_error():
    from utils.steering import Steerer

    model, _ = tiny("tiny-qwen2")
    with pytest.raises(IndexError, match="0-based"):
        Steerer(model, torch.randn(_d(model)), layer=99)
    with pytest.raises(IndexError):  # a bool is refused as a ValueError that is also an IndexError
        Steerer(model, torch.randn(_d(model)), layer=False)


def test_capping_refuses_nan_inf_and_zero(tmp_path):
    from safetensors.torch import save_file

    from utils import capping

    with pytest.raises(ValueError, match="vector is a zero vector"):
        capping.unit(torch.zeros(8))
    with pytest.raises(ValueError, match="axis has 1 NaN"):
        capping.unit(torch.tensor([1.0, NAN]), "axis")
    with pytest.raises(ValueError, match="cap must be finite"):
        capping.ceiling_to_floor(torch.ones(4), NAN)
    axis = torch.randn(5, 8)
    with pytest.raises(ValueError, match=r"thresholds\[1\] must be finite"):
        capping.make_config("m", axis, [1, 2], [0.5, NAN])
    with pytest.raises(ValueError, match=r"thresholds\[0\] must be a number, got True"):
        capping.make_config("m", axis, [1], [True])
    with pytest.raises(ValueError, match=r"layers\[0\] must be an int, got True"):
        capping.make_config("m", axis, [True], [0.5])
    bad = axis.clone()
    bad[2, 3] = NAN
    with pytest.raises(ValueError, match="axis has 1 NaN"):
        capping.make_config("m", bad, [2], [0.5])
    zero = axis.clone()
    zero[2] = 0
    with pytest.raises(ValueError, match=r"vectors has all-zero rows \[0\]"):
        capping.make_config("m", zero, [2], [0.5])
    with pytest.raises(ValueError, match=r"vectors has 1 NaN"):
        capping.CappingConfig(model="m", layers=[1], thresholds=[0.0], vectors=bad[2:3])
    # files: NaN, empty, integer, truncated
    save_file({"axis": bad}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(ValueError, match=r"nan.safetensors has 1 NaN"):
        capping.load_axis(tmp_path / "nan.safetensors")
    save_file({"axis": torch.zeros(0, 8)}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(ValueError, match="empty.safetensors is empty"):
        capping.load_axis(tmp_path / "empty.safetensors")
    save_file({"axis": torch.ones(5, 8, dtype=torch.int32)}, str(tmp_path / "int.safetensors"))
    with pytest.raises(ValueError, match="int.safetensors must be a floating-point tensor"):
        capping.load_axis(tmp_path / "int.safetensors")
    (tmp_path / "zero.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="zero.safetensors: not a readable safetensors file"):
        capping.load_axis(tmp_path / "zero.safetensors")
    good = capping.save_axis(tmp_path / "good.safetensors", axis)
    with pytest.raises(ValueError, match="layer must be an int, got True"):
        capping.load_axis(good, layer=True)
    with pytest.raises(ValueError, match="axis has 0 NaN and 8 infinite"):
        capping.save_axis(tmp_path / "x.safetensors", axis.index_fill(0, torch.tensor([0]), INF))


def test_activations_refuse_bool_and_bare_int_layers():
    from utils.activations import response_mean_activations

    model, tok = tiny("tiny-qwen2")
    conv = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    with pytest.raises(ValueError, match="layer must be an int, got True"):
        response_mean_activations(model, tok, conv, layers=[True])
    with pytest.raises(ValueError, match="layers must be a list"):
        response_mean_activations(model, tok, conv, layers=2)


def test_sae_refuses_pickles_and_names_truncated_files(tmp_path):
    from safetensors.torch import save_file

    from utils.sae import SparseAutoencoder, UnsafeCheckpointError, load_sae, synthetic_sae

    class Payload:
        def __reduce__(self):
            return (print, ("this would have run",))

    torch.save({"encoder.weight": torch.randn(4, 2), "extra": Payload()}, tmp_path / "ae.pt")
    with pytest.raises(UnsafeCheckpointError, match="refused as unsafe") as e:
        load_sae(tmp_path / "ae.pt")
    assert "weights_only=False" not in str(e.value) and e.value.__cause__ is None and "ae.pt" in str(e.value)
    good = synthetic_sae(8, 16)
    state = {"W_enc": good.W_enc.data, "b_enc": good.b_enc.data, "W_dec": good.W_dec.data, "b_dec": good.b_dec.data}
    save_file(state, str(tmp_path / "sae.safetensors"))
    data = (tmp_path / "sae.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.safetensors: not a readable safetensors file"):
        load_sae(tmp_path / "cut.safetensors")
    torch.save(state, tmp_path / "w.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "w.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut.pt: not a readable PyTorch checkpoint"):
        load_sae(tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="x \\(the SAE input\\) has 1 NaN"):
        good.encode(torch.tensor([NAN] + [0.0] * 7))
    with pytest.raises(ValueError, match="floating-point"):
        good.encode(torch.ones(8, dtype=torch.long))
    with pytest.raises(ValueError, match="W_dec has NaN"):
        SparseAutoencoder(state["W_enc"], state["b_enc"], state["W_dec"] * NAN, state["b_dec"])
    with pytest.raises(ValueError, match=r"planted\[3\] is a zero vector"):
        synthetic_sae(8, 16, planted={3: torch.zeros(8)})


def test_validate_helpers_directly():
    from utils.validate import check_index, check_matrix, check_number, check_vector

    assert check_number(3, "x") == 3.0 and check_number(torch.tensor(2.5), "x") == 2.5
    with pytest.raises(ValueError, match="x is too large"):
        check_number(10 ** 400, "x")
    with pytest.raises(ValueError, match="x must be positive"):
        check_number(0, "x", positive=True)
    assert check_index(torch.tensor(2), "layer", 4) == 2
    with pytest.raises(ValueError, match="vectors has all-zero rows \\[1\\]"):
        check_matrix(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "vectors", nonzero_rows=True)
    with pytest.raises(ValueError, match="v must be a tensor"):
        check_vector(None, "v")
    with pytest.raises(ValueError, match="v is empty"):
        check_vector(torch.zeros(0), "v")


def test_an_empty_answer_does_not_cost_the_trait_vector():
    """A pair with an empty reply (a steered model can answer with EOS alone) is left out of the
    effective pairs, instead of crashing the activation step for the whole batch."""
    ref = load("section4")

    def record(polarity, question, response, score):
        return {"instruction_idx": 0, "question_idx": question, "polarity": polarity, "system_prompt": None,
                "question": f"q{question}", "response": response, "trait_score": score, "coherence_score": 90}

    records = [record("pos", 0, "a sycophantic answer", 90), record("neg", 0, "a plain answer", 10),
               record("pos", 1, "", 90), record("neg", 1, "another plain answer", 10)]
    kept = ref.filter_effective(records)
    assert [p["question_idx"] for p in kept] == [0]
    model, tok = tiny("tiny-qwen2")
    vector = ref.extract_trait_vectors(model, tok, kept)
    assert bool(torch.isfinite(vector).all())
