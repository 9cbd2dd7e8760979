"""Learned gauge with bounded condition number (G1.0′): does W → MW → quantize → M⁻¹(·) beat quantizing W?

M (out, out) acts on W's output side. Training: Adam on the round-trip loss ‖M⁻¹ q(M W) − W‖²_F / ‖W‖²_F with a
straight-through estimator for the quantizer q (forward: the real round trip; backward: identity through q). After
every step M is projected by SVD: its singular values are clamped into [σ_max/κ, σ_max] and then divided by σ_max
(on a GPU through the eigendecomposition of MᵀM in float64, see bound_condition), so cond(M) ≤ κ always holds and
the scale of M (to which the round trip is invariant up to scale rounding) cannot drift. Deterministic from the
seed: the seed draws the initial M (a Haar-random orthogonal matrix, or identity). The null the gate compares against
is `round_trip_error(w, random_orthogonal(n, seed), spec)` (draw it from a seed other than the gauge's, or the gauge
starts at the null); R1/R2 use the same round trip with an SRHT (fast transform) or a Haar rotation, on either side
of W.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pytest_ladder.measure.errors import frobenius_relative_error
from pytest_ladder.measure.hadamard import SRHT
from pytest_ladder.measure.orthogonal import random_orthogonal
from pytest_ladder.measure.quant import QuantSpec, fake_quant, fake_quant_ste
from pytest_ladder.measure.workspace import to_f64

F64 = torch.float64


@dataclass(frozen=True)
class Gauge:
    """A learned gauge: the matrix, its condition number, the round-trip error per step, and its seed."""

    matrix: torch.Tensor
    kappa: float
    losses: tuple[float, ...]
    seed: int


def bound_condition(m: torch.Tensor, kappa_max: float, *, method: str | None = None) -> torch.Tensor:
    """SVD projection: σ_i -> clamp(σ_i, σ_max/κ, σ_max) / σ_max, so cond ≤ κ and σ_max = 1.

    method "svd": from M = U S Vᵀ (torch.linalg.svd). "gram": the same projection from the eigendecomposition of the
    float64 Gram MᵀM = V S² Vᵀ, as M V diag(clamp(s)/s) Vᵀ / σ_max (a function of MᵀM, so it does not depend on how
    eigenvectors of equal σ are chosen); where cond(M) > 1e3, beyond which the Gram's rounding (ε · cond²) would
    reach 1e-10 of the smallest σ, it falls back to the SVD. None: "gram" on a GPU, where a square SVD costs several
    times an eigh (`benchmarks/linalg_costs.py`), "svd" elsewhere."""
    if not kappa_max >= 1.0:
        raise ValueError(f"bound_condition: kappa_max must be >= 1, got {kappa_max}")
    method = method or ("gram" if m.is_cuda else "svd")
    if method not in ("svd", "gram"):
        raise ValueError(f"bound_condition: method must be 'svd' or 'gram', got {method!r}")
    if method == "gram":
        w = m.to(F64)
        eigenvalues, v = torch.linalg.eigh(w.mT @ w)  # ascending
        s = eigenvalues.clamp_min(0).sqrt()
        top = s[..., -1:]
        if not bool((s[..., 0] * 1e3 < top[..., 0]).any()):
            scale = torch.minimum(torch.maximum(s, top / kappa_max), top) / top / s
            return (((w @ v) * scale.unsqueeze(-2)) @ v.mT).to(m.dtype)
    # on a GPU the Jacobi driver is several times faster than the default for these square matrices
    u, s, vh = torch.linalg.svd(m, full_matrices=False, driver="gesvdj" if m.is_cuda else None)
    top = s[..., :1]
    s = torch.minimum(torch.maximum(s, top / kappa_max), top) / top
    return (u * s.unsqueeze(-2)) @ vh


def condition_number(m: torch.Tensor) -> float:
    """σ_max / σ_min of M (float64)."""
    s = torch.linalg.svdvals(m.to(F64))
    return float(s[..., 0] / s[..., -1])


def round_trip(w: torch.Tensor, m: torch.Tensor | SRHT, spec: QuantSpec, *, side: str = "left") -> torch.Tensor:
    """M⁻¹ q(M W) (side "left") or q(W M) M⁻¹ (side "right"), float64.

    An SRHT R is applied by its fast transform to the columns (left: R W) or rows (right: W Rᵀ) of W and undone by Rᵀ.
    """
    w = w.to(F64)
    if side not in ("left", "right"):
        raise ValueError(f"round_trip: side must be 'left' (M W) or 'right' (W M), got {side!r}")
    dim = -2 if side == "left" else -1
    if isinstance(m, SRHT):
        return m.inverse(fake_quant(m.apply(w, dim=dim), spec), dim=dim)
    m = to_f64(m, w.device)
    if side == "left":
        return torch.linalg.solve(m, fake_quant(m @ w, spec))
    return torch.linalg.solve(m, fake_quant(w @ m, spec), left=False)


def round_trip_error(w: torch.Tensor, m: torch.Tensor | SRHT, spec: QuantSpec, *, side: str = "left") -> float:
    """‖M⁻¹ q(M W) − W‖_F / ‖W‖_F (or the right-side round trip); M = identity gives the plain quantization error."""
    return float(frobenius_relative_error(w, round_trip(w, m, spec, side=side)))


def learn_gauge(
    w: torch.Tensor,
    spec: QuantSpec,
    *,
    kappa_max: float,
    seed: int,
    steps: int = 100,
    lr: float = 1e-3,
    init: str = "orthogonal",
    dtype: torch.dtype = torch.float32,
) -> Gauge:
    """Adam steps on the STE round-trip loss with an SVD projection to cond ≤ kappa_max after each step."""
    n = w.shape[-2]
    if init == "orthogonal":
        start = random_orthogonal(n, seed, dtype=dtype, device=w.device)
    elif init == "identity":
        start = torch.eye(n, dtype=dtype, device=w.device)
    else:
        raise ValueError(f"learn_gauge: init must be 'orthogonal' or 'identity', got {init!r}")
    target = w.to(dtype)
    norm = target.square().sum()
    m = torch.nn.Parameter(bound_condition(start, kappa_max))
    optimizer = torch.optim.Adam([m], lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (torch.linalg.solve(m, fake_quant_ste(m @ target, spec)) - target).square().sum() / norm
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            m.copy_(bound_condition(m, kappa_max))
        losses.append(float(loss.detach()) ** 0.5)
    matrix = bound_condition(m.detach().to(F64), kappa_max)  # re-projected in float64: cond ≤ κ to float64 rounding
    return Gauge(matrix=matrix, kappa=condition_number(matrix), losses=tuple(losses), seed=seed)
