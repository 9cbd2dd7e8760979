"""Expert outputs, any method: what every routed expert's output becomes before it enters the residual stream, by
the compressor a prereg names, judged by the bytes prefilter, the output error per cell against the τ floor, ΔNLL at
full depth and the traps. A generic rung: it has no prereg of its own and tests every prereg that binds it with
"rung": "expert_outputs" (each its own claim, decision and archive folder), e.g. prereg/outputs_int8_channels.

The prereg names the method in params: "compressor": "<module>:<factory>", "compressor_params": {...} and
"calibration_tokens" (per task; the compressor is calibrated per MoE layer on every task's calibration outputs); the
factory returns an object with calibrate(layer, outputs), compress(layer, expert, outputs, state) and
storage(top_k, hidden, dtype) (pytest_ladder.compressors.ExpertOutputCompressor; docs/compressors.md). Gates as
G10's: bytes (prefilter) per token against the dense routed outputs; output_error per cell on the dense model's
held-out routed outputs, against the τ floor (the best of B random controls storing the same bytes: the
compressor's random_control(seed), else a random projection); delta_nll with every layer's outputs compressed,
worst task. Traps: trivial_pass (y′ = y: every gate exactly 0) and harmful_control (the compressor's
harmful_control(), else a rank-one projection, must fail the output-error gate). Heavy lifting:
pytest_ladder.probes.output_compressors.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.compressors import check_expert_outputs, find_compressor
from pytest_ladder.rung_fixtures import compressor_study

ladder = rung("expert_outputs", own_prereg=False, check=find_compressor, prepare=check_expert_outputs)


@pytest.fixture
def compressor(rung_cache, request, prereg):
    from pytest_ladder.compressors import rung_compressor

    return rung_compressor(rung_cache, prereg, "expert_outputs", request.config.rootpath)


@pytest.fixture
def shape(ladder_weights):
    """(top-k, hidden size, dtype) of the routed outputs one token sends, from the checkpoint's config."""
    from pytest_ladder.probes.expert_outputs import checkpoint_dtype

    return ladder_weights.top_k, ladder_weights.config["hidden_size"], checkpoint_dtype(ladder_weights.config)


@pytest.fixture
def study(rung_cache, request, compressor, shape, ladder_model, ladder_corpora, ladder_layers, prereg, ladder_seeds):
    from pytest_ladder.probes.expert_outputs import OutputQuantStudy
    from pytest_ladder.probes.output_compressors import (OutputCompressorStudy, harmful_control, output_bytes,
                                                         random_control)

    def build(compressors):
        outputs = OutputQuantStudy(ladder_model, ladder_corpora, n_points=prereg.data_points,
                                   calibration_tokens=prereg.params["calibration_tokens"])
        return OutputCompressorStudy(outputs, calibration_tasks=prereg.tasks, compressors=compressors)

    return compressor_study(rung_cache, request, prereg, ladder_layers, ladder_seeds, compressor,
                            lambda: output_bytes(compressor, *shape).fraction, (random_control, harmful_control), build)


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, study, rung_cache, prereg, shape):
    cell = prereg.hardest_cell
    outcome = study.trivial_pass(rung_cache["layers"][cell.id], cell.params["task"], *shape)
    trap.check(outcome.observed, **outcome.refs)


@ladder.prefilter("bytes")
def test_bytes(gate, compressor, shape):
    from pytest_ladder.probes.output_compressors import output_bytes

    found = output_bytes(compressor, *shape)
    gate.check(found.delta, dense_token_bytes=found.dense.nbytes, compressed_token_bytes=found.compressed.nbytes,
               by_kind=found.compressed.bytes_by_kind())


@ladder.gate("output_error")
def test_output_error(cell, gate, study, rung_cache, ladder_seeds):
    layer, task = rung_cache["layers"][cell.id], cell.params["task"]
    gate.check(study.output_error(layer, task),
               tau=study.tau(layer, task, [("random", seed) for seed in ladder_seeds]), layer=layer)


@ladder.gate("delta_nll")
def test_delta_nll(gate, study, prereg):
    losses = {task: study.delta_nll(task) for task in prereg.tasks}
    gate.check(max(losses.values()), series={"delta_nll_per_task": list(losses.values())}, per_task=losses)


@ladder.trap("harmful_control")
def test_harmful_control(trap, study, rung_cache, prereg):
    from pytest_ladder.compressors import HARMFUL

    cell = prereg.hardest_cell
    layer, task = rung_cache["layers"][cell.id], cell.params["task"]
    trap.check(study.output_error(layer, task, HARMFUL), threshold=prereg.gates["output_error"].threshold,
               method=study.output_error(layer, task))
