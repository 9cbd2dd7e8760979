"""G10-scan at the probe level (probes.attention.AttentionStudy with the sealed prereg's decays, ridges and
calibration size) on a tiny OLMoE whose layer-1 attention is replaced by a planted map, judged by the sealed
scan_error gate:

- PASS: the attention output is exactly a decaying scan of its input with the prereg's decays, o_t = W φ_t: the
  readout fit on calibration text reproduces held-out text up to the bias of the prereg's smallest ridge (1e-4 of
  the mean feature energy; with ridge 0 the fit is exact, tests/rungs/test_planted_quant.py).
- KILL: the output is bilinear in the current and the previous token, o_t = (x_t ⊙ x_{t−1}) R, which no linear
  readout of x_t and its decaying averages can represent: the held-out error is far above the 0.5 gate.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from planted import ROOT, gate_spec, loaded_model, tiny_forward_model, tokenizer_for_tests
from pytest_ladder.probes import attention

HIDDEN = 64
PARAMS = json.loads((ROOT / "prereg" / "g10_scan" / "tau.json").read_text())["params"]


class ExactScan(nn.Module):
    """An attention replacement that is exactly a decaying scan with the prereg's decays: o_t = W φ_t."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        n = HIDDEN * (1 + len(PARAMS["decays"]))
        self.register_buffer("readout", torch.randn(n, HIDDEN, generator=generator, dtype=torch.float64) / HIDDEN)

    def forward(self, hidden_states, *args, **kwargs):
        rows = [attention.scan_features(x, PARAMS["decays"]) @ self.readout for x in hidden_states]
        return torch.stack(rows).to(hidden_states.dtype), None


class Bilinear(nn.Module):
    """o_t = (x_t ⊙ x_{t−1}) R (x_{−1} = 0): no linear function of the scan features."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("mix", torch.randn(HIDDEN, HIDDEN, generator=generator) / HIDDEN**0.5)

    def forward(self, hidden_states, *args, **kwargs):
        previous = torch.cat([torch.zeros_like(hidden_states[:, :1]), hidden_states[:, :-1]], dim=1)
        return (hidden_states * previous) @ self.mix, None


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_for_tests()


@pytest.fixture(scope="module")
def corpora():
    from pytest_ladder.models.corpora import load_corpora

    return load_corpora()


def held_out_error(tokenizer, corpora, replacement: nn.Module) -> float:
    model = tiny_forward_model(tokenizer)
    model.model.layers[1].self_attn = replacement
    study = attention.AttentionStudy(loaded_model(model, tokenizer), corpora, [1], n_points=160,
                                     decays=PARAMS["decays"], ridges=PARAMS["ridges"],
                                     calibration_tokens_per_feature=PARAMS["calibration_tokens_per_feature"])
    assert study.trivial(1, "text") == 0.0
    return study.scan(1, "text").heldout_error


def test_an_exact_scan_passes_the_scan_error_gate(tokenizer, corpora, one_thread):
    error = held_out_error(tokenizer, corpora, ExactScan(seed=3))
    assert error < 0.05
    assert gate_spec("g10_scan", "scan_error").passes(error)


def test_a_bilinear_attention_is_killed_at_the_scan_error_gate(tokenizer, corpora, one_thread):
    error = held_out_error(tokenizer, corpora, Bilinear(seed=4))
    assert error > 0.8
    assert not gate_spec("g10_scan", "scan_error").passes(error)
