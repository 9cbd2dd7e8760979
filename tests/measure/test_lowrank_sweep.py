"""G4's rank sweep: nested bases from one eigendecomposition, identical to fitting each rank alone."""

from __future__ import annotations

import torch

from pytest_ladder.probes.lowrank import fit_input_basis, fit_input_bases, rank_grid


def test_bases_of_several_ranks_equal_each_rank_fit_alone():
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(4, 6, 16, generator=generator, dtype=torch.float64)
    x = torch.randn(16, 200, generator=generator, dtype=torch.float64)
    gram, counts = x @ x.T, torch.tensor([50.0, 30.0, 70.0, 50.0], dtype=torch.float64)
    bases = fit_input_bases(weights, gram, counts, [1, 4, 16])
    assert sorted(bases) == [1, 4, 16]
    for rank, basis in bases.items():
        alone = fit_input_basis(weights, gram, counts, rank)
        assert torch.equal(basis.left, alone.left) and torch.equal(basis.right, alone.right)
    full = bases[16]
    assert torch.allclose(full.left @ full.right, torch.eye(16, dtype=torch.float64), atol=1e-10)  # rank H: P = I


def test_rank_grid():
    assert rank_grid(2, 128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert rank_grid(24, 2048) == [1, 2, 4, 8, 16, 24, 32, 64, 128, 256, 512, 1024, 2048]
    assert rank_grid(3, 3) == [1, 2, 3]
