"""G10 with pipeline controls — residual-stream quantization: each routed expert's output quantized to INT4 before it
is summed. g10's claim, cells and gates; traps that test the pipeline, never the model's robustness.

g10's traps asked INT2 and random scales to hurt the NLL, which depends on how robust the model is (a model that
shrugs off INT4 may shrug off INT2). Here they are judged on the outputs themselves: the INT2 round trip's error is
above INT4's (INT2's levels sit on INT4's grid, so rounding onto INT4 is never worse), and the calibration tokens'
own outputs round within half a step (max-abs scales leave nothing to saturate). Heavy lifting:
pytest_ladder.probes.expert_outputs, shared with rungs/test_g10.py.
"""

import pytest

from pytest_ladder import rung

ladder = rung("g10_control")


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


@ladder.trap("int2_output_error")
def test_int2_output_error(trap, study, prereg):
    p, task = prereg.params, prereg.hardest_cell.params["task"]
    trap.check(study.output_error(task, p["calibration_task"], p["trap_bits"]),
               method=study.output_error(task, p["calibration_task"], p["bits"]),
               int2_delta_nll=study.candidate(task, p["calibration_task"], p["trap_bits"]))


@ladder.trap("calibration_range")
def test_calibration_range(trap, study, prereg):
    p = prereg.params
    trap.check(study.calibration_step_error(p["calibration_task"], p["bits"]),
               trap_bits=study.calibration_step_error(p["calibration_task"], p["trap_bits"]))
