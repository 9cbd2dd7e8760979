"""Traps fire as declared on constructed cases, and stay silent when the claim they test is false."""

from __future__ import annotations

import torch

from pytest_ladder.measure.errors import activation_error
from pytest_ladder.measure.loss import delta_nll_fraction
from pytest_ladder.measure.lowrank import input_basis, project_inputs, project_off, random_projection
from pytest_ladder.measure.routing import route_flip_rate, topk_indices
from pytest_ladder.measure.storage import dense_artifact, global_delta_bytes
from pytest_ladder.measure.traps import off_projection_trap, random_basis_trap, task_swap_trap, trivial_pass_trap

F64 = torch.float64


def _task_inputs(seed: int, directions: slice, n: int = 32, tokens: int = 200) -> torch.Tensor:
    """Inputs living mostly in the coordinates `directions` (a task's own subspace) plus small noise."""
    g = torch.Generator().manual_seed(seed)
    x = 0.01 * torch.randn(n, tokens, generator=g, dtype=F64)
    x[directions] += torch.randn(x[directions].shape, generator=g, dtype=F64)
    return x


def test_random_basis_trap_fires_when_the_basis_is_informative():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = _task_inputs(1, slice(0, 6))
    gram = x @ x.T
    method = activation_error(w, project_inputs(w, input_basis(gram, 6)), gram).pooled
    randoms = [activation_error(w, random_projection(w, 6, seed), gram).pooled for seed in range(5)]
    outcome = random_basis_trap(method, randoms, min_ratio=2.0)
    assert outcome.fired_as_declared and outcome.observed > 10
    assert outcome.refs["best_random_error"] == min(randoms)
    # a "method" that is itself a random basis does not beat random: the trap does not fire
    fake = random_basis_trap(randoms[0], randoms[1:], min_ratio=2.0)
    assert not fake.fired_as_declared


def test_task_swap_trap():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(2), dtype=F64)
    x_code, x_text = _task_inputs(3, slice(0, 6)), _task_inputs(4, slice(10, 16))
    g_code, g_text = x_code @ x_code.T, x_text @ x_text.T
    own = activation_error(w, project_inputs(w, input_basis(g_text, 6)), g_text).pooled
    swapped = activation_error(w, project_inputs(w, input_basis(g_code, 6)), g_text).pooled
    outcome = task_swap_trap(own, swapped, min_ratio=1.5)
    assert outcome.fired_as_declared and outcome.observed == swapped / own
    # two tasks with the same input distribution: swapping does not hurt, the trap stays silent
    x_same = _task_inputs(5, slice(10, 16))
    g_same = x_same @ x_same.T
    same = activation_error(w, project_inputs(w, input_basis(g_same, 6)), g_text).pooled
    assert not task_swap_trap(own, same, min_ratio=1.5).fired_as_declared


def test_off_projection_trap():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(6), dtype=F64)
    x = _task_inputs(7, slice(0, 8))
    gram = x @ x.T
    basis = input_basis(gram, 8)
    off = activation_error(w, project_off(w, basis), gram).pooled  # keeps only what the basis ignores
    on = activation_error(w, project_inputs(w, basis), gram).pooled
    outcome = off_projection_trap(off, min_value=0.9, on_value=on)
    assert outcome.fired_as_declared and off > 0.99 and on < 0.05
    # a basis that ignores nothing the data uses makes the off-projection harmless: no fire
    assert not off_projection_trap(activation_error(w, project_off(w, input_basis(gram, 32)[:, 8:]), gram).pooled,
                                   min_value=0.9).fired_as_declared


def test_trivial_pass_through_the_whole_metric_pipeline(device):
    g = torch.Generator().manual_seed(8)
    w = torch.randn(4, 8, 16, generator=g).to(device=device, dtype=torch.bfloat16)
    x = torch.randn(4, 16, 30, generator=g).to(device)
    logits = torch.randn(50, 3, 8, generator=g).to(device)  # 50 tokens x 3 MoE layers
    identity = w.clone()
    outcome = trivial_pass_trap(
        activation_error=activation_error(w, identity, x @ x.mT).pooled,
        route_flip_rate=route_flip_rate(topk_indices(logits, 2), topk_indices(logits.clone(), 2)),
        delta_nll=delta_nll_fraction(812.25, 812.25, tokens_dense=400, tokens_comp=400),
        delta_bytes=global_delta_bytes(dense_artifact("w", w.shape, w.dtype), dense_artifact("w", identity.shape,
                                                                                            identity.dtype)),
    )
    assert outcome.fired_as_declared and outcome.observed == 0.0
    assert set(outcome.refs.values()) == {0.0}
    # the smallest perturbation anywhere breaks it
    perturbed = identity.clone()
    perturbed[0, 0, 0] += 1
    broken = trivial_pass_trap(activation_error=activation_error(w, perturbed, x @ x.mT).pooled, route_flip_rate=0.0,
                               delta_nll=0.0, delta_bytes=0)
    assert not broken.fired_as_declared and broken.observed > 0
    assert broken.to_dict()["name"] == "trivial_pass"
