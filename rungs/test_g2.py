"""G2: Tucker across layer × expert × hidden compresses the experts. Weights only, no forward pass (probes.spectral).

Killed analytically when no rank tuple within the parameter budget can keep enough energy of every mode unfolding
(Eckart–Young per mode), else by the truncated HOSVD at the budget's ranks against random factors.
"""

from functools import cache, lru_cache

import pytest

from pytest_ladder import rung
from pytest_ladder.measure.tau import tau_floor
from pytest_ladder.probes import spectral
from pytest_ladder.rung import record_cell

ladder = rung("g2")


@lru_cache(maxsize=1)
def tensor(weights, projection):
    return spectral.expert_tensor([weights.experts(layer, projection) for layer in range(weights.n_layers)],
                                  projection)


@cache
def floor(weights, projection, fraction):
    t = tensor(weights, projection)
    return spectral.tucker_floor(t, int(fraction * t.numel()))


@cache
def hosvd_and_tau(weights, projection, fraction, seeds):
    t, ranks = tensor(weights, projection), floor(weights, projection, fraction).ranks
    tau = tau_floor(lambda seed: spectral.random_factors(t.shape, ranks, seed, device=t.device),
                    lambda factors: spectral.projection_residual(t, factors), seeds)
    return spectral.projection_residual(t, spectral.hosvd_factors(t, ranks)), tau


@pytest.fixture
def weight(cell, prereg, ladder_weights, request):
    """The cell's weight type; the tensor's shape, budget and ranks are recorded in the decision's context."""
    projection = cell.params["weight"]
    found = floor(ladder_weights, projection, prereg.params["budget_fraction"])
    record_cell(request.config, f"g2 {cell.id}", {
        "shape": list(tensor(ladder_weights, projection).shape), "budget_params": found.budget_params,
        "ranks": list(found.ranks), "mode_effective_ranks": list(found.mode_effective_ranks)})
    return projection


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, prereg, ladder_weights):
    t = tensor(ladder_weights, prereg.hardest_cell.params["weight"])
    trap.check(spectral.projection_residual(t, spectral.identity_factors(t.shape, device=t.device)))


@ladder.prefilter("residual_at_budget")
def test_residual_at_budget(cell, gate, prereg, ladder_weights, weight):
    found = floor(ladder_weights, weight, prereg.params["budget_fraction"])
    gate.check(found.residual, ranks=list(found.ranks), params=found.params, budget_params=found.budget_params,
               mode_effective_ranks=list(found.mode_effective_ranks),
               series=spectral.mode_energy_curves(tensor(ladder_weights, weight)))


@ladder.gate("tucker_residual")
def test_tucker_residual(cell, gate, prereg, ladder_weights, ladder_seeds, weight):
    residual, tau = hosvd_and_tau(ladder_weights, weight, prereg.params["budget_fraction"], tuple(ladder_seeds))
    gate.check(residual, tau=tau, ranks=list(floor(ladder_weights, weight, prereg.params["budget_fraction"]).ranks))


@ladder.trap("random_basis")
def test_random_basis(trap, prereg, ladder_weights, ladder_seeds):
    residual, tau = hosvd_and_tau(ladder_weights, prereg.hardest_cell.params["weight"],
                                  prereg.params["budget_fraction"], tuple(ladder_seeds))
    trap.check(tau.tau - residual, method=residual, best_random=tau.tau)
