"""Planted cases where the answer is known, for G4 (static low-rank input basis), G3, G5, G6 and G7.

Probe level (tensors built in the test): experts that are exactly rank r in a shared input subspace are reproduced
by the rank-r basis with zero error and by no rank-(r−1) basis; effective weights of rank-one experts sharing a row
keep all their energy at q = 1; a router of exact rank r flips nothing at rank r; routes that always pick one pair
are covered by a cache of one pair; a spectrum with known eigenvalues needs a known number of directions.

Rung level (the real rung module in a pytest subprocess, the repository's prereg re-pointed at the planted model):
a tiny OLMoE whose experts are exactly rank 8 in a shared input subspace passes every G4 gate with zero error and
beats τ at rank 8; the rank-4 claim is killed at the activation-error gate of the hardest cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytest_ladder.measure.errors import gram
from pytest_ladder.probes import deflation, lowrank, routes

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64


def planted_experts(n_experts: int, out: int, hidden: int, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Experts W_e = A_e Bᵀ (E, out, H) of rank `rank` in the shared input subspace span(B), and B (H, rank)."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(hidden, rank, generator=generator, dtype=F64))[0]
    return torch.randn(n_experts, out, rank, generator=generator, dtype=F64) @ basis.mT, basis


def routed_inputs(n_experts: int, tokens: int, hidden: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Anisotropic inputs (tokens, H) and top-2 routes (tokens, 2) of distinct experts."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=generator, dtype=F64) @ torch.randn(hidden, hidden, generator=generator,
                                                                                 dtype=F64)
    first = torch.randint(0, n_experts, (tokens,), generator=generator)
    second = (first + torch.randint(1, n_experts, (tokens,), generator=generator)) % n_experts
    return x, torch.stack([first, second], dim=-1)


def test_rank_r_basis_reproduces_planted_experts_exactly_and_rank_r_minus_1_does_not():
    w, _ = planted_experts(6, 12, 32, 8, seed=0)
    x, index = routed_inputs(6, 400, 32, seed=1)
    grams, counts = routes.routed_grams(x, index, 6)
    assert torch.equal(counts, torch.bincount(index.reshape(-1), minlength=6).to(F64))
    assert torch.allclose(grams[2], gram(x[(index == 2).any(-1)]), rtol=1e-12, atol=0)
    basis = lowrank.fit_input_basis(w, gram(x), counts, 8)
    assert lowrank.basis_error(w, basis, grams) < 1e-12
    assert lowrank.basis_error(w, lowrank.fit_input_basis(w, gram(x), counts, 7), grams) > 0.01
    assert lowrank.basis_error(w, lowrank.identity_basis(32), grams) == 0.0
    assert torch.equal(lowrank.identity_basis(32).apply(w), w)
    assert lowrank.basis_error(w, lowrank.random_basis(32, 8, seed=3), grams) > 0.5
    assert float((basis.off(w) @ x.mT).abs().max()) < 1e-9 * float((w @ x.mT).abs().max())  # the off-projection is 0


def test_basis_is_exact_on_a_singular_gram_within_the_data_span():
    w = torch.randn(4, 6, 16, dtype=F64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(300, 3, dtype=F64, generator=torch.Generator().manual_seed(1)) @ torch.randn(
        3, 16, dtype=F64, generator=torch.Generator().manual_seed(2))  # the data spans 3 of 16 dimensions
    index = torch.stack([torch.arange(300) % 4, (torch.arange(300) + 1) % 4], dim=-1)
    grams, counts = routes.routed_grams(x, index, 4)
    assert lowrank.basis_error(w, lowrank.fit_input_basis(w, gram(x), counts, 3), grams) < 1e-6


def test_student_bytes_by_hand():
    # 4 experts of (8, 16) at float32 + rank 2: factors 4·8·2·4 = 256 B, basis 2·16·4 = 128 B, dense 4·8·16·4 = 2048 B
    stacks = {"layers.0": (torch.float32, (4, 8, 16)), "layers.1": (torch.bfloat16, (4, 8, 16))}
    assert lowrank.student_delta_bytes(stacks, 2) == (384 - 2048) + (192 - 1024)
    assert lowrank.student_delta_bytes(stacks, None) == 0
    assert lowrank.input_stacks({"model.layers.3.mlp.experts.gate_up_proj": (torch.bfloat16, (4, 10, 16)),
                                 "model.layers.3.mlp.experts.down_proj": (torch.bfloat16, (4, 16, 5))}) == {
        "layers.3": (torch.bfloat16, (4, 10, 16))}


def test_g3_rank_one_experts_sharing_a_row_keep_all_energy_at_q_1():
    generator = torch.Generator().manual_seed(0)
    row = torch.randn(1, 24, generator=generator, dtype=F64)
    w = torch.randn(5, 10, 1, generator=generator, dtype=F64) @ row  # W_e = a_e rowᵀ
    _, index = routed_inputs(5, 50, 4, seed=2)
    gates = torch.rand(50, 2, generator=generator, dtype=F64)
    found = routes.route_energy(w, index, gates, 1)
    assert torch.allclose(found.energy, torch.ones(50, dtype=F64), atol=1e-12)
    assert torch.allclose(found.effective_rank, torch.ones(50, dtype=F64), atol=1e-9)
    random = routes.random_subspace_energy(w, index, gates, 1, seed=5)
    assert torch.allclose(random, (row @ lowrank.random_basis(24, 1, 5).left).square().sum() / row.square().sum()
                          * torch.ones(50, dtype=F64), rtol=1e-10)
    assert float(random.max()) < 1.0


def test_g6_router_of_exact_rank_r_flips_nothing_at_rank_r():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 3, generator=generator, dtype=F64) @ torch.randn(3, 32, generator=generator, dtype=F64)
    hidden = torch.randn(500, 32, generator=generator, dtype=F64)

    def top2(logits):
        return logits.topk(2, dim=-1).indices

    curve = routes.router_flip_curve(hidden, weight, [1, 3], gram(hidden), top2)
    assert curve[3] == 0.0 and curve[1] > 0.1
    assert routes.router_flip_rate(hidden, weight, weight, top2) == 0.0
    assert routes.router_flip_rate(hidden, weight, routes.random_router_weight(weight, 3, seed=1), top2) > 0.1
    shapes = {"model.layers.0.mlp.gate.weight": (torch.bfloat16, (8, 32)),
              "model.layers.1.mlp.gate.weight": (torch.bfloat16, (8, 32))}
    assert routes.router_delta_bytes(shapes, 3) == 2 * (3 * (8 + 32) * 2 - 8 * 32 * 2)
    assert routes.router_delta_bytes(shapes, None) == 0


def test_g7_pair_cache_by_hand():
    # 6 tokens over 4 experts: pair (0, 1) four times, (2, 3) once, (0, 2) once -> the top pair covers 4/6
    index = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0], [2, 3], [0, 2]])
    found = routes.pair_cache(index, 4, 1, min_lift=1.5, curve=[1, 2, 6])
    assert found.coverage == 4 / 6 and found.n_pairs == 6
    assert found.coverage_curve == {1: 4 / 6, 2: 5 / 6, 6: 1.0}
    assert routes.pair_cache(index, 4, 6, min_lift=1.5).coverage == 1.0


def test_g5_directions_after_deflation_by_hand():
    # eigenvalues 100, 4, 3, 2, 1 (energies): deflate 1 -> 4, 3, 2, 1 (total 10); 90% needs 4 + 3 + 2 = 9: 3 directions
    basis = torch.linalg.qr(torch.randn(5, 5, dtype=F64, generator=torch.Generator().manual_seed(0)))[0]
    g = basis @ torch.diag(torch.tensor([100.0, 4.0, 3.0, 2.0, 1.0], dtype=F64)) @ basis.mT
    found = deflation.deflated_directions(g, 1, 0.9)
    assert (found.directions, found.width) == (3, 5) and found.width_fraction == 3 / 5
    assert abs(found.kept_energy - 0.9) < 1e-12
    assert deflation.full_width_residual(g, 1) == 0.0
    assert deflation.random_directions_energy(g, 1, 3, seed=0) < found.kept_energy


# ------------------------------------------------------------------------------------------- the real G4 rung ----

HIDDEN, PLANTED_RANK = 64, 8


@pytest.fixture(scope="module")
def planted_model(tmp_path_factory) -> Path:
    """A tiny OLMoE (4 layers, 4 experts, top-2) whose experts read only hidden channels 0..7: every gate and up
    matrix is exactly rank 8 in one shared input subspace (float32 zeros elsewhere), saved with its tokenizer."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    from pytest_ladder.models.corpora import load_corpora
    from pytest_ladder.models.embedded import train_tokenizer

    corpora = load_corpora()
    tokenizer = train_tokenizer([d.text for c in corpora.values() for d in c.calibration[:60]], 384, 128)
    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, num_experts=4, num_experts_per_tok=2,
                         max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = OlmoeForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.experts.gate_up_proj[..., PLANTED_RANK:] = 0.0
            layer.mlp.experts.down_proj.mul_(10.0)  # experts that matter: removing them moves the NLL
    folder = tmp_path_factory.mktemp("planted-rank8")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def start_g4(tmp: Path, model: Path, rank: int, *extra: str) -> subprocess.Popen:
    """Start the real rungs/test_g4.py on `model` in a pytest subprocess: the repository's prereg with the model, the
    claimed rank (as a fraction of the width) and N pointed at the test's, re-sealed."""
    from pytest_ladder.seal import compute_seal

    data = json.loads((ROOT / "prereg" / "g4" / "tau.json").read_text())
    data.pop("seal", None)
    data.update(model=str(model), data_points=192)
    data["params"] = {**data["params"], "rank_fraction": rank / HIDDEN, "calibration_points": 192}
    data["seal"] = compute_seal(data)
    (tmp / "prereg" / "g4").mkdir(parents=True)
    (tmp / "prereg" / "g4" / "tau.json").write_text(json.dumps(data))
    command = [sys.executable, "-m", "pytest", "rungs/test_g4.py", "-p", "no:cacheprovider", "-q",
               "--ladder-model", str(model), "--ladder-prereg-dir", str(tmp / "prereg"),
               "--ladder-archive-dir", str(tmp / "archive"), *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def decision(tmp: Path, run: subprocess.Popen) -> dict:
    output, _ = run.communicate(timeout=600)
    runs = sorted((tmp / "archive" / "g4").glob("*/decision.json"))
    assert len(runs) == 1, f"no decision archived\n{output[-4000:]}"
    return json.loads(runs[0].read_text())


@pytest.fixture(scope="module")
def g4_runs(planted_model, tmp_path_factory) -> dict[int, dict]:
    """The rank-8 claim (full run) and the rank-4 claim (-x) on the planted model, run side by side."""
    folders = {rank: tmp_path_factory.mktemp(f"g4-rank{rank}") for rank in (PLANTED_RANK, 4)}
    runs = {PLANTED_RANK: start_g4(folders[PLANTED_RANK], planted_model, PLANTED_RANK),
            4: start_g4(folders[4], planted_model, 4, "-x")}
    return {rank: decision(folders[rank], run) for rank, run in runs.items()}


def test_g4_rank_8_claim_passes_every_gate_on_planted_rank_8_experts(g4_runs):
    record = g4_runs[PLANTED_RANK]
    assert record["verdict"] == "PASS", (record["killed_by"], record["invalid_because"])
    values = {(g["name"], g["cell"]): g for g in record["gates"]}
    assert values.pop(("bytes", None))["value"] == 4 * (4 * 64 * 8 + 8 * 64 - 4 * 64 * 64) * 4  # 4 layers, float32
    errors = [g for (name, _), g in values.items() if name == "activation_error"]
    assert len(errors) == 12 and all(g["value"] < 1e-6 and g["tau"]["tau"] > 0.5 for g in errors)
    assert values[("task_conditioning", None)]["value"] < 1e-6
    assert values[("route_flip_rate", None)]["value"] == 0.0
    assert abs(values[("delta_nll", None)]["value"]) < 1e-5
    traps = {t["name"]: t for t in record["traps"]}
    assert all(t["fired_as_declared"] for t in traps.values())
    assert traps["trivial_pass"]["observed"] == 0.0
    assert abs(traps["off_projection"]["observed"] - 1.0) < 1e-3  # fed only the complement = fed nothing


def test_g4_rank_4_claim_is_killed_at_the_hardest_cell(g4_runs):
    record = g4_runs[4]
    assert record["verdict"] == "KILL"
    killed = record["killed_by"]
    assert (killed["name"], killed["cell"]) == ("activation_error", "layer:3/16-task:text")
    assert killed["value"] > 0.1
    assert [g["name"] for g in record["gates"] if g["outcome"] != "not run"] == ["bytes", "activation_error"]
    sweep = record["gates"][1]["extra"]["sweep"]  # measured because the claim was killed: where would it pass?
    assert sweep["param"] == "rank" and sweep["values"] == [1, 2, 4, 8, 16, 32, HIDDEN]
    assert sweep["results"][2] == killed["value"] and all(v < 1e-6 for v in sweep["results"][3:])


def test_g4_postmortem_of_the_rank_4_kill_names_the_passing_rank(g4_runs):
    from pytest_ladder.postmortem import render_postmortem

    lines = render_postmortem(g4_runs[4]).splitlines()
    assert lines[lines.index("## Resolved parameters") + 2] == (
        f"- rank 4 of hidden_size {HIDDEN} = rank_fraction {4 / HIDDEN:.6g}")
    section = lines[lines.index("### gate activation_error @ layer:3/16-task:text"):]
    assert next(line for line in section if line.startswith("- would pass at")).startswith("- would pass at rank 8 (")
