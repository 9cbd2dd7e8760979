"""Spectra: SVD and Gram-eigh agree; effective rank and energy on known spectra; orthogonal invariance (G0's kill)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ladder.measure.lowrank import truncate
from pytest_ladder.measure.orthogonal import random_orthogonal
from pytest_ladder.measure.spectra import (
    directions_after_deflation,
    effective_rank,
    energy_at_rank,
    rank_for_energy,
    residual_energy,
    singular_values,
    singular_values_from_gram,
    top_energy_from_gram,
    whitened_singular_values,
)

F64 = torch.float64


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (3, 6, 6)])
def test_svd_and_gram_agree(shape, device):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=F64).to(device)
    by_svd, by_gram = singular_values(w), singular_values(w, method="gram")
    assert by_svd.shape == by_gram.shape == (*shape[:-2], min(shape[-2:]))
    assert torch.allclose(by_svd, by_gram, rtol=1e-10, atol=1e-10)
    assert (by_svd[..., :-1] >= by_svd[..., 1:]).all()


def test_effective_rank_known_spectra():
    assert math.isclose(float(effective_rank(torch.ones(7))), 7.0, rel_tol=1e-12)
    assert float(effective_rank(torch.tensor([3.0, 0.0, 0.0]))) == 1.0
    assert float(effective_rank(torch.zeros(4))) == 0.0
    # energies (σ²) 1/2, 1/4, 1/4: r_eff = exp(H) = 2^(3/2)
    sv = torch.tensor([2.0, math.sqrt(2.0), math.sqrt(2.0)], dtype=F64)
    assert math.isclose(float(effective_rank(sv)), 2**1.5, rel_tol=1e-12)
    batched = effective_rank(torch.stack([torch.ones(4), torch.tensor([1.0, 0, 0, 0])]))
    assert torch.allclose(batched, torch.tensor([4.0, 1.0], dtype=F64))


def test_energy_and_residual_at_rank():
    sv = torch.tensor([3.0, 2.0, 1.0, 1.0, 1.0])  # energies 9, 4, 1, 1, 1 of 16
    assert float(energy_at_rank(sv, 2)) == 13 / 16
    assert float(residual_energy(sv, 2)) == 3 / 16
    assert float(energy_at_rank(sv, 0)) == 0.0 and float(residual_energy(sv, 5)) == 0.0
    assert rank_for_energy(sv, 13 / 16).item() == 2
    assert rank_for_energy(sv, 0.82).item() == 3
    assert rank_for_energy(sv, 1.0).item() == 5
    assert rank_for_energy(torch.tensor([1.0, 0.0]), 1.0).item() == 1
    with pytest.raises(ValueError, match="rank must be"):
        energy_at_rank(sv, 6)


def _gram_with_eigenvalues(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    n = eigenvalues.shape[-1]
    q = random_orthogonal(n, seed, batch=eigenvalues.shape[:-1])
    return q @ torch.diag_embed(eigenvalues.to(F64)) @ q.mT


def test_top_energy_of_a_known_spectrum(device):
    eigenvalues = torch.tensor([[9.0, 4.0, 2.0] + [1.0 / (i + 1) for i in range(37)],
                                [5.0, 5.0, 5.0] + [0.5] * 37], dtype=F64)  # tied top-3 and a flat tail
    gram = _gram_with_eigenvalues(eigenvalues, seed=3).to(device)
    found = top_energy_from_gram(gram, 3)
    assert found.device == gram.device and found.dtype == F64
    assert torch.allclose(found.cpu(), torch.tensor([15.0, 15.0], dtype=F64), rtol=1e-12, atol=0)
    assert float(top_energy_from_gram(gram, 0).abs().max()) == 0.0
    whole = top_energy_from_gram(gram, 40)  # full rank: the trace, every eigenvalue
    assert torch.allclose(whole.cpu(), eigenvalues.sum(-1), rtol=1e-13, atol=0)


@pytest.mark.parametrize("n, rank", [(64, 4), (96, 32), (30, 11)])  # 30: 2r + 8 >= n, the exact fallback
def test_top_energy_matches_the_eigendecomposition(n, rank, device):
    generator = torch.Generator().manual_seed(n)
    decay = torch.arange(1, n + 1, dtype=F64) ** -1.5
    eigenvalues = torch.rand(6, n, generator=generator, dtype=F64) * decay
    gram = _gram_with_eigenvalues(eigenvalues, seed=rank).to(device)
    expected = eigenvalues.sort(-1, descending=True).values[:, :rank].sum(-1)
    assert torch.allclose(top_energy_from_gram(gram, rank).cpu(), expected, rtol=1e-9, atol=0)


def test_top_energy_of_rank_deficient_and_flat_grams():
    w = torch.randn(5, 12, 2, generator=torch.Generator().manual_seed(1), dtype=F64) @ torch.randn(
        2, 30, generator=torch.Generator().manual_seed(2), dtype=F64)  # rank 2 Grams (12, 12)
    gram = w @ w.mT
    assert torch.allclose(top_energy_from_gram(gram, 2), gram.diagonal(dim1=-2, dim2=-1).sum(-1), rtol=1e-12)
    x = torch.randn(4, 40, 200, generator=torch.Generator().manual_seed(3), dtype=F64)
    flat = x @ x.mT  # Marchenko–Pastur: tiny gaps, slow convergence, still exact
    expected = torch.linalg.eigvalsh(flat)[..., -5:].sum(-1)
    assert torch.allclose(top_energy_from_gram(flat, 5), expected, rtol=1e-8, atol=0)
    not_converged = top_energy_from_gram(flat, 5, max_iter=1)  # one step, then the exact eigendecomposition
    assert torch.allclose(not_converged, expected, rtol=1e-12, atol=0)


def test_directions_after_deflation():
    sv = torch.tensor([10.0, 5.0, 1.0, 1.0, 1.0, 1.0])
    # deflating the top two leaves four equal energies: 3 of them are needed for 70%
    assert directions_after_deflation(sv, 2, 0.70).item() == 3
    assert directions_after_deflation(sv, 0, 0.70).item() == 1


def test_whitened_spectrum_is_spectrum_of_w_times_x():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 6, generator=g, dtype=F64)
    x = torch.randn(6, 30, generator=g, dtype=F64)
    assert torch.allclose(whitened_singular_values(w, x @ x.T), singular_values(w @ x), rtol=1e-9)
    padded = torch.cat([singular_values(x), torch.zeros(24, dtype=F64)])
    assert torch.allclose(singular_values_from_gram(x.T @ x), padded, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(2, 10), n=st.integers(2, 10), seed=st.integers(0, 2**31 - 1), q_seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_no_orthogonal_regauge_beats_svd_truncation(m, n, seed, q_seed, data):
    """G0: for orthogonal Q, QW and WQ have W's singular values, so their best rank-r error is W's (Eckart–Young).

    Any rank-r compression of the regauged weight, mapped back, is a rank-r approximation of W and so can never
    beat trunc_r(W): checked for truncation in the regauged frame and for keeping the r largest rows there.
    """
    rank = data.draw(st.integers(0, min(m, n)))
    w = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    q_left, q_right = random_orthogonal(m, q_seed), random_orthogonal(n, q_seed + 1)
    sv = singular_values(w)
    assert torch.allclose(singular_values(q_left @ w), sv, atol=1e-10)
    assert torch.allclose(singular_values(w @ q_right), sv, atol=1e-10)
    best = float(torch.linalg.matrix_norm(w - truncate(w, rank)))
    assert math.isclose(best, float(residual_energy(sv, rank).sqrt() * sv.norm()), rel_tol=1e-8, abs_tol=1e-10)
    regauged = float(torch.linalg.matrix_norm(w - q_left.T @ truncate(q_left @ w, rank) @ torch.eye(n, dtype=F64)))
    assert math.isclose(regauged, best, rel_tol=1e-8, abs_tol=1e-10)
    rotated = q_left @ w
    keep = rotated.norm(dim=1).argsort(descending=True)[:rank]
    rows_kept = torch.zeros_like(rotated)
    rows_kept[keep] = rotated[keep]
    assert float(torch.linalg.matrix_norm(w - q_left.T @ rows_kept)) >= best - 1e-10
