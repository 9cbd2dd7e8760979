"""G0 with the seeds' effective-rank condition stated in its claim. Weights only, no forward pass.

The conditions the sealed g0 tested, each now written in the claim: on every probed layer some matrix keeps at least
half its energy in the budget rank after the best orthogonal regauge (prefilter residual_at_budget), the least
spectral-entropy effective rank among the layer's matrices is at most the budget rank (prefilter effective_rank, the
seeds' r_eff criterion), and the best regauge beats random ones (gate regauge_error, against τ).
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung_fixtures import budget_ranks, resolve_layer

ladder = rung("g0_seeds")


@pytest.fixture
def held(rung_cache, ladder_weights, ladder_workspace):
    """The rung's layer matrices and spectra (probes.spectral.HeldLayers), gone when the rung ends."""
    from pytest_ladder.probes.spectral import HeldLayers

    return HeldLayers(ladder_weights, rung_cache, ladder_workspace)


@pytest.fixture
def layer(cell, prereg, ladder_weights, held, request):
    """The cell's layer on this model, with each matrix kind's budget rank (recorded in the decision's context)."""
    return budget_ranks(request, cell, prereg, ladder_weights.n_layers, held.spectra)


def hardest_layer(prereg, weights):
    return resolve_layer(prereg.hardest_cell.params["layer"], weights.n_layers)


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, prereg, ladder_weights, held):
    found = held.trivial_pass(hardest_layer(prereg, ladder_weights))
    trap.check(max(found.values()), **found)


@ladder.prefilter("residual_at_budget")
def test_residual_at_budget(cell, gate, held, layer):
    floor = held.floor(*layer)
    series = {"layer_spectrum": [float(s) for s in held.spectra(layer[0])["layer"][0, :64]]}
    gate.check(floor.residual, at=floor.residual_at, per_kind=floor.per_kind, series=series)


@ladder.prefilter("effective_rank")
def test_effective_rank(cell, gate, held, layer):
    floor = held.floor(*layer)
    gate.check(floor.effective_rank_ratio, at=floor.effective_rank_at, per_kind=floor.per_kind)


@ladder.gate("regauge_error")
def test_regauge_error(cell, gate, held, ladder_seeds, layer):
    best, tau = held.best_and_tau(*layer, ladder_seeds)
    gate.check(best.value, tau=tau, at=best.at, per_kind=best.per_kind)


@ladder.trap("random_basis")
def test_random_basis(trap, prereg, ladder_weights, ladder_seeds, held):
    trap.check(held.random_drift(hardest_layer(prereg, ladder_weights), ladder_seeds[0]))
