"""G1.0′ (learned gauge → quantize → inverse, against a random orthogonal null) and R2 (SRHT vs Haar rotation, same
quantizer): round trips of expert weights through a quantizer, in float64.

Errors are relative Frobenius errors ‖W − W'‖_F / ‖W‖_F pooled over the matrices of a cell: the error of the stacked
matrices, so a large expert weighs more than a small one (`measure.frobenius_relative_error` on the stack).

G1.0′: per expert matrix a gauge M (cond ≤ κ) is learned by `measure.learn_gauge` (Adam on the straight-through
round-trip loss, SVD projection after each step) and the round trip M⁻¹ q(M W) is scored; the null is the same round
trip with a Haar-random orthogonal M, one per seed (τ = the best of them); plain quantization (M = I) is the
reference of g1_0's random-basis trap (rotation alone should already help, which depends on the weights: on weights
already on the grid plain quantization is exact). The gate is the ratio to the null. g1_0_control's traps hold for any
weights: with an orthogonal M the round trip's error is the quantization error of M W (Frobenius norms are
orthogonally invariant, `orthogonal_invariance_gap`), and a signed permutation M keeps weights on the grid on it, so
their round trip is exact while a Haar rotation moves them off it (`permutation_round_trip`). `GaugeStudy` serves
both rung modules.

R2: per layer and weight type, every expert goes through the right-side round trip q(W R) Rᵀ with R an SRHT
(Hadamard·Rademacher, fast transform) or a Haar-random orthogonal matrix, one per seed, same quantizer. The gate is
the percentage-point difference of the mean relative errors, 100·(mean err_Haar − mean err_SRHT) (> 0: SRHT
better). Bytes: the quantized experts (packed codes, scales) plus one SRHT sign vector per layer and weight type,
against the dense experts at their stored dtype (`measure.storage`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pytest_ladder.measure.errors import frobenius_relative_error
from pytest_ladder.measure.gauge import learn_gauge, round_trip
from pytest_ladder.measure.hadamard import SRHT, srht
from pytest_ladder.measure.orthogonal import random_orthogonal
from pytest_ladder.measure.quant import QuantSpec, fake_quant
from pytest_ladder.measure.rng import cpu_generator
from pytest_ladder.measure.storage import Artifact, DtypeLike, combine, dense_artifact, global_delta_bytes
from pytest_ladder.measure.workspace import Workspace, nbytes, to_f64

F64 = torch.float64


def pooled_error(ws: torch.Tensor, approx: torch.Tensor) -> float:
    """‖W − W'‖_F / ‖W‖_F of the stacked matrices (k, m, n): the token-free analogue of a pooled error."""
    n = ws.shape[-1]
    return float(frobenius_relative_error(ws.reshape(-1, n), approx.reshape(-1, n)))


def on_grid(ws: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Each matrix (k, m, n) replaced by its own quantization: weights the quantizer represents exactly."""
    return torch.stack([fake_quant(w, spec) for w in ws.to(F64)])


def gauge_round_trips(ws: torch.Tensor, gauges: Sequence[torch.Tensor], spec: QuantSpec) -> torch.Tensor:
    """M_i⁻¹ q(M_i W_i) for each matrix W_i (k, m, n) and its own gauge (left side, per-matrix quantizer)."""
    return torch.stack([round_trip(w, m, spec) for w, m in zip(ws, gauges)])


def identity_error(ws: torch.Tensor, spec: QuantSpec) -> float:
    """Pooled error of the round trip with M = I (plain quantization through the gauge pipeline)."""
    eye = torch.eye(ws.shape[-2], dtype=F64, device=ws.device)
    return pooled_error(ws, gauge_round_trips(ws.to(F64), [eye] * len(ws), spec))


@dataclass(frozen=True)
class GaugeCell:
    """G1.0′ on one cell: the learned gauges' error, the orthogonal null per seed, plain quantization, the gauges' κ."""

    gauge_error: float
    orthogonal_errors: tuple[float, ...]
    identity_error: float
    kappas: tuple[float, ...]
    final_losses: tuple[float, ...]

    @property
    def orthogonal_best(self) -> float:
        return min(self.orthogonal_errors)

    @property
    def ratio(self) -> float:
        """vs_orthogonal_ratio = err_gauge / err_orth (the best null): ≤ 0.5 means twice as good as a free rotation."""
        return self.gauge_error / self.orthogonal_best

    @property
    def tau_in_ratio_units(self) -> dict:
        """The null's τ floor in units of its best draw: τ = 1, values err_orth(seed) / min err_orth."""
        return {"tau": 1.0, "values": [e / self.orthogonal_best for e in self.orthogonal_errors]}

    @property
    def rotation_gain(self) -> float:
        """Random-basis trap: mean err_orth / err_identity (< 1: rotation alone already reduces the error)."""
        return sum(self.orthogonal_errors) / len(self.orthogonal_errors) / self.identity_error


def gauge_vs_orthogonal(
    ws: torch.Tensor,
    spec: QuantSpec,
    *,
    kappa_max: float,
    steps: int,
    lr: float,
    gauge_seed: int,
    null_seeds: Sequence[int],
) -> GaugeCell:
    """Learn one gauge per matrix (seeded from `gauge_seed`, never a null seed) and score it against the null."""
    if any(gauge_seed + i in null_seeds for i in range(len(ws))):
        raise ValueError("gauge_vs_orthogonal: a gauge seed is one of the null's; the gauge would start at the null")
    ws = ws.to(F64)
    gauges = [learn_gauge(w, spec, kappa_max=kappa_max, seed=gauge_seed + i, steps=steps, lr=lr)
              for i, w in enumerate(ws)]
    gauge_error = pooled_error(ws, gauge_round_trips(ws, [g.matrix for g in gauges], spec))
    m = ws.shape[-2]
    orthogonal = tuple(
        pooled_error(ws, gauge_round_trips(ws, [random_orthogonal(m, seed, device=ws.device)] * len(ws), spec))
        for seed in null_seeds
    )
    return GaugeCell(gauge_error, orthogonal, identity_error(ws, spec), tuple(g.kappa for g in gauges),
                     tuple(g.losses[-1] if g.losses else float("nan") for g in gauges))


def signed_permutation(n: int, seed: int) -> torch.Tensor:
    """A random signed permutation (n, n), float64: orthogonal, entries in {−1, 0, 1}, exact in any arithmetic."""
    generator = cpu_generator(seed)
    signs = torch.randint(0, 2, (n,), generator=generator).to(F64) * 2 - 1
    return torch.eye(n, dtype=F64)[torch.randperm(n, generator=generator)] * signs[:, None]


def orthogonal_invariance_gap(ws: torch.Tensor, spec: QuantSpec, seeds: Sequence[int]) -> float:
    """max over Haar-random Q (one per seed) of |err(Q⁻¹ q(Q W), W) − err(q(Q W), Q W)|, pooled over the stack.

    For orthogonal Q, ‖Q⁻¹ q(QW) − W‖_F = ‖q(QW) − QW‖_F and ‖QW‖_F = ‖W‖_F, so a working round trip reads 0 up to
    float64 rounding whatever W is; a wrong inverse or side does not."""
    ws = ws.to(F64)
    gaps = []
    for seed in seeds:
        q = random_orthogonal(ws.shape[-2], seed, device=ws.device)
        rotated = q @ ws
        direct = pooled_error(rotated, torch.stack([fake_quant(w, spec) for w in rotated]))
        gaps.append(abs(pooled_error(ws, gauge_round_trips(ws, [q] * len(ws), spec)) - direct))
    return max(gaps)


def permutation_round_trip(ws: torch.Tensor, spec: QuantSpec, seeds: Sequence[int]) -> tuple[float, float]:
    """The stack snapped onto the quantizer's grid, through the round trip with a random signed permutation per seed
    (the worst error: exactly 0, as the permutation keeps the grid and the max) and with a Haar rotation per seed (the
    best error: > 0, the rotation moves the weights off the grid unless they are all zero)."""
    grid = on_grid(ws, spec)
    m = grid.shape[-2]
    permuted = max(pooled_error(grid, gauge_round_trips(grid, [signed_permutation(m, s)] * len(grid), spec))
                   for s in seeds)
    rotated = min(pooled_error(grid, gauge_round_trips(grid, [random_orthogonal(m, s, device=grid.device)] * len(grid),
                                                       spec)) for s in seeds)
    return permuted, rotated


class GaugeStudy:
    """G1.0′ on one checkpoint (models.checkpoint weights) with a prereg's params: each cell's sampled experts and
    learned gauges, computed once. `n_sampled` experts per cell, evenly spaced; `gauge_seed` seeds the gauges,
    `null_seeds` the orthogonal null."""

    def __init__(self, weights: Any, params: Mapping[str, Any], *, n_sampled: int, gauge_seed: int,
                 null_seeds: Sequence[int]) -> None:
        self.weights, self.params, self.n_sampled = weights, params, n_sampled
        self.gauge_seed, self.null_seeds = gauge_seed, tuple(null_seeds)
        self._cells: dict[tuple[int, str, int], GaugeCell] = {}

    def spec(self, bits: int) -> QuantSpec:
        p = self.params
        return QuantSpec(bits=int(bits), symmetric=p["symmetric"], granularity=p["granularity"],
                         scale_dtype=p["scale_dtype"])

    def picked(self) -> list[int]:
        e = self.weights.n_experts
        return [i * e // self.n_sampled for i in range(self.n_sampled)]

    def experts(self, layer: int, weight: str) -> torch.Tensor:
        """The cell's sampled expert matrices (k, out, in)."""
        return torch.stack([self.weights.expert(layer, i)[weight] for i in self.picked()])

    def cell(self, layer: int, weight: str, bits: int) -> GaugeCell:
        key = (layer, weight, int(bits))
        if key not in self._cells:
            p = self.params
            self._cells[key] = gauge_vs_orthogonal(self.experts(layer, weight), self.spec(bits),
                                                   kappa_max=p["kappa_max"], steps=p["steps"], lr=p["lr"],
                                                   gauge_seed=self.gauge_seed, null_seeds=self.null_seeds)
        return self._cells[key]

    def trivial_pass(self, layer: int, weight: str, bits: int) -> float:
        """The cell's experts snapped onto the grid through the round trip with M = I: exactly 0."""
        spec = self.spec(bits)
        return identity_error(on_grid(self.experts(layer, weight), spec), spec)


# --------------------------------------------------------------------------------------------------- R2 --------


def row_spec(bits: int, in_features: int, *, scale_dtype: DtypeLike = torch.float16) -> QuantSpec:
    """Symmetric INT-b with one scale per output row of each matrix (groups of one whole row)."""
    return QuantSpec(bits=bits, granularity="group", group_size=in_features, scale_dtype=scale_dtype)


@dataclass(frozen=True)
class RotationComparison:
    """R2 on one cell: pooled round-trip errors with an SRHT and with a Haar rotation per seed, and without rotation."""

    srht_errors: tuple[float, ...]
    haar_errors: tuple[float, ...]
    identity_error: float

    @property
    def srht_mean(self) -> float:
        return sum(self.srht_errors) / len(self.srht_errors)

    @property
    def haar_mean(self) -> float:
        return sum(self.haar_errors) / len(self.haar_errors)

    @property
    def pp(self) -> float:
        """Percentage points by which SRHT's mean error is below Haar's: 100·(mean err_Haar − mean err_SRHT)."""
        return 100.0 * (self.haar_mean - self.srht_mean)


def rotation_error(ws: torch.Tensor, rotation: torch.Tensor | SRHT, spec: QuantSpec, *,
                   workspace: Workspace | None = None,
                   prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Pooled error of the right-side round trip q(W R) Rᵀ of every matrix (k, out, in) with one rotation R (on the
    device it is computed on), each matrix first mapped by `prepare` (float64) if given.

    Under a bounded `workspace` the matrices go to its device a chunk at a time (W may wait on the CPU) and the
    pooled error is sqrt(Σ‖W − W′‖² / Σ‖W‖²) over the chunks (the unchunked value to rounding; R2 on OLMoE-1B-7B
    held ~5 GB of float64 copies of a whole stack)."""
    if workspace is None or not workspace.bounded:
        ws = ws.to(F64)
        ws = ws if prepare is None else prepare(ws)
        return pooled_error(ws, round_trip(ws, rotation, spec, side="right"))
    sq_error = torch.zeros((), dtype=F64, device=workspace.device)
    sq_norm = torch.zeros((), dtype=F64, device=workspace.device)
    for span in workspace.spans(ws.shape[0], 6 * nbytes(tuple(ws.shape[1:]))):
        w = to_f64(ws[span], workspace.device)
        w = w if prepare is None else prepare(w)
        sq_error += (w - round_trip(w, rotation, spec, side="right")).square().sum()
        sq_norm += w.square().sum()
        del w
    return float((sq_error / sq_norm).sqrt())


def srht_vs_haar(ws: torch.Tensor, spec: QuantSpec, *, srht_seeds: Sequence[int], haar_seeds: Sequence[int],
                 workspace: Workspace | None = None) -> RotationComparison:
    """R2's comparison on one stack of experts (k, out, in): one rotation per seed, shared by the matrices (made on
    the workspace's device, where the round trips run)."""
    n, device = ws.shape[-1], ws.device if workspace is None else workspace.device
    return RotationComparison(
        srht_errors=tuple(rotation_error(ws, srht(n, s, device=device), spec, workspace=workspace)
                          for s in srht_seeds),
        haar_errors=tuple(rotation_error(ws, random_orthogonal(n, s, device=device), spec, workspace=workspace)
                          for s in haar_seeds),
        identity_error=rotation_error(ws, torch.eye(n, dtype=F64, device=device), spec, workspace=workspace),
    )


def rotated_experts_artifact(name: str, shape: Sequence[int], bits: int, *, scale_dtype: DtypeLike,
                             rotations: int = 1) -> Artifact:
    """What one stack of experts (E, out, in) stores after R2's scheme: packed INT-b codes, one scale per row, and
    `rotations` SRHT sign vectors of length `in`."""
    e, out, inp = (int(s) for s in shape)
    codes = row_spec(bits, inp, scale_dtype=scale_dtype).artifact(name, (e, out, inp))
    signs = [srht(inp, 0).artifact(f"{name}.srht{i}") for i in range(rotations)]
    return combine([codes, *signs])


def expert_bytes_delta(stacks: Mapping[str, tuple[torch.dtype, Sequence[int]]], bits: int, *,
                       scale_dtype: DtypeLike) -> tuple[int, Artifact, Artifact]:
    """global_delta_bytes of every expert stack {name: (stored dtype, (E, out, in))} quantized as R2 does, against the
    dense stacks; returns (delta, compressed artifact, dense artifact)."""
    compressed = combine(rotated_experts_artifact(name, shape, bits, scale_dtype=scale_dtype)
                         for name, (_, shape) in stacks.items())
    dense = combine(dense_artifact(name, shape, dtype) for name, (dtype, shape) in stacks.items())
    return global_delta_bytes(compressed, dense), compressed, dense
