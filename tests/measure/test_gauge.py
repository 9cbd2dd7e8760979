"""Learned gauge: κ bound after projection, determinism, round trips (identity = plain quantization)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ladder.measure.errors import frobenius_relative_error
from pytest_ladder.measure.gauge import bound_condition, condition_number, learn_gauge, round_trip, round_trip_error
from pytest_ladder.measure.hadamard import srht
from pytest_ladder.measure.orthogonal import random_orthogonal
from pytest_ladder.measure.quant import QuantSpec, fake_quant

F64 = torch.float64


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 12), kappa=st.floats(1.0, 10.0), spread=st.floats(0.0, 6.0), seed=st.integers(0, 2**31 - 1),
       method=st.sampled_from(["svd", "gram"]))
def test_projection_bounds_the_condition_number(n, kappa, spread, seed, method):
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.diag(torch.logspace(0, spread, n, dtype=F64))
    m = random_orthogonal(n, seed) @ spectrum @ random_orthogonal(n, seed + 1)
    projected = bound_condition(m + 1e-3 * torch.randn(n, n, generator=g, dtype=F64), kappa, method=method)
    assert condition_number(projected) <= kappa * (1 + 1e-9)
    assert math.isclose(float(torch.linalg.svdvals(projected)[0]), 1.0, rel_tol=1e-9)


def _conditioned(n: int, cond: float, seed: int, batch: int = 3) -> torch.Tensor:
    """A batch of n × n float64 matrices with singular values spread evenly in log from 1 to `cond`."""
    spectrum = torch.logspace(0, math.log10(cond), n, dtype=F64)
    return torch.stack([random_orthogonal(n, seed + 2 * i) * spectrum @ random_orthogonal(n, seed + 2 * i + 1)
                        for i in range(batch)])


@pytest.mark.parametrize("cond", [1.0 + 1e-9, 30.0, 500.0])
def test_gram_projection_is_the_svd_projection(cond):
    """Through the eigendecomposition of MᵀM the projection equals the SVD's to float64 rounding, batched, for a
    spectrum inside [σ_max/κ, σ_max] (kept up to scale), straddling it, and far below it; a float32 M stays float32."""
    m = _conditioned(40, cond, seed=7)
    by_svd, by_gram = bound_condition(m, 4.0, method="svd"), bound_condition(m, 4.0, method="gram")
    torch.testing.assert_close(by_gram, by_svd, rtol=1e-10, atol=1e-12)
    assert bound_condition(m.float(), 4.0, method="gram").dtype == torch.float32


def test_gram_projection_falls_back_to_the_svd_when_the_gram_would_blur_the_small_values():
    m = _conditioned(12, 1e8, seed=3, batch=2)
    assert torch.equal(bound_condition(m, 4.0, method="gram"), bound_condition(m, 4.0, method="svd"))
    with pytest.raises(ValueError, match="method must be 'svd' or 'gram'"):
        bound_condition(m, 4.0, method="qr")


def test_default_projection_on_each_device_equals_the_svd_on_the_cpu(device):
    """The default (the Gram's eigendecomposition on a GPU, the SVD elsewhere) on a float32 M like learn_gauge's."""
    m = _conditioned(64, 10.0, seed=11).float()
    projected = bound_condition(m.to(device), 4.0).cpu()
    torch.testing.assert_close(projected, bound_condition(m, 4.0, method="svd"), rtol=1e-5, atol=1e-6)


def test_projection_keeps_a_well_conditioned_matrix_up_to_scale():
    m = 3.0 * random_orthogonal(6, 0)
    assert torch.allclose(bound_condition(m, 2.0), m / 3.0, atol=1e-12)


def _weight_with_outliers() -> torch.Tensor:
    w = torch.randn(24, 48, generator=torch.Generator().manual_seed(0), dtype=F64)
    w[3, 5], w[17, 40] = 25.0, -18.0
    return w


def test_learned_gauge_is_deterministic_and_bounded():
    w, spec = _weight_with_outliers(), QuantSpec(4)
    first = learn_gauge(w, spec, kappa_max=2.0, seed=3, steps=15, lr=1e-2)
    second = learn_gauge(w, spec, kappa_max=2.0, seed=3, steps=15, lr=1e-2)
    assert torch.equal(first.matrix, second.matrix) and first.losses == second.losses
    assert first.kappa <= 2.0 * (1 + 1e-9) and len(first.losses) == 15
    other = learn_gauge(w, spec, kappa_max=2.0, seed=4, steps=15, lr=1e-2)
    assert not torch.equal(first.matrix, other.matrix)


def test_gauge_beats_plain_quantization_on_outlier_rows():
    w, spec = _weight_with_outliers(), QuantSpec(4)
    gauge = learn_gauge(w, spec, kappa_max=4.0, seed=1, steps=30, lr=1e-2)
    plain = round_trip_error(w, torch.eye(24, dtype=F64), spec)
    assert round_trip_error(w, gauge.matrix, spec) < plain / 2


def test_identity_round_trip_is_plain_quantization():
    w, spec = _weight_with_outliers(), QuantSpec(8, granularity="channel")
    assert torch.equal(round_trip(w, torch.eye(24, dtype=F64), spec), fake_quant(w, spec))
    plain = float(frobenius_relative_error(w, fake_quant(w, spec)))
    assert round_trip_error(w, torch.eye(24, dtype=F64), spec) == plain


def test_srht_and_haar_round_trips_on_both_sides():
    w, spec = _weight_with_outliers(), QuantSpec(4)
    for side, n in (("left", 24), ("right", 48)):
        rotation = srht(n, seed=2)
        haar = random_orthogonal(n, 2)
        # error of an orthogonal round trip equals the quantization error in the rotated frame
        rotated = rotation.apply(w, dim=-2 if side == "left" else -1)
        in_frame = float(frobenius_relative_error(rotated, fake_quant(rotated, spec)))
        assert math.isclose(round_trip_error(w, rotation, spec, side=side), in_frame, rel_tol=1e-9)
        plain = round_trip_error(w, torch.eye(n, dtype=F64), spec, side=side)
        assert round_trip_error(w, haar, spec, side=side) < plain
