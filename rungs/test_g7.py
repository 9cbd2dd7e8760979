"""G7 — a cache of common expert combinations replaces the router (pairwise router certificate).

Per layer × task: the share of held-out routed expert pairs the M most frequent pairs cover (M scaled from the
seeds' 100 of OLMoE's 2016 pairs), with C_pair's effective rank and its dominant pairs recorded. Heavy lifting:
pytest_ladder.probes.routes.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell
from pytest_ladder.rung_fixtures import cell_layers, resolve_size

ladder = rung("g7")


@pytest.fixture
def routing(rung_cache, ladder_routing, ladder_model, ladder_layers, prereg, request):
    if "layers" not in rung_cache:
        rung_cache["layers"] = cell_layers(prereg, ladder_layers)
        n_experts = ladder_model.adapter.n_experts
        rung_cache["pairs"] = n_experts * (n_experts - 1) // 2
        rung_cache["size"] = resolve_size(prereg.params["cache_fraction"], rung_cache["pairs"])
        record_cell(request.config, "g7", {k: rung_cache[k] for k in ("size", "pairs", "layers")})
    return ladder_routing


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, routing, rung_cache, prereg):
    from pytest_ladder.probes.routes import pair_cache

    cell = prereg.hardest_cell
    index = routing.heldout(cell.params["task"], rung_cache["layers"][cell.id]).topk_index
    every = pair_cache(index, routing.adapter.n_experts, rung_cache["pairs"], min_lift=prereg.params["dominant_lift"])
    trap.check(1.0 - every.coverage, coverage=every.coverage, cache_size=every.cache_size)


@ladder.gate("top_pair_coverage")
def test_top_pair_coverage(cell, gate, routing, rung_cache, prereg):
    from pytest_ladder.probes.routes import pair_cache

    layer = rung_cache["layers"][cell.id]
    index = routing.heldout(cell.params["task"], layer).topk_index
    curve = sorted({max(1, rung_cache["size"] * m) for m in (1, 2, 4, 8)} | {rung_cache["pairs"]})
    found = pair_cache(index, routing.adapter.n_experts, rung_cache["size"], min_lift=prereg.params["dominant_lift"],
                       curve=[m for m in curve if m <= rung_cache["pairs"]])
    gate.check(found.coverage, layer=layer, cache_size=found.cache_size, n_pairs=found.n_pairs,
               c_pair_effective_rank=found.effective_rank, dominant_pairs=found.n_dominant,
               curve_sizes=list(found.coverage_curve), series={"coverage_by_cache_size":
                                                                 list(found.coverage_curve.values())},
               sweep=None if gate.passes(found.coverage) else ("cache size", found.coverage_curve))
