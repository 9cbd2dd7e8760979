"""G10-scan — a contractive (decaying) scan of a layer's attention input replaces its attention.

Per cell (layer × task): the scan's readout is fit on calibration text and judged on held-out text (relative error
of the attention output). Heavy lifting: pytest_ladder.probes.attention.
"""

import pytest

from pytest_ladder import rung

ladder = rung("g10_scan")


@pytest.fixture
def study(attention_study):
    """The shared AttentionStudy of G10-scan and G10.5 (rung_fixtures.attention_study)."""
    return attention_study


def layer_of(rung_cache: dict, cell) -> int:
    return rung_cache["layers"][cell.id]


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, study, rung_cache, prereg):
    cell = prereg.hardest_cell
    trap.check(study.trivial(layer_of(rung_cache, cell), cell.params["task"]))


@ladder.gate("scan_error")
def test_scan_error(cell, gate, study, rung_cache):
    result = study.scan(layer_of(rung_cache, cell), cell.params["task"])
    gate.check(result.heldout_error, layer=layer_of(rung_cache, cell), ridge=result.ridge,
               calibration_error=result.calibration_error,
               generalization_gap=result.generalization_gap, memoryless_error=result.memoryless_error,
               n_calibration=result.n_calibration, n_heldout=result.n_heldout, n_features=result.n_features)


@ladder.trap("random_basis")
def test_random_basis(trap, study, rung_cache, prereg, ladder_seeds):
    cell = prereg.hardest_cell
    layer, task = layer_of(rung_cache, cell), cell.params["task"]
    randoms = study.random_scans(layer, task, ladder_seeds)
    trap.check(min(randoms), method=study.scan(layer, task).heldout_error, worst=max(randoms))
