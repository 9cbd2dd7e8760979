"""INT4 with one float16 scale per router row (per expert), on every MoE layer's router: the claim of
prereg/router_int4_rows/tau.json (run with `pytest rungs/test_router.py`).

A router compressor is a plain object with two methods (pytest_ladder.compressors.RouterCompressor):
`compress(layer, router)` returns W_r′ for the layer's router (E, H), and `storage(routers)` says, as a
measure.storage.Artifact, what the compressed routers store: here packed 4-bit codes and one float16 scale per row
(QuantSpec.artifact counts them).
"""

from __future__ import annotations

from pytest_ladder.measure.quant import QuantSpec, fake_quant
from pytest_ladder.measure.storage import combine


class RowQuant:
    """Symmetric INT-b, one scale per router row (the whole hidden dim is one group)."""

    def __init__(self, bits: int, scale_dtype: str) -> None:
        self.bits, self.scale_dtype = bits, scale_dtype

    def spec(self, hidden: int) -> QuantSpec:
        return QuantSpec(bits=self.bits, granularity="group", group_size=hidden, scale_dtype=self.scale_dtype)

    def compress(self, layer, router):
        return fake_quant(router, self.spec(router.shape[-1]))

    def storage(self, routers):
        return combine(self.spec(shape[-1]).artifact(name, shape) for name, (dtype, shape) in routers.items())


def make(bits: int = 4, scale_dtype: str = "float16") -> RowQuant:
    return RowQuant(bits, scale_dtype)
