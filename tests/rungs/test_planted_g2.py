"""G2 killed on planted weights, through the real rung module: experts whose expert tensor has a flat, full-rank
spectrum in every mode, so no Tucker model within the budget keeps half its energy.

Every expert matrix (gate, up, and down transposed) of the 2 layers × 2 experts is 2⁻³ · diag(h_k) Π, one shared
permutation Π and a different row h_k of a 64 × 64 Sylvester Hadamard matrix per (layer, expert): signed permutations
whose Frobenius inner products all vanish. Every mode unfolding of the (2, 2, 64, 64) tensor then has equal singular
values, so keeping r_k of d_k directions in mode k leaves exactly 1 − r_k / d_k of the energy. The budget (a quarter
of the 16384 values, 4096) affords at best ranks (1, 1, 26, 26) — core 676 plus factors 4 + 2 · 64 · 26 — and the
floor is 1 − 26/64 = 38/64 > 0.5: KILLED at the prefilter residual_at_budget, the condition the claim states.
"""

from __future__ import annotations

import pytest
import torch

from planted import gate_values, run_rungs, save_experts

L, E, N = 2, 2, 64


def hadamard(n: int) -> torch.Tensor:
    """Sylvester's n × n Hadamard matrix (n a power of two): ±1 entries, orthogonal rows."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def flat_tensor() -> torch.Tensor:
    """(L, E, N, N): 2⁻³ · diag(h_k) Π per (layer, expert), Frobenius-orthogonal signed permutations."""
    h = hadamard(N)
    permutation = torch.eye(N)[torch.randperm(N, generator=torch.Generator().manual_seed(0))]
    return torch.stack([torch.diag(h[k + 1]) @ permutation for k in range(L * E)]).reshape(L, E, N, N) * 2.0**-3


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    t = flat_tensor()
    return save_experts(tmp_path_factory.mktemp("g2-flat"), t, t.flip(1), t.mT)


def test_every_mode_spectrum_is_flat():
    from pytest_ladder.measure.tucker import mode_spectra

    for spectrum in mode_spectra(flat_tensor().double()):
        assert torch.equal(spectrum, spectrum[:1].expand_as(spectrum))


def test_flat_modes_kill_g2_at_residual_at_budget(flat, tmp_path):
    record = run_rungs(tmp_path, flat, ["g2"], "-x")["g2"]
    assert record["verdict"] == "KILL", record["invalid_because"]
    killed = record["killed_by"]
    assert (killed["kind"], killed["name"], killed["cell"]) == ("prefilter", "residual_at_budget", "weight:up")
    assert killed["value"] == pytest.approx(38 / 64, abs=1e-12)
    assert [(g["name"], g["cell"]) for g in record["gates"] if g["outcome"] != "not run"] == [
        ("residual_at_budget", "weight:up")]
    assert gate_values(record)[("residual_at_budget", "weight:up")] == killed["value"]
