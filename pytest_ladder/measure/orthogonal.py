"""Haar-random orthogonal matrices: QR of a Gaussian with the signs fixed by diag(R) (protocol §4, random basis).

Without the sign fix, QR's sign convention biases the distribution; multiplying each column of Q by sign(R_ii)
makes Q exactly Haar-distributed (Mezzadri 2007). Drawn in float64 on the CPU from a seed (see `rng`), then moved
to the requested device and dtype.
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
) -> torch.Tensor:
    """(…batch, n, k) with orthonormal columns spanning a Haar-random k-dim subspace of R^n (k ≤ n)."""
    if not 0 <= k <= n:
        raise ValueError(f"random_orthonormal_columns: need 0 <= k <= n, got n={n}, k={k}")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return _haar_columns(n, k, seed, tuple(batch)).to(device=device, dtype=dtype, copy=True)
    return _haar_columns.__wrapped__(n, k, seed, tuple(batch)).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _haar_columns(n: int, k: int, seed: Seed, batch: tuple[int, ...]) -> torch.Tensor:
    """The CPU float64 draw behind random_orthonormal_columns. The τ baselines of every cell of a rung reuse the same
    integer seeds, so a session draws each (n, k, seed) once (callers get copies); a generator is never cached."""
    gaussian = torch.randn(*batch, n, k, generator=cpu_generator(seed), dtype=torch.float64)
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
