"""G0: a free orthogonal regauge exposes compressible structure. Weights only, no forward pass (probes.spectral).

Which claim each gate tests: residual_at_budget and regauge_error test g0's claim as worded (half the energy in the
budget rank after the best regauge, which beats random ones). effective_rank (r_eff / r <= 1) tests a condition g0's
sealed claim text does not contain: it is the seeds' criterion, stated in the claim of g0_seeds; g0_worded is g0's
claim judged on its own words. g0's archived decision (KILL at effective_rank) is a decision on g0_seeds' claim.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung_fixtures import budget_ranks, resolve_layer

ladder = rung("g0")


@pytest.fixture
def held(rung_cache, ladder_weights, ladder_workspace):
    """The rung's layer matrices and spectra (probes.spectral.HeldLayers), gone when the rung ends."""
    from pytest_ladder.probes.spectral import HeldLayers

    return HeldLayers(ladder_weights, rung_cache, ladder_workspace)


@pytest.fixture
def layer(cell, prereg, ladder_weights, held, request):
    """The cell's layer on this model, with each matrix kind's budget rank (recorded in the decision's context)."""
    return budget_ranks(request, cell, prereg, ladder_weights.n_layers, held.spectra)


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, prereg, ladder_weights, held):
    found = held.trivial_pass(resolve_layer(prereg.hardest_cell.params["layer"], ladder_weights.n_layers))
    trap.check(max(found.values()), **found)


@ladder.prefilter("residual_at_budget")
def test_residual_at_budget(cell, gate, held, layer):
    floor = held.floor(*layer)
    series = {"layer_spectrum": [float(s) for s in held.spectra(layer[0])["layer"][0, :64]]}
    gate.check(floor.residual, at=floor.residual_at, per_kind=floor.per_kind, series=series)


@ladder.prefilter("effective_rank")
def test_effective_rank(cell, gate, held, layer):
    """Not a condition of g0's claim text (the seeds' r_eff criterion; g0_seeds states it in its claim)."""
    floor = held.floor(*layer)
    gate.check(floor.effective_rank_ratio, at=floor.effective_rank_at, per_kind=floor.per_kind)


@ladder.gate("regauge_error")
def test_regauge_error(cell, gate, held, ladder_seeds, layer):
    best, tau = held.best_and_tau(*layer, ladder_seeds)
    gate.check(best.value, tau=tau, at=best.at, per_kind=best.per_kind)


@ladder.trap("random_basis")
def test_random_basis(trap, prereg, ladder_weights, ladder_seeds, held):
    trap.check(held.random_drift(resolve_layer(prereg.hardest_cell.params["layer"], ladder_weights.n_layers),
                                 ladder_seeds[0]))
