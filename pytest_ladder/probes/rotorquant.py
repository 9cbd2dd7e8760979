"""R1, RotorQuant: every routed expert's weights rotated by a randomized Hadamard transform (SRHT) and quantized to
INT2 (or INT1), judged by all five gates. An impact rung: it opens with the GB it takes off the experts line of the
budget table (probes.budget).

Scheme (the same quantizer as R2, probes.quant_weights): per MoE layer and weight type (gate, up, down) one SRHT R
of the matrices' input width; each expert matrix W (out, in) is stored as INT-b codes of W R with one scale per
output row (symmetric; INT1 = sign · mean |·| per row) and rebuilt as W' = q(W R) Rᵀ (measure.gauge.round_trip,
right side). R's Rademacher signs come from `srht_seed` + 3·layer + the weight type's index.

Gates (the protocol's five): bytes of the quantized experts (codes, scales, sign vectors) minus the dense experts at
their stored dtype (budget table line `experts`); activation error of a layer on a task's held-out routed inputs,
pooled over its experts and the three weight types — gate and up read the routed inputs X_e (Gram G_e), down reads
the dense model's intermediate activations act(gate X_e) ⊙ (up X_e) (Gram M_e) — i.e.
sqrt(Σ tr(Δ G Δᵀ) / Σ tr(W G Wᵀ)) over (expert, weight type); task conditioning, the worst task of that error;
route flips and ΔNLL of the model with every MoE layer's experts replaced (full depth), per task. The machinery
(Grams, errors, deploy, trivial pass under a bounded GPU workspace) is probes.expert_weights.ExpertWeightStudy's, which
any compressor runs on; RotorQuantStudy names R1's compressors by key.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pytest_ladder.measure.gauge import round_trip
from pytest_ladder.measure.hadamard import SRHT, srht
from pytest_ladder.measure.quant import QuantSpec, calibrate, fake_quant, random_scales, scale_factors
from pytest_ladder.measure.rng import cpu_generator
from pytest_ladder.measure.workspace import to_f64
from pytest_ladder.probes.expert_weights import (
    F64, IDENTITY, METHOD, PROJECTIONS, ExpertWeightStudy, LayerError, LayerGrams, deploy_updates, expert_stacks,
    layer_error, layer_grams, layer_stacks,
)
from pytest_ladder.probes.quant_weights import expert_bytes_delta, row_spec

__all__ = [  # R1's own names, and the shared machinery (probes.expert_weights) under the names R1 has used
    "RotorQuant", "RotorQuantStudy", "bytes_delta", "IDENTITY", "METHOD", "PROJECTIONS", "ExpertWeightStudy",
    "LayerError", "LayerGrams", "deploy_updates", "expert_stacks", "layer_error", "layer_grams", "layer_stacks",
]


def bytes_delta(stacks: Mapping[str, tuple[torch.dtype, Sequence[int]]], bits: int | None, *,
                scale_dtype: torch.dtype = torch.float16) -> int:
    """Gate 1: bytes of every expert stack quantized as RotorQuant stores it minus the dense stacks (< 0 saves);
    `bits=None` is the uncompressed pipeline (the dense stacks kept as they are): exactly 0."""
    if bits is None:
        return 0
    return expert_bytes_delta(stacks, bits, scale_dtype=scale_dtype)[0]


@dataclass(frozen=True)
class RotorQuant:
    """The compressor: `bits` per weight (2 or 1), per-row scales at `scale_dtype`, SRHT signs from `srht_seed`."""

    bits: int
    srht_seed: int = 0
    scale_dtype: torch.dtype = torch.float16

    def spec(self, in_features: int) -> QuantSpec:
        return row_spec(self.bits, in_features, scale_dtype=self.scale_dtype)

    def rotation(self, layer: int, projection: str, n: int) -> SRHT:
        return srht(n, self.srht_seed + 3 * layer + PROJECTIONS.index(projection))

    def compress(self, layer: int, stacks: Mapping[str, torch.Tensor], experts: range | None = None
                 ) -> dict[str, torch.Tensor]:
        """W' = q(W R) Rᵀ for every expert matrix of one layer ({weight type: (E, out, in)}), float64 (each expert's
        rows on their own: any chunk of `experts` gives its part of the whole layer's result)."""
        out = {}
        for projection, w in stacks.items():
            n = w.shape[-1]
            out[projection] = round_trip(w.to(F64), self.rotation(layer, projection, n), self.spec(n), side="right")
        return out

    def random_scale_factors(self, layer: int, stacks: Mapping[str, torch.Tensor], seed: int, *, low: float = 0.1,
                             high: float = 10.0, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The random-scales trap's factors: one log-uniform factor per row scale of every expert, each weight type's
        drawn for its whole stack at once (weight types in order, one generator seeded by `seed`)."""
        generator = cpu_generator(seed)
        factors = {}
        for projection, w in stacks.items():
            n = w.shape[-1]
            rotated = self.rotation(layer, projection, n).apply(to_f64(w[:1], device or w.device), dim=-1)
            one = calibrate(rotated, self.spec(n)).scale.shape
            factors[projection] = scale_factors((w.shape[0], *one[1:]), generator, low=low, high=high)
        return factors

    def compress_scaled(self, layer: int, stacks: Mapping[str, torch.Tensor], factors: Mapping[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
        """W′ = q(W R) Rᵀ with every row scale times its factor (`stacks` and `factors` of the same experts: any chunk
        gives its part of the whole stack's result), float64."""
        out = {}
        for projection, w in stacks.items():
            n = w.shape[-1]
            rotation, spec = self.rotation(layer, projection, n), self.spec(n)
            rotated = rotation.apply(w.to(F64), dim=-1)
            params = random_scales(calibrate(rotated, spec), 0, factors=factors[projection])
            out[projection] = rotation.inverse(fake_quant(rotated, spec, params), dim=-1)
        return out

    def compress_random_scales(self, layer: int, stacks: Mapping[str, torch.Tensor], seed: int,
                               *, low: float = 0.1, high: float = 10.0) -> dict[str, torch.Tensor]:
        """The random-scales trap on a whole layer: the same rotation and codes range, every row scale times a
        log-uniform factor (`random_scale_factors`; RotorQuantStudy.pieces gives a chunk of experts its part)."""
        return self.compress_scaled(layer, stacks, self.random_scale_factors(layer, stacks, seed, low=low, high=high))


# ------------------------------------------------------------------------------------------------ the study ---


class RotorQuantStudy(ExpertWeightStudy):
    """R1 on one loaded model over the shared routing data (probes.routes.RoutingStudy), each quantity once.

    Compressors are named by keys: METHOD (RotorQuant at its bits), IDENTITY (W' = W), ("bits", b) (another bit
    width), ("random_scales", seed, low, high). Held-out data per task: the routing study's held-out tokens (routes,
    Grams) and the first documents reaching as many tokens (ΔNLL).
    """

    def __init__(self, routing: Any, *, quantizer: RotorQuant) -> None:
        super().__init__(routing, compressors={METHOD: quantizer})
        self.quantizer = quantizer

    def compressor(self, key: tuple) -> Any:
        if key[0] == "bits":
            return RotorQuant(key[1], self.quantizer.srht_seed, self.quantizer.scale_dtype)
        return super().compressor(key)

    def _chunked(self, key: tuple) -> bool:
        if key[0] == "random_scales":
            return self.workspace is not None
        return super()._chunked(key)

    def _compress(self, layer: int, key: tuple, stacks: Mapping[str, torch.Tensor], experts: range
                  ) -> dict[str, torch.Tensor]:
        """("random_scales", seed, low, high) on the whole layer (`RotorQuant.compress_random_scales`); other keys as
        ExpertWeightStudy."""
        if key[0] != "random_scales":
            return super()._compress(layer, key, stacks, experts)
        _, seed, low, high = key
        return self.quantizer.compress_random_scales(layer, stacks, seed, low=low, high=high)

    def pieces(self, layer: int, key: tuple, stacks: Mapping[str, torch.Tensor]
               ) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
        """As ExpertWeightStudy.pieces; ("random_scales", seed, low, high) draws each weight type's factors for its
        whole stack at once and gives every chunk its part of them (the values of one pass over the layer)."""
        if key[0] != "random_scales":
            yield from super().pieces(layer, key, stacks)
            return
        _, seed, low, high = key
        device = self.workspace.device
        factors = self.quantizer.random_scale_factors(layer, stacks, seed, low=low, high=high, device=device)
        for span in self.workspace.spans(next(iter(stacks.values())).shape[0], self.piece_bytes(stacks)):
            yield span, self.quantizer.compress_scaled(layer, {p: w[span].to(device) for p, w in stacks.items()},
                                                       {p: f[span] for p, f in factors.items()})
