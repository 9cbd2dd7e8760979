"""G10.5 — smooth (decaying scan) + sparse (each query's top-k keys) split of a layer's attention.

Per cell (layer × task): the hybrid's held-out error against k random keys per query (τ), and the routing stability of
the top-k keys under a static rule (Jaccard). Heavy lifting: pytest_ladder.probes.attention.
"""

import pytest

from pytest_ladder import rung

ladder = rung("g10_5")


@pytest.fixture
def study(attention_study):
    """The shared AttentionStudy of G10-scan and G10.5 (rung_fixtures.attention_study)."""
    return attention_study


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
