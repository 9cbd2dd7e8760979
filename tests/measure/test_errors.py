"""Activation-weighted errors: the Gram route equals the direct ‖ΔX‖/‖WX‖, identity gives exactly 0."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ladder.measure.errors import (
    activation_error,
    activation_sq_error,
    frobenius_relative_error,
    gram,
    worst_task_error,
)

F64 = torch.float64


def _direct(w: torch.Tensor, w_prime: torch.Tensor, x: torch.Tensor) -> float:
    """‖(W − W')X‖_F / ‖W X‖_F with X (in, tokens), computed directly."""
    return float(torch.linalg.matrix_norm((w - w_prime) @ x) / torch.linalg.matrix_norm(w @ x))


@settings(max_examples=25, deadline=None)
@given(
    out_features=st.integers(1, 12), in_features=st.integers(1, 12), tokens=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_gram_error_equals_direct(out_features, in_features, tokens, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g, dtype=F64)
    w_prime = w + 0.3 * torch.randn(out_features, in_features, generator=g, dtype=F64)
    x = torch.randn(in_features, tokens, generator=g, dtype=F64)
    got = activation_error(w, w_prime, x @ x.T)
    assert math.isclose(got.pooled, _direct(w, w_prime, x), rel_tol=1e-10)
    assert math.isclose(float(got.relative), _direct(w, w_prime, x), rel_tol=1e-10)


def test_batched_experts_match_direct_and_pool_token_weighted(device):
    g = torch.Generator().manual_seed(0)
    token_counts = [3, 50, 11]
    w = torch.randn(3, 5, 7, generator=g, dtype=F64)
    w_prime = w + 0.1 * torch.randn(3, 5, 7, generator=g, dtype=F64)
    xs = [torch.randn(7, n, generator=g, dtype=F64) for n in token_counts]
    grams = torch.stack([x @ x.T for x in xs])
    got = activation_error(w.to(device), w_prime.to(device), grams.to(device))
    for e, x in enumerate(xs):
        assert math.isclose(float(got.relative[e]), _direct(w[e], w_prime[e], x), rel_tol=1e-10)
    # pooled = the relative error of all routed outputs stacked into one matrix
    stacked_error = sum(float(((w[e] - w_prime[e]) @ x).square().sum()) for e, x in enumerate(xs))
    stacked_norm = sum(float((w[e] @ x).square().sum()) for e, x in enumerate(xs))
    assert math.isclose(got.pooled, (stacked_error / stacked_norm) ** 0.5, rel_tol=1e-10)


def test_identity_is_exactly_zero(device):
    w = torch.randn(4, 6, 8, dtype=torch.bfloat16, device=device)
    x = torch.randn(4, 8, 20, device=device)
    got = activation_error(w, w.clone(), x @ x.mT)
    assert torch.equal(got.sq_error, torch.zeros(4, dtype=F64, device=device))
    assert got.pooled == 0.0
    assert frobenius_relative_error(w, w.clone()).eq(0).all()


def test_gram_of_token_major_inputs():
    x = torch.randn(30, 6)
    assert torch.allclose(gram(x), x.double().T @ x.double(), rtol=0, atol=1e-12)
    assert gram(x).dtype == F64
    assert gram(torch.randn(2, 30, 6)).shape == (2, 6, 6)


def test_sq_error_is_trace_formula():
    delta = torch.tensor([[1.0, 2.0]], dtype=F64)
    g = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=F64)
    assert float(activation_sq_error(delta, g)) == 1 * 2 + 2 * 1 * 2 + 4 * 3  # ΔGΔᵀ = 16


def test_expert_without_tokens_is_nan_and_does_not_weigh():
    w = torch.randn(2, 3, 4, dtype=F64)
    w_prime = w * 0.5
    x = torch.randn(4, 9, dtype=F64)
    grams = torch.stack([x @ x.T, torch.zeros(4, 4, dtype=F64)])
    got = activation_error(w, w_prime, grams)
    assert math.isnan(float(got.relative[1]))
    assert math.isclose(got.pooled, 0.5, rel_tol=1e-12)
    with pytest.raises(ValueError, match="no routed tokens"):
        _ = activation_error(w, w_prime, torch.zeros(2, 4, 4, dtype=F64)).pooled


def test_frobenius_relative_error_known_values():
    w = torch.eye(3, dtype=F64)
    assert float(frobenius_relative_error(w, torch.zeros(3, 3))) == 1.0
    assert math.isclose(float(frobenius_relative_error(w, 0.75 * w)), 0.25, rel_tol=1e-15)


def test_worst_task_is_the_max_over_task_grams():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 6, generator=g, dtype=F64)
    # the compression ruins the first input coordinate only: the task that uses it most is worst
    w_prime = w.clone()
    w_prime[:, 0] = 0
    x_code = torch.randn(6, 40, generator=g, dtype=F64)
    x_text = x_code.clone()
    x_text[0] *= 10
    result = worst_task_error(w, w_prime, {"code": x_code @ x_code.T, "text": x_text @ x_text.T})
    assert result.task == "text"
    assert result.value == max(result.per_task.values())
    assert math.isclose(result.per_task["code"], _direct(w, w_prime, x_code), rel_tol=1e-10)
    per_task_w_prime = {"code": w.clone(), "text": w_prime}
    assert worst_task_error(w, per_task_w_prime, {"code": x_code @ x_code.T}).value == 0.0
    with pytest.raises(KeyError, match="math"):
        worst_task_error(w, per_task_w_prime, {"math": x_code @ x_code.T})


def test_shape_mismatch_says_what_to_pass():
    with pytest.raises(ValueError, match=r"delta \(\.\.\., out, in\)"):
        activation_sq_error(torch.zeros(3, 4), torch.zeros(5, 5))
