"""Rank-r truncation, plain and activation-aware: exactness, optimality against the floors, projections."""

from __future__ import annotations

import math

import torch

from pytest_ladder.measure.errors import activation_error, frobenius_relative_error
from pytest_ladder.measure.lowrank import (
    activation_lowrank,
    gram_sqrt,
    input_basis,
    project_inputs,
    project_off,
    random_projection,
    svd_lowrank,
    truncate,
)
from pytest_ladder.measure.prefilters import activation_spectrum_floor, spectrum_floor
from pytest_ladder.measure.spectra import singular_values
from pytest_ladder.measure.storage import lowrank_artifact

F64 = torch.float64


def _data(seed: int = 0, out_features: int = 8, in_features: int = 12, tokens: int = 60):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g, dtype=F64)
    scales = torch.linspace(0.1, 4, in_features, dtype=F64)[:, None]
    x = torch.randn(in_features, tokens, generator=g, dtype=F64) * scales
    return w, x


def test_full_rank_is_exact_and_factors_have_the_rank(device):
    w, _ = _data()
    w = w.to(device)
    factors = svd_lowrank(w, 3)
    assert factors.a.shape == (8, 3) and factors.b.shape == (3, 12) and factors.rank == 3
    assert torch.allclose(truncate(w, 8), w, atol=1e-12)
    assert torch.linalg.matrix_rank(factors.reconstruct()).item() == 3
    assert factors.artifact("w", torch.bfloat16) == lowrank_artifact("w", (8, 12), 3, torch.bfloat16)


def test_planted_low_rank_is_recovered_exactly():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(10, 4, generator=g, dtype=F64) @ torch.randn(4, 16, generator=g, dtype=F64)
    assert float(frobenius_relative_error(w, truncate(w, 4))) < 1e-12
    x = torch.randn(16, 50, generator=g, dtype=F64)
    assert activation_error(w, activation_lowrank(w, x @ x.T, 4).reconstruct(), x @ x.T).pooled < 1e-12


def test_truncation_error_is_the_eckart_young_floor():
    w, _ = _data(2)
    for rank in range(9):
        got = float(frobenius_relative_error(w, truncate(w, rank)))
        assert math.isclose(got, float(spectrum_floor(singular_values(w), rank)), rel_tol=1e-9, abs_tol=1e-12)


def test_activation_aware_reaches_the_whitened_floor_and_beats_plain():
    w, x = _data(3)
    g = x @ x.T
    for rank in (1, 3, 5):
        aware = activation_error(w, activation_lowrank(w, g, rank).reconstruct(), g).pooled
        plain = activation_error(w, truncate(w, rank), g).pooled
        floor = float(activation_spectrum_floor(w, g, rank))
        assert math.isclose(aware, floor, rel_tol=1e-9)
        assert aware <= plain + 1e-12


def test_activation_aware_with_a_singular_gram():
    w, x = _data(4, tokens=5)  # 5 tokens in 12 dims: G has rank 5
    g = x @ x.T
    aware = activation_lowrank(w, g, 2).reconstruct()
    direct = float(torch.linalg.matrix_norm((w - aware) @ x) / torch.linalg.matrix_norm(w @ x))
    assert math.isclose(activation_error(w, aware, g).pooled, direct, rel_tol=1e-9)
    assert math.isclose(direct, float(activation_spectrum_floor(w, g, 2)), rel_tol=1e-7)
    s = gram_sqrt(g)
    assert torch.allclose(s @ s.T, g, atol=1e-9)


def test_batched_experts():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(3, 6, 9, generator=g, dtype=F64)
    x = torch.randn(3, 9, 20, generator=g, dtype=F64)
    grams = x @ x.mT
    batched = activation_lowrank(w, grams, 2).reconstruct()
    for e in range(3):
        assert torch.allclose(batched[e], activation_lowrank(w[e], grams[e], 2).reconstruct(), atol=1e-10)
    assert torch.allclose(truncate(w, 2)[1], truncate(w[1], 2), atol=1e-12)


def test_input_basis_projection_and_its_complement():
    w, x = _data(6)
    g = x @ x.T
    basis = input_basis(g, 4)
    assert torch.allclose(basis.T @ basis, torch.eye(4, dtype=F64), atol=1e-12)
    assert torch.allclose(project_inputs(w, basis) + project_off(w, basis), w, atol=1e-12)
    # the basis holds the highest-variance input directions: keeping them beats keeping the others
    full = input_basis(g, 12)
    kept = activation_error(w, project_inputs(w, basis), g).pooled
    other = activation_error(w, project_inputs(w, full[:, -4:]), g).pooled
    assert kept < other
    assert activation_error(w, project_inputs(w, full), g).pooled < 1e-12


def test_random_projection_is_seeded_and_rank_r():
    w, _ = _data(7)
    a, b = random_projection(w, 3, 42), random_projection(w, 3, 42)
    assert torch.equal(a, b)
    assert not torch.equal(a, random_projection(w, 3, 43))
    assert torch.linalg.matrix_rank(a).item() == 3
