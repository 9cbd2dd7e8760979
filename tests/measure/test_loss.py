"""ΔNLL fraction: hand values, identity exactly 0, token counts checked."""

from __future__ import annotations

import pytest

from pytest_ladder.measure.loss import delta_nll_by_task, delta_nll_fraction


def test_hand_values():
    assert delta_nll_fraction(200.0, 210.0, tokens_dense=100, tokens_comp=100) == 0.05
    assert delta_nll_fraction(200.0, 190.0, tokens_dense=100, tokens_comp=100) == -0.05


def test_identity_is_exactly_zero():
    assert delta_nll_fraction(1234.5678, 1234.5678, tokens_dense=77, tokens_comp=77) == 0.0


def test_token_counts_must_match():
    with pytest.raises(ValueError, match="same held-out corpus split"):
        delta_nll_fraction(1.0, 1.0, tokens_dense=10, tokens_comp=9)
    with pytest.raises(ValueError, match="positive"):
        delta_nll_fraction(0.0, 1.0, tokens_dense=10, tokens_comp=10)


def test_per_task():
    dense = {"code": (100.0, 50), "math": (80.0, 40), "text": (300.0, 90)}
    comp = {"code": (104.64, 50), "math": (80.0, 40), "text": (630.0, 90)}
    got = delta_nll_by_task(dense, comp)
    assert got == pytest.approx({"code": 0.0464, "math": 0.0, "text": 1.1}, rel=1e-12)
    assert got["math"] == 0.0
    with pytest.raises(KeyError, match="text"):
        delta_nll_by_task(dense, {"code": (1.0, 50), "math": (1.0, 40)})
