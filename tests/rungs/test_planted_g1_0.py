"""G1.0′ on planted weights already on the quantizer's grid, through the real rung modules g1_0 and g1_0_control.

Every expert matrix (gate, up, down) is ternary, c · t with t ∈ {−1, 0, 1} and c = 7 · 2⁻⁶, so it lies on the
per-tensor grids of INT2 (scale c) and INT4 (scale 2⁻⁶) at the fp16 scale dtype: plain quantization (M = I) is exact.
Any rotation moves the matrix off the grid, and the claim fails by construction: the learned gauge, started at a Haar
rotation, is not twice as good as the best Haar rotation.

- g1_0 (sealed): its random_basis trap divides the null's error by plain quantization's, 0 here: the trap cannot
  fire as declared and the run is INVALID, though the claim is plainly false.
- g1_0_control: KILLED at the hardest cell's vs_orthogonal_ratio, every trap fired as declared (the orthogonal round
  trip equals the quantization of the rotated weights; a signed permutation keeps the grid, a Haar rotation does not).
A planted PASS is not constructed: the claim is about the learned gauge (100 Adam steps on a straight-through loss from
a Haar start), and no choice of weights steers that optimiser to a known gauge. Not even weights planted at its own
start: W = M₀ᵀ S with M₀ the gauge's seeded Haar start and S on the grid, so the start is an exact gauge; Adam's steps
are scaled by the gradient's running size, so rounding-level gradients still move M by ~lr per step, and after the
sealed 100 steps the gauge has walked off (cond 1.4) to an error of ~0.085 against the null's ~0.14 at INT4: ratio
0.6, not ≤ 0.5 (`test_the_sealed_optimiser_walks_off_an_exact_gauge`).
"""

from __future__ import annotations

import pytest
import torch

from planted import run_rungs, save_experts
from pytest_ladder.measure.orthogonal import random_orthogonal
from pytest_ladder.measure.quant import QuantSpec, fake_quant
from pytest_ladder.probes import quant_weights

L, E, N = 2, 4, 64
C = 7 * 2.0**-6


def ternary(seed: int) -> torch.Tensor:
    """(L, E, N, N) in C · {−1, 0, 1}, every matrix reaching ±C."""
    t = torch.randint(-1, 2, (L, E, N, N), generator=torch.Generator().manual_seed(seed)).float()
    t[..., 0, 0] = 1.0
    return C * t


@pytest.fixture(scope="module")
def on_grid(tmp_path_factory):
    return save_experts(tmp_path_factory.mktemp("g1_0-on-grid"), ternary(1), ternary(2), ternary(3))


@pytest.mark.parametrize("bits", [4, 2])
def test_ternary_weights_are_on_both_grids_and_pass_the_round_trip_controls(bits):
    spec = QuantSpec(bits=bits, scale_dtype=torch.float16)
    ws = ternary(1)[0].double()
    assert quant_weights.identity_error(ws, spec) == 0.0
    assert quant_weights.orthogonal_invariance_gap(ws, spec, range(3)) < 1e-12
    permuted, rotated = quant_weights.permutation_round_trip(ws, spec, range(3))
    assert permuted == 0.0 and rotated > 0.05


def test_a_broken_inverse_breaks_orthogonal_invariance():
    """The control reads the round trip: undoing a rotation with the rotation itself instead of its inverse shows."""
    spec = QuantSpec(bits=2, scale_dtype=torch.float16)
    ws = torch.randn(2, 16, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = random_orthogonal(16, 5)
    honest = quant_weights.pooled_error(ws, quant_weights.gauge_round_trips(ws, [q, q], spec))
    broken = quant_weights.pooled_error(ws, torch.stack([q @ fake_quant(q @ w, spec) for w in ws]))
    direct = quant_weights.pooled_error(q @ ws, torch.stack([fake_quant(q @ w, spec) for w in ws]))
    assert abs(honest - direct) < 1e-12 and abs(broken - direct) > 0.1


def test_on_grid_weights_make_g1_0_no_decision_and_g1_0_control_a_kill(on_grid, tmp_path):
    records = run_rungs(tmp_path, on_grid, ["g1_0", "g1_0_control"], "--ladder-kill-fast")
    old = records["g1_0"]  # the claim is false, but the weight-dependent trap takes the decision away
    assert old["verdict"] == "INVALID"
    assert (old["invalid_because"]["kind"], old["invalid_because"]["name"]) == ("error", "random_basis")
    assert "ZeroDivisionError" in old["invalid_because"]["message"]  # err_identity = 0: no finite ratio
    record = records["g1_0_control"]
    assert record["verdict"] == "KILL", record["invalid_because"]
    killed = record["killed_by"]
    assert (killed["name"], killed["cell"]) == ("vs_orthogonal_ratio", "layer:3/16-weight:up-bits:2")
    assert killed["value"] > 0.5
    traps = {t["name"]: t for t in record["traps"]}
    assert set(traps) == {"trivial_pass", "orthogonal_invariance", "permutation_gauge"}
    assert all(t["fired_as_declared"] for t in traps.values())
    assert traps["trivial_pass"]["observed"] == 0.0 and traps["permutation_gauge"]["observed"] == 0.0
    assert traps["permutation_gauge"]["refs"]["haar"] > 0.05
    gate = next(g for g in record["gates"] if g["name"] == "vs_orthogonal_ratio" and g["value"] is not None)
    assert gate["extra"]["identity_error"] == 0.0


def test_the_sealed_optimiser_walks_off_an_exact_gauge():
    """Weights planted at the gauge's own seeded start (an exact gauge: M₀ W = S on the INT4 grid) with the sealed
    g1_0 params: the learned gauge leaves it and is not twice as good as the Haar null."""
    import json

    from planted import ROOT

    params = json.loads((ROOT / "prereg" / "g1_0" / "tau.json").read_text())["params"]
    spec = QuantSpec(bits=4, symmetric=params["symmetric"], granularity=params["granularity"],
                     scale_dtype=params["scale_dtype"])
    generator, gauge_seed = torch.Generator().manual_seed(4), 1000
    planted = []
    for i in range(4):
        codes = torch.randint(-7, 8, (32, 48), generator=generator).to(torch.float64)
        codes[0, 0] = 7
        start = random_orthogonal(32, gauge_seed + i, dtype=torch.float32).to(torch.float64)
        planted.append(start.mT @ (0.25 * codes))
    cell = quant_weights.gauge_vs_orthogonal(torch.stack(planted), spec, kappa_max=params["kappa_max"],
                                             steps=params["steps"], lr=params["lr"], gauge_seed=gauge_seed,
                                             null_seeds=list(range(1, 11)))
    assert min(cell.kappas) > 1.2  # the gauge moved: an orthogonal start has cond 1
    assert 0.05 < cell.gauge_error and cell.gauge_error / min(cell.orthogonal_errors) > 0.5
