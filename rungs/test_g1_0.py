"""G1.0′: a learned gauge (bounded condition number) makes quantization easier than a free random rotation.

Weights only, no forward pass (probes.quant_weights): per cell (layer, weight type, bit width) one gauge per sampled
expert, 100 Adam steps with an SVD projection to cond ≤ κ, scored against B Haar-random orthogonal nulls.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell
from pytest_ladder.rung_fixtures import resolve_layer, resolve_size
from pytest_ladder.seal import derive_seeds

ladder = rung("g1_0")


def spec(p, bits):
    from pytest_ladder.measure.quant import QuantSpec

    return QuantSpec(bits=int(bits), symmetric=p["symmetric"], granularity=p["granularity"],
                     scale_dtype=p["scale_dtype"])


def experts(p, weights, layer, weight):
    """The cell's sampled experts (k, out, in): ceil(expert_fraction · E) of them, evenly spaced."""
    import torch

    e = weights.n_experts
    k = resolve_size(p["expert_fraction"], e)
    picked = [i * e // k for i in range(k)]
    return picked, torch.stack([weights.expert(layer, i)[weight] for i in picked])


def gauge_cell(rung_cache, prereg, weights, layer, weight, bits, seeds):
    """The cell's learned gauges against the orthogonal null (computed once per rung)."""
    from pytest_ladder.probes import quant_weights

    key = ("gauge", layer, weight, int(bits))
    if key not in rung_cache:
        p = prereg.params
        rung_cache[key] = quant_weights.gauge_vs_orthogonal(
            experts(p, weights, layer, weight)[1], spec(p, bits), kappa_max=p["kappa_max"], steps=p["steps"],
            lr=p["lr"], gauge_seed=derive_seeds(prereg.seal or "", 1, purpose="gauge")[0], null_seeds=tuple(seeds))
    return rung_cache[key]


@pytest.fixture
def layer(cell, prereg, ladder_weights, request):
    index = resolve_layer(cell.params["layer"], ladder_weights.n_layers)
    picked, _ = experts(prereg.params, ladder_weights, index, cell.params["weight"])
    record_cell(request.config, f"g1_0 {cell.id}", {"layer": index, "experts": picked})
    return index


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, prereg, ladder_weights):
    from pytest_ladder.probes import quant_weights

    hardest = prereg.hardest_cell.params
    layer = resolve_layer(hardest["layer"], ladder_weights.n_layers)
    q = spec(prereg.params, hardest["bits"])
    trap.check(quant_weights.identity_error(quant_weights.on_grid(
        experts(prereg.params, ladder_weights, layer, hardest["weight"])[1], q), q))


@ladder.gate("vs_orthogonal_ratio")
def test_vs_orthogonal_ratio(cell, gate, prereg, ladder_weights, ladder_seeds, layer, rung_cache):
    c = gauge_cell(rung_cache, prereg, ladder_weights, layer, cell.params["weight"], cell.params["bits"], ladder_seeds)
    gate.check(c.ratio, tau=c.tau_in_ratio_units, gauge_error=c.gauge_error, identity_error=c.identity_error,
               orthogonal_errors=list(c.orthogonal_errors), kappas=list(c.kappas), final_losses=list(c.final_losses))


@ladder.trap("random_basis")
def test_random_basis(trap, prereg, ladder_weights, ladder_seeds, rung_cache):
    hardest = prereg.hardest_cell.params
    layer = resolve_layer(hardest["layer"], ladder_weights.n_layers)
    c = gauge_cell(rung_cache, prereg, ladder_weights, layer, hardest["weight"], hardest["bits"], ladder_seeds)
    trap.check(c.rotation_gain, identity_error=c.identity_error,
               mean_orthogonal_error=sum(c.orthogonal_errors) / len(c.orthogonal_errors))
