"""τ floor: deterministic from given seeds, τ = min, spread reported, strict locked rule."""

from __future__ import annotations

import math

import pytest
import torch

from pytest_ladder.measure.errors import frobenius_relative_error
from pytest_ladder.measure.lowrank import random_projection
from pytest_ladder.measure.tau import TauFloor, beats_tau, tau_floor

SEEDS = [11, 22, 33, 44, 55, 66, 77, 88, 99, 1010]


def _rank_floor(w: torch.Tensor, rank: int) -> TauFloor:
    return tau_floor(
        lambda seed: random_projection(w, rank, seed),
        lambda w_prime: float(frobenius_relative_error(w, w_prime)),
        SEEDS,
        n_points=w.shape[0],
    )


def test_deterministic_with_given_seeds():
    w = torch.randn(40, 32, generator=torch.Generator().manual_seed(0))
    first, second = _rank_floor(w, 8), _rank_floor(w, 8)
    assert first == second
    assert first.tau == min(first.values)
    assert first.seeds == tuple(SEEDS)
    assert len(set(first.values)) == len(SEEDS)  # different seeds, different baselines
    # a Haar-random rank-8 input subspace of R^32 keeps 8/32 of the energy on average
    mean = first.spread["mean"]
    assert abs(mean - math.sqrt(1 - 8 / 32)) < 0.05


def test_spread_and_dict():
    floor = tau_floor(lambda seed: seed, lambda baseline: {1: 0.3, 2: 0.1, 3: 0.2}[baseline], [1, 2, 3], n_points=1000)
    assert floor.tau == 0.1
    assert floor.values == (0.3, 0.1, 0.2)
    assert floor.spread["min"] == 0.1 and floor.spread["max"] == 0.3
    assert math.isclose(floor.spread["mean"], 0.2)
    assert math.isclose(floor.spread["std"], math.sqrt(((0.1) ** 2 + 0 + (0.1) ** 2) / 3))
    assert floor.to_dict()["n_points"] == 1000


def test_beats_tau_is_strict():
    assert beats_tau(0.089, 0.1, 0.10)
    assert not beats_tau(0.09, 0.1, 0.0 + 0.1 + 1e-12)
    assert not beats_tau(0.1, 0.1, 0.0)
    floor = TauFloor(tau=0.5, values=(0.5, 0.6), seeds=(1, 2))
    assert beats_tau(0.2, floor, 0.5) is True
    assert beats_tau(0.25, floor, 0.5) is False
    with pytest.raises(ValueError, match="margin"):
        beats_tau(0.1, 0.2, 1.0)


def test_seeds_are_checked():
    with pytest.raises(ValueError, match="random_seeds"):
        tau_floor(lambda s: s, float, [])
    with pytest.raises(ValueError, match="repeated"):
        tau_floor(lambda s: s, float, [1, 1])
    with pytest.raises(ValueError, match="nan"):
        tau_floor(lambda s: s, lambda b: float("nan"), [1])
