"""INT4 with one scale per group of 64 consecutive input weights, on every routed expert's gate, up and down
projections: the claim of prereg/int4_group64_experts/tau.json (run with `pytest rungs/test_expert_weights.py`).

A compressor is a plain object with two methods (pytest_ladder.compressors.ExpertWeightCompressor):
`compress(layer, stacks, experts)` returns W′ for a layer's expert stacks {"gate": (e, I, H), "up": (e, I, H),
"down": (e, H, I)}, and `storage(stacks)` says, as a measure.storage.Artifact, what the compressed experts store:
here packed 4-bit codes and one float16 scale per group (QuantSpec.artifact counts them).
"""

from __future__ import annotations

from pytest_ladder.measure.quant import QuantSpec, fake_quant
from pytest_ladder.measure.storage import combine


class GroupQuant:
    """Symmetric INT-b, one scale per group of `group_size` consecutive weights along each row's input dim."""

    def __init__(self, bits: int, group_size: int, scale_dtype: str) -> None:
        self.spec = QuantSpec(bits=bits, granularity="group", group_size=group_size, scale_dtype=scale_dtype)

    def compress(self, layer, stacks, experts):
        return {name: fake_quant(w, self.spec) for name, w in stacks.items()}

    def storage(self, stacks):
        return combine(self.spec.artifact(name, shape) for name, (dtype, shape) in stacks.items())


def make(bits: int = 4, group_size: int = 64, scale_dtype: str = "float16") -> GroupQuant:
    return GroupQuant(bits, group_size, scale_dtype)
