"""G6 — rank reduction of the router itself: one layer's router replaced by its best rank-r approximation.

The rank-r router is the activation-aware truncation on every task's calibration router inputs; gate 3 (route flips)
on each cell's held-out router inputs, against τ (Haar-random rank-r input subspaces). Heavy lifting:
pytest_ladder.probes.routes.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell
from pytest_ladder.rung_fixtures import cell_layers, resolve_size

ladder = rung("g6")


@pytest.fixture
def routing(rung_cache, ladder_routing, ladder_model, ladder_layers, prereg, request):
    if "layers" not in rung_cache:
        rung_cache["layers"] = cell_layers(prereg, ladder_layers)
        n_experts = ladder_model.adapter.n_experts
        rung_cache["rank"] = resolve_size(prereg.params["rank_fraction"], n_experts)
        rung_cache["curve"] = sorted({resolve_size(f, n_experts) for f in prereg.params["curve_rank_fractions"]})
        record_cell(request.config, "g6", {k: rung_cache[k] for k in ("rank", "curve", "layers")})
    return ladder_routing


def router(routing, prereg, layer):
    """(router weight, the calibration router-input Gram of every task, the model's routing rule)."""
    n = prereg.params["calibration_points"]
    gram = sum(routing.calibration(task, layer, n).input_gram for task in prereg.tasks)
    return routing.adapter.router_weight(layer), gram, lambda logits: routing.route(logits, layer)


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, routing, rung_cache, prereg, ladder_weights):
    from pytest_ladder.probes.routes import router_delta_bytes, router_flip_rate

    cell = prereg.hardest_cell
    layer = rung_cache["layers"][cell.id]
    weight, _, route = router(routing, prereg, layer)
    flips = router_flip_rate(routing.heldout(cell.params["task"], layer).inputs, weight, weight, route)
    delta = router_delta_bytes(ladder_weights.dtype_bytes(), None)
    trap.check(max(flips, abs(delta)), route_flip_rate=flips, delta_bytes=delta)


@ladder.prefilter("bytes")
def test_bytes(gate, prereg, ladder_weights):
    from pytest_ladder.probes.routes import router_delta_bytes

    rank = resolve_size(prereg.params["rank_fraction"], ladder_weights.n_experts)
    gate.check(router_delta_bytes(ladder_weights.dtype_bytes(), rank), rank=rank)


@ladder.gate("route_flip_rate")
def test_route_flip_rate(cell, gate, routing, rung_cache, prereg, ladder_seeds):
    from pytest_ladder.measure.tau import tau_floor
    from pytest_ladder.probes import routes

    layer, rank = rung_cache["layers"][cell.id], rung_cache["rank"]
    weight, gram, route = router(routing, prereg, layer)
    hidden = routing.heldout(cell.params["task"], layer).inputs
    tau = tau_floor(lambda seed: routes.random_router_weight(weight, rank, seed),
                    lambda w: routes.router_flip_rate(hidden, weight, w, route), ladder_seeds)
    curve = routes.router_flip_curve(hidden, weight, rung_cache["curve"], gram, route)
    value = routes.router_flip_rate(hidden, weight, routes.lowrank_router_weight(weight, rank, gram), route)
    gate.check(value, tau=tau, layer=layer, rank=rank, curve_ranks=list(curve),
               series={"flip_rate_by_rank": list(curve.values())},
               sweep=None if gate.passes(value) else ("rank", curve))  # where the killed claim would pass
