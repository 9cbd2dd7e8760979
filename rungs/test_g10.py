"""G10 — residual-stream quantization: each routed expert's output quantized to INT4 before it is summed.

v3 (the claim: per-channel INT4 scales calibrated on text), v4 (top-K outliers, hardest cell) and v5 (calibration ×
evaluation matrix) are measured; traps INT2 and random scales. Heavy lifting: pytest_ladder.probes.expert_outputs.
"""

import pytest

from pytest_ladder import rung

ladder = rung("g10")


@pytest.fixture
def study(rung_cache, ladder_model, ladder_corpora, prereg):
    import torch

    from pytest_ladder.probes.expert_outputs import OutputQuantStudy

    if "study" not in rung_cache:
        rung_cache["study"] = OutputQuantStudy(ladder_model, ladder_corpora, n_points=prereg.data_points,
                                               calibration_tokens=prereg.params["calibration_tokens"],
                                               scale_dtype=getattr(torch, prereg.params["scale_dtype"]))
    return rung_cache["study"]


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, study, prereg):
    from pytest_ladder.probes.expert_outputs import activation_delta_bytes

    config = study.loaded.model.config
    delta = study.delta_nll(prereg.hardest_cell.params["task"], None, ("identity",))
    wire = activation_delta_bytes(study.adapter.top_k, config.hidden_size, 16, study.loaded.model.dtype)
    trap.check(max(abs(delta), abs(wire)), delta_nll=delta, delta_bytes=wire)


@ladder.prefilter("activation_bytes")
def test_activation_bytes(gate, prereg, ladder_weights):
    from pytest_ladder.probes.expert_outputs import (
        activation_delta_bytes,
        checkpoint_dtype,
        scale_bytes,
    )

    config, dtype = ladder_weights.config, checkpoint_dtype(ladder_weights.config)
    hidden, k, bits = config["hidden_size"], ladder_weights.top_k, prereg.params["bits"]
    gate.check(activation_delta_bytes(k, hidden, bits, dtype), dense_token_bytes=k * hidden * dtype.itemsize,
               stored_scale_bytes=scale_bytes(ladder_weights.n_layers, ladder_weights.n_experts, hidden))


@ladder.gate("delta_nll")
def test_delta_nll(cell, gate, study, prereg):
    from pytest_ladder.probes.expert_outputs import outlier_counts

    p, task = prereg.params, cell.params["task"]
    series = {"calibration_matrix": [study.candidate(task, c, p["bits"]) for c in prereg.tasks]}
    if cell.id == prereg.hardest_cell.id:
        ks = outlier_counts(p["outlier_fractions"], study.loaded.model.config.hidden_size)
        series["outliers_k"] = ks
        series["delta_nll_vs_outliers"] = [study.candidate(task, p["calibration_task"], p["bits"], k) for k in ks]
    reference = study.reference(task)
    gate.check(study.candidate(task, p["calibration_task"], p["bits"]), series=series,
               calibration_tasks=list(prereg.tasks), reference_nats_per_token=reference.nats_per_token,
               tokens=reference.tokens, uncalibrated_experts=study.quantizer(p["calibration_task"],
                                                                             p["bits"]).uncalibrated_experts())


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
