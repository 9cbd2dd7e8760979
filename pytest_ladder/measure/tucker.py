"""HOSVD / Tucker decomposition of stacked weight tensors (G2: layer × expert × hidden ...).

Mode-k unfolding T_(k) is (n_k, Π_{j≠k} n_j) with mode k first and the other modes in their order. Its Gram matrix
T_(k) T_(k)ᵀ is formed by a float64 tensordot over the other modes (no explicit unfolding copy), and its eigh gives
the mode's singular values and leading factor U_k (n_k, r_k). The core is T ×_1 U_1ᵀ … ×_N U_Nᵀ and the
reconstruction core ×_1 U_1 … ×_N U_N. Because each U_k has orthonormal columns, the reconstruction is an orthogonal
projection of T, so the relative residual energy is ‖T − T̂‖² / ‖T‖² = 1 − ‖core‖² / ‖T‖² (checked against the
explicit reconstruction in the tests); `tucker_residual` uses it and never materializes T̂.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pytest_ladder.measure.spectra import effective_rank, singular_values_from_gram
from pytest_ladder.measure.storage import Artifact, DtypeLike, tucker_artifact

F64 = torch.float64


def unfold(t: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-k unfolding (n_k, Π_{j≠k} n_j)."""
    return t.movedim(mode, 0).reshape(t.shape[mode], -1)


def fold(matrix: torch.Tensor, mode: int, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of `unfold` for a tensor of `shape`."""
    moved = [shape[mode]] + [n for k, n in enumerate(shape) if k != mode]
    return matrix.reshape(moved).movedim(0, mode)


def mode_gram(t: torch.Tensor, mode: int) -> torch.Tensor:
    """T_(k) T_(k)ᵀ (n_k, n_k) in float64."""
    t = t.to(F64)
    others = [k for k in range(t.dim()) if k != mode]
    return torch.tensordot(t, t, dims=(others, others))


def mode_spectra(t: torch.Tensor) -> list[torch.Tensor]:
    """Singular values of every mode unfolding (float64, descending)."""
    return [singular_values_from_gram(mode_gram(t, mode)) for mode in range(t.dim())]


def mode_effective_ranks(t: torch.Tensor) -> list[float]:
    """r_eff of every mode unfolding (spectral entropy, see spectra)."""
    return [float(effective_rank(sv)) for sv in mode_spectra(t)]


def mode_product(t: torch.Tensor, matrix: torch.Tensor, mode: int) -> torch.Tensor:
    """T ×_k M: contracts mode k of T with the columns of M (m, n_k), putting m in place of n_k."""
    return torch.tensordot(matrix, t, dims=([1], [mode])).movedim(0, mode)


@dataclass(frozen=True)
class Tucker:
    """T ≈ core ×_1 U_1 … ×_N U_N, float64; `norm_sq` is ‖T‖² of the decomposed tensor."""

    core: torch.Tensor
    factors: tuple[torch.Tensor, ...]
    norm_sq: float

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(self.core.shape)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(u.shape[0] for u in self.factors)

    def reconstruct(self) -> torch.Tensor:
        out = self.core
        for mode, u in enumerate(self.factors):
            out = mode_product(out, u, mode)
        return out

    def residual_energy(self) -> float:
        """‖T − T̂‖² / ‖T‖² = 1 − ‖core‖² / ‖T‖² (orthogonal projection; module docstring)."""
        if not self.norm_sq > 0:
            raise ValueError("Tucker.residual_energy: the decomposed tensor is zero")
        return max(1.0 - float(self.core.square().sum()) / self.norm_sq, 0.0)

    def artifact(self, name: str, dtype: DtypeLike) -> Artifact:
        return tucker_artifact(name, self.dims, self.ranks, dtype)


def hosvd(t: torch.Tensor, ranks: Sequence[int]) -> Tucker:
    """Truncated HOSVD: U_k = top-r_k eigenvectors of T_(k) T_(k)ᵀ, core = T ×_k U_kᵀ (float64)."""
    if len(ranks) != t.dim():
        raise ValueError(f"hosvd: a tensor of {t.dim()} modes needs {t.dim()} ranks, got {list(ranks)}")
    t = t.to(F64)
    factors = []
    for mode, rank in enumerate(ranks):
        if not 0 < rank <= t.shape[mode]:
            raise ValueError(f"hosvd: rank {rank} of mode {mode} must lie in 1..{t.shape[mode]}")
        _, eigenvectors = torch.linalg.eigh(mode_gram(t, mode))
        factors.append(eigenvectors.flip(-1)[:, :rank])
    core = t
    for mode, u in enumerate(factors):
        core = mode_product(core, u.mT, mode)
    return Tucker(core=core, factors=tuple(factors), norm_sq=float(t.square().sum()))


def tucker_residual(t: torch.Tensor, ranks: Sequence[int]) -> float:
    """G2: relative residual energy of the rank-(r_1..r_N) HOSVD of T at the budget ranks."""
    return hosvd(t, ranks).residual_energy()


def multilinear_rank(t: torch.Tensor, rtol: float = 1e-6) -> tuple[int, ...]:
    """Numerical rank of every mode unfolding: singular values above rtol · σ_max of that mode.

    σ comes from a float64 Gram eigendecomposition, accurate to about 1e-8 · σ_max, hence the default rtol.
    """
    return tuple(int((sv > rtol * sv[0]).sum()) if sv[0] > 0 else 0 for sv in mode_spectra(t))
