"""The GPU working set stays inside `--ladder-gpu-workspace`: the CUDA allocator's own peak, measured around the
chunked computations of G3 (effective-weight Grams), G4 (the token-weighted Gram) and G10-scan / G10.5 (the normal
equations), each with a workspace a few times smaller than its unchunked working set. Needs a CUDA device."""

import pytest
import torch

from pytest_ladder.measure.workspace import Workspace

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
F64 = torch.float64
MiB = 2**20


def peak_over_base(compute) -> tuple[int, object]:
    """Bytes the CUDA allocator held at its peak during `compute()` beyond what was allocated before it. cuBLAS
    takes its workspace (tens of MiB, kept for the process) from the same allocator at a process's first products:
    they are made first, so the peak is the computation's own."""
    for dtype in (F64, torch.float32, torch.bfloat16):
        one = torch.ones(2, 2, 2, dtype=dtype, device="cuda")
        (one @ one, one[0] @ one[0], torch.einsum("eoi,eoj->ij", one, one))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = compute()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, result


def test_g3_energy_chunks_on_cuda_stay_inside_the_budget_with_the_experts_counted():
    from pytest_ladder.measure.routing import effective_weight_energy

    g = torch.Generator().manual_seed(3)
    weights = torch.randn(16, 128, 256, generator=g).to(torch.bfloat16).to("cuda")  # 1 MiB; its float64 copy 4
    idx = torch.stack([torch.randperm(16, generator=g)[:4] for _ in range(300)]).to("cuda")
    gates = torch.rand(300, 4, generator=g, dtype=F64).to("cuda")
    budget = 12 * MiB  # unchunked the 300 tokens' effective weights alone take 75 MiB
    used, energy = peak_over_base(lambda: effective_weight_energy(weights, idx, gates, 8, max_bytes=budget))
    assert used <= budget
    _, free = peak_over_base(lambda: effective_weight_energy(weights, idx, gates, 8))
    assert torch.allclose(energy, free, rtol=1e-12, atol=0)


def test_g4_token_weighted_gram_on_cuda_stays_inside_the_workspace():
    from pytest_ladder.probes.lowrank import token_weighted_gram

    g = torch.Generator().manual_seed(4)
    weights = torch.randn(32, 256, 128, generator=g).to(torch.bfloat16)  # on the CPU: 32 MiB in float64
    counts = torch.randint(0, 50, (32,), generator=g)
    workspace = Workspace.on("cuda", 8 * MiB)
    used, m = peak_over_base(lambda: token_weighted_gram(weights, counts, workspace=workspace))
    assert used <= workspace.limit
    expected = token_weighted_gram(weights, counts)
    assert torch.allclose(m.cpu(), expected, rtol=1e-12, atol=1e-9)


def test_normal_equations_on_cuda_stay_inside_the_workspace():
    from pytest_ladder.probes.scan import Normal

    g = torch.Generator().manual_seed(5)
    phi = torch.randn(2000, 320, generator=g, dtype=F64).to("cuda")
    targets = {f"t{i}": torch.randn(2000, 64, generator=g).to("cuda") for i in range(8)}
    workspace = Workspace.on("cuda", 8 * MiB)  # ΦᵀY and float64 Y of all eight targets: 9.4 MiB
    normal = Normal()
    used, _ = peak_over_base(lambda: normal.add(phi, targets, workspace=workspace))
    assert used <= workspace.limit
    free = Normal()
    free.add(phi, targets)
    assert torch.allclose(normal.ftf, free.ftf.cpu(), rtol=1e-12, atol=0)
    for name in targets:
        assert torch.allclose(normal.fty[name], free.fty[name].cpu(), rtol=1e-12, atol=1e-12)


def test_g2_mode_grams_on_cuda_stay_inside_the_workspace():
    """Mode Grams of the stacked tensor (G2) with its slices resident on the GPU: each column block and the pieces it
    is made of fit the workspace's half, and the last block is gone before the next one is made."""
    from pytest_ladder.measure.tucker import StackedTensor

    g = torch.Generator().manual_seed(6)
    slices = [torch.randn(16, 32, 64, generator=g).to(torch.bfloat16).to("cuda") for _ in range(4)]  # 1 MiB float64
    workspace = Workspace.on("cuda", MiB // 2)  # column blocks of (64, 512) float64 pieces and block: 8 in all
    used, grams = peak_over_base(lambda: StackedTensor(slices, workspace).mode_grams())
    results = 5 * 64 * 64 * 8  # the Grams (K 64², modes 2 and 3) and a product being added: 160 KiB
    assert used <= workspace.limit // 2 + results  # a block left alive beside the next would add 128 KiB
    free = StackedTensor(slices).mode_grams()
    for bounded, whole in zip(grams, free):
        assert torch.allclose(bounded, whole, rtol=1e-12, atol=1e-12)
