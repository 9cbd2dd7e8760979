"""G10.5 — smooth (decaying scan) + sparse (each query's top-k keys) split of a layer's attention.

Per cell (layer × task): the hybrid's held-out error against k random keys per query (τ), and the routing stability of
the top-k keys under a static rule (Jaccard). Heavy lifting: pytest_ladder.probes.attention.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell
from pytest_ladder.rung_fixtures import cell_layers

ladder = rung("g10_5")


@pytest.fixture
def study(rung_cache, request, ladder_model, ladder_corpora, prereg, ladder_seeds):
    from pytest_ladder.probes.attention import AttentionStudy, SparseSpec

    if "study" not in rung_cache:
        rung_cache["layers"] = cell_layers(prereg, ladder_model.model.config.num_hidden_layers)
        p = prereg.params
        rung_cache["study"] = study = AttentionStudy(
            ladder_model, ladder_corpora, rung_cache["layers"].values(), n_points=prereg.data_points,
            decays=p["decays"], ridges=p["ridges"], calibration_tokens_per_feature=p["calibration_tokens_per_feature"],
            sparse=SparseSpec(p["top_k_keys"], tuple(ladder_seeds)))
        record_cell(request.config, prereg.rung, {"layers": rung_cache["layers"], "n_features": study.n_features,
                                                  "calibration_tokens": study.calibration_tokens})
    return rung_cache["study"]


def hybrid(study, rung_cache: dict, cell):
    return study.hybrid(rung_cache["layers"][cell.id], cell.params["task"])


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, study, rung_cache, prereg):
    cell = prereg.hardest_cell
    trap.check(study.trivial(rung_cache["layers"][cell.id], cell.params["task"]))


@ladder.gate("hybrid_error")
def test_hybrid_error(cell, gate, study, rung_cache):
    result = hybrid(study, rung_cache, cell)
    scan_only = study.scan(rung_cache["layers"][cell.id], cell.params["task"]).heldout_error
    gate.check(result.hybrid_error, tau={"tau": min(result.random_errors), "values": list(result.random_errors)},
               layer=rung_cache["layers"][cell.id], scan_only_error=scan_only,
               sparse_only_error=result.sparse_only_error, sparse_mass=result.sparse_mass)


@ladder.gate("key_jaccard")
def test_key_jaccard(cell, gate, study, rung_cache):
    result = study.key_stability(rung_cache["layers"][cell.id], cell.params["task"])
    gate.check(result.jaccard, layer=rung_cache["layers"][cell.id], n_query_heads=result.n)


@ladder.trap("random_basis")
def test_random_basis(trap, study, rung_cache, prereg):
    result = hybrid(study, rung_cache, prereg.hardest_cell)
    trap.check(min(result.random_errors), method=result.hybrid_error)
