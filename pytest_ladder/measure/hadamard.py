"""Fast Walsh–Hadamard transform and the randomized Hadamard rotation (SRHT = H·D) used by R1/R2.

`fwht` applies the orthonormal Sylvester–Hadamard matrix H_n / sqrt(n) (H_2n = [[H_n, H_n], [H_n, −H_n]]) along one
dim in O(n log n): log2(n) vectorized butterfly steps over any batch. Sizes that are not powers of two are handled
by a block-diagonal decomposition: n is split into its binary expansion (1536 = 1024 + 512, 1408 = 1024 + 256 + 128)
and each consecutive block gets its own orthonormal Hadamard transform. A block-diagonal matrix of orthogonal blocks
is orthogonal and symmetric, so the transform is its own inverse; mixing happens within blocks only (the Rademacher
signs still randomize every coordinate). For n a power of two this is the plain Walsh–Hadamard transform.

SRHT: R = H·D with D = diag(ε), ε Rademacher (±1) from a seed; R x = H(D x), Rᵀ y = D(H y). Storage: n sign bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pytest_ladder.measure.rng import Seed, cpu_generator
from pytest_ladder.measure.storage import Artifact, TensorStorage


def power_of_two_blocks(n: int) -> list[int]:
    """The binary expansion of n as block sizes, largest first (1536 -> [1024, 512])."""
    if n <= 0:
        raise ValueError(f"power_of_two_blocks: n must be positive, got {n}")
    return [1 << bit for bit in range(n.bit_length() - 1, -1, -1) if n >> bit & 1]


def fwht(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Orthonormal Walsh–Hadamard transform (Sylvester order) of x along `dim`, whose size must be a power of two."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht: size {n} along dim {dim} is not a power of two; use hadamard_transform")
    batch = x.shape[:-1]
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        pairs = y.reshape(-1, n // (2 * h), 2, h)
        a, b = pairs[:, :, 0, :], pairs[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2).reshape(-1, n)
        h *= 2
    y = y * (n**-0.5)
    return y.reshape(*batch, n).movedim(-1, dim)


def hadamard_transform(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Block-diagonal orthonormal Hadamard transform for any size along `dim` (see module docstring); self-inverse."""
    n = x.shape[dim]
    blocks = power_of_two_blocks(n)
    if len(blocks) == 1:
        return fwht(x, dim)
    return torch.cat([fwht(part, dim) for part in torch.split(x, blocks, dim=dim)], dim=dim)


def rademacher(n: int, seed: Seed, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """n independent ±1 signs from a seed (drawn on the CPU)."""
    bits = torch.randint(0, 2, (n,), generator=cpu_generator(seed))
    return (bits * 2 - 1).to(device=device, dtype=dtype)


@dataclass(frozen=True)
class SRHT:
    """The randomized Hadamard rotation R = H·diag(signs) on vectors of size n = len(signs)."""

    signs: torch.Tensor

    @property
    def n(self) -> int:
        return self.signs.shape[0]

    def _signs_along(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if x.shape[dim] != self.n:
            raise ValueError(f"SRHT of size {self.n} applied along a dim of size {x.shape[dim]}")
        shape = [1] * x.dim()
        shape[dim] = self.n
        return self.signs.to(device=x.device, dtype=x.dtype).reshape(shape)

    def apply(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """R x = H(D x) along `dim`."""
        return hadamard_transform(x * self._signs_along(x, dim), dim)

    def inverse(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Rᵀ y = D(H y) along `dim` (R is orthogonal, H symmetric)."""
        return hadamard_transform(x, dim) * self._signs_along(x, dim)

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The dense (n, n) matrix R (column j = R e_j), for small n and checks."""
        eye = torch.eye(self.n, dtype=dtype, device=self.signs.device)
        return self.apply(eye, dim=0)

    def artifact(self, name: str) -> Artifact:
        """What the rotation stores: n sign bits."""
        return Artifact((TensorStorage(f"{name}.signs", (self.n,), bits=1, kind="signs"),))


def srht(n: int, seed: Seed, *, device=None) -> SRHT:
    """An SRHT of size n with Rademacher signs from `seed`."""
    return SRHT(signs=rademacher(n, seed, device=device))
