"""Singular-value spectra and what the rungs read off them: effective rank, energy at rank r, residual at a budget.

Singular values come from a batched SVD or from a float64 eigendecomposition of the smaller Gram matrix (σ² are
the eigenvalues of W Wᵀ or Wᵀ W); both return float64, descending, batched over leading dims. When only the energy
of the top few directions is wanted, `top_energy_from_gram` finds it by block subspace iteration on the Gram, without
a full decomposition.

Effective rank (definition used throughout the ladder): r_eff = exp(H(p)) with p_i = σ_i² / Σ_j σ_j², the
exponential of the Shannon entropy (nats) of the normalized energy spectrum. It is the same quantity the energy
figures (energy at rank r, residual at the budget rank, Eckart–Young floor) are stated in, and for a Gram or
covariance matrix the eigenvalues are those energies directly. r_eff = k for k equal singular values and 1 for a
rank-one matrix; a zero matrix has r_eff = 0. (Roy & Vetterli's variant normalizes σ instead of σ²; it is not used.)
"""

from __future__ import annotations

import torch

from pytest_ladder.measure.rng import cpu_generator
from pytest_ladder.measure.workspace import to_f64

F64 = torch.float64


def singular_values(w: torch.Tensor, *, method: str = "svd") -> torch.Tensor:
    """σ of W (..., m, n) -> (..., min(m, n)), float64, descending; method "svd" or "gram" (eigh of the smaller Gram)."""
    w = w.to(F64)
    if method == "svd":
        return torch.linalg.svdvals(w)
    if method == "gram":
        m, n = w.shape[-2:]
        small = w @ w.mT if m <= n else w.mT @ w
        return singular_values_from_gram(small)
    raise ValueError(f"singular_values: unknown method {method!r}; use 'svd' or 'gram'")


def singular_values_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """σ = sqrt(eig(G)) of a PSD Gram matrix G = A Aᵀ (..., n, n), float64 eigh, descending (negative rounding -> 0)."""
    eigenvalues = torch.linalg.eigvalsh(gram.to(F64))
    return eigenvalues.flip(-1).clamp_min(0).sqrt()


def top_energy_from_gram(
    gram: torch.Tensor, rank: int, *, tol: float = 1e-10, max_iter: int = 300, check_every: int = 4, seed: int = 0
) -> torch.Tensor:
    """Σ_{i≤r} λ_i(G) = Σ_{i≤r} σ_i² of every PSD Gram G = W Wᵀ (..., n, n), float64 (..., ): the top-r energy.

    Block subspace iteration Q ← orth(G Q) with b = min(n, 2r + 8) columns from one seeded Gaussian start, read off
    by Rayleigh–Ritz (the top r eigenvalues of Qᵀ G Q: lower bounds that rise to the answer) at checks spaced
    `check_every` steps apart and then half the steps taken so far (4, 8, 12, 18, 27, 40, …), until the relative
    change between two checks is at most `tol` (a longer gap only makes the test stricter). The b×b eigensolver is
    the costly step (a batch of small ones runs one matrix at a time; on an H200 a thousand 72×72 ones take 0.5 s,
    on the CPU 0.16 s: benchmarks/linalg_costs.py), hence the sparse checks, solved on the CPU. Matrices still
    moving after `max_iter` steps,
    and every matrix when b = n (nothing to save), get the exact eigendecomposition. Orthonormalisation is shifted
    Cholesky QR3 (matrix products and batched b×b Cholesky factors, fast on a GPU); G Q is shifted by 1e-8·tr(G)/n·Q
    (same eigenvectors, so the same answer) to keep the iterates of a rank-deficient G well conditioned.
    """
    _check_rank(rank, gram.shape[-1])
    g = gram.to(F64)
    n, batch = g.shape[-1], g.shape[:-2]
    if rank == 0:
        return torch.zeros(batch, dtype=F64, device=g.device)
    if rank == n:
        return g.diagonal(dim1=-2, dim2=-1).sum(-1)  # Σ λ = tr G, exactly the whole energy
    g = g.reshape(-1, n, n)
    width = min(n, 2 * rank + 8)
    if width == n:
        return _exact_top_energy(g, rank).reshape(batch)
    shift = (1e-8 * g.diagonal(dim1=-2, dim2=-1).sum(-1) / n)[:, None, None]
    start = torch.randn(n, width, generator=cpu_generator(seed), dtype=F64).to(g.device)
    q = _orthonormal_columns(g @ start + shift * start)
    found = torch.full((g.shape[0],), float("nan"), dtype=F64, device=g.device)
    active = torch.arange(g.shape[0], device=g.device)
    previous, check = None, check_every
    for step in range(1, max_iter + 1):
        q = _orthonormal_columns(g @ q + shift * q)
        if step < check and step != max_iter:
            continue
        check = step + max(check_every, step // 2)
        ritz = _small_eigvalsh(q.mT @ g @ q)[..., width - rank:].sum(-1)
        if previous is not None:
            done = (ritz - previous).abs() <= tol * ritz.abs()
            found[active[done]] = ritz[done]
            keep = ~done
            active, g, q, shift, ritz = active[keep], g[keep], q[keep], shift[keep], ritz[keep]
            if active.numel() == 0:
                break
        previous = ritz
    if active.numel():
        found[active] = _exact_top_energy(g, rank)
    return found.reshape(batch)


def _small_eigvalsh(m: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a batch of small symmetric matrices, solved on the CPU (a GPU runs them one at a time, about 3x
    slower than the CPU at 72 × 72) and returned on m's device."""
    if m.device.type == "cpu":
        return torch.linalg.eigvalsh(m)
    return torch.linalg.eigvalsh(m.to("cpu")).to(m.device)


def _exact_top_energy(gram: torch.Tensor, rank: int) -> torch.Tensor:
    """Σ of the top `rank` eigenvalues of PSD Grams (B, n, n) by a full float64 eigendecomposition."""
    return torch.linalg.eigvalsh(gram).flip(-1)[..., :rank].clamp_min(0).sum(-1)


def _orthonormal_columns(y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the columns of y (B, n, b): shifted Cholesky QR, then Cholesky QR twice (Fukaya et al.
    2020: y ← y R⁻¹ with RᵀR = yᵀy (+ a shift of order u·‖y‖² on the first pass, so an ill-conditioned y still has a
    factor)); Householder QR for a batch where a factor still does not exist."""
    n, b = y.shape[-2:]
    eye = torch.eye(b, dtype=y.dtype, device=y.device)
    for shifted in (True, False, False):
        c = y.mT @ y
        if shifted:
            size = y.square().sum((-2, -1))[:, None, None]
            c = c + (11 * (n * b + b * (b + 1)) * torch.finfo(y.dtype).eps) * size * eye
        factor, info = torch.linalg.cholesky_ex(c, upper=True)
        if bool((info != 0).any()):
            return torch.linalg.qr(y).Q
        y = y @ torch.linalg.solve_triangular(factor, eye, upper=True)  # y R⁻¹ as one matrix product
    return y


def whitened_singular_values(w: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """σ of W S with S Sᵀ = G: the activation-weighted spectrum (σ² = eig(W G Wᵀ)), float64, descending."""
    w = w.to(F64)
    return singular_values_from_gram(w @ to_f64(gram, w.device) @ w.mT)


def energy_fractions(sv: torch.Tensor) -> torch.Tensor:
    """p_i = σ_i² / Σ σ_j² along the last dim (zeros for a zero spectrum)."""
    energy = sv.to(F64).square()
    total = energy.sum(-1, keepdim=True)
    return torch.where(total > 0, energy / total, torch.zeros_like(energy))


def effective_rank(sv: torch.Tensor) -> torch.Tensor:
    """r_eff = exp(−Σ p_i ln p_i), p_i = σ_i² / Σ σ_j² (module docstring), batched over leading dims; 0 for σ = 0."""
    p = energy_fractions(sv)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    return torch.where(p.sum(-1) > 0, entropy.exp(), torch.zeros_like(entropy))


def energy_at_rank(sv: torch.Tensor, rank: int) -> torch.Tensor:
    """Fraction of energy captured by the top `rank` singular values: Σ_{i≤r} σ_i² / Σ σ_i²."""
    _check_rank(rank, sv.shape[-1])
    return energy_fractions(sv)[..., :rank].sum(-1)


def residual_energy(sv: torch.Tensor, rank: int) -> torch.Tensor:
    """Energy outside the top `rank` directions: Σ_{i>r} σ_i² / Σ σ_i² (the Eckart–Young residual at the budget)."""
    _check_rank(rank, sv.shape[-1])
    return energy_fractions(sv)[..., rank:].sum(-1)


def rank_for_energy(sv: torch.Tensor, fraction: float) -> torch.Tensor:
    """Smallest r with Σ_{i≤r} σ_i² / Σ σ_i² ≥ fraction (int64, batched; 0 for a zero spectrum)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"rank_for_energy: fraction must lie in [0, 1], got {fraction}")
    p = energy_fractions(sv)
    cumulative = p.cumsum(-1)
    # tolerance for the cumulative sum's rounding, so that fraction=1.0 needs exactly the nonzero count
    reached = cumulative >= fraction - 1e-12
    count = (~reached).sum(-1) + 1
    count = count.clamp_max(sv.shape[-1])
    return torch.where(p.sum(-1) > 0, count, torch.zeros_like(count))


def directions_after_deflation(sv: torch.Tensor, n_deflate: int, fraction: float) -> torch.Tensor:
    """G5: directions needed to reach `fraction` of the energy left after removing the top `n_deflate` directions."""
    _check_rank(n_deflate, sv.shape[-1])
    return rank_for_energy(sv[..., n_deflate:], fraction)


def _check_rank(rank: int, limit: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= limit:
        raise ValueError(f"rank must be an int in 0..{limit} (the number of singular values), got {rank!r}")
