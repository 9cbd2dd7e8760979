"""Analytical prefilters: closed-form bytes equal the storage accounting; floors are the true optima."""

from __future__ import annotations

import math

import pytest
import torch

from pytest_ladder.measure.errors import activation_error, frobenius_relative_error
from pytest_ladder.measure.lowrank import activation_lowrank, truncate
from pytest_ladder.measure.prefilters import (
    activation_spectrum_floor,
    break_even_rank,
    lowrank_delta_bytes,
    quantized_delta_bytes,
    random_floor,
    random_residual_energy,
    spectrum_floor,
)
from pytest_ladder.measure.quant import QuantSpec
from pytest_ladder.measure.spectra import singular_values

F64 = torch.float64


def test_lowrank_bytes_closed_form():
    assert lowrank_delta_bytes((1024, 2048), 16, torch.bfloat16) == 16 * (1024 + 2048) * 2 - 1024 * 2048 * 2
    assert lowrank_delta_bytes((8, 4), 2, torch.float32, dense_dtype=torch.bfloat16, count=3) == 3 * (24 * 4 - 32 * 2)


@pytest.mark.parametrize(
    ("shape", "dtype", "dense"),
    [((1024, 2048), "bfloat16", None), ((10, 10), "float32", "float16"), ((3, 3), "float16", None),
     ((1, 5), "float16", None)],
)
def test_break_even_rank_is_the_largest_saving_rank(shape, dtype, dense):
    rank = break_even_rank(shape, dtype, dense_dtype=dense)
    if rank > 0:
        assert lowrank_delta_bytes(shape, rank, dtype, dense_dtype=dense) < 0
    if rank < min(shape):
        assert lowrank_delta_bytes(shape, rank + 1, dtype, dense_dtype=dense) >= 0
    assert break_even_rank((1024, 2048), "bfloat16") == 682


def test_quantized_bytes_hand_count():
    spec = QuantSpec(4, granularity="channel", axis=0)
    assert quantized_delta_bytes((64, 128), spec, torch.bfloat16) == (64 * 128 // 2 + 64 * 2) - 64 * 128 * 2


def test_spectrum_floors_are_attained():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 10, generator=g, dtype=F64)
    x = torch.randn(10, 40, generator=g, dtype=F64)
    for rank in (0, 2, 6):
        assert math.isclose(float(spectrum_floor(singular_values(w), rank)),
                            float(frobenius_relative_error(w, truncate(w, rank))), rel_tol=1e-9, abs_tol=1e-12)
        gram = x @ x.T
        assert math.isclose(float(activation_spectrum_floor(w, gram, rank)),
                            activation_error(w, activation_lowrank(w, gram, rank).reconstruct(), gram).pooled,
                            rel_tol=1e-9, abs_tol=1e-12)


def test_random_floor_closed_form_and_draws():
    assert random_residual_energy(2048, 16) == 1 - 16 / 2048
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1), dtype=F64)
    floor = random_floor(w, 16, seeds=range(20))
    assert floor.expected_residual_energy == 0.75 and floor.rms_error == math.sqrt(0.75)
    draws = torch.tensor(floor.empirical.values, dtype=F64)
    assert abs(float(draws.square().mean()) - 0.75) < 0.03  # E residual energy = 1 - r/n
    # no random projection beats Eckart–Young
    assert floor.empirical.tau >= float(spectrum_floor(singular_values(w), 16))
    x = torch.randn(64, 100, generator=torch.Generator().manual_seed(2), dtype=F64)
    weighted = random_floor(w, 16, seeds=[1, 2, 3], gram=x @ x.T)
    assert weighted.empirical.tau >= float(activation_spectrum_floor(w, x @ x.T, 16))
