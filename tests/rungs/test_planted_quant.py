"""Planted cases where the answer is known, for G10 (expert outputs), G10-scan / G10.5 (attention) and R1 (SRHT + INT2).

Real tiny OLMoE models (random init) on the real corpora, with a BPE tokenizer trained in the test:
- G10: experts whose outputs lie on a per-channel INT8 grid: INT8 calibration recovers the grid, so ΔNLL is exactly 0;
  INT4 is not exact; the identity pipeline gives exactly 0.
- G10-scan: an attention layer that is exactly a decaying scan of its input is fit with held-out error ~0, while a
  real attention layer is not; G10.5 with k ≥ the context keeps every key, so the hybrid is exact.
- R1: experts whose SRHT-rotated rows are exactly on the INT2 grid: every gate reads 0 (error, flips, ΔNLL), and the
  real rung module passes all five gates on that model; a random model is killed at the activation-error gate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pytest_ladder.measure.routing import route_jaccard
from pytest_ladder.models.adapters import OlmoeAdapter, adapter_for
from pytest_ladder.models.loading import LoadedModel, ModelSpec
from pytest_ladder.models.weights import write_parameter
from pytest_ladder.probes import attention, attention_capture, expert_outputs, rotorquant
from pytest_ladder.probes.routes import RoutingStudy

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = 64  # a power of 4: the orthonormal Hadamard scale 1/8 is exact, so dyadic weights rotate exactly


@pytest.fixture(scope="module")
def corpora():
    from pytest_ladder.models.corpora import load_corpora

    return load_corpora()


@pytest.fixture(scope="module")
def tokenizer(corpora):
    from pytest_ladder.models.embedded import train_tokenizer

    return train_tokenizer([d.text for c in corpora.values() for d in c.calibration[:60]], 384, 128)


def tiny_olmoe(tokenizer, *, layers: int = 2, seed: int = 0):
    from transformers import OlmoeConfig, OlmoeForCausalLM

    torch.manual_seed(seed)
    config = OlmoeConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=HIDDEN,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4, num_experts=4,
                         num_experts_per_tok=2, max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    return OlmoeForCausalLM(config).eval()


def loaded(model, tokenizer, adapter=None) -> LoadedModel:
    return LoadedModel(model, tokenizer, adapter or adapter_for(model), {}, ModelSpec())


# ------------------------------------------------------------------------------------------------------ G10 ----


def grid_scale(hidden: int) -> torch.Tensor:
    """Per-channel grid steps 2^-5, 2^-6, 2^-7 (exact in float32)."""
    return torch.tensor([2.0 ** -(5 + c % 3) for c in range(hidden)])


class GridOutputs(OlmoeAdapter):
    """The planted model: every expert's output amplified and snapped onto s_c · {−127..127} per channel."""

    def expert_forward_module(self, experts, expert, hidden):
        step = grid_scale(hidden.shape[-1]).to(hidden)
        output = super().expert_forward_module(experts, expert, hidden)
        return step * torch.clamp(torch.round(1e4 * output / step), -127, 127)


def test_g10_outputs_on_the_int8_grid_give_exactly_zero_delta_nll(tokenizer, corpora):
    model = tiny_olmoe(tokenizer)
    study = expert_outputs.OutputQuantStudy(loaded(model, tokenizer, GridOutputs(model)), corpora, n_points=192,
                                            calibration_tokens=192)
    int8 = study.quantizer("text", 8)
    expected = 127 * grid_scale(HIDDEN).double()
    for params in [*int8.params.values(), *int8.fallback.values()]:  # calibration recovers the planted grid
        assert torch.equal(params.scale.reshape(-1) * 127, expected)
    assert study.delta_nll("code", None, ("identity",)) == 0.0
    assert study.candidate("code", "text", 8) == 0.0
    assert study.candidate("math", "code", 8) == 0.0
    assert study.candidate("code", "text", 4) != 0.0
    assert abs(study.candidate("code", "text", 2)) > abs(study.candidate("code", "text", 4))


def test_g10_bytes_and_outlier_counts():
    # 2 routed outputs of 2048 channels: 4096 bf16 values = 8192 bytes -> 2048 bytes of INT4 codes
    assert expert_outputs.activation_delta_bytes(2, 2048, 4, torch.bfloat16) == 2048 - 8192
    assert expert_outputs.activation_delta_bytes(8, 2048, 16, torch.bfloat16) == 0
    # K = 8 outliers per row: 8 float16 values + 8 int16 indices per routed output
    assert expert_outputs.activation_delta_bytes(1, 2048, 4, torch.bfloat16, outliers=8) == 1024 + 32 - 4096
    assert expert_outputs.scale_bytes(16, 64, 2048) == 16 * 64 * 2048 * 4  # the seeds' "eight megabytes"
    assert expert_outputs.outlier_counts([0, 8 / 2048, 16 / 2048, 32 / 2048, 64 / 2048], 2048) == [0, 8, 16, 32, 64]
    assert expert_outputs.outlier_counts([0, 8 / 2048, 16 / 2048, 32 / 2048, 64 / 2048], 128) == [0, 1, 2, 4]


# ------------------------------------------------------------------------------------------ G10-scan, G10.5 ----

DECAYS = (0.5, 0.9)


class ExactScan(nn.Module):
    """An attention replacement that is exactly a decaying scan: o_t = W [x_t, e_0.5,t, e_0.9,t]."""

    def __init__(self, hidden: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("readout", torch.randn(hidden * (1 + len(DECAYS)), hidden, generator=generator,
                                                    dtype=torch.float64) / hidden)

    def forward(self, hidden_states, *args, **kwargs):
        rows = [attention.scan_features(x, DECAYS) @ self.readout for x in hidden_states]
        return torch.stack(rows).to(hidden_states.dtype), None


def test_g10_scan_fits_an_exact_scan_and_not_real_attention(tokenizer, corpora):
    model = tiny_olmoe(tokenizer)
    model.model.layers[1].self_attn = ExactScan(HIDDEN, seed=3)
    study = attention.AttentionStudy(loaded(model, tokenizer), corpora, [0, 1], n_points=160, decays=DECAYS,
                                     ridges=[0.0], calibration_tokens_per_feature=2)
    planted = study.scan(1, "text")
    assert planted.heldout_error < 1e-6 and planted.calibration_error < 1e-6
    assert study.scan(0, "text").heldout_error > 0.05  # softmax attention is not a scan
    assert study.trivial(1, "text") == 0.0
    randoms = study.random_scans(1, "text", [1, 2])
    assert min(randoms) > 0.5  # a random readout loses badly against the exact one


def test_g10_5_keeps_every_key_when_k_covers_the_context(tokenizer, corpora):
    model = tiny_olmoe(tokenizer)
    study = attention.AttentionStudy(loaded(model, tokenizer), corpora, [1], n_points=160, decays=DECAYS,
                                     ridges=[1e-3, 1.0], calibration_tokens_per_feature=4,
                                     sparse=attention.SparseSpec(128, (1, 2)))
    result = study.hybrid(1, "text")  # k = 128 >= every sequence: the sparse part is the whole attention
    assert result.sparse_only_error < 1e-5 and result.hybrid_error < 1e-5
    assert result.sparse_mass == pytest.approx(1.0, abs=1e-6)  # softmax rows in float32
    with pytest.raises(ValueError, match="sees more than k keys"):
        study.key_stability(1, "text")


def test_g10_5_static_rule_matches_a_static_pattern():
    # a head that always attends to the sink and the 3 most recent keys: the static rule picks exactly those
    t, k = 12, 4
    weights = torch.zeros(1, t, t, dtype=torch.float64)
    for query in range(t):
        keys = sorted({0, *range(max(query - 2, 0), query + 1)})
        weights[0, query, keys] = 1.0 / len(keys)
    offsets, counts = attention_capture._offset_sums(weights)
    oracle = attention_capture._keep_topk(weights, k)[1]
    record = attention.SequenceCapture(x=torch.zeros(t, 1), o=torch.ones(t, 1), topk=oracle, offset_mass=offsets,
                                       offset_count=counts, sink_mass=weights[:, :, 0].sum(-1))
    calibration = attention.Calibration(decays=())
    calibration.add(record)
    sink, offset_scores = calibration.static_rule()
    assert torch.equal(sink, torch.tensor([weights[0, :, 0].mean()]))
    chosen = attention.static_topk(sink, offset_scores, t, k)
    assert torch.equal(route_jaccard(oracle[:, k:], chosen[:, k:]), torch.ones(1, t - k, dtype=torch.float64))
    assert attention.key_stability(calibration, [record]) == attention.KeyStability(1.0, t - k)


# ------------------------------------------------------------------------------------------------------ R1 ----


def plant_int2_experts(model, quantizer: rotorquant.RotorQuant, seed: int = 0) -> None:
    """Set every expert to W = q-grid rows rotated back by the rung's own SRHT: W R has rows in s · {−1, 0, 1} with
    ±s present (s a power of two), which INT2 with one symmetric scale per row stores exactly."""
    adapter = adapter_for(model)
    generator = torch.Generator().manual_seed(seed)
    for layer in adapter.moe_layers():
        stacks = rotorquant.layer_stacks(adapter, layer)
        for projection, w in stacks.items():
            codes = torch.randint(-1, 2, w.shape, generator=generator).double()
            codes[..., 0], codes[..., 1] = 1.0, -1.0
            grid = codes * 2.0 ** -4
            rotation = quantizer.rotation(layer, projection, w.shape[-1])
            stacks[projection] = rotation.inverse(grid, dim=-1)
        for (name, expert), value in rotorquant.deploy_updates(adapter, {layer: stacks}).items():
            write_parameter(model, name, value, expert)


def test_r1_planted_int2_experts_are_exact(tokenizer, corpora):
    model = tiny_olmoe(tokenizer, layers=2)
    quantizer = rotorquant.RotorQuant(bits=2)
    plant_int2_experts(model, quantizer)
    study = rotorquant.RotorQuantStudy(RoutingStudy(loaded(model, tokenizer), corpora, n_points=160),
                                       quantizer=quantizer)
    for layer in (0, 1):
        stacks = study.stacks(layer)
        assert all(torch.equal(quantizer.compress(layer, stacks)[p], w.double()) for p, w in stacks.items())
        assert study.error(layer, "text").pooled == 0.0
    assert study.deploy("code") == (0.0, 0.0)
    assert study.error(1, "text", ("bits", 1)).pooled > 0  # INT1 cannot store three levels
    random_model = tiny_olmoe(tokenizer, layers=2, seed=1)
    random_study = rotorquant.RotorQuantStudy(RoutingStudy(loaded(random_model, tokenizer), corpora, n_points=160),
                                              quantizer=quantizer)
    assert random_study.error(1, "text").pooled > 0.3  # generic weights are far off the INT2 grid
    assert random_study.deploy("text", rotorquant.IDENTITY) == (0.0, 0.0)


def run_rung(pytester: pytest.Pytester, name: str, model: Path, *extra: str, data_points: int = 256) -> dict:
    """The real rung module and prereg (model and N pointed at the test's, re-sealed) in an in-process session."""
    from pytest_ladder.seal import compute_seal

    data = json.loads((ROOT / "prereg" / name / "tau.json").read_text())
    data.update(model=str(model), data_points=data_points)
    data["seal"] = compute_seal(data)
    run = Path(pytester.mkdir(f"run-{model.name}"))
    (run / "prereg" / name).mkdir(parents=True)
    (run / "prereg" / name / "tau.json").write_text(json.dumps(data))
    (run / f"test_{name}.py").write_text((ROOT / "rungs" / f"test_{name}.py").read_text())
    pytester.runpytest(str(run / f"test_{name}.py"), "-p", "no:cacheprovider", "-q", "--ladder-model", str(model),
                       "--ladder-prereg-dir", str(run / "prereg"), "--ladder-archive-dir", str(run / "archive"),
                       *extra)
    runs = sorted((run / "archive" / name).glob("*/decision.json"))
    assert len(runs) == 1, f"{name}: no decision archived in {run}"
    return json.loads(runs[0].read_text())


def test_r1_rung_passes_every_gate_on_planted_int2_experts_and_kills_a_random_model(tokenizer, pytester, tmp_path):
    planted = tiny_olmoe(tokenizer, layers=4)
    plant_int2_experts(planted, rotorquant.RotorQuant(bits=2))
    for model, folder in ((planted, tmp_path / "planted"), (tiny_olmoe(tokenizer, layers=4, seed=1),
                                                            tmp_path / "random")):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    record = run_rung(pytester, "r1", tmp_path / "planted")
    assert record["verdict"] == "PASS", (record["killed_by"], record["invalid_because"])
    values = {(g["name"], g["cell"]): g["value"] for g in record["gates"]}
    assert values.pop(("bytes", None)) < 0
    assert set(values.values()) == {0.0}  # activation error, task conditioning, flips and ΔNLL: all exactly 0
    assert all(t["fired_as_declared"] for t in record["traps"])
    killed = run_rung(pytester, "r1", tmp_path / "random", "-x")
    assert killed["verdict"] == "KILL"
    assert (killed["killed_by"]["name"], killed["killed_by"]["cell"]) == ("activation_error", "layer:3/16-task:text")
