"""A GPU workspace budget changes where and in what chunks probes compute, never what they find: G4's Grams, bases,
gate values and τ baselines on the embedded model under a workspace of a few hundred KiB (every expert its own
chunk, results kept on the CPU) equal the unbounded run's to float64 rounding."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

TINY = 256 * 1024  # smaller than one expert's float64 working set: one expert per chunk


@pytest.fixture(scope="module")
def studies():
    from pytest_ladder.models.corpora import load_corpora
    from pytest_ladder.models.loading import ModelSpec, load_model
    from pytest_ladder.probes.lowrank import LowRankStudy
    from pytest_ladder.probes.routes import RoutingStudy

    torch.set_num_threads(1)
    loaded = load_model(ModelSpec(source="embedded"))
    corpora = load_corpora()
    found = {}
    for budget in (None, TINY):
        budgeted = type(loaded)(loaded.model, loaded.tokenizer, loaded.adapter, loaded.identity,
                                replace(loaded.spec, gpu_workspace=budget), loaded.path)
        routing = RoutingStudy(budgeted, corpora, n_points=256)
        found[budget] = LowRankStudy(routing, 8, ("code", "math", "text"), calibration_points=256)
    return found


def test_tiny_budget_chunks_one_expert_at_a_time(studies):
    workspace = studies[TINY].routing.workspace
    assert workspace.bounded and workspace.chunk(16, 2 * 128 * 128 * 8 + 256 * 128 * 8) == 1
    assert not studies[None].routing.workspace.bounded


def test_grams_bases_and_gate_values_do_not_depend_on_the_budget(studies):
    free, tiny = studies[None], studies[TINY]
    for layer in (1, 6):
        grams_free, counts_free = free.routing.expert_grams("text", layer)
        grams_tiny, counts_tiny = tiny.routing.expert_grams("text", layer)
        assert torch.equal(counts_free.cpu(), counts_tiny.cpu())
        torch.testing.assert_close(grams_tiny.cpu(), grams_free.cpu(), rtol=1e-13, atol=1e-10)
        basis_free, basis_tiny = free.basis("universal", layer), tiny.basis("universal", layer)
        torch.testing.assert_close(basis_tiny.apply(torch.eye(128)), basis_free.apply(torch.eye(128)),
                                   rtol=1e-9, atol=1e-9)
        for task in ("code", "text"):
            assert tiny.error(layer, task, basis_tiny) == pytest.approx(free.error(layer, task, basis_free),
                                                                        rel=1e-9)
            tau_free, tau_tiny = free.tau(layer, task, [11, 12, 13]), tiny.tau(layer, task, [11, 12, 13])
            assert tau_tiny.values == pytest.approx(tau_free.values, rel=1e-12)
        worst_free, worst_tiny = free.worst_task(layer), tiny.worst_task(layer)
        assert worst_tiny.task == worst_free.task
        assert worst_tiny.per_task == pytest.approx(worst_free.per_task, rel=1e-9)


def test_identity_is_exactly_zero_under_any_budget(studies):
    from pytest_ladder.probes.lowrank import identity_basis

    for study in studies.values():
        assert study.error(3, "math", identity_basis(128)) == 0.0


def test_rotorquant_errors_do_not_depend_on_the_budget(studies):
    from pytest_ladder.probes.rotorquant import IDENTITY, METHOD, RotorQuant, RotorQuantStudy

    found = {budget: RotorQuantStudy(study.routing, quantizer=RotorQuant(2)) for budget, study in studies.items()}
    for key in (METHOD, ("bits", 4), ("random_scales", 5, 0.1, 10.0)):
        free, tiny = found[None].error(3, "text", key), found[TINY].error(3, "text", key)
        assert tiny.pooled == pytest.approx(free.pooled, rel=1e-9)
        assert tiny.per_projection == pytest.approx(free.per_projection, rel=1e-9)
    assert found[TINY].error(3, "text", IDENTITY).pooled == 0.0
