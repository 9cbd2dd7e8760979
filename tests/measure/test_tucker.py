"""HOSVD/Tucker: exact at full rank, planted multilinear ranks, residual identity, unfoldings."""

from __future__ import annotations

import math

import pytest
import torch

from pytest_ladder.measure.spectra import singular_values
from pytest_ladder.measure.storage import tucker_artifact
from pytest_ladder.measure.tucker import (
    fold,
    hosvd,
    mode_effective_ranks,
    mode_product,
    mode_spectra,
    multilinear_rank,
    tucker_residual,
    unfold,
)

F64 = torch.float64


def _planted(ranks=(2, 3, 4), dims=(4, 6, 10), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*ranks, generator=g, dtype=F64)
    for mode, (n, r) in enumerate(zip(dims, ranks)):
        t = mode_product(t, torch.randn(n, r, generator=g, dtype=F64), mode)
    return t


def test_full_rank_reconstruction_is_exact():
    t = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(1), dtype=F64)
    tucker = hosvd(t, t.shape)
    assert torch.allclose(tucker.reconstruct(), t, atol=1e-12)
    assert tucker.residual_energy() < 1e-14


def test_planted_multilinear_rank_is_found_and_reconstructed():
    t = _planted()
    assert multilinear_rank(t) == (2, 3, 4)
    tucker = hosvd(t, (2, 3, 4))
    assert torch.allclose(tucker.reconstruct(), t, atol=1e-9)
    assert tucker_residual(t, (2, 3, 4)) < 1e-12
    assert tucker_residual(t, (2, 3, 3)) > 1e-3


def test_residual_identity_matches_explicit_reconstruction():
    t = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    tucker = hosvd(t, (2, 3, 2))
    explicit = float((t - tucker.reconstruct()).square().sum() / t.square().sum())
    assert math.isclose(tucker.residual_energy(), explicit, rel_tol=1e-10)
    expected = tucker_artifact("experts", (4, 6, 5), (2, 3, 2), torch.bfloat16)
    assert tucker.artifact("experts", torch.bfloat16) == expected


def test_unfoldings_and_their_spectra():
    t = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
    for mode in range(3):
        assert unfold(t, mode).shape == (t.shape[mode], t.numel() // t.shape[mode])
        assert torch.equal(fold(unfold(t, mode), mode, t.shape), t)
        assert torch.allclose(mode_spectra(t)[mode], singular_values(unfold(t, mode)), rtol=1e-9)
    assert unfold(t, 1)[2, 0] == t[0, 2, 0] and unfold(t, 1)[2, 1] == t[0, 2, 1]
    assert all(1 <= r <= n for r, n in zip(mode_effective_ranks(t), t.shape))


def test_one_pass_over_the_tensor_gives_each_factor_sets_own_residual():
    """G2's HOSVD and τ baselines projected together equal each set projected alone, bit for bit, under an unbounded
    and a tiny workspace (the tiny one holds a few experts at a time and keeps Z and Y on the CPU); a set with a
    zero rank projects T to 0 (residual exactly 1) and identity factors give exactly 0."""
    from pytest_ladder.measure.orthogonal import random_orthonormal_columns
    from pytest_ladder.measure.tucker import StackedTensor
    from pytest_ladder.measure.workspace import Workspace

    g = torch.Generator().manual_seed(3)
    t = torch.randn(3, 5, 6, 7, generator=g, dtype=torch.float64).to(torch.bfloat16)
    ranks = (2, 3, 4, 5)
    sets = [tuple(random_orthonormal_columns(d, r, seed) for d, r in zip(t.shape, ranks)) for seed in range(4)]
    sets.append(tuple(torch.eye(d, dtype=torch.float64) for d in t.shape))
    sets.append(tuple(torch.zeros(d, 0 if k == 1 else 1, dtype=torch.float64) for k, d in enumerate(t.shape)))
    sets.append(tuple(random_orthonormal_columns(d, r, 9) for d, r in zip(t.shape, (1, 2, 2, 3))))
    for limit in (None, 2048):
        stacked = StackedTensor.of(t, Workspace.on("cpu", limit))
        together = stacked.projection_residuals(sets)
        alone = [stacked.projection_residual(s) for s in sets]
        assert together == alone
        assert together[4] == 0.0 and together[5] == 1.0
        assert all(0.0 < r < 1.0 for r in together[:4] + together[6:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_slices_on_cuda_and_on_the_cpu_together_give_the_values_of_cpu_slices_on_cuda():
    """G2 offloaded: layers resident on the GPU come as views there, offloaded ones from the checkpoint on the CPU.
    Mode Grams (the column-chunked K of modes 0 and 1 included) and projection residuals of such a mix equal those of
    the same slices all read from the CPU, bit for bit, under a workspace that chunks rows and columns."""
    from pytest_ladder.measure.orthogonal import random_orthonormal_columns
    from pytest_ladder.measure.tucker import StackedTensor
    from pytest_ladder.measure.workspace import Workspace

    g = torch.Generator().manual_seed(4)
    t = torch.randn(4, 6, 8, 10, generator=g, dtype=F64).to(torch.bfloat16)
    device = torch.device("cuda", torch.cuda.current_device())
    work = Workspace.on(device, 4096)
    stored = StackedTensor(list(t.unbind(0)), work)
    mixed = StackedTensor([s.to(device) if layer % 2 else s for layer, s in enumerate(t.unbind(0))], work)
    assert [s.device.type for s in mixed.slices] == ["cpu", "cuda", "cpu", "cuda"]
    for a, b in zip(mixed.mode_grams(), stored.mode_grams()):
        assert torch.equal(a, b)
    sets = [tuple(random_orthonormal_columns(d, r, seed).to(device) for d, r in zip(t.shape, (2, 3, 4, 5)))
            for seed in range(2)]
    assert mixed.projection_residuals(sets) == stored.projection_residuals(sets)
