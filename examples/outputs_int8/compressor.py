"""INT8 with one static float32 scale per (layer, expert, hidden channel), calibrated on every task's calibration
outputs, on every routed expert's output: the claim of prereg/outputs_int8_channels/tau.json (run with `pytest
rungs/test_expert_outputs.py`).

An expert-output compressor is a plain object with three methods (pytest_ladder.compressors.ExpertOutputCompressor):
`calibrate(layer, outputs)` fits what `compress` needs from the dense model's calibration outputs of a layer
({expert: (rows, H)}), `compress(layer, expert, outputs, state)` returns y′ for one expert's routed outputs, and
`storage(top_k, hidden, dtype)` says, as a measure.storage.Artifact, what one token's k outputs occupy on the wire:
here one byte per value (the scales are static, stored once).
"""

from __future__ import annotations

import torch

from pytest_ladder.measure.quant import QuantSpec, calibrate, fake_quant
from pytest_ladder.measure.storage import Artifact, TensorStorage


class ChannelQuant:
    """Symmetric INT-b per hidden channel with max-abs scales per (layer, expert); an expert that saw no calibration
    token uses the layer's scales over all experts."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.spec = QuantSpec(bits=bits, symmetric=True, granularity="channel", axis=-1, scale_dtype="float32")

    def calibrate(self, layer, outputs):
        pooled = calibrate(torch.cat(list(outputs.values())), self.spec)
        return {"experts": {e: calibrate(y, self.spec) for e, y in outputs.items()}, "layer": pooled}

    def compress(self, layer, expert, outputs, state):
        params = state["experts"].get(expert, state["layer"])
        return fake_quant(outputs, self.spec, params=params)

    def storage(self, top_k, hidden, dtype):
        return Artifact((TensorStorage("token.expert_outputs.codes", (top_k, hidden), bits=self.bits, kind="codes"),))


def make(bits: int = 8) -> ChannelQuant:
    return ChannelQuant(bits)
