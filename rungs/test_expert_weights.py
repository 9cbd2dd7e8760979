"""Expert weights, any method: every routed expert's W -> W′ by the compressor a prereg names, judged by all five
gates, the τ floor and the traps. A generic rung: it has no prereg of its own and tests every prereg that binds it
with "rung": "expert_weights" (each its own claim, decision and archive folder), e.g. prereg/int4_group64_experts.

The prereg names the method in params: "compressor": "<module>:<factory>" and "compressor_params": {...}; the
factory returns an object with compress(layer, stacks, experts) and storage(stacks) (pytest_ladder.compressors;
docs/compressors.md). It is loaded at collection: an import path that does not resolve is a usage error.

Gates as R1's: bytes (prefilter) from the compressor's declared storage against the dense experts at their stored
dtype; activation_error per cell, against the τ floor (the best of B random controls spending the same bytes:
the compressor's random_control(seed), else a random projection); task_conditioning; route_flip_rate and delta_nll
with every layer's experts replaced. Traps: trivial_pass (W′ = W: every gate exactly 0) and harmful_control (the
compressor's harmful_control(), else INT2 with one scale per row, must fail the activation-error gate).
Heavy lifting: pytest_ladder.probes.expert_weights.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.compressors import check_expert_weights, find_compressor
from pytest_ladder.rung_fixtures import compressor_study

ladder = rung("expert_weights", own_prereg=False, check=find_compressor, prepare=check_expert_weights)


@pytest.fixture
def compressor(rung_cache, request, prereg):
    from pytest_ladder.compressors import rung_compressor

    return rung_compressor(rung_cache, prereg, "expert_weights", request.config.rootpath)


@pytest.fixture
def study(rung_cache, request, compressor, ladder_routing, ladder_layers, ladder_weights, prereg, ladder_seeds):
    from pytest_ladder.probes.expert_weights import (ExpertWeightStudy, compressor_bytes, expert_stacks,
                                                     harmful_control, random_control)

    return compressor_study(
        rung_cache, request, prereg, ladder_layers, ladder_seeds, compressor,
        lambda: compressor_bytes(compressor, expert_stacks(ladder_weights.dtype_bytes())).fraction,
        (random_control, harmful_control), lambda compressors: ExpertWeightStudy(ladder_routing, compressors=compressors))


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, study, rung_cache, prereg, ladder_weights):
    from pytest_ladder.probes.expert_weights import expert_stacks

    cell = prereg.hardest_cell
    outcome = study.trivial_pass(rung_cache["layers"][cell.id], cell.params["task"],
                                 expert_stacks(ladder_weights.dtype_bytes()))
    trap.check(outcome.observed, **outcome.refs)


@ladder.prefilter("bytes")
def test_bytes(gate, compressor, ladder_weights):
    from pytest_ladder.probes.budget import GB
    from pytest_ladder.probes.expert_weights import compressor_bytes, expert_stacks

    found = compressor_bytes(compressor, expert_stacks(ladder_weights.dtype_bytes()))
    gate.check(found.delta, gb_delta=found.delta / GB, dense_experts_bytes=found.dense.nbytes,
               compressed_experts_bytes=found.compressed.nbytes, by_kind=found.compressed.bytes_by_kind())


@ladder.gate("activation_error")
def test_activation_error(cell, gate, study, rung_cache, ladder_seeds):
    layer, task = rung_cache["layers"][cell.id], cell.params["task"]
    error = study.error(layer, task)
    gate.check(error.pooled, tau=study.tau(layer, task, [("random", seed) for seed in ladder_seeds]), layer=layer,
               per_weight_type=error.per_projection)


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


@ladder.trap("harmful_control")
def test_harmful_control(trap, study, rung_cache, prereg):
    from pytest_ladder.compressors import HARMFUL

    cell = prereg.hardest_cell
    layer, task = rung_cache["layers"][cell.id], cell.params["task"]
    trap.check(study.error(layer, task, HARMFUL).pooled, threshold=prereg.gates["activation_error"].threshold,
               method=study.error(layer, task).pooled)
