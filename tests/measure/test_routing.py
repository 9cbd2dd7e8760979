"""Routing: flip rate of known changes equals the hand count, margins, low-rank routers, effective weights, C_pair."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ladder.measure.routing import (
    coactivation,
    effective_weight_effective_ranks,
    effective_weight_energy,
    effective_weight_grams,
    effective_weight_spectra,
    effective_weight_sq_norms,
    effective_weights,
    expert_inner_products,
    lowrank_router,
    margin_certifies_no_flip,
    route_flip_mask,
    route_flip_rate,
    route_jaccard,
    router_flip_rates,
    topk_indices,
    tokens_per_chunk,
    topk_margin,
)
from pytest_ladder.measure.spectra import effective_rank, energy_at_rank, singular_values

F64 = torch.float64


def test_flip_rate_hand_count(device):
    dense = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]], device=device)
    comp = torch.tensor([[1, 0], [2, 4], [5, 4], [6, 8]], device=device)  # same set, flip, same set, flip
    assert route_flip_mask(dense, comp).tolist() == [False, True, False, True]
    assert route_flip_rate(dense, comp) == 0.5


def test_flip_rate_pools_tokens_and_layers():
    dense = torch.arange(24).reshape(4, 3, 2)  # 4 tokens x 3 layers, top-2
    comp = dense.clone()
    comp[0, 1] = torch.tensor([3, 2])  # order only: not a flip
    comp[2, 2, 0] = 99  # one flip
    comp[3, 0, 1] = 98  # another
    assert route_flip_rate(dense, comp) == 2 / 12
    per_layer = route_flip_rate([dense[:, layer] for layer in range(3)], [comp[:, layer] for layer in range(3)])
    assert per_layer == 2 / 12


def test_identity_routes_never_flip(device):
    logits = torch.randn(100, 16, device=device)
    idx = topk_indices(logits, 4)
    assert route_flip_rate(idx, topk_indices(logits.clone(), 4)) == 0.0


def test_flip_inputs_are_checked():
    with pytest.raises(ValueError, match="same tokens"):
        route_flip_rate(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(TypeError):
        route_flip_rate(torch.zeros(3, 2), [torch.zeros(3, 2)])


def test_topk_margin_hand_values():
    logits = torch.tensor([[5.0, 1.0, 3.0, 2.5], [0.0, 0.0, 1.0, -1.0]])
    assert topk_margin(logits, 2).tolist() == [0.5, 0.0]
    assert topk_margin(logits, 1).tolist() == [2.0, 1.0]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 7), scale=st.floats(1e-3, 3.0))
def test_margin_certificate_implies_no_flip(seed, k, scale):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, 8, generator=g, dtype=F64)
    perturbed = logits + scale * (torch.rand(64, 8, generator=g, dtype=F64) - 0.5)
    certified = margin_certifies_no_flip(logits, perturbed, k)
    flipped = route_flip_mask(topk_indices(logits, k), topk_indices(perturbed, k))
    assert not (certified & flipped).any()


def test_route_jaccard_hand_count():
    a = torch.tensor([[0, 1, 2], [3, 4, 5]])
    b = torch.tensor([[2, 1, 9], [6, 7, 8]])
    assert route_jaccard(a, b).tolist() == [2 / 4, 0.0]
    assert route_jaccard(a, a).tolist() == [1.0, 1.0]


def test_full_rank_router_keeps_every_route():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(8, 16, generator=g, dtype=F64)
    hidden = torch.randn(200, 16, generator=g, dtype=F64)
    assert torch.allclose(lowrank_router(weight, 8), weight, atol=1e-12)
    rates = router_flip_rates(hidden, weight, 2, [1, 4, 8])
    assert rates[8] == 0.0
    assert rates[1] > rates[8]
    gram = hidden.T @ hidden
    assert router_flip_rates(hidden, weight, 2, [8], gram=gram)[8] == 0.0


def test_activation_aware_router_matches_logits_better():
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(8, 16, generator=g, dtype=F64)
    hidden = torch.randn(300, 16, generator=g, dtype=F64) * torch.linspace(0.05, 3, 16, dtype=F64)
    gram = hidden.T @ hidden
    logits = hidden @ weight.T

    def logit_error(approx):
        return float((hidden @ approx.T - logits).norm())

    assert logit_error(lowrank_router(weight, 3, gram)) < logit_error(lowrank_router(weight, 3))


def test_effective_weights_are_gate_weighted_sums():
    g = torch.Generator().manual_seed(5)
    weights = torch.randn(6, 3, 4, generator=g, dtype=F64)
    idx = torch.tensor([[0, 5], [2, 2], [1, 3]])
    gates = torch.tensor([[0.7, 0.3], [0.4, 0.6], [1.0, 0.0]], dtype=F64)
    got = effective_weights(weights, idx, gates)
    for t in range(3):
        expected = sum(gates[t, j] * weights[idx[t, j]] for j in range(2))
        assert torch.allclose(got[t], expected, rtol=0, atol=1e-14)
    spectra = effective_weight_spectra(weights, idx, gates, chunk=2)
    assert torch.allclose(spectra, singular_values(got), atol=1e-12)


def test_effective_weight_norms_and_grams_by_hand():
    weights = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [[0.0, 0.0, 3.0], [1.0, 0.0, 0.0]]], dtype=F64)
    idx = torch.tensor([[0, 1], [1, 1]])
    gates = torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=F64)  # token 1 routes expert 1 twice: weight 1.0
    inner = expert_inner_products(weights)
    assert inner.tolist() == [[5.0, 0.0], [0.0, 10.0]]
    assert expert_inner_products(weights, max_bytes=2 * 8 * 2 * 2).tolist() == inner.tolist()  # 3 blocks of 2
    # W_0 = [[.5, 0, 1.5], [.5, 1, 0]]: ‖W_0‖² = .25 + 2.25 + .25 + 1 = 3.75; W_1 = expert 1: 10
    assert effective_weight_sq_norms(weights, idx, gates).tolist() == [3.75, 10.0]
    grams = effective_weight_grams(weights, idx, gates)  # out 2 <= in 3: W Wᵀ (2, 2)
    assert grams.tolist() == [[[2.5, 0.25], [0.25, 1.25]], [[9.0, 0.0], [0.0, 1.0]]]
    assert effective_weight_grams(weights.mT, idx, gates).shape == (2, 2, 2)  # out 3 > in 2: Wᵀ W
    # token 1: σ² = 9, 1 of 10; q = 1 keeps 9/10
    energy = effective_weight_energy(weights, idx, gates, 1)
    assert energy[1].item() == 0.9
    assert tokens_per_chunk(weights, 8 * (6 + 3 * 4) * 5) == 5 and tokens_per_chunk(weights, 1) == 1
    # bytes held throughout (the experts and their float64 copy) come out of the budget first
    assert tokens_per_chunk(weights, 8 * (6 + 3 * 4) * 5 + 96, held=96) == 5
    assert tokens_per_chunk(weights, 8 * (6 + 3 * 4) * 5, held=1) == 4


def test_gram_paths_match_the_svd(device):
    g = torch.Generator().manual_seed(11)
    weights = (torch.randn(8, 24, 40, generator=g, dtype=F64)
               * torch.arange(1, 41, dtype=F64) ** -1.0).to(device)  # decaying column scales, like trained weights
    idx = torch.stack([torch.randperm(8, generator=g)[:3] for _ in range(50)]).to(device)
    gates = torch.rand(50, 3, generator=g, dtype=F64).to(device)
    gates[7] = 0.0  # a token with no weight: W_t = 0, energy and r_eff 0
    spectra = effective_weight_spectra(weights, idx, gates)
    for w, s in ((weights, spectra), (weights.mT, spectra)):
        energy = effective_weight_energy(w, idx, gates, 3, max_bytes=8 * 3000)
        reff = effective_weight_effective_ranks(w, idx, gates, max_bytes=8 * 3000)
        assert energy.device == reff.device == weights.device and energy.shape == reff.shape == (50,)
        assert float((energy - energy_at_rank(s, 3)).abs().max()) < 1e-12
        assert float((reff - effective_rank(s)).abs().max()) < 1e-10
        assert energy[7].item() == 0.0 and reff[7].item() == 0.0


def test_narrow_experts_read_in_float64_column_blocks_agree_with_the_whole_stack(device):
    """Experts stored narrower than float64 are read a block of columns at a time (no float64 copy of the stack): the
    effective weights agree with the whole-stack product to rounding, and G3's energy with the SVD's."""
    g = torch.Generator().manual_seed(12)
    weights = torch.randn(8, 24, 40, generator=g).to(torch.bfloat16).to(device)
    idx = torch.stack([torch.randperm(8, generator=g)[:3] for _ in range(50)]).to(device)
    gates = torch.rand(50, 3, generator=g, dtype=F64).to(device)
    whole, blocked = effective_weights(weights, idx, gates), effective_weights(weights, idx, gates, columns=7)
    assert blocked.shape == whole.shape == (50, 24, 40)
    assert float((blocked - whole).abs().max()) <= 1e-14 * float(whole.abs().max())
    spectra = effective_weight_spectra(weights, idx, gates)
    for budget in (8 * 3000, None):  # one token at a time, and every token in one chunk
        energy = effective_weight_energy(weights, idx, gates, 3, max_bytes=budget)
        assert float((energy - energy_at_rank(spectra, 3)).abs().max()) < 1e-12


def test_coactivation_hand_counts():
    routes = torch.tensor([[0, 1, 2], [0, 1, 3], [0, 1, 2], [3, 2, 1]])
    stats = coactivation(routes, n_experts=5)
    assert stats.usage.tolist() == [3, 4, 3, 2, 0]
    assert stats.pairs[0, 1] == 3 and stats.pairs[1, 0] == 3
    assert stats.pairs[1, 2] == 3 and stats.pairs[2, 3] == 1 and stats.pairs[0, 4] == 0
    assert torch.equal(stats.pairs.diagonal(), torch.zeros(5, dtype=F64))
    pairs, counts = stats.top_pairs(2)
    assert pairs.tolist() == [[0, 1], [1, 2]] and counts.tolist() == [3, 3]
    total_pair_occurrences = 4 * 3  # 4 tokens x C(3, 2)
    assert stats.coverage(2) == 6 / total_pair_occurrences
    assert stats.coverage(100) == 1.0
    # lift(0,1) = 3 * 4 / (3 * 4) = 1; lift(0,2) = 2 * 4 / (3 * 3) = 8/9; lift(2,3) = 1 * 4 / (3 * 2) = 2/3
    assert math.isclose(float(stats.lifts()[0, 2]), 8 / 9)
    # lifts of (0,1), (1,2), (1,3) are exactly 1, all others below
    assert stats.dominant_pairs(1.0).tolist() == [[0, 1], [1, 2], [1, 3]]
    assert stats.dominant_pairs(0.8).tolist() == [[0, 1], [1, 2], [1, 3], [0, 2]]
    assert stats.effective_rank() > 1.0


def test_coactivation_effective_rank_of_a_single_pair():
    stats = coactivation(torch.tensor([[0, 1]] * 10), n_experts=4)
    # C_pair = 10 (e01 + e10): two equal singular values -> r_eff = 2
    assert math.isclose(stats.effective_rank(), 2.0, rel_tol=1e-12)
