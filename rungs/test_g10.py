"""G10 — residual-stream quantization: each routed expert's output quantized to INT4 before it is summed.

v3 (the claim: per-channel INT4 scales calibrated on text), v4 (top-K outliers, hardest cell) and v5 (calibration ×
evaluation matrix) are measured; traps INT2 and random scales. Heavy lifting: pytest_ladder.probes.expert_outputs.
"""

import pytest

from pytest_ladder import rung

ladder = rung("g10")


@pytest.fixture
def study(rung_cache, ladder_model, ladder_corpora, prereg):
    from pytest_ladder.probes.expert_outputs import OutputQuantStudy

    if "study" not in rung_cache:
        rung_cache["study"] = OutputQuantStudy.from_params(ladder_model, ladder_corpora, prereg.data_points,
                                                           prereg.params)
    return rung_cache["study"]


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, study, prereg):
    found = study.trivial_pass(prereg.hardest_cell.params["task"])
    trap.check(max(abs(v) for v in found.values()), **found)


@ladder.prefilter("activation_bytes")
def test_activation_bytes(gate, prereg, ladder_weights):
    from pytest_ladder.probes.expert_outputs import activation_bytes_prefilter

    value, refs = activation_bytes_prefilter(ladder_weights, prereg.params["bits"])
    gate.check(value, **refs)


@ladder.gate("delta_nll")
def test_delta_nll(cell, gate, study, prereg):
    p = prereg.params
    outliers = p["outlier_fractions"] if cell.id == prereg.hardest_cell.id else ()
    value, series, refs = study.loss_cell(cell.params["task"], p["calibration_task"], p["bits"], prereg.tasks,
                                          outliers)
    gate.check(value, series=series, **refs)


@ladder.trap("int2")
def test_int2(trap, study, prereg):
    p, task = prereg.params, prereg.hardest_cell.params["task"]
    trap.check(study.candidate(task, p["calibration_task"], p["trap_bits"]),
               method=study.candidate(task, p["calibration_task"], p["bits"]))


@ladder.trap("random_scales")
def test_random_scales(trap, study, prereg, ladder_seeds):
    p, task = prereg.params, prereg.hardest_cell.params["task"]
    low, high = p["random_scale_range"]
    values = [study.random_scales(task, p["calibration_task"], p["bits"], seed, low=low, high=high)
              for seed in ladder_seeds]
    trap.check(min(values), method=study.candidate(task, p["calibration_task"], p["bits"]), worst=max(values))
