"""G4 with pipeline controls (g4_control): its traps fire as declared whether the basis is good or bad, and fire
wrong when the pipeline is broken.

Probe level: on planted experts the fitted basis's kept and off-projection shares of the calibration objective sum
to 1 (to rounding) for a basis that reproduces the experts exactly, for one that misses half their inputs and for
isotropic experts no rank-r basis serves; a transposed input map (a broken pipeline) breaks the sum; no random or
swapped rank-r basis goes below the fitted one on its own objective.

Rung level (the real rungs/test_g4_control.py on a planted checkpoint whose experts read exactly 8 hidden channels):
the rank-8 claim PASSES with every trap fired as declared; the rank-4 claim (the method is bad) is KILLED at the
hardest cell's activation error, and its traps, off_projection included, still fire as declared (no INVALID).
"""

from __future__ import annotations

import pytest
import torch

from planted import run_rungs, save_input_rank_model, tokenizer_for_tests
from pytest_ladder.measure.errors import gram
from pytest_ladder.probes import lowrank, routes

F64 = torch.float64
HIDDEN, PLANTED_RANK = 64, 8


def experts_and_inputs(rank: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Experts (6, 12, 32) exactly rank `rank` in a shared input subspace (None: full rank), anisotropic inputs
    (400, 32) and top-2 routes."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 12, 32, generator=generator, dtype=F64)
    if rank is not None:
        basis = torch.linalg.qr(torch.randn(32, rank, generator=generator, dtype=F64))[0]
        w = w @ basis @ basis.mT
    x = torch.randn(400, 32, generator=generator, dtype=F64) @ torch.randn(32, 32, generator=generator, dtype=F64)
    first = torch.randint(0, 6, (400,), generator=generator)
    index = torch.stack([first, (first + torch.randint(1, 6, (400,), generator=generator)) % 6], dim=-1)
    return w, x, index


@pytest.mark.parametrize(("planted", "rank", "off_range"), [
    (8, 8, (0.0, 1e-12)),  # the basis reproduces the experts: nothing goes off
    (8, 4, (0.05, 1.0)),  # half the experts' inputs are missed
    (None, 4, (0.5, 1.0)),  # isotropic experts: no rank-4 basis serves
])
def test_kept_and_off_split_the_objective_exactly_for_good_and_bad_bases(planted, rank, off_range):
    w, x, index = experts_and_inputs(planted, seed=0)
    _, counts = routes.routed_grams(x, index, 6)
    basis = lowrank.fit_input_basis(w, gram(x), counts, rank)
    kept, off = lowrank.fit_energy_split(w, gram(x), counts, basis)
    assert abs(kept + off - 1.0) < 1e-12
    assert off_range[0] <= off <= off_range[1]
    transposed = lowrank.InputBasis(basis.right.mT, basis.left.mT)  # x -> Pᵀ x: a broken pipeline
    if planted is None or rank < planted:
        broken_kept, broken_off = lowrank.fit_energy_split(w, gram(x), counts, transposed)
        assert abs(broken_kept + broken_off - 1.0) > 1e-3


def test_no_random_or_swapped_basis_goes_below_the_fit_on_its_own_objective():
    w, x, index = experts_and_inputs(None, seed=1)
    _, counts = routes.routed_grams(x, index, 6)
    g_a, g_b = gram(x[:200]), gram(x[200:] @ torch.diag(torch.linspace(0.1, 3.0, 32, dtype=F64)))
    own, other = (lowrank.fit_input_basis(w, g, counts, 4) for g in (g_a, g_b))
    error = lowrank.fit_energy_split(w, g_a, counts, own)[1]
    assert lowrank.fit_energy_split(w, g_a, counts, other)[1] > error
    assert all(lowrank.fit_energy_split(w, g_a, counts, lowrank.random_basis(32, 4, seed))[1] > error
               for seed in range(10))
    assert lowrank.fit_energy_split(w, g_a, counts, lowrank.identity_basis(32)) == (1.0, 0.0)


# ----------------------------------------------------------------------------------------- the real rung ----


@pytest.fixture(scope="module")
def planted_model(tmp_path_factory):
    return save_input_rank_model(tmp_path_factory.mktemp("g4c-rank8"), tokenizer_for_tests(), rank=PLANTED_RANK,
                                 hidden=HIDDEN)


def run_g4_control(tmp, model, rank, *extra):
    changes = {"data_points": 192, "params": {**_params(), "rank_fraction": rank / HIDDEN, "calibration_points": 192}}
    return run_rungs(tmp, model, ["g4_control"], *extra, changes=changes)["g4_control"]


def _params():
    import json

    from planted import ROOT

    return json.loads((ROOT / "prereg" / "g4_control" / "tau.json").read_text())["params"]


def test_rank_8_claim_passes_with_every_trap_fired_as_declared(planted_model, tmp_path):
    record = run_g4_control(tmp_path, planted_model, PLANTED_RANK)
    assert record["verdict"] == "PASS", (record["killed_by"], record["invalid_because"])
    errors = [g for g in record["gates"] if g["name"] == "activation_error"]
    assert len(errors) == 12 and all(g["value"] < 1e-6 for g in errors)
    traps = {t["name"]: t for t in record["traps"]}
    assert all(t["fired_as_declared"] for t in traps.values())
    assert traps["off_projection"]["refs"]["off_energy"] < 1e-12  # the good basis drops nothing
    assert traps["random_basis"]["observed"] > 0.5


def test_rank_4_claim_is_killed_and_its_traps_still_fire_as_declared(planted_model, tmp_path):
    record = run_g4_control(tmp_path, planted_model, 4, "--ladder-kill-fast")
    assert record["verdict"] == "KILL", record["invalid_because"]
    killed = record["killed_by"]
    assert (killed["name"], killed["cell"]) == ("activation_error", "layer:3/16-task:text") and killed["value"] > 0.1
    traps = {t["name"]: t for t in record["traps"]}
    assert set(traps) == {"trivial_pass", "random_basis", "task_swap", "off_projection"}
    assert all(t["fired_as_declared"] for t in traps.values())
    assert traps["off_projection"]["refs"]["off_energy"] > 0.05  # the bad basis drops energy; the split still holds
    assert traps["off_projection"]["observed"] < 1e-9
