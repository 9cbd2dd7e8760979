"""G0 on planted weights, through the real rung modules: g0 (sealed, with the effective-rank prefilter its claim does
not state), g0_worded (the claim as worded) and g0_seeds (the effective-rank condition written in the claim).

- "heavy top": every expert matrix has singular values (8, 8, 1, …, 1) × 2⁻⁶ (64 wide, budget rank 2): it keeps
  128/190 of its energy in the budget rank, so the worded claim holds by construction (residual 62/190 ≤ 0.5, error
  √(62/190) ≤ √0.5, far below random regauges), while its energy spreads over r_eff ≈ 23 > 2 directions. g0_worded
  PASSES; g0 and g0_seeds are KILLED at effective_rank, the gate that states that condition (g0_seeds in its claim).
- "flat": every expert matrix is a scaled signed permutation (all σ equal): the best regauge keeps exactly 2/64 of
  the energy, and g0_worded is KILLED at residual_at_budget with residual 62/64.
"""

from __future__ import annotations

import math

import pytest
import torch

from planted import gate_values, planted_spectrum, run_rungs, save_experts

L, E, N = 2, 4, 64  # layers, experts, I = H = 64; budget rank ceil(0.03125 · 64) = 2
CELLS = ("layer:0/16", "layer:3/16", "layer:8/16", "layer:15/16")
HEAVY = torch.tensor([8.0, 8.0] + [1.0] * (N - 2)) * 2.0**-6
RESIDUAL = 62 / 190  # tail energy 62 · 1 over 2 · 64 + 62
ENERGY = torch.tensor([64.0, 64.0] + [1.0] * (N - 2), dtype=torch.float64) / 190
R_EFF_RATIO = math.exp(-float((ENERGY * ENERGY.log()).sum())) / 2


def experts(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(planted_spectrum((L, E), sigma, seed).float() for seed in (1, 2, 3))


@pytest.fixture(scope="module")
def heavy_top(tmp_path_factory):
    return save_experts(tmp_path_factory.mktemp("g0-heavy-top"), *experts(HEAVY))


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    return save_experts(tmp_path_factory.mktemp("g0-flat"), *experts(torch.full((N,), 2.0**-6)))


def test_heavy_top_passes_the_worded_claim_and_is_killed_at_effective_rank_where_the_claim_states_it(heavy_top,
                                                                                                     tmp_path):
    records = run_rungs(tmp_path, heavy_top, ["g0", "g0_worded", "g0_seeds"], "--ladder-kill-fast")
    worded = records["g0_worded"]
    assert worded["verdict"] == "PASS", (worded["killed_by"], worded["invalid_because"])
    values = gate_values(worded)
    assert {name for name, _ in values} == {"residual_at_budget", "regauge_error"}  # no effective_rank gate
    for cell in CELLS:
        assert values[("residual_at_budget", cell)] == pytest.approx(RESIDUAL, abs=1e-12)
        assert values[("regauge_error", cell)] == pytest.approx(math.sqrt(RESIDUAL), abs=1e-12)
    assert all(g["tau"]["tau"] > 0.9 for g in worded["gates"] if g["name"] == "regauge_error")
    assert all(t["fired_as_declared"] for t in worded["traps"])
    for name in ("g0", "g0_seeds"):  # the same model, killed by the condition only g0_seeds' claim states
        killed = records[name]["killed_by"]
        assert records[name]["verdict"] == "KILL"
        assert (killed["kind"], killed["name"], killed["cell"]) == ("prefilter", "effective_rank", "layer:0/16")
        assert killed["value"] == pytest.approx(R_EFF_RATIO, abs=1e-9)
        assert gate_values(records[name])[("residual_at_budget", "layer:0/16")] == pytest.approx(RESIDUAL, abs=1e-12)


def test_flat_spectra_kill_the_worded_claim_at_residual_at_budget(flat, tmp_path):
    record = run_rungs(tmp_path, flat, ["g0_worded"], "-x")["g0_worded"]
    assert record["verdict"] == "KILL"
    killed = record["killed_by"]
    assert (killed["kind"], killed["name"], killed["cell"]) == ("prefilter", "residual_at_budget", "layer:0/16")
    assert killed["value"] == pytest.approx(62 / 64, abs=1e-12)
    assert [(g["name"], g["cell"]) for g in record["gates"] if g["outcome"] != "not run"] == [
        ("residual_at_budget", "layer:0/16")]
