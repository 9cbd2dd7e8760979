"""R1 — RotorQuant: SRHT-rotated INT2 experts. Opens with the GB it takes off the experts line; all five gates.

Heavy lifting: pytest_ladder.probes.rotorquant (the quantizer is R2's, probes.quant_weights) and probes.budget.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell, record_context, run_context
from pytest_ladder.rung_fixtures import cell_layers

ladder = rung("r1")


@pytest.fixture
def study(rung_cache, request, ladder_routing, ladder_layers, prereg):
    import torch

    from pytest_ladder.probes.rotorquant import RotorQuant, RotorQuantStudy

    if "study" not in rung_cache:
        p = prereg.params
        rung_cache["layers"] = cell_layers(prereg, ladder_layers)
        quantizer = RotorQuant(p["bits"], p["srht_seed"], getattr(torch, p["scale_dtype"]))
        rung_cache["study"] = RotorQuantStudy(ladder_routing, quantizer=quantizer)
        record_cell(request.config, prereg.rung, {"layers": rung_cache["layers"]})
    return rung_cache["study"]


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, study, rung_cache, prereg, ladder_weights):
    from pytest_ladder.probes.rotorquant import expert_stacks

    cell = prereg.hardest_cell
    outcome = study.trivial_pass(rung_cache["layers"][cell.id], cell.params["task"],
                                 expert_stacks(ladder_weights.dtype_bytes()))
    trap.check(outcome.observed, **outcome.refs)


@ladder.prefilter("bytes")
def test_bytes(gate, request, prereg, ladder_weights):
    import torch

    from pytest_ladder.probes.budget import GB, budget_table
    from pytest_ladder.probes.rotorquant import bytes_delta, expert_stacks

    p, tensors = prereg.params, ladder_weights.dtype_bytes()
    delta = bytes_delta(expert_stacks(tensors), p["bits"], scale_dtype=getattr(torch, p["scale_dtype"]))
    table = budget_table(tensors, tied_head=bool(ladder_weights.config.get("tie_word_embeddings", False)))
    table = table.with_target(p["target_device_memory_fraction"])
    deltas = {**run_context(request.config).get("budget_deltas", {}), prereg.rung: {"experts": delta}}
    record_context(request.config, "budget_deltas", deltas)
    record_context(request.config, "budget_table", table.rows(deltas))
    gate.check(delta, gb_delta=delta / GB, experts_line_gb=table.line_bytes("experts") / GB,
               experts_after_gb=(table.line_bytes("experts") + delta) / GB, model_gb=table.total_bytes / GB)


@ladder.gate("activation_error")
def test_activation_error(cell, gate, study, rung_cache, prereg):
    layer, task = rung_cache["layers"][cell.id], cell.params["task"]
    error = study.error(layer, task)
    gate.check(error.pooled, layer=layer, per_weight_type=error.per_projection,
               int1_error=study.error(layer, task, ("bits", prereg.params["extra_bits"])).pooled)


@ladder.gate("task_conditioning")
def test_task_conditioning(gate, study, rung_cache, prereg):
    value, worst, errors = study.task_conditioning(rung_cache["layers"].values(), prereg.tasks)
    gate.check(value, worst_layer=worst, per_layer_task=errors)


@ladder.gate("route_flip_rate")
def test_route_flip_rate(gate, study, prereg):
    flips, _ = study.per_task(prereg.tasks)
    gate.check(max(flips.values()), per_task=flips)


@ladder.gate("delta_nll")
def test_delta_nll(gate, study, prereg):
    _, losses = study.per_task(prereg.tasks)
    gate.check(max(losses.values()), series={"delta_nll_per_task": list(losses.values())}, per_task=losses)


@ladder.trap("random_scales")
def test_random_scales(trap, study, rung_cache, prereg, ladder_seeds):
    cell, (low, high) = prereg.hardest_cell, prereg.params["random_scale_range"]
    layer, task = rung_cache["layers"][cell.id], cell.params["task"]
    values = [study.error(layer, task, ("random_scales", seed, low, high)).pooled for seed in ladder_seeds]
    trap.check(min(values), method=study.error(layer, task).pooled, worst=max(values))
