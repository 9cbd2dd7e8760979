"""Walsh–Hadamard: equal to the dense Sylvester product, orthogonal, self-inverse; any size; SRHT = H·D."""

from __future__ import annotations

import pytest
import torch

from pytest_ladder.measure.hadamard import fwht, hadamard_transform, power_of_two_blocks, rademacher, srht

F64 = torch.float64


def sylvester(n: int) -> torch.Tensor:
    """The orthonormal Sylvester–Hadamard matrix built by hand: H_2n = [[H, H], [H, -H]] / sqrt(2)."""
    h = torch.ones(1, 1, dtype=F64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n**0.5


def block_diagonal_hadamard(n: int) -> torch.Tensor:
    return torch.block_diag(*[sylvester(b) for b in power_of_two_blocks(n)])


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 256])
def test_fwht_equals_dense_sylvester_product(n, device):
    x = torch.randn(5, 3, n, generator=torch.Generator().manual_seed(n), dtype=F64).to(device)
    h = sylvester(n).to(device)
    assert torch.allclose(fwht(x), x @ h.T, atol=1e-12)
    y = x.movedim(-1, 1)  # transform along a middle dim
    assert torch.allclose(fwht(y, dim=1), (x @ h.T).movedim(-1, 1), atol=1e-12)


@pytest.mark.parametrize("n", [8, 128])
def test_fwht_is_orthogonal_and_self_inverse(n):
    h = fwht(torch.eye(n, dtype=F64), dim=0)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=F64), atol=1e-12)
    x = torch.randn(4, n, dtype=F64)
    assert torch.allclose(fwht(fwht(x)), x, atol=1e-12)
    assert torch.allclose(fwht(x).norm(dim=-1), x.norm(dim=-1), atol=1e-12)


def test_non_power_of_two_blocks():
    assert power_of_two_blocks(1536) == [1024, 512]
    assert power_of_two_blocks(1408) == [1024, 256, 128]
    assert power_of_two_blocks(7) == [4, 2, 1]
    with pytest.raises(ValueError, match="hadamard_transform"):
        fwht(torch.zeros(3, 6))


@pytest.mark.parametrize("n", [3, 6, 12, 100])
def test_any_size_transform_is_orthogonal_block_hadamard(n):
    matrix = hadamard_transform(torch.eye(n, dtype=F64), dim=0)
    assert torch.allclose(matrix, block_diagonal_hadamard(n), atol=1e-12)
    assert torch.allclose(matrix @ matrix.T, torch.eye(n, dtype=F64), atol=1e-12)
    x = torch.randn(2, n, dtype=F64)
    assert torch.allclose(hadamard_transform(hadamard_transform(x)), x, atol=1e-12)


@pytest.mark.parametrize("n", [16, 24])
def test_srht_is_h_times_d(n, device):
    rotation = srht(n, seed=9, device=device)
    signs = rademacher(n, 9)
    assert set(signs.tolist()) <= {-1.0, 1.0} and torch.equal(rotation.signs.cpu(), signs)
    r = rotation.matrix()
    assert torch.allclose(r.cpu(), block_diagonal_hadamard(n) @ torch.diag(signs), atol=1e-12)
    assert torch.allclose(r @ r.T, torch.eye(n, dtype=F64, device=device), atol=1e-12)
    x = torch.randn(n, 5, dtype=F64, device=device)
    assert torch.allclose(rotation.apply(x, dim=0), r @ x, atol=1e-12)
    assert torch.allclose(rotation.inverse(rotation.apply(x, dim=0), dim=0), x, atol=1e-12)
    assert torch.allclose(rotation.apply(x.T), (r @ x).T, atol=1e-12)
    assert rotation.artifact("r").nbytes == -(-n // 8)


def test_srht_spreads_an_outlier():
    x = torch.zeros(64, dtype=F64)
    x[5] = 8.0
    rotated = srht(64, seed=1).apply(x)
    assert torch.allclose(rotated.abs(), torch.full((64,), 1.0, dtype=F64))
