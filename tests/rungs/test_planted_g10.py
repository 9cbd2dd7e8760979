"""G10 at the probe level (probes.expert_outputs.OutputQuantStudy with the sealed prereg's bits, calibration task
and scale dtype) on tiny OLMoE models whose expert outputs are planted through the adapter, judged by the sealed
delta_nll gate:

- PASS: every expert's output lies on a per-channel INT4 grid s_c · {−7..7} with ±7 s_c reached: calibration on text
  recovers the grid, so the INT4 round trip is the identity and every task's ΔNLL is exactly 0.
- KILL: the embedded model (trained: its NLL depends on its experts) with one loud token per expert call, whose
  output is raised by 100 × the call's largest output. Per-channel scales calibrated on text are set by those
  tokens, the INT4 step exceeds every other output, and the round trip erases the experts' contribution for all
  other tokens: ΔNLL of 20–33% per task against the gate's 5% (the same model without the loud tokens: 0.4%).
  A randomly initialised tiny model cannot show a kill: its predictions sit near uniform, so its NLL barely moves.
"""

from __future__ import annotations

import json

import pytest
import torch

from planted import ROOT, gate_spec, loaded_model, tiny_forward_model, tokenizer_for_tests
from pytest_ladder.models.adapters import OlmoeAdapter
from pytest_ladder.probes import expert_outputs

PARAMS = json.loads((ROOT / "prereg" / "g10" / "tau.json").read_text())["params"]
TASKS = ("code", "math", "text")


def grid_step(hidden: int) -> torch.Tensor:
    """Per-channel grid steps 2^-3, 2^-4, 2^-5 (exact in float32)."""
    return torch.tensor([2.0 ** -(3 + c % 3) for c in range(hidden)])


class Int4GridOutputs(OlmoeAdapter):
    """Every expert's output amplified and snapped onto s_c · {−7..7} per channel."""

    def expert_forward_module(self, experts, expert, hidden):
        step = grid_step(hidden.shape[-1]).to(hidden)
        output = super().expert_forward_module(experts, expert, hidden)
        return step * torch.clamp(torch.round(1e4 * output / step), -7, 7)


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_for_tests()


@pytest.fixture(scope="module")
def corpora():
    from pytest_ladder.models.corpora import load_corpora

    return load_corpora()


def worst_delta_nll(tokenizer, corpora, adapter_class) -> float:
    model = tiny_forward_model(tokenizer)
    study = expert_outputs.OutputQuantStudy(loaded_model(model, tokenizer, adapter_class(model)), corpora,
                                            n_points=192, calibration_tokens=PARAMS["calibration_tokens"],
                                            scale_dtype=getattr(torch, PARAMS["scale_dtype"]))
    assert study.delta_nll("code", None, ("identity",)) == 0.0
    return max(study.candidate(task, PARAMS["calibration_task"], PARAMS["bits"]) for task in TASKS)


def test_outputs_on_the_int4_grid_pass_with_exactly_zero_delta_nll(tokenizer, corpora, one_thread):
    worst = worst_delta_nll(tokenizer, corpora, Int4GridOutputs)
    assert worst == 0.0
    assert gate_spec("g10", "delta_nll").passes(worst)


class OneLoudToken(OlmoeAdapter):
    """Per expert call, the token with the largest input norm gets 100 × the call's largest output added."""

    def expert_forward_module(self, experts, expert, hidden):
        output = super().expert_forward_module(experts, expert, hidden)
        if output.shape[0]:
            output = output.clone()
            output[hidden.norm(dim=-1).argmax()] += 100 * output.abs().amax(0)
        return output


def test_loud_calibration_tokens_kill_the_claim_at_delta_nll(corpora, one_thread):
    from pytest_ladder.models.loading import ModelSpec, load_model

    base = load_model(ModelSpec(source="embedded"))
    loud = type(base)(base.model, base.tokenizer, OneLoudToken(base.model), base.identity, base.spec, base.path)
    study = expert_outputs.OutputQuantStudy(loud, corpora, n_points=256, calibration_tokens=PARAMS["calibration_tokens"],
                                            scale_dtype=getattr(torch, PARAMS["scale_dtype"]))
    assert study.delta_nll("code", None, ("identity",)) == 0.0  # the trivial pass holds on the planted model
    per_task = {task: study.candidate(task, PARAMS["calibration_task"], PARAMS["bits"]) for task in TASKS}
    assert min(per_task.values()) > 0.15, per_task
    assert not gate_spec("g10", "delta_nll").passes(max(per_task.values()))
    plain = expert_outputs.OutputQuantStudy(base, corpora, n_points=256, calibration_tokens=PARAMS["calibration_tokens"],
                                            scale_dtype=getattr(torch, PARAMS["scale_dtype"]))
    assert gate_spec("g10", "delta_nll").passes(plain.candidate("code", PARAMS["calibration_task"], PARAMS["bits"]))
