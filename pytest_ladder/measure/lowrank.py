"""Rank-r approximations: plain SVD truncation, activation-aware truncation, input bases and their projections.

Activation-aware truncation minimizes ‖(W − W')X‖_F over rank-r W', i.e. ‖(W − W')S‖_F with S Sᵀ = G = X Xᵀ. The
whitened problem's optimum is trunc_r(W S) = U_r U_rᵀ W S, with U_r the top-r left singular vectors of W S, so the
minimizer is W' = U_r U_rᵀ W: a projection of W's output space. This form never inverts S, so it is exact for a
singular G as well (no ridge is needed; a Cholesky-whitened solution trunc_r(W S) S⁻¹ equals it where S is
invertible). S comes from a float64 eigendecomposition of G (negative rounding clamped to 0).

Input bases (G4): U (in, r) holds the top-r eigenvectors of G; the compressed weight keeps W U Uᵀ and the
off-projection trap uses the complement W (I − U Uᵀ). All results are float64 on the input's device; cast to the
storage dtype when deploying and describe the stored factors with `LowRank.artifact`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pytest_ladder.measure.orthogonal import random_orthonormal_columns
from pytest_ladder.measure.rng import Seed
from pytest_ladder.measure.storage import Artifact, DtypeLike, TensorStorage
from pytest_ladder.measure.workspace import to_f64

F64 = torch.float64


@dataclass(frozen=True)
class LowRank:
    """W ≈ A B with A (..., out, r) and B (..., r, in), float64."""

    a: torch.Tensor
    b: torch.Tensor

    @property
    def rank(self) -> int:
        return self.a.shape[-1]

    def reconstruct(self) -> torch.Tensor:
        return self.a @ self.b

    def artifact(self, name: str, dtype: DtypeLike) -> Artifact:
        """Storage of both factors at `dtype` (batch dims included in the shapes)."""
        return Artifact((
            TensorStorage(f"{name}.a", tuple(self.a.shape), dtype=dtype, kind="factor"),
            TensorStorage(f"{name}.b", tuple(self.b.shape), dtype=dtype, kind="factor"),
        ))


def svd_lowrank(w: torch.Tensor, rank: int) -> LowRank:
    """Best rank-r approximation in Frobenius norm (Eckart–Young): A = U_r Σ_r, B = V_rᵀ, batched, float64."""
    _check_rank(rank, w)
    u, s, vh = torch.linalg.svd(w.to(F64), full_matrices=False)
    return LowRank(a=u[..., :rank] * s[..., None, :rank], b=vh[..., :rank, :])


def truncate(w: torch.Tensor, rank: int) -> torch.Tensor:
    """trunc_r(W): the rank-r SVD truncation of W (..., out, in), float64."""
    return svd_lowrank(w, rank).reconstruct()


def gram_sqrt(gram: torch.Tensor) -> torch.Tensor:
    """S with S Sᵀ = G: V diag(sqrt(max(λ, 0))) from the float64 eigendecomposition G = V diag(λ) Vᵀ."""
    eigenvalues, eigenvectors = torch.linalg.eigh(gram.to(F64))
    return eigenvectors * eigenvalues.clamp_min(0).sqrt().unsqueeze(-2)


def activation_lowrank(w: torch.Tensor, gram: torch.Tensor, rank: int) -> LowRank:
    """argmin over rank-r W' of ‖(W − W')X‖_F: A = U_r, B = U_rᵀ W with U_r the top-r left singular vectors of W S."""
    _check_rank(rank, w)
    w = w.to(F64)
    u, _, _ = torch.linalg.svd(w @ gram_sqrt(gram.to(w.device)), full_matrices=False)
    u_r = u[..., :rank]
    return LowRank(a=u_r, b=u_r.mT @ w)


def input_basis(gram: torch.Tensor, rank: int) -> torch.Tensor:
    """(..., in, r): the top-r eigenvectors of G = X Xᵀ (principal directions of the inputs), float64."""
    if not 0 <= rank <= gram.shape[-1]:
        raise ValueError(f"input_basis: rank must lie in 0..{gram.shape[-1]}, got {rank}")
    _, eigenvectors = torch.linalg.eigh(gram.to(F64))
    return eigenvectors.flip(-1)[..., :rank]


def project_inputs(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """W U Uᵀ: W applied to inputs projected onto the basis U (in, r) with orthonormal columns."""
    w = w.to(F64)
    basis = to_f64(basis, w.device)
    return (w @ basis) @ basis.mT


def project_off(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """W (I − U Uᵀ): W applied to the part of the inputs the basis claims to ignore (off-projection trap)."""
    return w.to(F64) - project_inputs(w, basis)


def random_projection(w: torch.Tensor, rank: int, seed: Seed) -> torch.Tensor:
    """τ baseline at rank r: W Q Qᵀ with Q (in, r) spanning a Haar-random subspace; E‖W − WQQᵀ‖² = (1 − r/n)‖W‖²."""
    _check_rank(rank, w, side="in")
    q = random_orthonormal_columns(w.shape[-1], rank, seed, device=w.device)
    return project_inputs(w, q)


def _check_rank(rank: int, w: torch.Tensor, side: str = "min") -> None:
    if w.dim() < 2:
        raise ValueError(f"expected a matrix (..., out, in), got shape {tuple(w.shape)}")
    limit = w.shape[-1] if side == "in" else min(w.shape[-2:])
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= limit:
        raise ValueError(f"rank must be an int in 0..{limit} for a weight of shape {tuple(w.shape)}, got {rank!r}")
