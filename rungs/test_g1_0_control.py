"""G1.0′ with pipeline controls: a learned gauge (bounded condition number) makes quantization easier than a free
random rotation. g1_0's claim, cells and gate; traps that test the round trip, never the weights.

g1_0's random_basis trap asked a random rotation to beat plain quantization, which depends on the weights (on weights
already on the grid plain quantization is exact and the trap fires wrong). Here: with an orthogonal M the round trip's
error equals the quantization error of M W (orthogonal invariance), and a signed permutation keeps on-grid weights
exact while a Haar rotation does not. Heavy lifting: pytest_ladder.probes.quant_weights, shared with rungs/test_g1_0.py.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell
from pytest_ladder.rung_fixtures import resolve_layer, resolve_size
from pytest_ladder.seal import derive_seeds

ladder = rung("g1_0_control")


@pytest.fixture
def study(rung_cache, prereg, ladder_weights, ladder_seeds):
    """The cells' sampled experts (ceil(expert_fraction · E), evenly spaced) and learned gauges, computed once."""
    from pytest_ladder.probes.quant_weights import GaugeStudy

    if "study" not in rung_cache:
        rung_cache["study"] = GaugeStudy(
            ladder_weights, prereg.params, n_sampled=resolve_size(prereg.params["expert_fraction"],
                                                                  ladder_weights.n_experts),
            gauge_seed=derive_seeds(prereg.seal or "", 1, purpose="gauge")[0], null_seeds=ladder_seeds)
    return rung_cache["study"]


@pytest.fixture
def layer(cell, ladder_weights, study, request):
    index = resolve_layer(cell.params["layer"], ladder_weights.n_layers)
    record_cell(request.config, f"g1_0_control {cell.id}", {"layer": index, "experts": study.picked()})
    return index


def hardest(prereg, weights):
    """(layer index, weight type, bits) of the hardest cell."""
    found = prereg.hardest_cell.params
    return resolve_layer(found["layer"], weights.n_layers), found["weight"], found["bits"]


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, prereg, ladder_weights, study):
    trap.check(study.trivial_pass(*hardest(prereg, ladder_weights)))


@ladder.gate("vs_orthogonal_ratio")
def test_vs_orthogonal_ratio(cell, gate, study, layer):
    c = study.cell(layer, cell.params["weight"], cell.params["bits"])
    gate.check(c.ratio, tau=c.tau_in_ratio_units, gauge_error=c.gauge_error, identity_error=c.identity_error,
               orthogonal_errors=list(c.orthogonal_errors), kappas=list(c.kappas), final_losses=list(c.final_losses))


@ladder.trap("orthogonal_invariance")
def test_orthogonal_invariance(trap, prereg, ladder_weights, ladder_seeds, study):
    from pytest_ladder.probes.quant_weights import orthogonal_invariance_gap

    layer, weight, bits = hardest(prereg, ladder_weights)
    trap.check(orthogonal_invariance_gap(study.experts(layer, weight), study.spec(bits), ladder_seeds))


@ladder.trap("permutation_gauge")
def test_permutation_gauge(trap, prereg, ladder_weights, ladder_seeds, study):
    from pytest_ladder.probes.quant_weights import permutation_round_trip

    layer, weight, bits = hardest(prereg, ladder_weights)
    permuted, rotated = permutation_round_trip(study.experts(layer, weight), study.spec(bits), ladder_seeds)
    trap.check(permuted, haar=rotated)
