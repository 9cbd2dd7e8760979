"""G10-scan — a contractive (decaying) scan of a layer's attention input replaces its attention.

Per cell (layer × task): the scan's readout is fit on calibration text and judged on held-out text (relative error
of the attention output). Heavy lifting: pytest_ladder.probes.attention.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_context, run_context

ladder = rung("g10_scan")


@pytest.fixture(scope="module")
def cache() -> dict:
    return {}


@pytest.fixture
def study(cache, request, ladder_model, ladder_corpora, prereg):
    from pytest_ladder.probes.attention import AttentionStudy
    from pytest_ladder.rung_fixtures import resolve_layer

    if "study" not in cache:
        n_layers = ladder_model.model.config.num_hidden_layers
        cache["layers"] = {c.id: resolve_layer(c.params["layer"], n_layers) for c in prereg.cells}
        p = prereg.params
        cache["study"] = study = AttentionStudy(
            ladder_model, ladder_corpora, cache["layers"].values(), n_points=prereg.data_points, decays=p["decays"],
            ridges=p["ridges"], calibration_tokens_per_feature=p["calibration_tokens_per_feature"])
        cells = dict(run_context(request.config).get("cells", {}))
        cells[prereg.rung] = {"layers": cache["layers"], "n_features": study.n_features,
                              "calibration_tokens": study.calibration_tokens}
        record_context(request.config, "cells", cells)
    return cache["study"]


def layer_of(cache: dict, cell) -> int:
    return cache["layers"][cell.id]


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, study, cache, prereg):
    cell = prereg.hardest_cell
    trap.check(study.trivial(layer_of(cache, cell), cell.params["task"]))


@ladder.gate("scan_error")
def test_scan_error(cell, gate, study, cache):
    result = study.scan(layer_of(cache, cell), cell.params["task"])
    gate.check(result.heldout_error, layer=layer_of(cache, cell), ridge=result.ridge,
               calibration_error=result.calibration_error,
               generalization_gap=result.generalization_gap, memoryless_error=result.memoryless_error,
               n_calibration=result.n_calibration, n_heldout=result.n_heldout, n_features=result.n_features)


@ladder.trap("random_basis")
def test_random_basis(trap, study, cache, prereg, ladder_seeds):
    cell = prereg.hardest_cell
    layer, task = layer_of(cache, cell), cell.params["task"]
    randoms = study.random_scans(layer, task, ladder_seeds)
    trap.check(min(randoms), method=study.scan(layer, task).heldout_error, worst=max(randoms))
