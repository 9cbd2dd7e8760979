"""g10_control's traps at the probe level (probes.expert_outputs on a tiny OLMoE, the sealed prereg's bits and
calibration): they fire as declared whether INT4 is exact or lossy, and fire wrong when the pipeline is broken.

- Outputs planted on a per-channel INT4 grid (±7 steps reached on the calibration tokens): INT4's output error is
  exactly 0 and INT2's above it; both round the calibration outputs within half a step.
- A randomly initialised model (lossy INT4): INT2's error is still above INT4's, the step error still ≤ 1/2.
- A broken pipeline: scales shrunk by random factors in [0.1, 0.5] saturate, and the step error reads above 1/2.
"""

from __future__ import annotations

import json

import pytest
import torch

from planted import ROOT, loaded_model, tiny_forward_model, tokenizer_for_tests
from pytest_ladder.models.adapters import OlmoeAdapter
from pytest_ladder.probes import expert_outputs

PARAMS = json.loads((ROOT / "prereg" / "g10_control" / "tau.json").read_text())["params"]
TASK = "code"


class Int4GridOutputs(OlmoeAdapter):
    """Every expert's output amplified and snapped onto 2⁻⁴ · {−7..7} per channel."""

    def expert_forward_module(self, experts, expert, hidden):
        output = super().expert_forward_module(experts, expert, hidden)
        return 2.0**-4 * torch.clamp(torch.round(1e4 * output / 2.0**-4), -7, 7)


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_for_tests()


@pytest.fixture(scope="module")
def corpora():
    from pytest_ladder.models.corpora import load_corpora

    return load_corpora()


def study_for(tokenizer, corpora, adapter_class):
    model = tiny_forward_model(tokenizer)
    return expert_outputs.OutputQuantStudy(loaded_model(model, tokenizer, adapter_class(model)), corpora,
                                           n_points=192, calibration_tokens=PARAMS["calibration_tokens"],
                                           scale_dtype=getattr(torch, PARAMS["scale_dtype"]))


@pytest.mark.parametrize("adapter_class", [Int4GridOutputs, OlmoeAdapter], ids=["on-grid", "random"])
def test_traps_fire_as_declared_whether_int4_is_exact_or_lossy(tokenizer, corpora, one_thread, adapter_class):
    study = study_for(tokenizer, corpora, adapter_class)
    calibration, bits, trap_bits = PARAMS["calibration_task"], PARAMS["bits"], PARAMS["trap_bits"]
    int4, int2 = study.output_error(TASK, calibration, bits), study.output_error(TASK, calibration, trap_bits)
    assert int2 > int4
    if adapter_class is Int4GridOutputs:
        assert int4 == 0.0
        assert study.calibration_step_error(calibration, bits) == 0.0
    else:
        assert int4 > 0.01
    assert 0.0 <= study.calibration_step_error(calibration, bits) <= 0.5 + 1e-9
    assert 0.0 < study.calibration_step_error(calibration, trap_bits) <= 0.5 + 1e-9


def test_shrunk_scales_make_calibration_range_fire_wrong(tokenizer, corpora, one_thread):
    study = study_for(tokenizer, corpora, OlmoeAdapter)
    calibration, bits = PARAMS["calibration_task"], PARAMS["bits"]
    rescaled = study.quantizer(calibration, bits).with_random_scales(0, low=0.1, high=0.5)
    assert expert_outputs.max_step_error(study.calibration_outputs(calibration), rescaled) > 1.0
