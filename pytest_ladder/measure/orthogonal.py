"""Haar-random orthogonal matrices: QR of a Gaussian with the signs fixed by diag(R) (protocol §4, random basis).

Without the sign fix, QR's sign convention biases the distribution; multiplying each column of Q by sign(R_ii)
makes Q exactly Haar-distributed (Mezzadri 2007). The Gaussian is drawn in float64 on the CPU from a seed (see `rng`);
the QR runs on the CPU and Q is moved to the requested device and dtype (the same bits on every device), or, with
`qr_on_device`, the QR of a large draw runs on the requested device (the same Q to float64 rounding, at a GPU's speed:
G10-scan's random readouts are 10240 × 2048 on OLMoE-1B-7B).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from pytest_ladder.measure.rng import Seed, cpu_generator


def random_orthonormal_columns(
    n: int,
    k: int,
    seed: Seed,
    *,
    batch: Sequence[int] = (),
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    qr_on_device: bool = False,
) -> torch.Tensor:
    """(…batch, n, k) with orthonormal columns spanning a Haar-random k-dim subspace of R^n (k ≤ n); `qr_on_device`
    factors the CPU-drawn Gaussian where the result goes (not cached)."""
    if not 0 <= k <= n:
        raise ValueError(f"random_orthonormal_columns: need 0 <= k <= n, got n={n}, k={k}")
    if qr_on_device and device is not None and torch.device(device).type != "cpu":
        return _sign_fixed_q(_gaussian(n, k, seed, tuple(batch)).to(device)).to(dtype)
    if isinstance(seed, int) and not isinstance(seed, bool):
        return _haar_columns(n, k, seed, tuple(batch)).to(device=device, dtype=dtype, copy=True)
    return _haar_columns.__wrapped__(n, k, seed, tuple(batch)).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _haar_columns(n: int, k: int, seed: Seed, batch: tuple[int, ...]) -> torch.Tensor:
    """The CPU float64 draw behind random_orthonormal_columns. The τ baselines of every cell of a rung reuse the same
    integer seeds, so a session draws each (n, k, seed) once (callers get copies); a generator is never cached."""
    return _sign_fixed_q(_gaussian(n, k, seed, batch))


def _gaussian(n: int, k: int, seed: Seed, batch: tuple[int, ...]) -> torch.Tensor:
    """The seeded float64 Gaussian (…batch, n, k), drawn on the CPU: the same numbers whichever device factors it."""
    return torch.randn(*batch, n, k, generator=cpu_generator(seed), dtype=torch.float64)


def _sign_fixed_q(gaussian: torch.Tensor) -> torch.Tensor:
    """Q·diag(sign(diag R)) of the reduced QR of `gaussian`, where it is."""
    q, r = torch.linalg.qr(gaussian, mode="reduced")
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return q * signs.unsqueeze(-2)


def random_orthogonal(
    n: int,
    seed: Seed,
    *,
    batch: Sequence[int] = (),
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A Haar-random orthogonal (…batch, n, n) matrix: Q·diag(sign(diag R)) from the QR of a Gaussian."""
    return random_orthonormal_columns(n, n, seed, batch=batch, dtype=dtype, device=device)
