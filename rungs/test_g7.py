"""G7 — a cache of common expert combinations replaces the router (pairwise router certificate).

Per layer × task: the share of held-out routed expert pairs the M most frequent pairs cover (M scaled from the
seeds' 100 of OLMoE's 2016 pairs), with C_pair's effective rank and its dominant pairs recorded. Heavy lifting:
pytest_ladder.probes.routes.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_context, run_context
from pytest_ladder.rung_fixtures import resolve_layer, resolve_size

ladder = rung("g7")


@pytest.fixture(scope="module")
def cache() -> dict:
    return {}


@pytest.fixture
def routing(cache, ladder_model, ladder_corpora, prereg, request):
    from pytest_ladder.probes import routes

    if "routing" not in cache:
        cache["routing"] = routes.study(ladder_model, ladder_corpora, n_points=prereg.data_points)
        n_layers, n_experts = ladder_model.model.config.num_hidden_layers, ladder_model.adapter.n_experts
        cache["layers"] = {c.id: resolve_layer(c.params["layer"], n_layers) for c in prereg.cells}
        cache["pairs"] = n_experts * (n_experts - 1) // 2
        cache["size"] = resolve_size(prereg.params["cache_fraction"], cache["pairs"])
        cells = run_context(request.config).get("cells", {})
        record_context(request.config, "cells", {**cells, "g7": {k: cache[k] for k in ("size", "pairs", "layers")}})
    return cache["routing"]


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, routing, cache, prereg):
    from pytest_ladder.probes.routes import pair_cache

    cell = prereg.hardest_cell
    index = routing.heldout(cell.params["task"], cache["layers"][cell.id]).topk_index
    every = pair_cache(index, routing.adapter.n_experts, cache["pairs"], min_lift=prereg.params["dominant_lift"])
    trap.check(1.0 - every.coverage, coverage=every.coverage, cache_size=every.cache_size)


@ladder.gate("top_pair_coverage")
def test_top_pair_coverage(cell, gate, routing, cache, prereg):
    from pytest_ladder.probes.routes import pair_cache

    layer = cache["layers"][cell.id]
    index = routing.heldout(cell.params["task"], layer).topk_index
    curve = sorted({max(1, cache["size"] * m) for m in (1, 2, 4, 8)} | {cache["pairs"]})
    found = pair_cache(index, routing.adapter.n_experts, cache["size"], min_lift=prereg.params["dominant_lift"],
                       curve=[m for m in curve if m <= cache["pairs"]])
    gate.check(found.coverage, layer=layer, cache_size=found.cache_size, n_pairs=found.n_pairs,
               c_pair_effective_rank=found.effective_rank, dominant_pairs=found.n_dominant,
               curve_sizes=list(found.coverage_curve), series={"coverage_by_cache_size":
                                                                 list(found.coverage_curve.values())})
