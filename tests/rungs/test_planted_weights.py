"""Planted weights where the answer is known, for the weight-only rungs G0, G2, R2 (probes.spectral, quant_weights,
budget), and G1.0′'s exact pieces.

Two tiny OLMoE checkpoints (save_pretrained of a real OlmoeForCausalLM, 2 layers, 4 experts, I = H = 64):
- "spikes": every expert matrix is a rank-one spike c · u e_jᵀ with power-of-two entries, the same direction in every
  layer and expert (T = a ⊗ b ⊗ u ⊗ e_j, multilinear rank 1). Rank 1 fits any budget (G0: residual 0), the tensor is
  a rank-(1,1,1,1) Tucker model (G2: residual 0), and an SRHT maps each spike row to a flat ±|c|/√n row that INT2
  stores exactly, for every sign draw (R2: SRHT error exactly 0; a Haar rotation cannot). The real rung modules pass.
- "isotropic": every expert matrix is a scaled Haar-random orthogonal matrix (down = gateᵀ), so every expert matrix
  and the stacked layer matrix have flat spectra: the best regauge keeps exactly r/n of the energy and G0 dies at its
  analytical prefilter with residual 1 − 2/64 = 0.96875.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytest_ladder.measure.orthogonal import random_orthogonal
from pytest_ladder.measure.quant import QuantSpec
from pytest_ladder.measure.spectra import singular_values
from pytest_ladder.models.checkpoint import Checkpoint
from pytest_ladder.probes import quant_weights, spectral
from pytest_ladder.probes.budget import budget_table, line_of
from pytest_ladder.seal import compute_seal

ROOT = Path(__file__).resolve().parents[2]
L, E, I, H, V = 2, 4, 64, 64, 64  # I and H are powers of 4: 1/sqrt(n) is a power of two
SCALE = 2.0**-6


def olmoe(folder: Path, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> Path:
    """save_pretrained of a tiny OLMoE whose experts are gate/up (L, E, I, H) and down (L, E, H, I)."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=4,
                         num_key_value_heads=4, num_experts=E, num_experts_per_tok=2, max_position_embeddings=64,
                         eos_token_id=1, pad_token_id=0, bos_token_id=None)
    model = OlmoeForCausalLM(config)
    with torch.no_grad():
        for layer in range(L):
            experts = model.model.layers[layer].mlp.experts
            experts.gate_up_proj.copy_(torch.cat([gate[layer], up[layer]], dim=1))
            experts.down_proj.copy_(down[layer])
    model.save_pretrained(folder)
    return folder


def spike_weights() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    powers = torch.tensor([1.0, -2.0, 0.5, -1.0, 2.0, -0.5, 1.0, 4.0])
    a, b = torch.tensor([1.0, 0.5]), torch.tensor([1.0, -2.0, 0.5, 2.0])  # layer and expert factors
    u, v = powers.repeat(I // 8), powers.repeat(H // 8)

    def spike(vector: torch.Tensor, width: int, column: int) -> torch.Tensor:
        return torch.einsum("l,e,o,n->leon", a, b, SCALE * vector, torch.eye(width)[column])

    return spike(u, H, 3), spike(u, H, 5), spike(v, I, 7)


def isotropic_weights(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gate = torch.stack([random_orthogonal(H, 10 + layer, batch=(E,), dtype=dtype) for layer in range(L)])
    up = torch.stack([random_orthogonal(H, 20 + layer, batch=(E,), dtype=dtype) for layer in range(L)])
    return 0.05 * gate, 0.05 * up, 0.05 * gate.mT


@pytest.fixture(scope="module")
def spikes(tmp_path_factory) -> Path:
    return olmoe(tmp_path_factory.mktemp("spikes"), *spike_weights())


@pytest.fixture(scope="module")
def isotropic(tmp_path_factory) -> Path:
    return olmoe(tmp_path_factory.mktemp("isotropic"), *isotropic_weights())


def run_rungs(tmp: Path, model: Path, rungs: list[str], *extra: str) -> dict[str, dict]:
    """Run the real rung modules on `model` (the repository's preregs, model field pointed at it and re-sealed)."""
    prereg_dir, archive = tmp / "prereg", tmp / "archive"
    for name in rungs:
        data = json.loads((ROOT / "prereg" / name / "tau.json").read_text())
        data["model"] = str(model)
        data["seal"] = compute_seal(data)
        (prereg_dir / name).mkdir(parents=True)
        (prereg_dir / name / "tau.json").write_text(json.dumps(data))
    command = [sys.executable, "-m", "pytest", *(f"rungs/test_{name}.py" for name in rungs), "-p", "no:cacheprovider",
               "-q", "--ladder-prereg-dir", str(prereg_dir), "--ladder-archive-dir", str(archive), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny matrices: one thread, no spin-waiting on a busy machine
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, check=False)
    records = {}
    for name in rungs:
        runs = sorted((archive / name).glob("*/decision.json"))
        assert len(runs) == 1, f"{name}: no decision archived\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        records[name] = json.loads(runs[0].read_text())
    return records


# ------------------------------------------------------------------------------------------- the real rungs ---


def test_spikes_pass_g0_g2_r2(spikes, tmp_path):
    records = run_rungs(tmp_path, spikes, ["g0", "g2", "r2"])
    for name, record in records.items():
        assert record["verdict"] == "PASS", (name, record["killed_by"], record["invalid_because"])
        assert all(t["fired_as_declared"] for t in record["traps"])
    values = {(g["name"], g["cell"]): g["value"] for r in records.values() for g in r["gates"]}
    assert all(values[("residual_at_budget", f"layer:{c}")] < 1e-12 for c in ("0/16", "3/16", "8/16", "15/16"))
    assert all(values[("residual_at_budget", f"weight:{w}")] < 1e-12 for w in ("gate", "up", "down"))
    assert all(values[("round_trip_error", f"layer:{c}-weight:{w}")] == 0.0
               for c in ("0/16", "3/16", "8/16", "15/16") for w in ("gate", "up", "down"))
    bytes_row = next(g for g in records["r2"]["gates"] if g["name"] == "bytes")
    assert bytes_row["value"] == r2_delta_closed_form()


def test_isotropic_experts_kill_g0_at_the_prefilter(isotropic, tmp_path):
    record = run_rungs(tmp_path, isotropic, ["g0"], "-x")["g0"]
    assert record["verdict"] == "KILL"
    killed = record["killed_by"]
    assert (killed["kind"], killed["name"], killed["cell"]) == ("prefilter", "residual_at_budget", "layer:0/16")
    assert killed["value"] == pytest.approx(1 - 2 / 64, abs=1e-6)
    ran = [(g["name"], g["cell"]) for g in record["gates"] if g["outcome"] != "not run"]
    assert ran == [("residual_at_budget", "layer:0/16")]  # -x: the first kill ends the run


# ------------------------------------------------------------------------------------------------- probes -----


def test_g0_floor_and_pipeline_on_flat_spectra():
    gate, up, down = (w[0] for w in isotropic_weights(torch.float64))
    matrices = spectral.layer_matrices(gate, up, down)
    ranks = {"gate": 2, "up": 2, "down": 2, "layer": 2}
    spectra = spectral.layer_spectra(gate, up, down)
    stacked = singular_values(matrices["layer"])  # the stacked matrix's σ, straight from its SVD
    assert torch.allclose(spectra["layer"], stacked, rtol=0, atol=1e-12 * float(stacked.max()))
    floor = spectral.regauge_floor(spectra, ranks)
    assert floor.residual == pytest.approx(0.96875, abs=1e-12)
    assert floor.effective_rank_ratio == pytest.approx(32.0, abs=1e-9)  # a flat spectrum: r_eff = n = 64, r = 2
    best = spectral.regauge_error(matrices, {k: spectral.best_regauge(w, ranks[k]) for k, w in matrices.items()})
    assert best.value == pytest.approx(0.96875**0.5, abs=1e-12)  # the executed pipeline meets the floor
    identity = spectral.regauge_error(matrices, {k: spectral.identity_regauge(w) for k, w in matrices.items()})
    assert identity.value == 0.0 and set(identity.per_kind.values()) == {0.0}
    drift = spectral.singular_value_drift(matrices["up"], random_orthogonal(I, 3))
    assert 0 < drift < 1e-12
    assert spectral.singular_value_drift(matrices["up"], torch.eye(I, dtype=torch.float64)) == 0.0


def test_tucker_floor_equals_brute_force():
    t = torch.randn(3, 4, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tails = spectral.mode_tails(t)
    for budget in (17, 40, 120, 240):
        feasible = [r for r in _tuples(t.shape) if spectral.tucker_params(t.shape, r) <= budget]
        best = min(max(float(tail[k]) for tail, k in zip(tails, r)) for r in feasible)
        found = spectral.tucker_floor(t, budget)
        assert found.residual == best and found.params <= budget
        residual = spectral.projection_residual(t, spectral.hosvd_factors(t, found.ranks))
        assert residual >= found.residual - 1e-12  # HOSVD cannot beat the floor
    assert spectral.tucker_floor(t, 16).residual == 1.0  # not even ranks (1, 1, 1, 1) fit: nothing is stored
    assert spectral.projection_residual(t, spectral.identity_factors(t.shape)) == 0.0


def _tuples(dims):
    if not dims:
        yield ()
        return
    for r in range(1, dims[0] + 1):
        for rest in _tuples(dims[1:]):
            yield (r, *rest)


def test_rank_one_tensor_has_zero_tucker_residual():
    gate = spike_weights()[0].double()
    t = spectral.expert_tensor(list(gate), "gate")
    found = spectral.tucker_floor(t, t.numel() // 4)
    assert found.residual < 1e-20
    assert spectral.projection_residual(t, spectral.hosvd_factors(t, (1, 1, 1, 1))) < 1e-20
    assert spectral.projection_residual(t, spectral.random_factors(t.shape, (1, 1, 1, 1), 0)) > 0.99


def test_r2_srht_flattens_spikes_exactly_and_haar_does_not():
    spec = quant_weights.row_spec(2, H)
    ws = spike_weights()[1][1].double()  # layer 1's up experts (E, I, H)
    comparison = quant_weights.srht_vs_haar(ws, spec, srht_seeds=range(5), haar_seeds=range(5))
    assert comparison.srht_errors == (0.0,) * 5
    assert min(comparison.haar_errors) > 0.1 and comparison.pp == 100 * comparison.haar_mean
    assert quant_weights.rotation_error(quant_weights.on_grid(ws, spec), torch.eye(H), spec) == 0.0


def r2_delta_closed_form() -> int:
    codes = L * 3 * E * I * H * 2 // 8
    scales = L * E * (I + I + H) * 2  # one fp16 scale per output row: gate, up (I rows), down (H rows)
    signs = L * (H // 8 + H // 8 + I // 8)  # one SRHT sign bit per input coordinate, per layer and weight type
    return codes + scales + signs - L * 3 * E * I * H * 4  # against float32 experts


def test_budget_lines_and_r2_bytes_are_exact(spikes):
    checkpoint = Checkpoint(spikes)
    table = budget_table(checkpoint.dtype_bytes())
    assert {line: table.line_bytes(line) for line in table.lines} == {
        "embeddings": V * H * 4, "attention": L * 4 * H * H * 4, "router": L * E * H * 4,
        "experts": L * 3 * E * I * H * 4, "norms": (4 * L + 1) * H * 4, "head": V * H * 4,
    }
    assert table.total_bytes == sum(t.numel() * t.element_size() for t in map(checkpoint.tensor, checkpoint.names))
    from pytest_ladder.probes.rotorquant import expert_stacks

    delta, _, dense = quant_weights.expert_bytes_delta(expert_stacks(checkpoint.dtype_bytes()), 2,
                                                       scale_dtype=torch.float16)
    assert delta == r2_delta_closed_form() and dense.nbytes == table.line_bytes("experts")
    rows = table.with_target(0.5).rows({"r2": {"experts": delta}})
    assert [r["line"] for r in rows][-2:] == ["total", "target device memory"]
    assert rows[-2]["r2 after GB"] == (table.total_bytes + delta) / 1e9
    assert len({tuple(r) for r in rows}) == 1  # every row has the same columns


@pytest.mark.parametrize(("name", "line"), [
    ("model.layers.0.mlp.experts.3.up_proj.weight", "experts"), ("model.layers.1.mlp.gate.weight", "router"),
    ("model.layers.0.self_attn.q_norm.weight", "norms"), ("model.layers.0.self_attn.o_proj.weight", "attention"),
    ("model.embed_tokens.weight", "embeddings"), ("lm_head.weight", "head"), ("model.norm.weight", "norms"),
    ("model.layers.0.block_sparse_moe.gate.weight", "router"), ("model.layers.2.mlp.shared_experts.up_proj.weight",
                                                                "dense_mlp"),
    ("model.layers.0.mlp.experts.gate_up_proj", "experts"), ("model.layers.0.mlp.router.weight", "router"),
    ("model.rotary_emb.inv_freq", "other"),
])
def test_line_of(name, line):
    assert line_of(name) == line


@pytest.mark.parametrize("bits", [4, 2])
def test_g1_0_weights_on_the_grid_round_trip_exactly(bits):
    spec = QuantSpec(bits=bits)
    ws = torch.randn(3, 16, 32, generator=torch.Generator().manual_seed(bits), dtype=torch.float64)
    assert quant_weights.identity_error(quant_weights.on_grid(ws, spec), spec) == 0.0
    assert quant_weights.identity_error(ws, spec) > 0.0
