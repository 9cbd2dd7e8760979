"""Haar-random orthogonal matrices: orthogonal, seeded, signs fixed by diag(R)."""

from __future__ import annotations

import pytest
import torch

from pytest_ladder.measure.orthogonal import random_orthogonal, random_orthonormal_columns

F64 = torch.float64


def test_orthogonal_and_seeded(device):
    q = random_orthogonal(33, 7, device=device)
    assert q.device.type == device and q.dtype == F64
    assert torch.allclose(q.T @ q, torch.eye(33, dtype=F64, device=device), atol=1e-12)
    assert torch.equal(q.cpu(), random_orthogonal(33, 7))
    assert not torch.equal(q.cpu(), random_orthogonal(33, 8))
    assert random_orthogonal(5, 1, batch=(4,), dtype=torch.float32).shape == (4, 5, 5)


def test_signs_fixed_by_diag_r():
    gaussian = torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    q, r = torch.linalg.qr(gaussian)
    expected = q @ torch.diag(torch.sign(torch.diagonal(r)))
    assert torch.allclose(random_orthogonal(6, 3), expected, atol=1e-14)
    # with the fix, Q's own R factor has a positive diagonal
    _, r_of_gaussian = torch.linalg.qr(gaussian)
    assert torch.allclose(random_orthogonal(6, 3).T @ gaussian, r_of_gaussian * torch.sign(torch.diagonal(r))[:, None],
                          atol=1e-12)
    assert (torch.diagonal(random_orthogonal(6, 3).T @ gaussian) > 0).all()


def test_columns_span_a_subspace():
    q = random_orthonormal_columns(10, 3, 5)
    assert q.shape == (10, 3)
    assert torch.allclose(q.T @ q, torch.eye(3, dtype=F64), atol=1e-12)


def test_qr_on_the_cpu_device_is_the_cached_draw_bit_for_bit():
    assert torch.equal(random_orthonormal_columns(40, 6, 11, device="cpu", qr_on_device=True),
                       random_orthonormal_columns(40, 6, 11))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_qr_on_cuda_is_the_cpu_draw_to_float64_rounding():
    on_gpu = random_orthonormal_columns(300, 40, 5, device="cuda", qr_on_device=True)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float64
    assert torch.allclose(on_gpu.cpu(), random_orthonormal_columns(300, 40, 5), rtol=0, atol=1e-12)
